"""The rules the model follows, as data: per policy and per driver API, which code each
follows (or that it is a DESIGN ASSUMPTION), when a table and a context are allocated,
and when IOTLB invalidations, stage-2 TLB flushes and cache cleans happen.

Domains and hosts look their behaviour up here instead of comparing policy names.
Citations are `repo:path @ tag:line`. The unshared policies follow the only real
unshared IPMMU driver on Arm, EPAM's xen-troops/xen `ipmmu-vmsa-legacy.c` (4.13 based,
branch RELEASE-4.13.0-xt0.2.prod-devel, "XT" below) over its io-pgtable-arm; `shared`
follows upstream xen-project/xen RELEASE-4.17.0. Where no real code exists (the
`batched` and `blocks` driver APIs, `lazy` on Arm) the rule is a design assumption,
named as one in `source`.
"""

from __future__ import annotations

from dataclasses import dataclass

XT = "xen-troops/xen:xen/drivers/passthrough/arm/ipmmu-vmsa-legacy.c @ RELEASE-4.13.0-xt0.2.prod-devel"
XT_IOPT = "xen-troops/xen:xen/drivers/passthrough/arm/io-pgtable-arm.c @ RELEASE-4.13.0-xt0.2.prod-devel"
XT_P2M = "xen-troops/xen:xen/arch/arm/p2m.c @ RELEASE-4.13.0-xt0.2.prod-devel"
P2M_C = "xen-project/xen:xen/arch/arm/p2m.c @ RELEASE-4.17.0"
IPMMU_C = "xen-project/xen:xen/drivers/passthrough/arm/ipmmu-vmsa.c @ RELEASE-4.17.0"
DESIGN = "DESIGN ASSUMPTION"

# Variants where the real code differs between versions (a host option, so a sweep can vary it).
# "4.12": since Xen 4.12 the caller of iommu_map / iommu_unmap flushes once per call with the
# flush flags the driver OR-ed in (xen-project/xen:xen/drivers/passthrough/iommu.c @
# RELEASE-4.17.0:313, iommu_map, flushing at :381); "pre-4.12": every 4 KiB page flushed.
PER_PAGE_FLUSH_VARIANTS = ("4.12", "pre-4.12")


@dataclass(frozen=True)
class PolicyRule:
    name: str
    kind: str                     # "unshared": a second table; "shared": the IOMMU walks the P2M
    source: str                   # the code followed, or DESIGN
    table_at: str                 # "create" | "create-if-passthrough" | "first-assign" (shared: IOMMU enabled)
    context_at: str               # "create" (with the table) | "first-assign"
    context_freed_at: str         # "teardown" | "last-deassign"
    context0_reserved: bool       # the driver keeps context 0 for itself
    refuse_undeclared_assign: bool    # assignment to a domain created without the passthrough flag
    populate_at_assign: bool      # the table is built from the whole P2M at the first assignment
    flush: str                    # when IOTLB invalidations are issued (the rule, in words)
    clean: str                    # when cache cleans happen

    @property
    def shared(self) -> bool:
        return self.kind == "shared"

    @property
    def real(self) -> bool:
        """Whether real Xen code is behind the rule (else it is a named design assumption)."""
        return not self.source.startswith(DESIGN)

    def table_at_create(self, passthrough: bool) -> bool:
        return self.table_at == "create" or (self.table_at == "create-if-passthrough" and passthrough)


_UNSHARED_FLUSH = (f"a map never invalidates (io-pgtable-arm's map calls no TLB op, {XT_IOPT}:446; the "
                   f"driver's iotlb_flush is empty, {XT}:1477); an unmap syncs once, a whole-context flush "
                   f"(arm_lpae_unmap -> io_pgtable_tlb_sync, {XT_IOPT}:691 -> ipmmu_tlb_flush_all, {XT}:591); "
                   f"a domain without a context has nothing to flush ({XT}:596)")
_CLEAN = (f"P2M: with the IOMMU enabled for the domain and a non-coherent walker, every entry write is cleaned "
          f"(p2m_write_pte, {P2M_C}:789; clean_pte, :1808) and every new table page whole "
          f"(p2m_create_table :821, p2m_split_superpage :1012). Unshared table: one clean per entry written "
          f"(__arm_lpae_set_pte, {XT_IOPT}:305) and every new table page whole")

POLICY_RULES: dict[str, PolicyRule] = {
    "eager": PolicyRule(
        "eager", "unshared",
        f"{XT}:1697 (ipmmu_vmsa_domain_init allocates table and context for every domain, :1658)",
        table_at="create", context_at="create", context_freed_at="teardown", context0_reserved=False,
        refuse_undeclared_assign=False, populate_at_assign=False, flush=_UNSHARED_FLUSH, clean=_CLEAN),
    "lazy": PolicyRule(
        "lazy", "unshared",
        f"{DESIGN}: Xen before 4.13 built the table at the first assignment only on x86 (M2P walk); "
        f"on Arm it returned 'not supported'. Context taken with the table",
        table_at="first-assign", context_at="first-assign", context_freed_at="teardown", context0_reserved=False,
        refuse_undeclared_assign=False, populate_at_assign=True, flush=_UNSHARED_FLUSH, clean=_CLEAN),
    "declared": PolicyRule(
        "declared", "unshared",
        f"{XT}:1697 for domains created with XEN_DOMCTL_CDF_iommu (xen-project/xen:xen/common/domain.c "
        f"@ RELEASE-4.17.0:481, the flag checked at creation); table and context at creation",
        table_at="create-if-passthrough", context_at="create", context_freed_at="teardown",
        context0_reserved=False, refuse_undeclared_assign=True, populate_at_assign=False,
        flush=_UNSHARED_FLUSH, clean=_CLEAN),
    "shared": PolicyRule(
        "shared", "shared",
        f"{IPMMU_C}:1118 (context at the first assign_device, ipmmu_alloc_root_domain :1079; context 0 "
        f"reserved :978; freed at teardown only, :1339)",
        # No table: table_at is when the IOMMU is enabled for the domain (clean_pte follows it): at
        # creation with XEN_DOMCTL_CDF_iommu (xen-project/xen:xen/common/domain.c @ RELEASE-4.17.0:481;
        # dom0 always), else (a model choice: 4.17 refuses it) at the hot-plug.
        table_at="create-if-passthrough", context_at="first-assign", context_freed_at="teardown",
        context0_reserved=True, refuse_undeclared_assign=False, populate_at_assign=False,
        flush=(f"one whole-context flush after every leaf whose old or new entry is valid (__p2m_set_entry -> "
               f"iommu_iotlb_flush, {P2M_C}:1204; ipmmu_iotlb_flush invalidates the whole context, "
               f"{IPMMU_C}:1003); nothing before the domain holds a context ({IPMMU_C}:1011)"),
        clean=_CLEAN),
}


@dataclass(frozen=True)
class ApiRule:
    name: str
    source: str
    leaf: str                     # the engine's leaf choice for the unshared table: "4k" | "auto"
    per_page_calls: bool          # one driver call per 4 KiB page
    flush: str

    @property
    def real(self) -> bool:
        """Whether real Xen code is behind the rule (else it is a named design assumption)."""
        return not self.source.startswith(DESIGN)


API_RULES: dict[str, ApiRule] = {
    "per-page": ApiRule(
        "per-page",
        "xen-project/xen:xen/drivers/passthrough/iommu.c @ RELEASE-4.17.0:313 (iommu_map / iommu_unmap loop "
        "per 4 KiB page: Arm drivers advertise 4 KiB only)",
        leaf="4k", per_page_calls=True,
        flush=("unshared: one whole-context sync per unmap call of the caller (since 4.12, flush flags); the "
               "pre-4.12 variant syncs per 4 KiB page unmapped")),
    "batched": ApiRule(
        "batched", f"{DESIGN}: one driver call per run of pages (no such Arm driver)",
        leaf="4k", per_page_calls=False,
        flush="unshared: one whole-context sync per unmap call and per run of live entries replaced"),
    "blocks": ApiRule(
        "blocks", f"{DESIGN}: batched, plus 2 MiB / 1 GiB block entries in the IOMMU table",
        leaf="auto", per_page_calls=False,
        flush="unshared: one whole-context sync per unmap call and per run of live entries replaced"),
}

# The unshared table's formats: which is real, which is a what-if (issue 13 row 12).
FORMAT_RULES = {
    "ipmmu-s1-39": f"XT on R-Car Gen3: the 64-bit stage-1 format (ARM_64_LPAE_S1) with a 39-bit input "
                   f"(imctr_va64, {XT}:1315; ias 39 at :657, the format at :667)",
    "ipmmu-s1-32": "WHAT-IF: Linux's choice (32-bit LPAE stage 1, 32-bit input); XT uses it only on IPMMUs "
                   f"without imctr_va64 (pre-Gen3, {XT}:1306)",
}

# The names every layer offers (the CLI's choices, the sweep's axes, the report's order): the tables' keys.
POLICIES = tuple(POLICY_RULES)
APIS = tuple(API_RULES)
UNSHARED_FORMATS = tuple(sorted(FORMAT_RULES))

# Stage-2 TLB and P2M write rules (every policy), cited where the model applies them.
TLB_RULE = (f"one synchronous stage-2 TLB flush per modified valid leaf (break-before-make, {P2M_C}:1190), one "
            f"per superpage split ({P2M_C}:1114), one deferred per locked update that removed a valid entry "
            f"(need_flush {P2M_C}:1171, flushed at p2m_write_unlock :203)")


# Grant maps in a direct-mapped domain with an IOMMU (dom0's backends and the toolstack's ring maps).
GNTTAB_IOMMU_RULE = (
    "every grant map is one 4 KiB P2M entry (p2m_grant_map_rw at the backend's ballooned frame, order 0: "
    "create_grant_host_mapping, xen-project/xen:xen/arch/arm/mm.c @ RELEASE-4.17.0:1560); for a "
    "direct-mapped dom0 whose IOMMU is on, the first map of a frame also maps it at dfn = mfn and the last "
    "unmap removes it (map_grant_ref / unmap_common, xen-project/xen:xen/common/grant_table.c @ "
    "RELEASE-4.17.0:1216 and :1511, refcounted per frame; gnttab_need_iommu_mapping, "
    "xen-project/xen:xen/arch/arm/include/asm/grant_table.h @ RELEASE-4.17.0:76, and in 4.13 only when "
    "not sharing, xen-project/xen:xen/include/asm-arm/grant_table.h @ RELEASE-4.13.0:91). Shared: that is a "
    "P2M entry p2m_iommu_map_rw at gfn = mfn (arm_iommu_map_page, xen-project/xen:xen/drivers/passthrough/"
    "arm/iommu_helpers.c @ RELEASE-4.17.0:33). Unshared: an entry in the second table only, one "
    "iommu_legacy_map / iommu_legacy_unmap call per page, an unmap syncing the context")


def policy_rule(name: str) -> PolicyRule:
    try:
        return POLICY_RULES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose from {list(POLICY_RULES)}") from None


def api_rule(name: str) -> ApiRule:
    try:
        return API_RULES[name]
    except KeyError:
        raise ValueError(f"unknown driver API {name!r}; choose from {list(API_RULES)}") from None


def markdown() -> str:
    """The rules table as the README's "Rules" section shows it (tests keep the two the same)."""
    rows = ["| rule | what the model does | code it follows |", "|---|---|---|"]
    for r in POLICY_RULES.values():
        what = (f"{r.kind}; table at {r.table_at}, context at {r.context_at} "
                f"(context 0 {'reserved' if r.context0_reserved else 'usable'}), freed at {r.context_freed_at}"
                + ("; assignment to an undeclared domain refused" if r.refuse_undeclared_assign else "")
                + ("; the whole P2M copied at the first assignment" if r.populate_at_assign else ""))
        rows.append(f"| policy `{r.name}` | {what} | {r.source} |")
        rows.append(f"| policy `{r.name}`: IOTLB invalidations | {r.flush} | (cited in the rule) |")
    for a in API_RULES.values():
        rows.append(f"| API `{a.name}` | {'one call per 4 KiB page' if a.per_page_calls else 'one call per run'}, "
                    f"{'4 KiB' if a.leaf == '4k' else '4 KiB / 2 MiB / 1 GiB'} leaves; {a.flush} | {a.source} |")
    for name, text in FORMAT_RULES.items():
        rows.append(f"| format `{name}` | {text} | (cited in the rule) |")
    rows.append(f"| stage-2 TLB flushes (every policy) | {TLB_RULE} | (cited in the rule) |")
    rows.append(f"| cache cleans (every policy) | {_CLEAN} | (cited in the rule) |")
    rows.append(f"| dom0's grant maps (every policy) | {GNTTAB_IOMMU_RULE} | (cited in the rule) |")
    return "\n".join(rows) + "\n"

"""One domain's record after a host's run: every field with its type, unit and meaning.

A host returns one `DomainRecord` per domain (as a dict, `to_dict`); the results
schema (store/results.py) and the README's field table (`markdown`) are built from
these fields, so a field is named, typed and explained in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

LEVELS = range(4)                   # table levels 0..3, flattened into *_l0 .. *_l3 columns


def _f(kind: str, unit: str = "", doc: str = ""):
    return field(metadata={"kind": kind, "unit": unit, "doc": doc})


@dataclass(frozen=True)
class DomainRecord:
    policy: str = _f("str", doc="the sync policy (rules.py)")
    api: str = _f("str", doc="the IOMMU driver API (rules.py)")
    format: str = _f("str", doc="the unshared IOMMU table's format")
    p2m_format: str = _f("str", doc="the P2M's format")
    domain: str = _f("str", doc="the domain's name (dom0 for domain 0)")
    domid: int = _f("int", doc="the domain id (0: dom0)")
    kind: str = _f("str", doc="what the domain is: dom0, driver, guest, ...")
    ram_bytes: int = _f("int", "bytes", "the domain's RAM")
    host_ram_bytes: int = _f("int", "bytes", "the board's RAM")
    devices: int = _f("int", "devices", "devices the domain was ever assigned")
    passthrough_flag: bool = _f("bool", doc="created with the passthrough flag (XEN_DOMCTL_CDF_iommu)")
    destroyed: bool = _f("bool", doc="the domain was destroyed during the run")
    iommu_table_bytes: int = _f("int", "bytes", "peak of the unshared IOMMU table")
    p2m_table_bytes: int = _f("int", "bytes", "peak of the P2M")
    iommu_table_bytes_final: int = _f("int", "bytes", "the unshared IOMMU table at the end (0 once destroyed)")
    p2m_table_bytes_final: int = _f("int", "bytes", "the P2M at the end (0 once destroyed)")
    iommu_tables_by_level: dict = _f("levels", "tables", "the unshared IOMMU table's pages per level, at the end")
    p2m_tables_by_level: dict = _f("levels", "tables", "the P2M's table pages per level, at the end")
    iommu_min_table_bytes: int = _f("int", "bytes", "the analytic minimum of an IOMMU table for the domain's DMA view")
    toolstack_reserved_bytes: int = _f("int", "bytes", "what Xen's toolstack reserves for the domain's IOMMU tables")
    iommu_used_over_reserved: float = _f("float", "ratio", "iommu_table_bytes / toolstack_reserved_bytes")
    iommu_bytes_over_ram: float = _f("float", "ratio", "iommu_table_bytes / ram_bytes")
    calls: int = _f("int", "calls", "IOMMU driver calls (per 4 KiB page under per-page)")
    descriptors_written: int = _f("int", "descriptors", "IOMMU table entries written")
    tables_allocated: int = _f("int", "tables", "IOMMU table pages allocated")
    tables_freed: int = _f("int", "tables", "IOMMU table pages freed")
    block_splits: int = _f("int", "splits", "IOMMU block entries split into tables")
    invalidations: int = _f("int", "invalidations", "IOTLB invalidations issued to the IOMMU (whole-context "
                            "flushes), under the rules of rules.py; none while the domain holds no context")
    cache_lines_cleaned: int = _f("int", "cleans", "the unshared table's cache cleans: one per entry written "
                                  "(not per distinct line) plus 64 per new table page")
    populate_pages: int = _f("int", "pages", "pages a lazy populate copied into the IOMMU table")
    unreachable_pages: int = _f("int", "pages", "DMA-visible pages beyond the IOMMU format's input size")
    assign_refused_context: int = _f("int", "assignments", "assignments refused for lack of an IPMMU context "
                                     "(shared, and lazy, which take it at the first assignment)")
    assign_refused_undeclared: int = _f("int", "assignments", "assignments refused into a domain created "
                                        "without the passthrough flag (declared)")
    create_refused_context: int = _f("int", "0 / 1", "1 when the domain's creation was refused for lack of an "
                                     "IPMMU context (unshared, as XT allocates it at creation); the domain then "
                                     "has no other activity")
    p2m_calls: int = _f("int", "calls", "p2m_set_entry calls on the domain's P2M")
    p2m_descriptors_written: int = _f("int", "descriptors", "P2M entries written")
    p2m_tables_allocated: int = _f("int", "tables", "P2M table pages allocated")
    p2m_block_splits: int = _f("int", "splits", "P2M superpages split")
    tlb_flushes: int = _f("int", "flushes", "stage-2 TLB flushes: one per leaf written over a valid entry, one "
                          "per superpage split level, one deferred per locked update that removed a valid entry")
    p2m_cache_lines_cleaned: int = _f("int", "cleans", "P2M cache cleans when clean_pte is on (the domain's IOMMU "
                                      "enabled, a non-coherent walker: the IPMMU always): one per entry written, "
                                      "break-before-make removals included, plus 64 per new table page")
    p2m_relinquished_leaves: int = _f("int", "leaves", "leaves relinquish_p2m_mapping removed at destroy")
    p2m_mappings_1g: int = _f("int", "leaves", "Xen 4.17's own 1G mappings counter (debug key q)")
    p2m_mappings_2m: int = _f("int", "leaves", "Xen 4.17's own 2M mappings counter (debug key q)")
    p2m_mappings_4k: int = _f("int", "leaves", "Xen 4.17's own 4K mappings counter (debug key q)")
    p2m_shattered_1g: int = _f("int", "blocks", "Xen 4.17's own count of shattered 1G blocks")
    p2m_shattered_2m: int = _f("int", "blocks", "Xen 4.17's own count of shattered 2M blocks")
    p2m_leaves_1g: int = _f("int", "leaves", "valid 1G leaves in the P2M")
    p2m_leaves_2m: int = _f("int", "leaves", "valid 2M leaves in the P2M")
    p2m_leaves_4k: int = _f("int", "leaves", "valid 4K leaves in the P2M")
    boot_ns: float = _f("float", "ns", "modelled boot time")
    assign_ns: float = _f("float", "ns", "modelled, the slowest assignment")
    teardown_ns: float = _f("float", "ns", "modelled teardown time")
    inv_wait_ns: float = _f("float", "ns", "modelled wait for the context's flush register")
    map_calls: int = _f("int", "calls", "map calls behind map_lat_*")
    unmap_calls: int = _f("int", "calls", "unmap calls behind unmap_lat_*")
    map_lat_mean_us: float = _f("float", "us", "modelled per-call map latency, mean")
    map_lat_std_us: float = _f("float", "us", "modelled per-call map latency, standard deviation")
    unmap_lat_mean_us: float = _f("float", "us", "modelled per-call unmap latency, mean")
    unmap_lat_std_us: float = _f("float", "us", "modelled per-call unmap latency, standard deviation")
    mismatches: int = _f("int", doc="steps after which the IOMMU and the P2M's DMA view differed (the invariant)")
    seed: int = _f("int", doc="the host's seed")
    engine_wall_s: float = _f("float", "s", "wall clock of the host's run: differs between runs")
    sim_pages_per_s_wall: float = _f("float", "pages/s", "P2M pages mapped per second of wall clock: differs "
                                     "between runs")

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# Fields a run's rows flatten: a per-level dict becomes one column per level (<name>_l0 .. _l3).
def columns() -> list[tuple[str, str, str, str]]:
    """(column, kind, unit, meaning) of every record field as the results schema stores it."""
    out = []
    for f in fields(DomainRecord):
        m = f.metadata
        if m["kind"] == "levels":
            base = f.name.removesuffix("_by_level")
            out += [(f"{base}_l{lvl}", "int", m["unit"], f"{m['doc']}: level {lvl}") for lvl in LEVELS]
        else:
            out.append((f.name, m["kind"], m["unit"], m["doc"]))
    return out


def markdown() -> str:
    """The README's table of record fields (tests keep the two the same)."""
    rows = ["| field | unit | meaning |", "|---|---|---|"]
    for f in fields(DomainRecord):
        name = f"`{f.name}`" if f.metadata["kind"] != "levels" else \
            f"`{f.name.removesuffix('_by_level')}_l0` .. `_l3`"
        rows.append(f"| {name} | {f.metadata['unit']} | {f.metadata['doc']} |")
    return "\n".join(rows) + "\n"

"""A domain: its P2M, the IOMMU its policy gives it, its devices, and its life cycle.

Every life-cycle step is a batch of P2M updates; `update` applies one, lets the
IOMMU follow it as the policy says, checks the invariant over what it touched,
and returns the modelled CPU time and the IOTLB invalidations it queued.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np

from .. import intervals as iv
from ..pgtable import Format
from ..pgtable.accounting import LINES_PER_TABLE
from ..pgtable.arrays import count_distinct
from ..pgtable.format import GRANULE
from ..units import GIB, MIB
from . import invariant
from .iommu import SharedIommu, UnsharedIommu
from .p2m import P2M
from .rules import GNTTAB_IOMMU_RULE, POLICY_RULES, policy_rule
from .toolstack import KERNEL_KIB, RAMDISK_KIB

# Xen's guest memory map on ARM (xen/include/public/arch-arm.h).
GUEST_RAM0 = (0x4000_0000 >> 12, (3 * GIB) >> 12)          # (first GFN, pages)
GUEST_RAM1_GFN = 0x2_0000_0000 >> 12
GUEST_GNTTAB_GFN = 0x3800_0000 >> 12
GUEST_MAGIC_GFN = 0x3900_0000 >> 12
MAGIC_PAGES = 4                                               # console, xenstore, ...
GUEST_SHARED_INFO_PAGE = 0x25FF     # where the captured domU's Linux gave up a page for shared_info
DOM0_FOREIGN_GFN = 0x10_0000_0000 >> 12       # where dom0 maps guests' pages (backends): 64 GiB, above H3 RAM
POLICIES = tuple(POLICY_RULES)               # the rules table (rules.py) is where they are defined


@dataclass(frozen=True)
class DomainSpec:
    """What a domain is and does: its RAM, devices (at creation and hot-plugged), sharing."""

    name: str
    kind: str
    ram_bytes: int
    passthrough: bool = False            # created with the passthrough flag (XEN_DOMCTL_CDF_iommu)
    devices: tuple[str, ...] = ()        # assigned at creation
    hotplug: tuple[str, ...] = ()        # assigned once booted
    unplug: tuple[str, ...] = ()         # deassigned after that (devices it has)
    grant_pages: int = 0                 # pages a backend (dom0) maps from this domain
    grant_frames: int = 1                # grant-table frames the guest's Linux maps at boot (the capture: 1)
    balloon_bytes: int = 0               # ballooned out, then back in
    destroy: bool = False
    kernel_kib: int = KERNEL_KIB         # the images the toolstack loads through dom0 (the capture's)
    ramdisk_kib: int = RAMDISK_KIB

    def __post_init__(self):
        if self.ram_bytes <= 0 or self.ram_bytes % GRANULE:
            raise ValueError(f"domain {self.name!r}: ram_bytes must be a positive multiple of 4 KiB, "
                             f"got {self.ram_bytes}")
        unknown = sorted(set(self.unplug) - set(self.devices) - set(self.hotplug))
        if unknown:
            raise ValueError(f"domain {self.name!r}: cannot unplug {unknown[0]!r}, which it is never given")
        for key in ("kernel_kib", "ramdisk_kib"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"domain {self.name!r}: {key} must be an integer >= 0, got {v!r}")
        if (self.kernel_kib + self.ramdisk_kib) * 1024 + GRANULE > self.ram_bytes and self.kind != "dom0":
            raise ValueError(f"domain {self.name!r}: its kernel ({self.kernel_kib} KiB), ramdisk "
                             f"({self.ramdisk_kib} KiB) and device tree do not fit in its {self.ram_bytes} bytes")
        if self.balloon_bytes < 0 or self.balloon_bytes % GRANULE or self.balloon_bytes > self.ram_bytes:
            raise ValueError(f"domain {self.name!r}: balloon_bytes {self.balloon_bytes} must be a multiple of "
                             f"4 KiB within its RAM")


@dataclass
class DomainCounts:
    p2m_calls: int = 0
    relinquished_leaves: int = 0         # leaves relinquish_p2m_mapping removed (not p2m_set_entry calls)
    tlb_flushes: int = 0
    p2m_cache_lines_cleaned: int = 0     # clean_pte: P2M entry cleans plus whole new table pages (64 lines)
    assign_refused_context: int = 0
    create_refused_context: int = 0      # 1: no context was free at creation (unshared, XT): no other activity
    assign_refused_undeclared: int = 0
    mismatches: int = 0
    peak_p2m_bytes: int = 0
    peak_iommu_bytes: int = 0
    p2m_pages_mapped: int = 0
    assign_ns: list = field(default_factory=list)
    boot_ns: float = 0.0
    teardown_ns: float = 0.0
    inv_wait_ns: float = 0.0


def tlb_flushes(change, one_lock: bool = False) -> int:
    """Stage-2 TLB flushes of one P2M batch (rules.TLB_RULE): one synchronous flush per leaf written
    over a valid entry (break-before-make, xen-project/xen:xen/arch/arm/p2m.c @ RELEASE-4.17.0:1190),
    one per superpage split (:1114), and one deferred flush per locked update that removed a valid
    entry (need_flush :1171, flushed by p2m_write_unlock :203). A split of a 1 GiB block down to
    4 KiB in one walk is one break-before-make in Xen; it is counted here once per level split
    (two), as LeafEvents counts splits per level."""
    ev = change.leaves
    if ev is None or not len(ev):
        return 0
    modified = int((~ev.removing & ev.old_valid).sum())
    splits = int(sum(ev.splits.values()))
    gone = ev.removing & ev.old_valid
    deferred = (1 if gone.any() else 0) if one_lock else count_distinct(ev.call[gone])
    return modified + splits + deferred


# Linux's balloon asks Xen for order-0 extents, in and out ("one extent per PAGE_SIZE":
# torvalds/linux:drivers/xen/mem-reservation.c @ 30c0923370175a01a806b23d797f1d9f2f3e4f40:26, EXTENT_ORDER,
# used by xenmem_reservation_increase / _decrease): each page is its own p2m call.
BALLOON_RULE = "order-0"


def p2m_cleans(change) -> int:
    """P2M cache cleans of one batch when clean_pte is on (rules.py, the clean rule): every entry
    write is cleaned (p2m_write_pte, xen-project/xen:xen/arch/arm/p2m.c @ RELEASE-4.17.0:789):
    a leaf written (1) and, over a valid entry, its break-before-make removal first (1, :1167); a
    valid entry removed (1); every new table page cleaned whole (64 lines, p2m_create_table :821,
    p2m_split_superpage :1012) plus the entry that points to it (1, :826 / :1021); a split's
    entry removed and written again (2, :1113-1116). Removing an empty slot under an existing table
    also writes a zero there in Xen: not counted (LeafEvents does not say whether the table exists)."""
    ev = change.leaves
    if ev is None:
        return 0
    write = ~ev.removing
    entries = int(write.sum()) + int(ev.old_valid.sum())
    tables = int(change.stats.get("tables_allocated", 0))
    return entries + tables * (LINES_PER_TABLE + 1) + 2 * int(sum(ev.splits.values()))


def guest_ram_gfns(first_page: int, npages: int) -> tuple[np.ndarray, np.ndarray]:
    """GFN runs for guest RAM pages [first_page, first_page + npages): RAM0 first, then RAM1."""
    ram0_gfn, ram0_pages = GUEST_RAM0
    starts, counts = [], []
    if first_page < ram0_pages:
        n = min(npages, ram0_pages - first_page)
        starts.append(ram0_gfn + first_page)
        counts.append(n)
        first_page, npages = first_page + n, npages - n
    if npages:
        starts.append(GUEST_RAM1_GFN + first_page - ram0_pages)
        counts.append(npages)
    return np.array(starts, np.int64), np.array(counts, np.int64)


def libxc_extents(gfn: np.ndarray, mfn: np.ndarray, nr: np.ndarray):
    """Placed RAM runs cut into the extents libxc's populate_guest_memory asks Xen for, one
    populate_physmap extent (one p2m_set_entry call) each: per chunk of at most 1M pages,
    1 GiB extents from a 1 GiB-aligned GFN, else 2 MiB ones from a 2 MiB-aligned GFN up to
    the next 1 GiB boundary, else 4 KiB ones up to the next 2 MiB boundary
    (xen-project/xen:tools/libs/guest/xg_dom_arm.c @ RELEASE-4.17.0:237, populate_one_size).
    Where the model's machine frames change run inside an extent (a fragmented host, which
    Xen's buddy allocator would not hand out), the extent is cut there."""
    g_out, n_out = [], []
    for lo, hi in zip(*iv.normalize(gfn, nr)):
        p = int(lo)
        while p < hi:
            chunk_end = min(int(hi), p + (1 << 20))
            for shift in (18, 9, 0):
                size, nxt = 1 << shift, 1 << (shift + 9)
                if p % size:
                    continue
                e = chunk_end if not p % nxt else min(chunk_end, (p // nxt + 1) * nxt)
                k = (e - p) >> shift
                if k:
                    g_out.append(p + size * np.arange(k, dtype=np.int64))
                    n_out.append(np.full(k, size, np.int64))
                    p += k * size
                    break
    eg, en = np.concatenate(g_out), np.concatenate(n_out)
    # Machine frames: the run each extent starts in; cut where a run ends inside an extent.
    cuts = np.union1d(eg, np.concatenate((gfn, gfn + nr)))
    cuts = cuts[(cuts >= eg[0]) & (cuts < eg[-1] + en[-1])]
    k = np.searchsorted(gfn, cuts, side="right") - 1
    inside = cuts < gfn[k] + nr[k]
    cuts = cuts[inside]
    k = k[inside]
    ends = np.append(cuts[1:], eg[-1] + en[-1])
    return cuts, mfn[k] + (cuts - gfn[k]), ends - cuts


def place(gfn_runs: tuple[np.ndarray, np.ndarray], mfn: np.ndarray, mcount: np.ndarray):
    """Lay machine extents in order onto GFN runs: (gfn, mfn, count) extents."""
    g_start, g_count = gfn_runs
    # Cut both sides at every boundary of either, in units of "pages so far".
    g_edges = np.cumsum(g_count)
    m_edges = np.cumsum(mcount)
    edges = np.union1d(g_edges, m_edges)
    starts = np.concatenate(([0], edges[:-1]))
    gi = np.searchsorted(g_edges, starts, side="right")
    mi = np.searchsorted(m_edges, starts, side="right")
    g_off = starts - np.concatenate(([0], g_edges[:-1]))[gi]
    m_off = starts - np.concatenate(([0], m_edges[:-1]))[mi]
    return g_start[gi] + g_off, mfn[mi] + m_off, edges - starts


class Domain:
    def __init__(self, host, domid: int, spec: DomainSpec):
        self.host, self.domid, self.spec = host, domid, spec
        self.name = spec.name
        self.p2m = P2M(host.p2m_format)
        self.iommu = None
        self.devices: dict[str, int] = {}        # device -> the main IPMMU it sits behind
        self.ever_devices: set[str] = set()
        self.counts = DomainCounts()
        self.ram = (np.zeros(0, np.int64),) * 3      # (gfn, mfn, count) of RAM backed by host memory
        self.xen_pages = (np.zeros(0, np.int64),) * 2  # (mfn, count) of grant / magic pages
        self.ram_pages = 0
        self.alive = True
        self.refused = False                     # creation refused: the domain does nothing else
        # gnttab_need_iommu_mapping: machine frames mapped at dfn == mfn in the unshared table, and how
        # many grant maps hold each (Xen's maptrack radix tree refcounts them).
        self.grant_dfns = np.zeros(0, np.int64)
        self.grant_refs = np.zeros(0, np.int64)

    @property
    def policy(self) -> str:
        return self.host.policy

    @property
    def rule(self):
        """The policy's row of the rules table (rules.py)."""
        return policy_rule(self.host.policy)

    def _record(self, op: str, device: str = "") -> None:
        if self.host.recorder is not None:
            self.host.recorder.action(op, device)

    def quiet(self):
        """Updates an assign or deassign makes follow from it: a trace records the action only."""
        rec = self.host.recorder
        return rec.muted() if rec is not None else contextlib.nullcontext()

    # -- the IOMMU a policy gives ---------------------------------------------
    def _new_iommu(self):
        if self.rule.shared:
            return SharedIommu(self.p2m, self.host.costs, stage2_capable=self.host.board.ipmmu_stage2)
        return UnsharedIommu(self.host.iommu_format, self.host.api, self.host.costs)

    def create(self) -> tuple[float, int]:
        self._record("create")
        rule = self.rule
        if rule.table_at_create(self.spec.passthrough):
            # XT allocates table and context at domain creation and fails the creation when no context
            # is free (ipmmu_vmsa_domain_init -> ipmmu_domain_init_context: xen-troops/xen:xen/drivers/
            # passthrough/arm/ipmmu-vmsa-legacy.c @ RELEASE-4.13.0-xt0.2.prod-devel:1712, -EBUSY at :632),
            # on the root IPMMU (ipmmu_find_root, :1666).
            if rule.context_at == "create" and not self.host.contexts.acquire(self.domid, self._create_ipmmu()):
                self.counts.create_refused_context = 1
                self.refused = True
                return 0.0, 0
            self.iommu = self._new_iommu()
        return 0.0, 0

    def _create_ipmmu(self) -> int:
        """The main IPMMU whose context a creation takes. R-Car has one root IPMMU, which XT uses. A
        board with several (the server, a WHAT-IF: no Xen driver handles more than one root) takes it
        behind the domain's first device, or (DESIGN ASSUMPTION) where most contexts are free."""
        board = self.host.board
        if board.ipmmus == 1:
            return 0
        wanted = (*self.spec.devices, *self.spec.hotplug)
        if wanted:
            return board.master(wanted[0]).main_ipmmu
        held = self.host.contexts.by_ipmmu
        return min(range(len(held)), key=lambda k: (len(held[k]), k))

    # -- P2M updates -------------------------------------------------------------
    def has_context(self) -> bool:
        """Whether the domain holds an IPMMU context (without one there is nothing to flush)."""
        return any(self.domid in held for held in self.host.contexts.by_ipmmu)

    def update(self, gfn, mfn, nr, p2m_type, one_lock: bool = False) -> tuple[float, int]:
        """One P2M batch, followed by the IOMMU; (modelled CPU ns, IOTLB invalidations).

        Each call of the batch is one p2m_set_entry under its own P2M lock, unless `one_lock`
        (relinquish_p2m_mapping holds the lock over all its leaves)."""
        c = self.host.costs
        rec = self.host.recorder
        if rec is not None:
            rec.update(self.domid, gfn, mfn, nr, p2m_type)
        inv_before = self.iommu.counts.invalidations if self.iommu else 0
        change = self.p2m.set_entry(gfn, mfn, nr, p2m_type)
        st = change.stats
        ns = (len(change.mapped[0]) + len(change.unmapped[0])) * c.p2m_call_ns \
            + st.get("descriptors_written", 0) * c.map_page_ns + st.get("tables_allocated", 0) * c.table_alloc_ns
        self.counts.p2m_calls += len(change.mapped[0]) + len(change.unmapped[0])
        if self.iommu is not None and not Format.preset(self.host.iommu_format).coherent_walk:
            cleans = p2m_cleans(change)                 # clean_pte (p2m.c @ RELEASE-4.17.0:1808)
            self.counts.p2m_cache_lines_cleaned += cleans
            ns += cleans * c.cache_clean_line_ns
        flushes = tlb_flushes(change, one_lock)
        self.counts.tlb_flushes += flushes
        ns += flushes * c.tlb_flush_ns
        if self.iommu is not None:
            ns += self.iommu.follow(change, self.has_context(), self.host.config.per_page_flush)
            if self.host.check and (self.iommu.kind == "unshared" or self.devices):
                self._check(change.touched)
        self._peaks()
        inv = (self.iommu.counts.invalidations if self.iommu else 0) - inv_before
        self._queue(inv)
        return ns - inv * c.iotlb_inv_ns, inv

    def _queue(self, inv: int) -> None:
        """Hand the running step's invalidations to the host, which schedules them on the flush register."""
        self.host.step_inv[self.domid] = self.host.step_inv.get(self.domid, 0) + inv

    def _check(self, gfn_ranges) -> None:
        try:
            invariant.check(self.name, self.iommu, self.p2m, gfn_ranges, self.grant_dfns)
        except invariant.InvariantError:
            self.counts.mismatches += 1
            raise

    def check_all(self) -> None:
        if self.iommu is not None and self.alive:
            ext = self.p2m.entries()
            gfn = np.concatenate((ext.iova.astype(np.int64) // GRANULE, self.grant_dfns))
            nr = np.concatenate((ext.npages.astype(np.int64), np.ones(len(self.grant_dfns), np.int64)))
            self._check(iv.normalize(gfn, nr))

    def _peaks(self) -> None:
        k = self.counts
        k.peak_p2m_bytes = max(k.peak_p2m_bytes, self.p2m.pt.table_bytes)
        if self.iommu is not None:
            k.peak_iommu_bytes = max(k.peak_iommu_bytes, self.iommu.table_bytes)

    # -- life-cycle steps ----------------------------------------------------------
    def populate_ram(self, npages: int, order0: bool = False) -> tuple[float, int]:
        """Allocate host memory for the next npages of guest RAM and map it: one call per libxc extent,
        or (order0: the guest's balloon) one call per 4 KiB page (BALLOON_RULE)."""
        mfn, mcount = self.host.memory.alloc(npages, self.domid)
        gfn, mfn, nr = place(guest_ram_gfns(self.ram_pages, npages), mfn, mcount)
        self.ram_pages += npages
        self.ram = tuple(np.concatenate((a, b)) for a, b in zip(self.ram, (gfn, mfn, nr)))
        self.counts.p2m_pages_mapped += npages
        if order0:
            g, m = iv.pages(gfn, nr), iv.pages(mfn, nr)
            return self.update(g, m, np.ones(len(g), np.int64), "ram_rw")
        return self.update(*libxc_extents(gfn, mfn, nr), "ram_rw")

    def populate_magic(self) -> tuple[float, int]:
        """The toolstack populates the magic pages (console, xenstore, ...) one by one; Xen holds
        the grant-table frames the guest maps later."""
        mfn, mcount = self.host.memory.alloc(MAGIC_PAGES + self.spec.grant_frames, self.domid)
        self.xen_pages = (mfn, mcount)
        frames = np.concatenate([m + np.arange(c) for m, c in zip(mfn, mcount)])
        self.magic_mfns, self.gnttab_mfns = frames[:MAGIC_PAGES], frames[MAGIC_PAGES:]
        gfn = GUEST_MAGIC_GFN + np.arange(MAGIC_PAGES)
        return self.update(gfn, self.magic_mfns, np.ones(MAGIC_PAGES, np.int64), "ram_rw")

    def map_own_pages(self) -> tuple[float, int]:
        """The booted guest maps its grant table and shared_info itself (XENMEM_add_to_physmap,
        xenmem_add_to_physmap_one). shared_info replaces a RAM page: the capture's place,
        GUEST_SHARED_INFO_PAGE pages into its RAM (design assumption: Linux's allocator picks it)."""
        info_mfn, n = self.host.memory.alloc(1, self.domid)
        self.xen_pages = tuple(np.concatenate((a, b)) for a, b in zip(self.xen_pages, (info_mfn, n)))
        gfn0, _ = GUEST_RAM0
        calls = [(GUEST_GNTTAB_GFN + i, int(m), 1, "ram_rw") for i, m in enumerate(self.gnttab_mfns)]
        calls.append((gfn0 + min(GUEST_SHARED_INFO_PAGE, self.ram_pages - 1), int(info_mfn[0]), 1, "ram_rw"))
        return self.map_calls(calls)

    def mfns_at(self, gfns: np.ndarray) -> np.ndarray:
        """The machine frames backing these RAM gfns."""
        g, m, n = self.ram
        k = np.searchsorted(g, gfns, side="right") - 1
        if (k < 0).any() or (gfns >= g[k] + n[k]).any():
            raise ValueError(f"domain {self.name!r}: a gfn the toolstack loads is not in its RAM")
        return m[k] + (gfns - g[k])

    def relinquish(self) -> tuple[float, int]:
        """relinquish_p2m_mapping: every valid leaf removed by __p2m_set_entry, one by one
        (xen-project/xen:xen/arch/arm/p2m.c @ RELEASE-4.17.0:1859), outside p2m_set_entry."""
        iova, level, _ = self.p2m.pt.leaves()
        if not len(iova):
            return 0.0, 0
        gfn = iova.astype(np.int64) // GRANULE
        nr = np.left_shift(1, (3 - level.astype(np.int64)) * 9)
        calls = self.counts.p2m_calls
        out = self.update(gfn, np.zeros_like(gfn), nr, "invalid", one_lock=True)
        self.counts.p2m_calls = calls                       # not p2m_set_entry calls
        self.counts.relinquished_leaves += len(gfn)
        return out

    def map_calls(self, calls) -> tuple[float, int]:
        """p2m_set_entry calls one after another: (gfn, mfn, nr, type) each."""
        ns, inv = 0.0, 0
        for gfn, mfn, nr, p2m_type in calls:
            if p2m_type != "invalid":
                self.counts.p2m_pages_mapped += nr
            a, b = self.update(np.array([gfn]), np.array([mfn]), np.array([nr]), p2m_type)
            ns, inv = ns + a, inv + b
        return ns, inv

    def map_direct(self, gfn: np.ndarray, nr: np.ndarray, p2m_type: str) -> tuple[float, int]:
        """Map GFN == MFN (dom0's RAM, and MMIO of every domain)."""
        self.counts.p2m_pages_mapped += int(np.sum(nr))
        return self.update(gfn, gfn, nr, p2m_type)

    def assign(self, device: str, mmio: tuple[np.ndarray, np.ndarray], ipmmu: int = 0) -> tuple[float, int] | None:
        """Give the domain a device (None if refused): context, IOMMU table as the policy says, MMIO."""
        self._record("assign", device)
        with self.quiet():
            return self._assign(device, mmio, ipmmu)

    def _assign(self, device, mmio, ipmmu):
        if self.rule.refuse_undeclared_assign and not self.spec.passthrough:
            self.counts.assign_refused_undeclared += 1
            return None
        if not self.host.contexts.acquire(self.domid, ipmmu):
            self.counts.assign_refused_context += 1
            return None
        ns = 0.0
        if self.iommu is None:                  # lazy: build the table now from the whole P2M
            self.iommu = self._new_iommu()
            ns += self.iommu.populate(self.p2m)
            self._peaks()
            if self.host.check:
                self.check_all()
        inv_before = self.iommu.counts.invalidations
        self.devices[device] = ipmmu
        self.ever_devices.add(device)
        step_ns, inv = self.map_direct(mmio[0], mmio[1], "mmio_direct_dev")
        populate_inv = self.iommu.counts.invalidations - inv_before - inv
        return ns + step_ns - populate_inv * self.host.costs.iotlb_inv_ns, inv + populate_inv

    def deassign(self, device: str, mmio: tuple[np.ndarray, np.ndarray]) -> tuple[float, int] | None:
        """Take a device away (None if the domain does not have it): unmap its MMIO, free the context."""
        if device not in self.devices:
            return None
        self._record("deassign", device)
        with self.quiet():
            ns, inv = self.update(mmio[0], mmio[0], mmio[1], "invalid")
        ipmmu = self.devices.pop(device)
        # Both real drivers keep the context until the domain goes (rules.py: context_freed_at).
        if self.rule.context_freed_at == "last-deassign" and ipmmu not in self.devices.values():
            self.host.contexts.release(self.domid, ipmmu)
        return ns, inv

    def grant_iommu(self, mfn: np.ndarray, mapping: bool) -> tuple[float, int]:
        """The IOMMU side of grant maps in a direct-mapped domain (dom0): GNTTAB_IOMMU_RULE (rules.py).

        The first grant map of a frame maps it at dfn == mfn, the last unmap removes it. Shared: a P2M
        entry (arm_iommu_map_page / arm_iommu_unmap_page); unshared: the second table only, one
        iommu_legacy_map / iommu_legacy_unmap call per page, an unmap syncing the context."""
        if self.iommu is None:
            return 0.0, 0
        mfn = np.asarray(mfn, np.int64)
        if self.host.recorder is not None:
            self.host.recorder.grant_iommu(self.domid, mfn, mapping)
        with self.quiet():
            return self._grant_iommu(mfn, mapping)

    def _grant_iommu(self, mfn: np.ndarray, mapping: bool) -> tuple[float, int]:
        held = np.isin(mfn, self.grant_dfns)
        np.add.at(self.grant_refs, np.searchsorted(self.grant_dfns, mfn[held]), 1 if mapping else -1)
        if mapping:
            change = np.unique(mfn[~held])
            self.grant_dfns, order = np.unique(np.concatenate((self.grant_dfns, change)), return_index=True)
            self.grant_refs = np.concatenate((self.grant_refs, np.ones(len(change), np.int64)))[order]
        else:
            gone = self.grant_refs == 0
            change = self.grant_dfns[gone]
            self.grant_dfns, self.grant_refs = self.grant_dfns[~gone], self.grant_refs[~gone]
        if not len(change):
            return 0.0, 0
        if self.rule.shared:
            one = np.ones(len(change), np.int64)
            return self.update(change, change if mapping else 0, one, "iommu_map_rw" if mapping else "invalid")
        ns, inv = self.iommu.map_direct(change, self.has_context(), mapping)
        if self.host.check:
            self._check(iv.normalize(change, np.ones(len(change), np.int64)))
        self._peaks()
        self._queue(inv)
        return ns, inv

    def map_foreign(self, gfn: np.ndarray, mfn: np.ndarray, nr: np.ndarray) -> tuple[float, int]:
        self.counts.p2m_pages_mapped += int(np.sum(nr))
        return self.update(gfn, mfn, nr, "map_foreign_rw")

    def balloon_out(self, npages: int) -> tuple[float, int]:
        """Give back the last npages of RAM to the host, one 4 KiB page per call (BALLOON_RULE): each
        page its own P2M removal (guest_remove_page, under its own lock) with its own flushes."""
        gfn, mfn, nr = self.ram
        ends = np.cumsum(nr[::-1])
        k = int(np.searchsorted(ends, npages)) + 1           # extents from the end that cover npages
        take = np.zeros(len(nr), np.int64)
        take[len(nr) - k:] = nr[len(nr) - k:]
        over = int(take.sum()) - npages
        take[len(nr) - k] -= over                           # the first of them only in part (its tail)
        g = gfn + nr - take
        m = mfn + nr - take
        sel = take > 0
        pages = iv.pages(g[sel], take[sel])
        ns, inv = self.update(pages, 0, np.ones(len(pages), np.int64), "invalid")
        if self.host.memory is not None:              # None when replaying a trace
            self.host.memory.free(m[sel], take[sel], self.domid)
        keep = nr - take
        self.ram = (gfn[keep > 0], mfn[keep > 0], keep[keep > 0])
        self.ram_pages -= npages
        return ns, inv

    def teardown(self) -> tuple[float, int]:
        """Destroy: every table and page goes back; the context is released."""
        c = self.host.costs
        st = self.p2m.stats()
        ns = st["tables"] * c.table_alloc_ns
        if self.iommu is not None and self.iommu.kind == "unshared":
            s = self.iommu.pt.stats()
            self.iommu.counts.tables_freed += s["tables"]
            ns += s["tables"] * c.table_alloc_ns
        mfn = np.concatenate((self.ram[1], self.xen_pages[0]))
        cnt = np.concatenate((self.ram[2], self.xen_pages[1]))
        if len(mfn) and self.host.memory is not None:
            self.host.memory.free(mfn, cnt, self.domid)
        self.ram = (np.zeros(0, np.int64),) * 3
        self.xen_pages = (np.zeros(0, np.int64),) * 2
        self.final_p2m = st
        self.final_iommu = self.iommu.pt.stats() if self.iommu is not None and self.iommu.kind == "unshared" else None
        # Freeing a context flushes it (ipmmu_domain_destroy_context: xen-troops/xen:xen/drivers/passthrough/
        # arm/ipmmu-vmsa-legacy.c @ RELEASE-4.13.0-xt0.2.prod-devel:790; xen-project/xen:xen/drivers/
        # passthrough/arm/ipmmu-vmsa.c @ RELEASE-4.17.0:600); without a context there is nothing to flush.
        inv = 1 if self.iommu is not None and self.has_context() else 0
        if inv:
            self.iommu.counts.invalidations += 1
        self.host.contexts.release(self.domid)
        self.devices.clear()
        self.alive = False
        return ns, inv

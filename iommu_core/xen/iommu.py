"""IOMMU drivers as the hypervisor drives them: an unshared one with its own
stage-1 table (IPMMU-like), a shared one that walks the P2M, and the IPMMU's
scarce translation contexts.

The driver API changes what is counted and charged, not how the table is
computed: a `per-page` driver is simulated with the same batched engine calls
as a `batched` one, and its per-page calls, flushes and cache cleans are
counted from what the engine did.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..pgtable import Extents, Format, PageTable
from ..pgtable.accounting import LINES_PER_TABLE
from ..pgtable.descriptors import MEMTYPE_NAMES, PERM_NAMES
from ..pgtable.format import ENTRIES_SHIFT, GRANULE, LAST_LEVEL
from .costs import CostModel
from .p2m import P2M, Change, translation_view
from .p2m_types import CODE, DMA_PERM_BY_CODE, MEMTYPE_BY_CODE, one_or_each
from .rules import API_RULES, PER_PAGE_FLUSH_VARIANTS, api_rule

APIS = tuple(API_RULES)
IOMMU_BASE = 0x48_0000_0000           # where the model puts IOMMU table pages
SHARED_MAX_IPA_BITS = 40              # the IPMMU can walk a P2M of at most 40 bits (2 concatenated roots)


class NotApplicable(ValueError):
    """A policy / driver / format combination the hardware cannot do."""


class Contexts:
    """The translation contexts of a host's main IPMMUs: a domain holds one on each
    IPMMU that one of its devices sits behind; when none is free, assignment fails."""

    def __init__(self, usable: int, ipmmus: int = 1):
        if usable < 0 or ipmmus < 1:
            raise ValueError(f"contexts: usable per IPMMU must be >= 0 and IPMMUs >= 1, got {usable}, {ipmmus}")
        self.usable = usable
        self.by_ipmmu: list[set[int]] = [set() for _ in range(ipmmus)]

    @property
    def holders(self) -> set[int]:
        return set().union(*self.by_ipmmu)

    def acquire(self, domid: int, ipmmu: int = 0) -> bool:
        held = self.by_ipmmu[ipmmu]
        if domid in held:
            return True
        if len(held) >= self.usable:
            return False
        held.add(domid)
        return True

    def release(self, domid: int, ipmmu: int | None = None) -> None:
        for k, held in enumerate(self.by_ipmmu):
            if ipmmu is None or k == ipmmu:
                held.discard(domid)


@dataclass
class Latency:
    """Running sums of modelled per-call latencies, read as dma_map_benchmark reports them."""

    n: int = 0
    total: float = 0.0
    squares: float = 0.0

    def add(self, ns: np.ndarray) -> None:
        self.n += len(ns)
        self.total += float(ns.sum())
        self.squares += float((ns * ns).sum())

    def add_same(self, n: int, ns: float) -> None:
        """n calls of the same latency."""
        self.n += n
        self.total += n * ns
        self.squares += n * ns * ns

    def mean_us(self) -> float:
        return self.total / self.n / 1000 if self.n else 0.0

    def std_us(self) -> float:
        if not self.n:
            return 0.0
        mean = self.total / self.n
        return max(self.squares / self.n - mean * mean, 0.0) ** 0.5 / 1000


@dataclass
class IommuCounts:
    calls: int = 0
    invalidations: int = 0
    cache_lines_cleaned: int = 0
    descriptors_written: int = 0
    tables_allocated: int = 0
    tables_freed: int = 0
    block_splits: int = 0
    pages_mapped: int = 0
    pages_unmapped: int = 0
    unreachable_pages: int = 0
    populate_pages: int = 0
    map_latency: Latency = field(default_factory=Latency)
    unmap_latency: Latency = field(default_factory=Latency)


class UnsharedIommu:
    """A second table in the IOMMU's stage-1 format, kept in sync by map/unmap calls."""

    kind = "unshared"

    def __init__(self, fmt: Format | str = "ipmmu-s1-39", api: str = "batched", costs: CostModel | None = None,
                 base: int = IOMMU_BASE):
        self.rule = api_rule(api)
        self.pt = PageTable(fmt, base=base)
        if self.pt.fmt.stage != 1:
            raise ValueError(f"an unshared IPMMU-like driver uses a stage-1 format, got {self.pt.fmt.name}")
        self.api = api
        self.costs = costs or CostModel()
        self.counts = IommuCounts()

    @property
    def fmt(self) -> Format:
        return self.pt.fmt

    def _reachable(self, gfn: np.ndarray, nr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Page counts the input size can reach; the rest is counted, not dropped silently."""
        n = np.clip(self.fmt.ia_pages - gfn, 0, nr)
        self.counts.unreachable_pages += int((nr - n).sum())
        return n, n > 0

    def _account(self, res: dict, pages: np.ndarray, unmap: bool) -> float:
        """Count one batch as the driver API would have made it; return its modelled ns."""
        c, k = self.costs, self.counts
        per_page = self.rule.per_page_calls
        n_pages = int(pages.sum())
        calls = n_pages if per_page else len(pages)
        tables = res["tables_allocated"]
        # One clean per entry written, whatever the API (__arm_lpae_set_pte, xen-troops/xen:xen/drivers/
        # passthrough/arm/io-pgtable-arm.c @ RELEASE-4.13.0-xt0.2.prod-devel:305), not per distinct
        # line, and every new table page cleaned whole.
        cleans = 0 if self.fmt.coherent_walk else res["descriptors_written"] + tables * LINES_PER_TABLE
        k.calls += calls
        k.cache_lines_cleaned += cleans
        k.descriptors_written += res["descriptors_written"]
        k.tables_allocated += tables
        k.tables_freed += res["tables_freed"]
        # A block split by an unmap inside it (arm_lpae_split_blk_unmap, xen-troops/xen:xen/drivers/
        # passthrough/arm/io-pgtable-arm.c @ RELEASE-4.13.0-xt0.2.prod-devel:577, from __arm_lpae_unmap :668).
        k.block_splits += res["block_splits"]
        call_ns = c.unmap_call_ns if unmap else c.map_call_ns
        inv_ns = c.iotlb_inv_ns if unmap else 0.0        # a map never invalidates; an unmap syncs (rules.py)
        clean_ns = 0.0 if self.fmt.coherent_walk else c.cache_clean_line_ns
        alloc_ns = tables * (c.table_alloc_ns + LINES_PER_TABLE * clean_ns)
        # Per-call latencies: the run's own work, table allocations spread by pages.
        latency = k.unmap_latency if unmap else k.map_latency
        if per_page:
            each = call_ns + clean_ns + inv_ns + (alloc_ns / calls if calls else 0.0)
            latency.add_same(calls, each)
            return calls * (each - inv_ns)
        lat = (call_ns + (pages - 1) * c.map_page_ns + pages * clean_ns + inv_ns
               + alloc_ns * pages / max(n_pages, 1))
        latency.add(np.asarray(lat, float))
        return float(np.sum(lat)) - len(pages) * inv_ns

    def map(self, gfn, mfn, nr, type_code) -> float:
        """Mirror P2M writes: map GFN -> MFN with the type's DMA permission. Returns modelled ns."""
        gfn, mfn, nr, code = (np.asarray(x) for x in (gfn, mfn, nr, type_code))
        perm = DMA_PERM_BY_CODE[code]
        dma = perm != 0
        gfn, mfn, nr, code, perm = gfn[dma], mfn[dma], nr[dma], code[dma], perm[dma]
        n, keep = self._reachable(gfn, nr)
        if not keep.any():
            return 0.0
        res = self.pt.map(gfn[keep] * GRANULE, mfn[keep] * GRANULE, n[keep],
                          perm=one_or_each(perm[keep], PERM_NAMES),
                          memtype=one_or_each(MEMTYPE_BY_CODE[code[keep]], MEMTYPE_NAMES),
                          leaf=self.rule.leaf, remap=True)
        self.counts.pages_mapped += int(n[keep].sum())
        return self._account(res, n[keep], unmap=False)

    def unmap(self, gfn, nr) -> float:
        gfn, nr = np.asarray(gfn), np.asarray(nr)
        n = np.clip(self.fmt.ia_pages - gfn, 0, nr)       # unreachable pages were never mapped
        keep = n > 0
        if not keep.any():
            return 0.0
        res = self.pt.unmap(gfn[keep] * GRANULE, n[keep])
        self.counts.pages_unmapped += res["pages_unmapped"]
        return self._account(res, n[keep], unmap=True)

    def map_direct(self, dfn: np.ndarray, context: bool, mapping: bool) -> tuple[float, int]:
        """iommu_legacy_map / iommu_legacy_unmap of 4 KiB frames at dfn == mfn, one call per frame (the
        grant-table path, GNTTAB_IOMMU_RULE): a map never invalidates; each unmap call syncs the context
        (io-pgtable-arm's arm_lpae_unmap -> io_pgtable_tlb_sync, xen-troops/xen:xen/drivers/passthrough/
        arm/io-pgtable-arm.c @ RELEASE-4.13.0-xt0.2.prod-devel:691), nothing without a context.
        Returns (modelled ns, invalidations); the invalidations' own time is the queue's."""
        one = np.ones(len(dfn), np.int64)
        if mapping:
            return self.map(dfn, dfn, one, np.full(len(dfn), CODE["iommu_map_rw"])), 0
        inv = len(dfn) if context else 0
        self.counts.invalidations += inv
        return self.unmap(dfn, one), inv

    def follow(self, change: Change, context: bool = True, per_page_flush: str = "4.12") -> float:
        """Propagate one P2M update, as Xen's p2m_set_entry calls iommu_map / iommu_unmap, and
        count the IOTLB syncs the driver issues for it (none without a context: rules.py)."""
        ns = 0.0
        if len(change.unmapped[0]):
            ns += self.unmap(*change.unmapped)
        if len(change.mapped[0]):
            ns += self.map(*change.mapped)
        inv = self.syncs(change, per_page_flush) if context else 0
        self.counts.invalidations += inv
        return ns + inv * self.costs.iotlb_inv_ns

    def syncs(self, change: Change, per_page_flush: str = "4.12") -> int:
        """Whole-context syncs one P2M update costs (rules.py, POLICY_RULES' unshared flush rule).

        A map never invalidates; an unmap syncs once (io-pgtable-arm's arm_lpae_unmap ->
        io_pgtable_tlb_sync, xen-troops/xen:xen/drivers/passthrough/arm/io-pgtable-arm.c @
        RELEASE-4.13.0-xt0.2.prod-devel:691), and so does a map over a live entry with another
        MFN (ipmmu_map's remap unmaps first, xen-troops/xen:xen/drivers/passthrough/arm/
        ipmmu-vmsa-legacy.c @ RELEASE-4.13.0-xt0.2.prod-devel:1143). per-page: one per iommu_unmap /
        iommu_map call, which the P2M makes per leaf (xen-troops/xen:xen/arch/arm/p2m.c @
        RELEASE-4.13.0-xt0.2.prod-devel:1058); the "pre-4.12" variant one per 4 KiB page.
        batched / blocks (DESIGN ASSUMPTION): one per unmap call and one per run of live entries replaced.
        """
        if per_page_flush not in PER_PAGE_FLUSH_VARIANTS:
            raise ValueError(f"unknown per-page flush variant {per_page_flush!r}; choose from "
                             f"{list(PER_PAGE_FLUSH_VARIANTS)}")
        ev = change.leaves
        if self.rule.per_page_calls:
            if ev is None or not len(ev):
                return 0
            live = ev.old_valid & (ev.removing | ~ev.same_mfn) & (ev.page < self.fmt.ia_pages)
            if per_page_flush == "4.12":
                return int(live.sum())
            size = np.left_shift(1, (LAST_LEVEL - ev.level[live].astype(np.int64)) * ENTRIES_SHIFT)
            return int(size.sum())
        gfn, nr = change.unmapped
        rs, re = change.removed
        reach = gfn < self.fmt.ia_pages
        calls = int(_overlapping(gfn[reach], nr[reach], rs, re).sum()) if len(rs) else 0
        ms, _ = change.modified
        return calls + int((ms < self.fmt.ia_pages).sum())

    def populate(self, p2m: P2M) -> float:
        """Build the table from a whole P2M (no M2P on ARM: walk the P2M by GFN)."""
        ext = p2m.entries()
        self.counts.populate_pages += int(ext.npages[DMA_PERM_BY_CODE[ext.sw] != 0].sum())
        ns = self.map(ext.iova.astype(np.int64) // GRANULE, ext.pa.astype(np.int64) // GRANULE, ext.npages, ext.sw)
        return ns + int(ext.npages.sum()) * self.costs.populate_page_ns

    def reachable(self, gfn_ranges):
        """The part of GFN ranges (starts, ends) that the input size can reach."""
        s, e = gfn_ranges
        keep = s < self.fmt.ia_pages
        return s[keep], np.minimum(e[keep], self.fmt.ia_pages)

    def view(self, gfn_ranges) -> Extents:
        s, e = self.reachable(gfn_ranges)
        if not len(s):
            return Extents.empty()
        return translation_view(self.pt.mappings(s * GRANULE, e - s))

    @property
    def table_bytes(self) -> int:
        return self.pt.table_bytes


class SharedIommu:
    """The IOMMU walks the P2M itself: no second table; an IOTLB flush after P2M changes."""

    kind = "shared"

    def __init__(self, p2m: P2M, costs: CostModel | None = None, stage2_capable: bool = True):
        if not stage2_capable:
            raise NotApplicable("shared tables need an IOMMU that walks stage-2 tables")
        if p2m.fmt.ia_bits > SHARED_MAX_IPA_BITS:
            raise NotApplicable(f"the IPMMU can share a P2M of at most {SHARED_MAX_IPA_BITS}-bit IPA; "
                                f"this P2M ({p2m.fmt.name}) has {p2m.fmt.ia_bits} bits")
        self.p2m = p2m
        self.costs = costs or CostModel()
        self.counts = IommuCounts()

    def follow(self, change: Change, context: bool = True, per_page_flush: str = "4.12") -> float:
        """One whole-context flush after every leaf whose old or new entry is valid (__p2m_set_entry ->
        iommu_iotlb_flush, xen-project/xen:xen/arch/arm/p2m.c @ RELEASE-4.17.0:1204; ipmmu_iotlb_flush
        flushes the whole context, xen-project/xen:xen/drivers/passthrough/arm/ipmmu-vmsa.c @
        RELEASE-4.17.0:1003), none while the domain holds no context (ipmmu-vmsa.c @ RELEASE-4.17.0:1011)."""
        ev = change.leaves
        if not context or ev is None:
            return 0.0
        n = int((~ev.removing | ev.old_valid).sum())
        if not n:
            return 0.0
        self.counts.invalidations += n
        self.counts.map_latency.add_same(n, self.costs.iotlb_inv_ns)
        return n * self.costs.iotlb_inv_ns

    def populate(self, p2m: P2M) -> float:
        return 0.0

    def view(self, gfn_ranges) -> Extents:
        return self.p2m.dma_view(*_as_counts(gfn_ranges))

    def reachable(self, gfn_ranges):
        return gfn_ranges

    table_bytes = 0


def _overlapping(gfn: np.ndarray, nr: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Per extent [gfn, gfn + nr): whether it overlaps one of the sorted disjoint ranges."""
    k = np.searchsorted(ends, gfn, side="right")         # first range ending after the extent's start
    k = np.minimum(k, len(starts) - 1)
    return (starts[k] < gfn + nr) & (ends[k] > gfn)


def _as_counts(ranges):
    s, e = ranges
    return s, e - s

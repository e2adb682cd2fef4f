"""The correctness oracle: the IOMMU translates exactly the P2M's DMA view."""

from __future__ import annotations

import numpy as np

from ..pgtable import Extents
from ..pgtable.format import GRANULE


class InvariantError(AssertionError):
    def __init__(self, domain: str, gfn: int, why: str):
        super().__init__(f"{domain}: the IOMMU and the P2M's DMA view differ at GFN {gfn:#x} ({why})")
        self.domain, self.gfn = domain, gfn


def first_difference(a: Extents, b: Extents) -> tuple[int, str] | None:
    """First GFN where two translation views differ, and how; None if they are equal."""
    n = min(len(a), len(b))
    fields = ("iova", "pa", "npages", "perm")
    diff = np.zeros(n, bool)
    for f in fields:
        diff |= getattr(a, f)[:n] != getattr(b, f)[:n]
    if diff.any():
        i = int(np.argmax(diff))
        ia, ib = int(a.iova[i]), int(b.iova[i])
        if ia != ib:
            return min(ia, ib) // GRANULE, "mapped in one view only"
        if a.pa[i] != b.pa[i] or a.perm[i] != b.perm[i]:
            return ia // GRANULE, "different machine frame or permission"
        return ia // GRANULE + int(min(a.npages[i], b.npages[i])), "mapped in one view only"
    if len(a) != len(b):
        longer = a if len(a) > len(b) else b
        return int(longer.iova[n]) // GRANULE, "mapped in one view only"
    return None


def check(domain: str, iommu, p2m, gfn_ranges) -> None:
    """Compare over GFN ranges (sorted disjoint (starts, ends)); raise on the first difference."""
    ranges = iommu.reachable(gfn_ranges)
    if not len(ranges[0]):
        return
    want = p2m.dma_view(ranges[0], ranges[1] - ranges[0])
    got = iommu.view(ranges)
    hit = first_difference(got, want)
    if hit is not None:
        raise InvariantError(domain, *hit)

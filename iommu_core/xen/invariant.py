"""The correctness oracle: the IOMMU translates exactly the P2M's DMA view."""

from __future__ import annotations

import numpy as np

from .. import intervals as iv
from ..pgtable import Extents
from ..pgtable.descriptors import PERMS
from ..pgtable.format import GRANULE
from .p2m import translation_view


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


def with_grant_dfns(view: Extents, dfns: np.ndarray, ranges) -> Extents:
    """The DMA view plus a direct-mapped domain's grant frames at dfn == mfn (read-write, 4 KiB each)
    that fall in the ranges; a grant frame over a P2M mapping is a model error."""
    grants = iv.intersect(iv.normalize(dfns, np.ones(len(dfns), np.int64)), ranges)
    if not len(grants[0]):
        return view
    clash = iv.intersect(grants, iv.normalize(view.iova.astype(np.int64) // GRANULE, view.npages))
    if len(clash[0]):
        raise ValueError(f"a grant frame at dfn == mfn {int(clash[0][0]):#x} lies over a P2M mapping")
    pages = iv.pages(grants[0], grants[1] - grants[0])
    one = np.ones(len(pages), view.npages.dtype)
    rw = np.full(len(pages), PERMS["rw"], view.perm.dtype)
    z = np.zeros(len(pages), np.uint8)
    both = Extents(*(np.concatenate((a, b)) for a, b in zip(
        (view.iova, view.pa, view.npages, view.perm, view.memtype, view.sw),
        ((pages * GRANULE).astype(view.iova.dtype), (pages * GRANULE).astype(view.pa.dtype), one, rw, z, z))))
    order = np.argsort(both.iova, kind="stable")
    return translation_view(Extents(*(getattr(both, f)[order] for f in Extents.FIELDS)))


def check(domain: str, iommu, p2m, gfn_ranges, grant_dfns=None) -> None:
    """Compare over GFN ranges (sorted disjoint (starts, ends)); raise on the first difference.
    `grant_dfns`: frames the unshared table also maps at dfn == mfn (gnttab_need_iommu_mapping)."""
    ranges = iommu.reachable(gfn_ranges)
    if not len(ranges[0]):
        return
    want = p2m.dma_view(ranges[0], ranges[1] - ranges[0])
    if grant_dfns is not None and len(grant_dfns) and iommu.kind == "unshared":
        want = with_grant_dfns(want, grant_dfns, ranges)
    got = iommu.view(ranges)
    hit = first_difference(got, want)
    if hit is not None:
        raise InvariantError(domain, *hit)

"""Xen's leaf-order rule for arrays of extents, in one place.

p2m_set_entry picks each chunk's order from the alignment of the GFN, the MFN
and the remaining count (xen-project/xen:xen/arch/arm/p2m.c @ RELEASE-4.17.0:1244,
the `mask` loop of p2m_set_entry; a removal leaves the MFN out of the mask). As
input and output move together and the end is fixed, a leaf size is usable in
an extent iff (out - in) and the end are aligned to it, and then from the first
aligned input page to the end: an extent is small leaves up to an aligned
point, then larger ones to the end. smallcall.leaf_runs is the scalar twin.
"""

from __future__ import annotations

import numpy as np

from .arrays import ragged
from .format import LAST_LEVEL, level_pages


def leaf_runs(start: np.ndarray, end: np.ndarray, delta: np.ndarray, levels) -> dict[int, tuple]:
    """Per leaf level: (first page, end page, extent index) of each extent's run at that level.

    start, end: input pages [start, end) per extent; delta: output page - input page
    (0 for a removal, whose order ignores the output).
    """
    cut = end.copy()                    # where the current (larger) leaf size begins
    runs = {}
    for level in sorted(levels):        # largest leaf first
        size = level_pages(level)
        if level == LAST_LEVEL:
            lo = start
        else:
            ok = (delta % size == 0) & (end % size == 0)
            lo = np.where(ok, np.minimum(-(-start // size) * size, cut), cut)
        keep = lo < cut
        if keep.any():
            runs[level] = (lo[keep], cut[keep], np.flatnonzero(keep))
        cut = np.minimum(cut, lo)
    return runs


def leaves(start: np.ndarray, end: np.ndarray, delta: np.ndarray, levels) -> tuple[np.ndarray, ...]:
    """Every leaf the rule makes, in extent order: (first page, level, extent index)."""
    parts = []
    for level, (lo, hi, idx) in leaf_runs(start, end, delta, levels).items():
        size = level_pages(level)
        owner, k = ragged((hi - lo) // size)
        parts.append((lo[owner] + k * size, np.full(len(owner), level, np.int8), idx[owner]))
    if not parts:
        z = np.zeros(0, np.int64)
        return z, z.astype(np.int8), z
    page, level, idx = (np.concatenate(x) for x in zip(*parts))
    order = np.lexsort((page, idx))
    return page[order], level[order], idx[order]

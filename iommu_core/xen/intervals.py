"""Sets of page ranges as sorted, disjoint (start, end) arrays, and their algebra."""

from __future__ import annotations

import numpy as np

from ..pgtable.arrays import ragged


def normalize(start, count) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the union of [start, start + count), sorted and merged."""
    s = np.asarray(start, np.int64).ravel()
    e = s + np.asarray(count, np.int64).ravel()
    keep = e > s
    s, e = s[keep], e[keep]
    order = np.argsort(s, kind="stable")
    s, e = s[order], e[order]
    if len(s) < 2:
        return s, e
    reach = np.maximum.accumulate(e)
    new = np.concatenate(([True], s[1:] > reach[:-1]))       # touching ranges merge too
    first = np.flatnonzero(new)
    return s[first], np.maximum.reduceat(e, first)


def intersect(a: tuple, b: tuple) -> tuple[np.ndarray, np.ndarray]:
    (a_s, a_e), (b_s, b_e) = a, b
    lo = np.searchsorted(b_e, a_s, side="right")
    hi = np.searchsorted(b_s, a_e, side="left")
    which, k = ragged(np.maximum(hi - lo, 0))
    j = lo[which] + k
    s, e = np.maximum(a_s[which], b_s[j]), np.minimum(a_e[which], b_e[j])
    keep = e > s
    return s[keep], e[keep]


def subtract(a: tuple, b: tuple) -> tuple[np.ndarray, np.ndarray]:
    """a minus b."""
    b_s, b_e = b
    if not len(b_s):
        return a
    lo = np.iinfo(np.int64).min // 2
    hi = np.iinfo(np.int64).max // 2
    gaps = (np.concatenate(([lo], b_e)), np.concatenate((b_s, [hi])))
    keep = gaps[1] > gaps[0]
    return intersect(a, (gaps[0][keep], gaps[1][keep]))


def size(a: tuple) -> int:
    return int((a[1] - a[0]).sum())

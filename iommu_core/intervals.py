"""Sets of integers (pages, frames, cache lines, bytes) as intervals, and their algebra.

The one home of interval arithmetic in the package. A *set* is a pair (starts, ends)
of int64 arrays of half-open intervals [start, end), sorted, disjoint, none empty,
and no two touching (so each set has exactly one form, and equal sets compare equal
array by array). The functions that take a set expect that form; `union` and
`normalize` make it from any intervals.

Callers that keep (start, count) extents or closed [lo, hi] ranges convert at the
call: ends = start + count, ends = hi + 1.

Imports only numpy and the engine's `ragged` (a leaf module of numpy alone), so
every layer, the page-table engine included, may use it.
"""

from __future__ import annotations

import numpy as np

from .pgtable.arrays import ragged

_I64 = np.int64


def _sorted(starts, ends) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The non-empty intervals sorted by start (stably), and the order that sorts them
    (indexes among the non-empty ones, which keep their input order)."""
    s = np.asarray(starts, _I64).ravel()
    e = np.asarray(ends, _I64).ravel()
    keep = e > s
    s, e = s[keep], e[keep]
    order = np.argsort(s, kind="stable")
    return s[order], e[order], order


def _groups(s: np.ndarray, e: np.ndarray, touching: bool) -> np.ndarray:
    """Index of the first interval of each run of overlapping intervals (sorted input);
    touching intervals join a run if `touching`, else start a new one."""
    reach = np.maximum.accumulate(e[:-1])
    new = s[1:] > reach if touching else s[1:] >= reach
    return np.flatnonzero(np.concatenate(([True], new)))


def union(starts, ends) -> tuple[np.ndarray, np.ndarray]:
    """The set of the integers in any [start, end), from intervals in any order."""
    s, e, _ = _sorted(starts, ends)
    if len(s) < 2:
        return s, e
    first = _groups(s, e, touching=True)
    return s[first], np.maximum.reduceat(e, first)


def normalize(start, count) -> tuple[np.ndarray, np.ndarray]:
    """The set of the integers in any [start, start + count), from extents in any order."""
    s = np.asarray(start, _I64).ravel()
    return union(s, s + np.asarray(count, _I64).ravel())


def of_mask(first: int, mask) -> tuple[np.ndarray, np.ndarray]:
    """The set of the integers first + i for which mask[i] holds."""
    if len(mask) == 1:                              # most calls: one page
        n = int(bool(mask[0]))
        return np.full(n, first, _I64), np.full(n, first + 1, _I64)
    edge = np.diff(np.concatenate(([False], np.asarray(mask, bool), [False])).view(np.int8))
    return np.flatnonzero(edge > 0).astype(_I64) + first, np.flatnonzero(edge < 0).astype(_I64) + first


def union_in_order(starts, ends) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping intervals merged into one, touching ones kept apart, in the order of
    each merged interval's first member in the input (not a set: order is the input's)."""
    s, e, order = _sorted(starts, ends)
    if len(s) < 2:
        return s, e
    first = _groups(s, e, touching=False)
    s, e = s[first], np.maximum.reduceat(e, first)
    by_input = np.argsort(np.minimum.reduceat(order, first), kind="stable")
    return s[by_input], e[by_input]


def intersect(a: tuple, b: tuple) -> tuple[np.ndarray, np.ndarray]:
    """a and b."""
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
    lo = np.iinfo(_I64).min // 2
    hi = np.iinfo(_I64).max // 2
    gaps = (np.concatenate(([lo], b_e)), np.concatenate((b_s, [hi])))
    keep = gaps[1] > gaps[0]
    return intersect(a, (gaps[0][keep], gaps[1][keep]))


def size(a: tuple) -> int:
    """Number of integers in the set."""
    return int((a[1] - a[0]).sum())


def union_size(starts, ends) -> int:
    """Number of integers in the union of [start, end) intervals in any order: size(union(...))
    without building the union (arrays)."""
    if len(starts) == 0:
        return 0
    order = np.argsort(starts, kind="stable")
    s, e = starts[order], ends[order]
    if len(s) == 1:
        return int(e[0] - s[0])
    reach = np.maximum.accumulate(e)
    lo = np.maximum(s[1:], reach[:-1])
    return int(e[0] - s[0] + np.maximum(e[1:] - lo, 0).sum())


def union_size_small(intervals: list[tuple[int, int]]) -> int:
    """union_size for a short list of (start, end) Python ints, where numpy's per-call
    cost would outweigh the work (the same sweep: each interval counts past the reach so far)."""
    total, reach = 0, None
    for lo, hi in sorted(intervals):
        if reach is not None:
            lo = max(lo, reach)
        if hi > lo:
            total += hi - lo
            reach = hi
    return total


def pages(start, count) -> np.ndarray:
    """Every page of the runs [start, start + count), in run order."""
    count = np.asarray(count, np.int64)
    total = int(count.sum()) if len(count) else 0
    if not total:
        return np.zeros(0, np.int64)
    return np.repeat(np.asarray(start, np.int64) - (np.cumsum(count) - count), count) + np.arange(total, dtype=np.int64)

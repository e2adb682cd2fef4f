"""Small array helpers the engine's per-level steps share."""

from __future__ import annotations

import numpy as np


def ragged(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For runs of the given lengths: the run of each element and its offset in the run."""
    counts = np.asarray(counts, dtype=np.int64)
    owner = np.repeat(np.arange(len(counts)), counts)
    starts = np.cumsum(counts) - counts
    return owner, np.arange(len(owner), dtype=np.int64) - starts[owner]


def follow_on(pages: np.ndarray) -> bool:
    """Whether the pages are consecutive and ascending, so a slice can address them."""
    n = len(pages)
    return n > 0 and pages[-1] - pages[0] == n - 1 and (n < 3 or bool(np.all(np.diff(pages) == 1)))


def unique_sorted(a: np.ndarray) -> np.ndarray:
    if len(a) < 2:
        return a
    return a[np.concatenate(([True], a[1:] != a[:-1]))]


def count_distinct(a: np.ndarray) -> int:
    """How many different values `a` holds. Runs are counted when it is already in order (as
    the engine's per-call arrays are), which is some 100x faster than np.unique's sort."""
    if len(a) < 2:
        return len(a)
    if bool(np.all(a[1:] >= a[:-1])):
        return 1 + int(np.count_nonzero(a[1:] != a[:-1]))
    return len(np.unique(a))


def lookup(keys: np.ndarray, values: np.ndarray, query: np.ndarray, missing: int = -1) -> np.ndarray:
    """values[k] for each query equal to keys[k] (keys sorted unique), else `missing`."""
    if len(keys) == 0:
        return np.full(len(query), missing, dtype=np.int64)
    pos = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    return np.where(keys[pos] == query, values[pos], missing)

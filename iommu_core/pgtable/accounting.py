"""What one map/unmap call did to table memory: descriptors, cache lines, tables."""

from __future__ import annotations

import numpy as np

from .format import ENTRIES, ENTRIES_PER_LINE, LAST_LEVEL

LINES_PER_TABLE = ENTRIES // ENTRIES_PER_LINE
COUNTERS = ("descriptors_written", "tables_allocated", "tables_freed", "block_splits",
            "bbm_breaks", "pages_mapped", "pages_unmapped")
BY_LEVEL = ("tables_allocated", "tables_freed", "block_splits")


def union_size(starts: np.ndarray, ends: np.ndarray) -> int:
    """Number of integers in the union of closed intervals [start, end]."""
    if len(starts) == 0:
        return 0
    order = np.argsort(starts, kind="stable")
    s, e = starts[order], ends[order]
    if len(s) == 1:
        return int(e[0] - s[0] + 1)
    reach = np.maximum.accumulate(e)
    lo = np.maximum(s[1:], reach[:-1] + 1)
    return int(e[0] - s[0] + 1 + np.maximum(e[1:] - lo + 1, 0).sum())


def _union_size_small(intervals: list[tuple[int, int]]) -> int:
    total, reach = 0, -1
    for lo, hi in sorted(intervals):
        lo = max(lo, reach + 1)
        if hi >= lo:
            total += hi - lo + 1
            reach = hi
    return total


class OpAccount:
    """Counters of one call. Written cache lines are collected as intervals of pool
    line numbers (from arrays, or from Python ints on the single-extent path) and
    counted once each at the end, however many writes hit a line."""

    def __init__(self) -> None:
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.by_level = {k: [0] * (LAST_LEVEL + 1) for k in BY_LEVEL}
        self._lo: list[np.ndarray] = []
        self._hi: list[np.ndarray] = []
        self._small: list[tuple[int, int]] = []
        self._disjoint_lines = 0

    def lines(self, lo: np.ndarray, hi: np.ndarray) -> None:
        """Cache lines [lo, hi] (pool line numbers) were written."""
        self._lo.append(np.asarray(lo, dtype=np.int64))
        self._hi.append(np.asarray(hi, dtype=np.int64))

    def line_range(self, lo: int, hi: int) -> None:
        self._small.append((lo, hi))

    def disjoint_lines(self, n: int) -> None:
        """n lines that no other write of this call touches (the caller knows)."""
        self._disjoint_lines += n

    def entries(self, flat: np.ndarray) -> None:
        """Single descriptors written at these flat pool indexes."""
        line = np.asarray(flat, dtype=np.int64) // ENTRIES_PER_LINE
        self.lines(line, line)
        self.counts["descriptors_written"] += len(line)

    def rows(self, pages: np.ndarray) -> None:
        """Whole tables were written."""
        lo = np.asarray(pages, dtype=np.int64) * LINES_PER_TABLE
        self.lines(lo, lo + LINES_PER_TABLE - 1)

    def level_count(self, key: str, level: int, n: int) -> None:
        self.by_level[key][level] += n
        self.counts[key] += n

    def cache_lines(self) -> int:
        if not self._lo:
            return self._disjoint_lines + _union_size_small(self._small)
        small = np.array(self._small, dtype=np.int64).reshape(-1, 2)
        return self._disjoint_lines + union_size(np.concatenate(self._lo + [small[:, 0]]),
                                                 np.concatenate(self._hi + [small[:, 1]]))

    def result(self) -> dict:
        out = self.counts
        out["cache_lines_written"] = self.cache_lines()
        for key, per_level in self.by_level.items():
            out[key + "_by_level"] = {lvl: n for lvl, n in enumerate(per_level) if n} if out[key] else {}
        return out

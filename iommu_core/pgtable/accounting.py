"""What one map/unmap call did to table memory: descriptors, cache lines, tables."""

from __future__ import annotations

import numpy as np

from ..intervals import union_size, union_size_small
from .format import ENTRIES, ENTRIES_PER_LINE, LAST_LEVEL

LINES_PER_TABLE = ENTRIES // ENTRIES_PER_LINE
COUNTERS = ("descriptors_written", "tables_allocated", "tables_freed", "block_splits",
            "bbm_breaks", "pages_mapped", "pages_unmapped")
BY_LEVEL = ("tables_allocated", "tables_freed", "block_splits")


class OpAccount:
    """Counters of one call. Written cache lines are collected as intervals of pool
    line numbers (from arrays, or from Python ints on the single-extent path), kept
    half-open [lo, end), and counted once each at the end, however many writes hit a line."""

    def __init__(self) -> None:
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.by_level = {k: [0] * (LAST_LEVEL + 1) for k in BY_LEVEL}
        self._lo: list[np.ndarray] = []
        self._end: list[np.ndarray] = []
        self._small: list[tuple[int, int]] = []
        self._disjoint_lines = 0

    def lines(self, lo: np.ndarray, hi: np.ndarray) -> None:
        """Cache lines [lo, hi] (pool line numbers) were written."""
        self._lines(np.asarray(lo, dtype=np.int64), np.asarray(hi, dtype=np.int64) + 1)

    def _lines(self, lo: np.ndarray, end: np.ndarray) -> None:
        self._lo.append(lo)
        self._end.append(end)

    def line_range(self, lo: int, hi: int) -> None:
        """Cache lines [lo, hi] (Python ints) were written."""
        self._small.append((lo, hi + 1))

    def disjoint_lines(self, n: int) -> None:
        """n lines that no other write of this call touches (the caller knows)."""
        self._disjoint_lines += n

    def entries(self, flat: np.ndarray) -> None:
        """Single descriptors written at these flat pool indexes."""
        line = np.asarray(flat, dtype=np.int64) // ENTRIES_PER_LINE
        self._lines(line, line + 1)
        self.counts["descriptors_written"] += len(line)

    def rows(self, pages: np.ndarray) -> None:
        """Whole tables were written."""
        lo = np.asarray(pages, dtype=np.int64) * LINES_PER_TABLE
        self._lines(lo, lo + LINES_PER_TABLE)

    def level_count(self, key: str, level: int, n: int) -> None:
        self.by_level[key][level] += n
        self.counts[key] += n

    def cache_lines(self) -> int:
        if not self._lo:
            return self._disjoint_lines + union_size_small(self._small)
        small = np.array(self._small, dtype=np.int64).reshape(-1, 2)
        return self._disjoint_lines + union_size(np.concatenate(self._lo + [small[:, 0]]),
                                                 np.concatenate(self._end + [small[:, 1]]))

    def result(self) -> dict:
        out = self.counts
        out["cache_lines_written"] = self.cache_lines()
        for key, per_level in self.by_level.items():
            out[key + "_by_level"] = {lvl: n for lvl, n in enumerate(per_level) if n} if out[key] else {}
        return out

"""Table memory: granule pages in one numpy array, each with a physical address.

Page i lives at physical address base + i * 4 KiB, so descriptors hold real
addresses and the array is a raw memory image. The root takes the first
`root_tables` pages (aligned to its size because `base` is). Pages are zero
whenever they are free, so a new table needs no clearing here.

The pool is the one owner of the table's state: besides the memory it keeps the
live tables per level, the peak, the running totals of every call and the walk
cache; other modules read these through its methods.
"""

from __future__ import annotations

import numpy as np

from .accounting import BY_LEVEL, COUNTERS, OpAccount
from .format import ENTRIES, GRANULE, GRANULE_SHIFT, LAST_LEVEL, Format

FREE = -1
MAX_INDEX = 1 << 23                  # 2 MiB regions a dense walk cache may span (64 MiB of index)


class TablePool:
    def __init__(self, fmt: Format, base: int, capacity: int = 64):
        if not isinstance(base, (int, np.integer)) or isinstance(base, bool) or base < 0:
            raise ValueError(f"pool base must be a non-negative integer address, got {base!r}")
        base = int(base)
        if base % fmt.root_bytes:
            raise ValueError(f"pool base {base:#x} is not aligned to the {fmt.root_bytes:#x}-byte root "
                             f"of {fmt.name} ({fmt.root_tables} concatenated table(s))")
        if base + fmt.root_bytes > 1 << fmt.oa_bits:
            raise ValueError(f"pool base {base:#x} is beyond the {fmt.oa_bits}-bit output address "
                             f"size of {fmt.name}")
        self.fmt = fmt
        self.base = base
        self.max_pages = ((1 << fmt.oa_bits) - base) >> GRANULE_SHIFT
        capacity = max(capacity, fmt.root_tables)
        self.mem = np.zeros((capacity, ENTRIES), dtype=np.uint64)
        self.level = np.full(capacity, FREE, dtype=np.int8)
        self.prefix = np.zeros(capacity, dtype=np.int64)   # entry number in the parent level
        self.used = np.zeros(capacity, dtype=np.int32)      # non-zero entries of each page
        self.top = fmt.root_tables                          # pages ever handed out
        self.level[: self.top] = fmt.start_level
        self._free = np.zeros(0, dtype=np.int64)            # freed pages, ascending
        # (level, prefix) -> page of tables a walk has found; pages never move while
        # allocated, so the index stays right until a table is freed.
        self.index: dict[tuple[int, int], int] = {}
        self.generation = 0                                 # bumped whenever tables come or go
        self._walk_cache = None                             # (generation, level3_index())
        self._live = [0] * (LAST_LEVEL + 1)                 # tables per level (the root counts once)
        self._live[fmt.start_level] = 1
        self._totals = dict.fromkeys(COUNTERS + ("cache_lines_written",), 0)
        self._totals_by_level = {k: [0] * (LAST_LEVEL + 1) for k in BY_LEVEL}
        self._peak_pages = self.live_pages

    # Views of `mem` must not be kept across `alloc`: growing may move it.
    @property
    def flat(self) -> np.ndarray:
        return self.mem.reshape(-1)

    @property
    def live_pages(self) -> int:
        return self.top - len(self._free)

    @property
    def table_bytes(self) -> int:
        return self.live_pages * GRANULE

    def phys(self, pages: np.ndarray) -> np.ndarray:
        return np.asarray(pages, dtype=np.uint64) * np.uint64(GRANULE) + np.uint64(self.base)

    def page_of(self, addr: np.ndarray) -> np.ndarray:
        return ((np.asarray(addr, dtype=np.uint64) - np.uint64(self.base)) >> np.uint64(GRANULE_SHIFT)).astype(np.int64)

    def alloc(self, level: int, prefixes: np.ndarray) -> np.ndarray:
        """Pages for new tables of `level` indexing the given parent entries; zero-filled."""
        n = len(prefixes)
        reuse = self._free[:n]
        self._free = self._free[n:]
        fresh = n - len(reuse)
        if self.top + fresh > len(self.mem):
            self._grow(self.top + fresh)
        pages = np.concatenate((reuse, np.arange(self.top, self.top + fresh, dtype=np.int64)))
        self.top += fresh
        self.level[pages] = level
        self.prefix[pages] = prefixes
        self.generation += 1
        self._live[level] += n
        return pages

    def free(self, level: int, pages: np.ndarray) -> None:
        """Free tables, all of `level`."""
        pages = np.asarray(pages, dtype=np.int64)
        if len(pages) == 0:
            return
        self._live[level] -= len(pages)
        self.mem[pages] = 0
        self.used[pages] = 0
        self.level[pages] = FREE
        self.index.clear()
        self.generation += 1
        self._free = np.union1d(self._free, pages)

    def _grow(self, need: int) -> None:
        if need > self.max_pages:
            raise MemoryError(f"{self.fmt.name}: table pool would pass the {self.fmt.oa_bits}-bit output "
                              f"address size (base {self.base:#x}, {need} pages)")
        cap = min(self.max_pages, max(need, 2 * len(self.mem)))     # untouched pages cost nothing
        # A new array rather than resize(): numpy asks the kernel for huge pages for
        # large new arrays (fewer TLB misses in walks, fewer faults on first touch),
        # not for reallocated ones. Untouched zero pages cost no memory.
        mem = np.zeros((cap, ENTRIES), dtype=np.uint64)
        mem[: self.top] = self.mem[: self.top]
        self.mem = mem
        self.level = np.concatenate((self.level, np.full(cap - len(self.level), FREE, np.int8)))
        self.prefix = np.concatenate((self.prefix, np.zeros(cap - len(self.prefix), np.int64)))
        self.used = np.concatenate((self.used, np.zeros(cap - len(self.used), np.int32)))

    def restore(self, mem: np.ndarray, level: np.ndarray, prefix: np.ndarray) -> None:
        """Take over a memory image of whole pages (the root first) and the level and
        prefix of each (FREE: a page no table uses, which must be zero)."""
        npages = len(mem)
        if npages > len(self.mem):
            self._grow(npages)
        self.mem[:npages] = mem
        self.top = npages
        self.used[:npages] = np.count_nonzero(self.mem[:npages], axis=1)
        self.level[:npages] = level
        self.prefix[:npages] = prefix
        self._free = np.flatnonzero(level == FREE)
        below = level[self.fmt.root_tables:]
        for lvl in self.fmt.levels[1:]:
            self._live[lvl] = int(np.count_nonzero(below == lvl))
        self.index.clear()
        self.generation += 1
        self._peak_pages = self.live_pages

    # -- compiled code (kernel.py) works on the arrays themselves -----------------
    @property
    def free_pages(self) -> np.ndarray:
        """Freed pages, ascending: the next tables take them first."""
        return self._free

    @property
    def peak_pages(self) -> int:
        return self._peak_pages

    def reserve(self, tables: int) -> None:
        """Room for `tables` more tables beyond the top, without growing mid-call."""
        self._grow(self.top + tables)

    def absorb(self, top: int, taken: int, by_level: dict[str, list[int]], totals: dict, peak: int) -> None:
        """Take over what compiled code did to the arrays, as alloc and record would have: the
        new top, `taken` pages used from the free list, the per-level counts (tables allocated,
        blocks split), the counters to add to the totals, and the peak."""
        self.top = top
        if taken:                      # else the list stays the same object: compiled views of it stay valid
            self._free = self._free[taken:]
        if by_level:
            allocated = by_level.get("tables_allocated", ())
            if any(allocated):
                self.generation += 1               # tables came: the walk cache is stale
                for lvl, n in enumerate(allocated):
                    self._live[lvl] += n
            for key, per_level in by_level.items():
                total = self._totals_by_level[key]
                for lvl, n in enumerate(per_level):
                    total[lvl] += n
                self._totals[key] += sum(per_level)
        own = self._totals
        for key, n in totals.items():
            own[key] += n
        if peak > self._peak_pages:
            self._peak_pages = peak

    # -- accounting ------------------------------------------------------------
    def record(self, op: OpAccount) -> dict:
        """Add one call's counters to the totals (and the peak); return the call's result."""
        res = op.result()
        totals = self._totals
        for key, n in res.items():
            if n and key in totals:
                totals[key] += n
        if res["tables_allocated"] or res["tables_freed"] or res["block_splits"]:
            for key, per_level in op.by_level.items():
                total = self._totals_by_level[key]
                for lvl, n in enumerate(per_level):
                    total[lvl] += n
            self._peak_pages = max(self._peak_pages, self.live_pages)
        return res

    def stats(self) -> dict:
        """The totals of every call so far, the live tables and the table memory."""
        s = dict(self._totals)
        for key, per_level in self._totals_by_level.items():
            s[f"{key}_by_level"] = {lvl: n for lvl, n in enumerate(per_level) if n}
        s["tables"] = sum(self._live)
        s["tables_by_level"] = {lvl: self._live[lvl] for lvl in self.fmt.levels}
        s["table_bytes"] = self.table_bytes
        s["peak_table_bytes"] = self._peak_pages * GRANULE
        return s

    # -- the walk cache --------------------------------------------------------
    def level3_index(self):
        """(first 2 MiB region, flat index of each region's level-3 table or -1), or None.

        Like the hardware's walk cache: kept until a table comes or goes.
        """
        cached = self._walk_cache
        if cached is not None and cached[0] == self.generation:
            return cached[1]
        index = None
        if self.fmt.start_level != LAST_LEVEL:
            prefixes, pages = self.tables_of_level(LAST_LEVEL)
            if len(prefixes) and prefixes[-1] - prefixes[0] < MAX_INDEX:
                lo = int(prefixes[0])
                dense = np.full(int(prefixes[-1]) - lo + 1, -1, np.int64)
                dense[prefixes - lo] = pages * ENTRIES
                index = (lo, dense)
        self._walk_cache = (self.generation, index)
        return index

    def count_pages(self, pages: np.ndarray, delta) -> None:
        """used[pages[i]] += delta[i] (or delta, one number for all), repeats allowed."""
        # ufunc.at takes its fast loop only for an operand of the counts' own dtype: int64 or a
        # Python int into these int32 counts goes through numpy's generic path, some 35x slower.
        np.add.at(self.used, pages, np.asarray(delta, self.used.dtype))

    def count(self, flat: np.ndarray, delta) -> None:
        """Entries at these flat indexes became non-zero (delta > 0) or zero (delta < 0)."""
        self.count_pages(np.asarray(flat, dtype=np.int64) // ENTRIES, delta)

    def tables_of_level(self, level: int) -> tuple[np.ndarray, np.ndarray]:
        """(prefixes, pages) of the live tables of a level below the root, sorted by prefix."""
        pages = np.flatnonzero(self.level[: self.top] == level)
        if level == self.fmt.start_level:
            pages = pages[:1]
        prefixes = self.prefix[pages]
        order = np.argsort(prefixes, kind="stable")
        return prefixes[order], pages[order]

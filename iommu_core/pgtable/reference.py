"""The per-page reference: a slow, plainly correct ARM LPAE page table.

Same semantics as the vectorized engine (`table.PageTable`), written the
obvious way: one Python walk per leaf or per page. It is the correctness
oracle in tests and the speed baseline in benchmarks; keep it simple rather
than fast.

Tables are 4 KiB pages held as lists of 512 ints, page i at physical address
base + i * 4096. The root is pages 0 .. root_tables-1 (a concatenated stage-2
root is one table whose entry i sits in page i // 512, slot i % 512). New
tables take the lowest free page index.
"""

from __future__ import annotations

import heapq
import json
import operator
from pathlib import Path

import numpy as np

from .descriptors import (
    DESC_TABLE,
    DESC_TYPE_MASK,
    DESC_VALID,
    MEMTYPES,
    OA_MASK_48,
    PERMS,
    allowed_perms,
    decode_leaf,
    leaf_attrs,
    leaf_type,
    oa_mask,
    table_desc_bits,
    walker_params,
)
from .extents import ExtentError, Extents, MappingConflict
from .format import (
    ENTRIES,
    GRANULE,
    GRANULE_SHIFT,
    LAST_LEVEL,
    LEAF_SIZE_LEVEL,
    Format,
    level_shift,
)


def _is_table(desc: int, level: int) -> bool:
    return level < LAST_LEVEL and desc & DESC_TYPE_MASK == DESC_TABLE


class ReferencePageTable:
    """The reference table; provides ops.TableOps, the operations it shares with PageTable."""

    def __init__(self, fmt: Format | str, base: int = 0x8000_0000, reclaim: bool = False):
        fmt = Format.preset(fmt) if isinstance(fmt, str) else fmt
        if not isinstance(fmt, Format):
            raise ValueError(f"fmt must be a Format or a preset name, got {fmt!r}")
        base = operator.index(base)
        if base < 0 or base % (GRANULE * fmt.root_tables) or base >> 48:
            raise ValueError(f"base {base:#x} must be a non-negative 48-bit address aligned to the root "
                             f"({fmt.root_bytes:#x} bytes)")
        self.fmt = fmt
        self.base = base
        self.reclaim = bool(reclaim)
        self.tables: dict[int, list[int]] = {}   # page index -> 512 descriptors
        self.level_of: dict[int, int] = {}       # page index -> level of the table
        self._free: list[int] = []               # heap of freed page indexes
        self._next = 0
        for _ in range(fmt.root_tables):
            self._alloc(fmt.start_level)

    @property
    def root(self) -> int:
        return self.base

    # -- table pages ----------------------------------------------------------
    def _alloc(self, level: int) -> int:
        if self._free:
            page = heapq.heappop(self._free)
        else:
            page, self._next = self._next, self._next + 1
        self.tables[page] = [0] * ENTRIES
        self.level_of[page] = level
        return page

    def _free_table(self, page: int) -> None:
        """Free a table and every table below it."""
        level = self.level_of.pop(page)
        for desc in self.tables.pop(page):
            if _is_table(desc, level):
                self._free_table(self._page(desc))
        heapq.heappush(self._free, page)

    def _page(self, desc: int) -> int:
        return ((desc & OA_MASK_48) - self.base) >> GRANULE_SHIFT

    def _slot(self, level: int, page: int, iova: int) -> tuple[int, int]:
        """(page, slot) of the entry for `iova` in the level-`level` table `page`."""
        if level == self.fmt.start_level:
            i = (iova >> level_shift(level)) & (self.fmt.root_entries - 1)
            return i // ENTRIES, i % ENTRIES
        return page, (iova >> level_shift(level)) & (ENTRIES - 1)

    def _new_table(self, page: int, slot: int, level: int) -> int:
        """Allocate a zeroed level-`level` table and point entry (page, slot) at it."""
        child = self._alloc(level)
        self.tables[page][slot] = table_desc_bits(self.fmt) | (self.base + child * GRANULE)
        return child

    def _split(self, page: int, slot: int, level: int) -> int:
        """Replace the level-`level` block at (page, slot) by a table of 512 equal smaller leaves."""
        desc = self.tables[page][slot]
        oa = desc & oa_mask(level)
        attrs = desc & ~(OA_MASK_48 | DESC_TYPE_MASK)
        step = 1 << level_shift(level + 1)
        child = self._new_table(page, slot, level + 1)
        self.tables[child] = [attrs | (oa + i * step) | leaf_type(level + 1) for i in range(ENTRIES)]
        return child

    def _holds_leaf(self, page: int) -> bool:
        level = self.level_of[page]
        return any(desc & DESC_VALID and (not _is_table(desc, level) or self._holds_leaf(self._page(desc)))
                   for desc in self.tables[page])

    # -- input ------------------------------------------------------------------
    @staticmethod
    def _columns(**cols) -> list[tuple]:
        """Broadcast scalars against equal-length sequences; rows of the batch."""
        n = None
        for name, v in cols.items():
            if isinstance(v, (str, bytes)) or np.ndim(v) == 0:
                continue
            if np.ndim(v) != 1:
                raise ExtentError(f"{name} must be a scalar or a 1-d sequence, got shape {np.shape(v)}")
            if n is not None and len(v) != n:
                raise ExtentError(f"extent arrays differ in length: {name} has {len(v)}, expected {n}")
            n = len(v)
        if n == 0:
            raise ExtentError("empty batch: no extents given")
        n = 1 if n is None else n
        lists = [[v] * n if isinstance(v, (str, bytes)) or np.ndim(v) == 0 else list(v)
                 for v in cols.values()]
        return list(zip(*lists))

    @staticmethod
    def _int(name: str, value, i: int) -> int:
        try:
            return operator.index(value)
        except TypeError:
            raise ExtentError(f"extent {i}: {name} must be an integer, got {value!r}", i) from None

    def _check_range(self, i: int, name: str, addr: int, npages: int, bits: int) -> None:
        if addr < 0 or addr % GRANULE:
            raise ExtentError(f"extent {i}: {name} {addr:#x} is negative or not 4 KiB-aligned", i)
        if addr + npages * GRANULE > 1 << bits:
            raise ExtentError(f"extent {i}: {name} {addr:#x} + {npages} pages goes beyond the "
                              f"{bits}-bit address size of {self.fmt.name}", i)

    @staticmethod
    def _check_disjoint(rows: list[tuple[int, int]]) -> None:
        """rows: (iova, npages) per extent."""
        order = sorted(range(len(rows)), key=lambda i: rows[i][0])
        for a, b in zip(order, order[1:]):
            if rows[b][0] < rows[a][0] + rows[a][1] * GRANULE:
                i, j = sorted((a, b))
                raise ExtentError(f"extent {j}: overlaps extent {i} in the same batch", j)

    # -- map ------------------------------------------------------------------
    def _leaf_levels(self, leaf: str) -> list[int]:
        """Candidate leaf levels, largest leaf first."""
        if leaf == "4k":
            return [LAST_LEVEL]
        if leaf == "auto":
            return sorted(LEAF_SIZE_LEVEL[s] for s in self.fmt.leaf_sizes)
        raise ExtentError(f"leaf must be 'auto' or '4k', got {leaf!r}")

    def _plan(self, iova: int, pa: int, npages: int, levels: list[int], attrs: int):
        """Xen's order rule: the largest leaf dividing iova, pa and the remaining count."""
        while npages:
            for level in levels:
                size = 1 << (level_shift(level) - GRANULE_SHIFT)
                if (iova >> GRANULE_SHIFT) % size == 0 and (pa >> GRANULE_SHIFT) % size == 0 \
                        and npages % size == 0:
                    break
            yield iova, level, attrs | pa | leaf_type(level)
            iova, pa, npages = iova + size * GRANULE, pa + size * GRANULE, npages - size

    def map(self, iova, pa, npages, perm="rw", memtype="normal", sw=0, leaf="auto", remap=False) -> None:
        levels = self._leaf_levels(leaf)
        rows = self._columns(iova=iova, pa=pa, npages=npages, perm=perm, memtype=memtype, sw=sw)
        plan = []
        for i, (va, p, n, pe, m, s) in enumerate(rows):
            va, p, n, s = (self._int(k, x, i) for k, x in (("iova", va), ("pa", p), ("npages", n), ("sw", s)))
            if n <= 0:
                raise ExtentError(f"extent {i}: npages must be positive, got {n}", i)
            self._check_range(i, "iova", va, n, self.fmt.ia_bits)
            self._check_range(i, "pa", p, n, self.fmt.oa_bits)
            if pe not in allowed_perms(self.fmt):
                raise ExtentError(f"extent {i}: unknown perm {pe!r}; {self.fmt.name} accepts "
                                  f"{list(allowed_perms(self.fmt))}", i)
            if m not in MEMTYPES:
                raise ExtentError(f"extent {i}: unknown memtype {m!r}; choose from {list(MEMTYPES)}", i)
            if not 0 <= s <= 15:
                raise ExtentError(f"extent {i}: sw {s} does not fit the 4 software bits (0..15)", i)
            attrs = int(leaf_attrs(self.fmt, [PERMS[pe]], [MEMTYPES[m]], [s])[0])
            plan.append((i, va, n, list(self._plan(va, p, n, levels, attrs))))
        self._check_disjoint([(va, n) for _, va, n, _ in plan])
        if not remap:
            for i, _, _, leaves in plan:   # dry run: a refused batch changes nothing
                for va, level, _ in leaves:
                    self._check_free(i, va, level)
        for _, _, _, leaves in plan:
            for va, level, desc in leaves:
                self._set_leaf(va, level, desc)

    def _check_free(self, i: int, iova: int, level: int) -> None:
        page, k = 0, self.fmt.start_level
        while True:
            page, slot = self._slot(k, page, iova)
            desc = self.tables[page][slot]
            if not desc & DESC_VALID:
                return
            if k == level:
                if _is_table(desc, k) and not self._holds_leaf(self._page(desc)):
                    return
                break
            if not _is_table(desc, k):
                break            # a block above the new leaf
            page, k = self._page(desc), k + 1
        raise MappingConflict(f"extent {i}: iova {iova:#x} is already mapped (level-{k} entry "
                              f"{desc:#x}); pass remap=True to replace it", i)

    def _set_leaf(self, iova: int, level: int, leaf: int) -> None:
        page, k = 0, self.fmt.start_level
        while True:
            page, slot = self._slot(k, page, iova)
            desc = self.tables[page][slot]
            if k == level:
                if _is_table(desc, k):
                    self._free_table(self._page(desc))
                self.tables[page][slot] = leaf
                return
            if not desc & DESC_VALID:
                page = self._new_table(page, slot, k + 1)
            elif _is_table(desc, k):
                page = self._page(desc)
            else:
                page = self._split(page, slot, k)
            k += 1

    # -- unmap ------------------------------------------------------------------
    def unmap(self, iova, npages) -> None:
        rows = []
        for i, (va, n) in enumerate(self._columns(iova=iova, npages=npages)):
            va, n = self._int("iova", va, i), self._int("npages", n, i)
            if n <= 0:
                raise ExtentError(f"extent {i}: npages must be positive, got {n}", i)
            self._check_range(i, "iova", va, n, self.fmt.ia_bits)
            rows.append((va, n))
        self._check_disjoint(rows)
        touched: dict[int, tuple[int, int, int]] = {}   # table page -> (level, parent page, parent slot)
        for va, n in rows:
            cur, end = va, va + n * GRANULE
            while cur < end:
                cur = self._unmap_at(cur, va, end, touched)
        if self.reclaim:
            for page, (level, parent, slot) in sorted(touched.items(), key=lambda t: -t[1][0]):
                if not any(self.tables[page]):          # deepest first, so parents see freed children
                    self._free_table(page)
                    self.tables[parent][slot] = 0

    def _unmap_at(self, cur: int, start: int, end: int, touched: dict) -> int:
        """Unmap what the walk of `cur` finds within [start, end); the next address to visit."""
        page, k = 0, self.fmt.start_level
        while True:
            page, slot = self._slot(k, page, cur)
            desc = self.tables[page][slot]
            span = 1 << level_shift(k)
            lo = cur & ~(span - 1)
            if not desc & DESC_VALID:
                return min(lo + span, end)
            if _is_table(desc, k):
                child = self._page(desc)
            elif start <= lo and lo + span <= end:
                self.tables[page][slot] = 0
                return lo + span
            else:
                child = self._split(page, slot, k)
            touched[child] = (k + 1, page, slot)
            page, k = child, k + 1

    # -- reading ------------------------------------------------------------------
    def translate(self, addrs):
        """(pa, perm, memtype, sw, fault) arrays for input addresses (codes 0 on a fault)."""
        addrs = [self._int("address", a, j) for j, a in enumerate(np.atleast_1d(np.asarray(addrs)))]
        n = len(addrs)
        pa = np.zeros(n, dtype=np.uint64)
        descs = np.zeros(n, dtype=np.uint64)
        fault = np.zeros(n, dtype=bool)
        for j, va in enumerate(addrs):
            if not 0 <= va < 1 << self.fmt.ia_bits:
                raise ExtentError(f"address {j}: {va:#x} is outside the {self.fmt.ia_bits}-bit input "
                                  f"range of {self.fmt.name}", j)
            page, k = 0, self.fmt.start_level
            while True:
                page, slot = self._slot(k, page, va)
                desc = self.tables[page][slot]
                if not _is_table(desc, k):
                    break
                page, k = self._page(desc), k + 1
            if not desc & DESC_VALID:
                fault[j] = True
                continue
            pa[j] = (desc & oa_mask(k)) | (va & ((1 << level_shift(k)) - 1))
            descs[j] = desc
        perm, memtype, sw = decode_leaf(self.fmt, descs)
        for code in (perm, memtype, sw):
            code[fault] = 0
        return pa, perm, memtype, sw, fault

    def leaves(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every valid leaf, sorted by iova: (iova bytes uint64, level int8, descriptor uint64)."""
        out: list[tuple[int, int, int]] = []

        def visit(entries: list[int], level: int, va0: int) -> None:
            for i, desc in enumerate(entries):
                if not desc & DESC_VALID:
                    continue
                va = va0 + (i << level_shift(level))
                if _is_table(desc, level):
                    visit(self.tables[self._page(desc)], level + 1, va)
                else:
                    out.append((va, level, desc))

        root = [d for p in range(self.fmt.root_tables) for d in self.tables[p]][:self.fmt.root_entries]
        visit(root, self.fmt.start_level, 0)
        cols = list(zip(*out)) or [(), (), ()]
        return (np.array(cols[0], dtype=np.uint64), np.array(cols[1], dtype=np.int8),
                np.array(cols[2], dtype=np.uint64))

    def mappings(self) -> Extents:
        """The leaves as a minimal extent list: a leaf that follows on with equal codes extends a run."""
        iova, level, desc = self.leaves()
        perm, memtype, sw = decode_leaf(self.fmt, desc)
        runs: list[list[int]] = []
        for va, lv, d, pe, m, s in zip(iova, level, desc, perm, memtype, sw):
            va, lv, d = int(va), int(lv), int(d)
            pa, pages, codes = d & oa_mask(lv), 1 << (level_shift(lv) - GRANULE_SHIFT), [int(pe), int(m), int(s)]
            if runs:
                r = runs[-1]
                if r[0] + r[2] * GRANULE == va and r[1] + r[2] * GRANULE == pa and r[3:] == codes:
                    r[2] += pages
                    continue
            runs.append([va, pa, pages, *codes])
        if not runs:
            return Extents.empty()
        c = list(zip(*runs))
        return Extents(np.array(c[0], dtype=np.uint64), np.array(c[1], dtype=np.uint64),
                       np.array(c[2], dtype=np.int64), np.array(c[3], dtype=np.uint8),
                       np.array(c[4], dtype=np.uint8), np.array(c[5], dtype=np.uint8))

    def tables_by_level(self) -> dict[int, int]:
        """Live tables per level (every level of the format present; the root counts once)."""
        counts = {level: 0 for level in self.fmt.levels}
        counts[self.fmt.start_level] = 1
        for page, level in self.level_of.items():
            if page >= self.fmt.root_tables:
                counts[level] += 1
        return counts

    def table_bytes(self) -> int:
        return len(self.tables) * GRANULE

    def export(self, path) -> None:
        """Write <path>.bin (the table pool from `base`) and <path>.json (what a walker needs)."""
        pages = max(self.tables) + 1
        image = np.zeros((pages, ENTRIES), dtype="<u8")
        for page, entries in self.tables.items():
            image[page] = entries
        Path(f"{path}.bin").write_bytes(image.tobytes())
        manifest = {**walker_params(self.fmt), "base": self.base, "root": self.root}
        Path(f"{path}.json").write_text(json.dumps(manifest, indent=1))

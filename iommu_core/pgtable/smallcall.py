"""The single-extent path: one small map or unmap in plain Python ints.

A hypervisor maps and unmaps a few pages at a time far more often than it maps
a whole guest, so the fixed cost of a call matters as much as the streaming
rate; a dozen numpy calls per level would cost a millisecond. This path takes
a call only when it is plainly valid and touches nothing but empty slots,
existing tables and page leaves; it returns None otherwise, before changing
anything, and the general (vectorized) path then does the work or raises the
error. Both paths write the same descriptors and count the same way: the
property tests drive both against the same model.
"""

from __future__ import annotations

import numpy as np

from . import descriptors as d
from .accounting import OpAccount
from .format import (
    ENTRIES,
    ENTRIES_PER_LINE,
    ENTRIES_SHIFT,
    GRANULE,
    GRANULE_SHIFT,
    LAST_LEVEL,
    level_pages,
)

MAX_PAGES = 4096            # beyond this the vectorized path is as fast
_INT = (int, np.integer)
_TYPE_MASK = d.DESC_TYPE_MASK
_OA = d.OA_MASK_48


def pages_only(start: int, end: int, delta: int) -> bool:
    """Whether Xen's order rule gives the extent 4 KiB leaves alone: no block fits or aligns."""
    return end - start < level_pages(LAST_LEVEL - 1) or (delta | end) % level_pages(LAST_LEVEL - 1) != 0


def leaf_runs(start: int, end: int, delta: int, levels) -> list[tuple[int, int, int]]:
    """Xen's order rule for one extent: (level, first page, end page) runs, largest leaf first.

    The vectorized twin is order.leaf_runs; see its docstring for why
    the rule reduces to "small leaves up to an aligned point, then larger ones".
    """
    if pages_only(start, end, delta):
        return [(LAST_LEVEL, start, end)]
    runs, cut = [], end
    for level in sorted(levels):
        size = level_pages(level)
        if level == LAST_LEVEL:
            lo = start
        elif delta % size == 0 and end % size == 0:
            lo = min(-(-start // size) * size, cut)
        else:
            lo = cut
        if lo < cut:
            runs.append((level, lo, cut))
        cut = min(cut, lo)
    return runs


def _one(x):
    """x as a plain int or str when it holds one (a length-1 array or list, as batch callers
    pass a single extent), else x unchanged."""
    if isinstance(x, np.ndarray) and x.size == 1 and x.dtype.kind in "iu":
        return int(x.reshape(-1)[0])
    if isinstance(x, (list, tuple)) and len(x) == 1 and isinstance(x[0], (str, int)):
        return x[0]
    return x


def _plain(pt, iova, pa, npages, perm, memtype, sw) -> bool:
    fmt = pt.fmt
    return (isinstance(iova, _INT) and isinstance(pa, _INT) and isinstance(npages, _INT)
            and isinstance(sw, _INT) and 0 <= sw <= d.SW_MASK and 0 < npages <= MAX_PAGES
            and iova >= 0 and pa >= 0 and not iova % GRANULE and not pa % GRANULE
            and iova // GRANULE + npages <= fmt.ia_pages and pa // GRANULE + npages <= fmt.oa_pages
            and isinstance(perm, str) and perm in pt.perms and isinstance(memtype, str) and memtype in d.MEMTYPES)


def _table_page(pt, level: int, t: int, op: OpAccount | None):
    """Page of the level-`level` table with prefix t (the root at the start level).

    Read-only (op=None): None if missing, False if a leaf is on the way. With an
    op, missing tables are allocated (the caller has seen no leaf on the way).
    Tables found are remembered in the pool's index (emptied whenever a table
    is freed), so neighbouring and repeated calls share their walks.
    """
    if level == pt.fmt.start_level:
        return 0
    memo = pt.pool.index
    page = memo.get((level, t))
    if page is not None:
        return page
    parent = _table_page(pt, level - 1, t >> ENTRIES_SHIFT, op)
    if parent is None or parent is False:
        return parent
    flat = t if level - 1 == pt.fmt.start_level else parent * ENTRIES + (t & (ENTRIES - 1))
    mem = pt.pool.mem
    desc = mem.item(flat)                      # a Python int, without a numpy scalar
    if desc & _TYPE_MASK == d.DESC_TABLE:
        page = ((desc & _OA) - pt.pool.base) >> GRANULE_SHIFT
    elif desc:
        return False
    elif op is None:
        return None
    else:
        page = int(pt.pool.alloc(level, np.array([t]))[0])
        op.level_count("tables_allocated", level, 1)
        pt.pool.mem[flat // ENTRIES, flat % ENTRIES] = pt.pool.base + page * GRANULE | int(pt.table_bits)
        pt.pool.used[flat // ENTRIES] += 1
        op.line_range(flat // ENTRIES_PER_LINE, flat // ENTRIES_PER_LINE)
        op.counts["descriptors_written"] += 1
    pt.pool.index[(level, t)] = page
    return page


def _segments(pt, level: int, gs: int, ge: int):
    """(table prefix, first slot, end slot, first entry) of each table the entries [gs, ge) fall in."""
    if level == pt.fmt.start_level:
        return [(0, gs, ge, gs)]
    out = []
    for t in range(gs >> ENTRIES_SHIFT, ((ge - 1) >> ENTRIES_SHIFT) + 1):
        s, e = max(gs, t << ENTRIES_SHIFT), min(ge, (t + 1) << ENTRIES_SHIFT)
        out.append((t, s & (ENTRIES - 1), e - (t << ENTRIES_SHIFT), s))
    return out


def page_slots(pt, first: int, count: int) -> list[int] | None:
    """The level-3 descriptors of pages [first, first + count) as ints (0 where a slot or its
    whole table is empty), read without changing anything; None if a block lies on the way."""
    out = []
    for t, a, b, _ in _segments(pt, LAST_LEVEL, first, first + count):
        page = _table_page(pt, LAST_LEVEL, t, None)
        if page is False:
            return None
        if page is None or not pt.pool.used[page]:
            out.extend([0] * (b - a))
        else:
            out.extend(pt.pool.mem[page, a:b].tolist())
    return out


def map_one(pt, iova, pa, npages, perm, memtype, sw, leaf: str) -> dict | None:
    iova, pa, npages, perm, memtype, sw = (_one(x) for x in (iova, pa, npages, perm, memtype, sw))
    if not _plain(pt, iova, pa, npages, perm, memtype, sw):
        return None
    in_pg, out_pg = int(iova) // GRANULE, int(pa) // GRANULE
    levels = pt.fmt.leaf_levels if leaf == "auto" else (LAST_LEVEL,)
    runs = leaf_runs(in_pg, in_pg + int(npages), out_pg - in_pg, levels)
    flat_mem, used = pt.pool.flat, pt.pool.used
    work = []
    for level, lo, hi in runs:
        shift = ENTRIES_SHIFT * (LAST_LEVEL - level)
        for t, a, b, g in _segments(pt, level, lo >> shift, hi >> shift):
            page = _table_page(pt, level, t, None)
            if page is False:
                return None
            if page is not None and used[page] and np.count_nonzero(flat_mem[page * ENTRIES + a: page * ENTRIES + b]):
                return None
            work.append((level, t, page, a, b, (g << shift) + out_pg - in_pg))
    op = OpAccount()
    attrs = pt.leaf_attrs(perm, memtype, int(sw))
    for level, t, page, a, b, first_out in work:
        if page is None:
            page = _table_page(pt, level, t, op)
        row = pt.pool.mem[page]
        v0 = attrs | (first_out << GRANULE_SHIFT) | d.leaf_type(level)
        if b - a == 1:
            row[a] = v0
        else:
            np.add(np.uint64(v0), pt.leaf_offsets[level][: b - a], out=row[a:b])
        first_line = page * (ENTRIES // ENTRIES_PER_LINE) + a // ENTRIES_PER_LINE
        if level == LAST_LEVEL:     # level-3 tables hold no table descriptors: no line is shared
            op.disjoint_lines((b - 1) // ENTRIES_PER_LINE - a // ENTRIES_PER_LINE + 1)
        else:                       # blocks may share a line with a table descriptor written above
            op.line_range(first_line, first_line + (b - 1) // ENTRIES_PER_LINE - a // ENTRIES_PER_LINE)
        op.counts["descriptors_written"] += b - a
        pt.pool.used[page] += b - a
    op.counts["pages_mapped"] = int(npages)
    return pt.pool.record(op)


def unmap_one(pt, iova, npages) -> dict | None:
    iova, npages = _one(iova), _one(npages)
    if pt.reclaim or not (isinstance(iova, _INT) and isinstance(npages, _INT) and 0 < npages <= MAX_PAGES
                          and iova >= 0 and not iova % GRANULE
                          and iova // GRANULE + npages <= pt.fmt.ia_pages):
        return None
    if pt.xen_unmap and npages >= ENTRIES and not (iova // GRANULE + npages) % ENTRIES:
        return None                     # a removal leaf may cover a whole table: Xen frees it
    in_pg = int(iova) // GRANULE
    work = []
    for t, a, b, _ in _segments(pt, LAST_LEVEL, in_pg, in_pg + int(npages)):
        page = _table_page(pt, LAST_LEVEL, t, None)
        if page is False:
            return None                 # a block on the way: the general path splits it
        if page is not None and pt.pool.used[page]:
            work.append((page, a, b))
    op = OpAccount()
    for page, a, b in work:
        row = pt.pool.mem[page, a:b]
        n = int(np.count_nonzero(row))
        if not n:
            continue
        if n == b - a:                                     # all live: every line in the range
            lines = (b - 1) // ENTRIES_PER_LINE - a // ENTRIES_PER_LINE + 1
            row.fill(0)
        else:
            live = np.flatnonzero(row)
            line = (live + a) // ENTRIES_PER_LINE          # ascending: count the changes
            lines = int(np.count_nonzero(line[1:] != line[:-1])) + 1
            row[live] = 0
        op.disjoint_lines(lines)
        pt.pool.used[page] -= n
        op.counts["descriptors_written"] += n
        op.counts["pages_unmapped"] += n
    return pt.pool.record(op)

"""The single-extent map and unmap compiled (numba), for streams of many small calls; and the
vectorized path's range writes (fill_ranges).

A replay of a real Xen's calls is tens of thousands of one-page updates; each
costs over a hundred microseconds through numpy and a fraction of one here.
These functions run inside a compiled loop over a whole stream
(xen/stream.py), on the pool's own arrays, with smallcall.py's rules and
counts: map over empty slots or page leaves, unmap page leaves, every new
table taken from the pool's free list first, then its top. A block on the way
of a call made of 4 KiB leaves is split first, as BulkPath._split does it (Xen's
p2m_split_superpage, with break-before-make; p2m_stats cites its counter).
A call they cannot take exactly is refused (`check_*` gives -1) before
anything is written, and the caller runs it through the Python path instead;
the property tests hold both paths to the same tables and counters.

A table is passed as `Arrays` (the pool's flat memory, `used`, `level`,
`prefix`, free list) and `st`, an int64 vector of the pool's moving scalars and
of the running totals to add to the pool's when the loop returns.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..compiled import compiled, jit
from . import descriptors as d
from .accounting import LINES_PER_TABLE
from .format import ENTRIES, ENTRIES_PER_LINE, ENTRIES_SHIFT, GRANULE, GRANULE_SHIFT, LAST_LEVEL, level_pages
from .smallcall import MAX_PAGES, leaf_runs, pages_only

# st: the pool's moving scalars, then totals of the calls run (added to the pool's afterwards)
TOP, FREE_POS, PEAK, DESCS, LINES, MAPPED, UNMAPPED, BBM = range(8)
ALLOC = 8                  # ALLOC + level: tables allocated at that level
SPLITS = ALLOC + LAST_LEVEL + 1   # SPLITS + level: blocks of that level split
ST_LEN = SPLITS + LAST_LEVEL + 1
MISSING, LEAF = -1, -2     # what find() gives for a table that is absent, or under a leaf
MAX_INTERVALS = 4096       # line intervals one call may collect (scratch rows); a bigger call is refused


compiled_leaf_runs = compiled(leaf_runs)
_pages_only = compiled(pages_only)
_level_pages = compiled(level_pages)
_TYPE_MASK = d.DESC_TYPE_MASK
TABLE = d.DESC_TABLE
_OA = d.OA_MASK_48


class Arrays(NamedTuple):
    mem: np.ndarray           # the pool's memory, flat (uint64)
    used: np.ndarray          # non-zero entries per page (int32)
    level: np.ndarray         # level per page (int8)
    prefix: np.ndarray        # parent entry number per page (int64)
    free: np.ndarray          # freed pages, ascending (taken from st[FREE_POS] on)
    base: np.int64
    table_bits: np.uint64
    start_level: np.int64


def arrays(pt) -> tuple[Arrays, np.ndarray]:
    """A table's pool as the kernel takes it, and a fresh `st`."""
    pool = pt.pool
    # Fixed scalar types, so one compiled version serves every format (stage 1's NSTable is bit 63).
    a = Arrays(pool.flat, pool.used, pool.level, pool.prefix, pool.free_pages, np.int64(pool.base),
               np.uint64(pt.table_bits), np.int64(pt.fmt.start_level))
    st = np.zeros(ST_LEN, np.int64)
    st[TOP], st[PEAK] = pool.top, pool.peak_pages
    return a, st


def write_back(pt, st: np.ndarray) -> None:
    """Hand the pool what the kernel changed besides its arrays (TablePool.absorb)."""
    v = st.tolist()                     # plain ints: one conversion, not one per counter
    totals = {key: v[i] for key, i in _TOTALS if v[i]}
    by_level = {}
    if any(v[ALLOC:]):                  # the per-level counts end the state; most small calls leave them 0
        by_level = {key: v[i:i + LAST_LEVEL + 1] for key, i in _BY_LEVEL if any(v[i:i + LAST_LEVEL + 1])}
    pt.pool.absorb(v[TOP], v[FREE_POS], by_level, totals, v[PEAK])


_TOTALS = (("descriptors_written", DESCS), ("cache_lines_written", LINES), ("pages_mapped", MAPPED),
           ("pages_unmapped", UNMAPPED), ("bbm_breaks", BBM))
_BY_LEVEL = (("tables_allocated", ALLOC), ("block_splits", SPLITS))


@jit(inline=True)
def _step(a, page, lvl, prefix):
    """The slot, in the table at `page`, for the level-`lvl` table with this prefix (the root's
    slots are numbered across its concatenated pages): (flat index, the table's page or -1)."""
    flat = prefix if lvl - 1 == a.start_level else page * ENTRIES + (prefix & (ENTRIES - 1))
    desc = a.mem[flat]
    if desc & _TYPE_MASK == TABLE:
        return flat, np.int64(((desc & _OA) - a.base) >> GRANULE_SHIFT)
    return flat, np.int64(-1)


@jit(inline=True)
def find(a, level, t):
    """Page of the level-`level` table with prefix t (0 for the root), MISSING, or LEAF."""
    page = 0
    for lvl in range(a.start_level + 1, level + 1):
        flat, page = _step(a, page, lvl, t >> (ENTRIES_SHIFT * (level - lvl)))
        if page < 0:
            return LEAF if a.mem[flat] != 0 else MISSING
    return page


@jit
def _block_level(a, level, t):
    """Level of the block that covers the level-`level` table with prefix t (find gave LEAF),
    or -1 if the entry on the way is not a block."""
    page = 0
    for lvl in range(a.start_level + 1, level + 1):
        flat, page = _step(a, page, lvl, t >> (ENTRIES_SHIFT * (level - lvl)))
        if page < 0:
            return lvl - 1 if a.mem[flat] & _TYPE_MASK == d.DESC_BLOCK else -1
    return -1


@jit(inline=True)
def _segment(a, level, t, lo_entry, hi_entry):
    """First and end slot, in table t of `level`, of the level's entries [lo_entry, hi_entry)."""
    if level == a.start_level:
        return lo_entry, hi_entry
    first = t << ENTRIES_SHIFT
    return max(lo_entry, first) - first, min(hi_entry, first + ENTRIES) - first


@jit(inline=True)
def _tables(level, start_level, lo_entry, hi_entry):
    """Prefixes [t0, t1) of the level's tables the entries [lo_entry, hi_entry) fall in."""
    if level == start_level:
        return 0, 1
    return lo_entry >> ENTRIES_SHIFT, ((hi_entry - 1) >> ENTRIES_SHIFT) + 1


@jit(inline=True)
def check_map(a, g, m, n, levels):
    """Whether the table would take this extent as it is, and how: (tables it may allocate, or
    -1 if refused; live slots it replaces). Taken: empty slots with no leaf on the way (map_one),
    page leaves in a level-3 extent of at most MAX_PAGES (the vectorized remap), and under a
    block, an extent of fewer than 512 pages (all 4 KiB leaves), the block split first."""
    if _pages_only(g, g + n, m - g):              # nearly every call: no list of runs to build
        need, live, _ = _check_run(a, LAST_LEVEL, g, g + n, n, 0)
        return need, live
    need, live, segments = 0, 0, 0
    for level, lo, hi in compiled_leaf_runs(g, g + n, m - g, levels):
        run_need, run_live, segments = _check_run(a, level, lo, hi, n, segments)
        if run_need < 0:
            return -1, 0
        need += run_need
        live += run_live
    return need, live


@jit(inline=True)
def _check_run(a, level, lo, hi, n, segments):
    """check_map of one run of level-`level` leaves over pages [lo, hi) of an n-page call, after
    `segments` table segments of its earlier runs: (need or -1, live, segments)."""
    splitting = n < ENTRIES             # no whole block fits: every leaf is a page
    need, live = 0, 0
    shift = ENTRIES_SHIFT * (LAST_LEVEL - level)
    gs, ge = lo >> shift, hi >> shift
    t0, t1 = _tables(level, a.start_level, gs, ge)
    segments += t1 - t0
    if segments * (LAST_LEVEL + 1) > MAX_INTERVALS:
        return -1, 0, segments             # more line intervals than the scratch holds
    for t in range(t0, t1):
        page = find(a, level, t)
        if page == LEAF:
            above = _block_level(a, level, t) if splitting else -1
            if above < 0:
                return -1, 0, segments
            need += level - above          # a table per level below the block
            s, e = _segment(a, level, t, gs, ge)
            live += e - s                  # every slot of a split block is live
            continue
        if page == MISSING:
            need += level - a.start_level
            continue
        s, e = _segment(a, level, t, gs, ge)
        if a.used[page]:
            for i in range(page * ENTRIES + s, page * ENTRIES + e):
                if a.mem[i] != 0:
                    if level != LAST_LEVEL or n > MAX_PAGES or a.mem[i] & _TYPE_MASK != d.DESC_PAGE:
                        return -1, 0, segments
                    live += 1
    return need, live, segments


@jit(inline=True)
def pages_run(g, n, delta, levels):
    """Whether leaf_runs gives the extent one run of 4 KiB leaves (asked without a list first)."""
    if _pages_only(g, g + n, delta):
        return True
    runs = compiled_leaf_runs(g, g + n, delta, levels)
    return len(runs) == 1 and runs[0][0] == LAST_LEVEL


@jit(inline=True)
def fits(a, st, need):
    """Whether `need` new tables fit the pool without growing it."""
    spare = len(a.free) - st[FREE_POS]
    return st[TOP] + max(need - spare, 0) <= len(a.used)


@jit(inline=True)
def _alloc(a, st, level, t, op):
    """A zeroed page for the level-`level` table with prefix t, hooked into its parent."""
    if st[FREE_POS] < len(a.free):
        page = a.free[st[FREE_POS]]
        st[FREE_POS] += 1
    else:
        page = st[TOP]
        st[TOP] += 1
    a.level[page] = level
    a.prefix[page] = t
    op[ALLOC + level] += 1
    return page


@jit(inline=True)
def _table(a, st, level, t, scratch, k, op):
    """find(), allocating what is missing (the caller has checked no leaf is on the way).
    Each table descriptor written adds its line to scratch[k:]; returns (page, new k)."""
    page = 0
    for lvl in range(a.start_level + 1, level + 1):
        tl = t >> (ENTRIES_SHIFT * (level - lvl))
        flat, page = _step(a, page, lvl, tl)
        if page >= 0:
            continue
        page = _alloc(a, st, lvl, tl, op)
        a.mem[flat] = np.uint64(a.base + page * GRANULE) | a.table_bits
        a.used[flat // ENTRIES] += 1
        scratch[k, 0] = flat // ENTRIES_PER_LINE
        scratch[k, 1] = flat // ENTRIES_PER_LINE + 1
        k += 1
        op[DESCS] += 1
    return page, k


@jit
def _split(a, st, level, t, flat, scratch, k, op):
    """BulkPath._split of the level-`level` block at `flat` (entry number t): a table of the next
    level mapping the same, written whole, then the block broken and the table hooked in its
    place (break-before-make: two writes). Returns the new k."""
    child = level + 1
    page = _alloc(a, st, child, t, op)
    first = (a.mem[flat] & ~np.uint64(_TYPE_MASK)) | np.uint64(d.DESC_PAGE if child == LAST_LEVEL else d.DESC_BLOCK)
    step = np.uint64(_level_pages(child) * GRANULE)
    for i in range(ENTRIES):
        a.mem[page * ENTRIES + i] = first + np.uint64(i) * step
    a.used[page] = ENTRIES
    scratch[k, 0] = page * LINES_PER_TABLE
    scratch[k, 1] = (page + 1) * LINES_PER_TABLE
    a.mem[flat] = np.uint64(a.base + page * GRANULE) | a.table_bits
    scratch[k + 1, 0] = flat // ENTRIES_PER_LINE
    scratch[k + 1, 1] = flat // ENTRIES_PER_LINE + 1
    op[DESCS] += ENTRIES + 2
    op[BBM] += 1
    op[SPLITS + level] += 1
    return k + 2


@jit
def _split_level(a, st, level, t0, t1, scratch, k, op):
    """Split every block whose place a level-`level` table with prefix in [t0, t1) takes, by
    prefix (the levels above are done: BulkPath._tables splits level by level, before it
    allocates the missing tables of a level). Returns the new k."""
    for t in range(t0, t1):
        parent = 0 if level - 1 == a.start_level else find(a, level - 1, t >> ENTRIES_SHIFT)
        if parent < 0:
            continue
        flat, page = _step(a, parent, level, t)
        if page < 0 and a.mem[flat] & _TYPE_MASK == d.DESC_BLOCK:
            k = _split(a, st, level - 1, t, flat, scratch, k, op)
    return k


@jit(inline=True)
def _split_count(op):
    n = 0
    for lvl in range(LAST_LEVEL + 1):
        n += op[SPLITS + lvl]
    return n


@jit
def _union(scratch, k):
    """Lines in the union of the intervals scratch[:k] (intervals.union_size_small's sweep)."""
    if k == 0:
        return 0
    order = np.argsort(scratch[:k, 0])
    total, reach = 0, np.int64(-1)
    for j in order:
        lo, hi = scratch[j, 0], scratch[j, 1]
        if reach >= 0:
            lo = max(lo, reach)
        if hi > lo:
            total += hi - lo
            reach = hi
    return total


@jit(inline=True)
def map_extent(a, st, g, m, n, levels, attrs, scratch, op, breadth_first, limit, moved):
    """The writes and counts of an extent check_map took; op (int64, ST_LEN) gets this call's
    counts. A live page replaced is a break-before-make (BulkPath._replace); moved[0] counts
    those that get another frame, moved[1] those of them below page `limit`.
    Beyond smallcall.MAX_PAGES, or over live slots, the table takes the vectorized path, which
    makes the same tables in another order than map_one: per leaf level, every missing table of
    a level (by prefix) before those of the next (BulkPath._tables). breadth_first says which."""
    if _pages_only(g, g + n, m - g):              # nearly every call: no list of runs to build
        k, disjoint = _map_run(a, st, LAST_LEVEL, g, g + n, g, m, attrs, scratch, 0, op, breadth_first,
                               limit, moved)
    else:
        k, disjoint = 0, 0
        for level, lo, hi in compiled_leaf_runs(g, g + n, m - g, levels):
            k, lines = _map_run(a, st, level, lo, hi, g, m, attrs, scratch, k, op, breadth_first, limit, moved)
            disjoint += lines
    op[LINES] += disjoint + _union(scratch, k)
    op[MAPPED] += n


@jit(inline=True)
def _map_run(a, st, level, lo, hi, g, m, attrs, scratch, k, op, breadth_first, limit, moved):
    """map_extent's writes for one run of level-`level` leaves over pages [lo, hi) (frame m for
    page g); line intervals go to scratch[k:]. Returns (the new k, lines written to level-3
    tables that need no union)."""
    disjoint = 0
    shift = ENTRIES_SHIFT * (LAST_LEVEL - level)
    gs, ge = lo >> shift, hi >> shift
    t0, t1 = _tables(level, a.start_level, gs, ge)
    if breadth_first:
        for tl in range(a.start_level + 1, level + 1):
            up = ENTRIES_SHIFT * (level - tl)
            k = _split_level(a, st, tl, t0 >> up, ((t1 - 1) >> up) + 1, scratch, k, op)
            for t in range(t0 >> up, ((t1 - 1) >> up) + 1):
                _, k = _table(a, st, tl, t, scratch, k, op)
    split = _split_count(op) > 0       # a split table's lines are written whole already
    step = np.uint64(_level_pages(level) * GRANULE)
    leaf = np.uint64(attrs) | np.uint64(d.DESC_PAGE if level == LAST_LEVEL else d.DESC_BLOCK)
    for t in range(t0, t1):
        page, k = _table(a, st, level, t, scratch, k, op)
        s, e = _segment(a, level, t, gs, ge)
        first = (t << ENTRIES_SHIFT) + s if level != a.start_level else s
        out = np.uint64(((first << shift) + m - g) << GRANULE_SHIFT)
        base = page * ENTRIES
        for i in range(s, e):
            new = (leaf | out) + np.uint64(i - s) * step
            old = a.mem[base + i]
            if old != 0:                       # check_map allowed only level-3 pages here
                op[BBM] += 1
                op[DESCS] += 1
                a.used[page] -= 1              # counted again below
                if (old ^ new) & np.uint64(_OA):
                    moved[0] += 1
                    if (t << ENTRIES_SHIFT) + i < limit:
                        moved[1] += 1
            a.mem[base + i] = new
        lines = (e - 1) // ENTRIES_PER_LINE - s // ENTRIES_PER_LINE + 1
        if level == LAST_LEVEL and not split:     # level-3 tables hold no table descriptors
            disjoint += lines
        else:
            first_line = page * LINES_PER_TABLE + s // ENTRIES_PER_LINE
            scratch[k, 0] = first_line
            scratch[k, 1] = first_line + lines
            k += 1
        op[DESCS] += e - s
        if level == a.start_level:     # concatenated roots: the slots may span root pages
            for i in range(s, e):
                a.used[i // ENTRIES] += 1
        else:
            a.used[page] += e - s
    return k, disjoint


@jit(inline=True)
def check_unmap(a, g, n, p2m_slots):
    """Whether unmap_one would take these pages, and how: the tables splitting the blocks on the
    way would allocate, or -1 if refused. Taken: page leaves, and under a block fewer than 512
    pages (no block lies wholly inside them, so each is split: BulkPath._unmap). With
    p2m_slots, also (the P2M's one-call path) every non-empty slot a page leaf."""
    need = 0
    for t in range(g >> ENTRIES_SHIFT, ((g + n - 1) >> ENTRIES_SHIFT) + 1):
        page = find(a, LAST_LEVEL, t)
        if page == LEAF:
            above = _block_level(a, LAST_LEVEL, t) if n < ENTRIES else -1
            if above < 0:
                return -1
            need += LAST_LEVEL - above
            continue
        if p2m_slots and page >= 0 and a.used[page]:
            s, e = _segment(a, LAST_LEVEL, t, g, g + n)
            for i in range(page * ENTRIES + s, page * ENTRIES + e):
                if a.mem[i] != 0 and a.mem[i] & _TYPE_MASK != d.DESC_PAGE:
                    return -1
    return need


@jit(inline=True)
def unmap_pages(a, st, g, n, op, limit, split, scratch):
    """unmap_one's writes and counts for pages check_unmap took; with `split` (it found blocks
    on the way), those are split first, level by level, and the lines counted as one union.
    Returns (live slots cleared whose frame was 0, Xen's counter quirk in p2m_stats; live
    slots cleared below page `limit`)."""
    zero, below, k = 0, 0, 0
    t0, t1 = g >> ENTRIES_SHIFT, ((g + n - 1) >> ENTRIES_SHIFT) + 1
    if split:
        for tl in range(a.start_level + 1, LAST_LEVEL + 1):
            up = ENTRIES_SHIFT * (LAST_LEVEL - tl)
            k = _split_level(a, st, tl, t0 >> up, ((t1 - 1) >> up) + 1, scratch, k, op)
    for t in range(t0, t1):
        page = find(a, LAST_LEVEL, t)
        if page < 0 or not a.used[page]:
            continue
        s, e = _segment(a, LAST_LEVEL, t, g, g + n)
        live, lines, last_line = 0, 0, -1
        for i in range(s, e):
            desc = a.mem[page * ENTRIES + i]
            if desc != 0:
                live += 1
                if (desc & _OA) >> GRANULE_SHIFT == 0:
                    zero += 1
                if (t << ENTRIES_SHIFT) + i < limit:
                    below += 1
                if i // ENTRIES_PER_LINE != last_line:
                    lines += 1
                    last_line = i // ENTRIES_PER_LINE
                    if split:
                        line = (page * ENTRIES + i) // ENTRIES_PER_LINE
                        scratch[k, 0] = line
                        scratch[k, 1] = line + 1
                        k += 1
                a.mem[page * ENTRIES + i] = 0
        if not live:
            continue
        a.used[page] -= live
        if not split:
            op[LINES] += lines
        op[DESCS] += live
        op[UNMAPPED] += live
    if split:
        op[LINES] += _union(scratch, k)
    return zero, below


@jit(inline=True)
def merge(a, st, op):
    """Add one call's counts (then cleared) to the running totals, and its tables to the peak
    (pool.record)."""
    allocated = 0
    for lvl in range(LAST_LEVEL + 1):
        allocated += op[ALLOC + lvl]
    if allocated:
        st[PEAK] = max(st[PEAK], st[TOP] - (len(a.free) - st[FREE_POS]))
    for i in range(DESCS, ST_LEN):
        st[i] += op[i]
        op[i] = 0


@jit
def fill_ranges(flat, flat0, length, v0, step):
    """flat[flat0[i] + k] = v0[i] + k * step for every k < length[i]: the leaves of many
    ranges, for the vectorized path (BulkPath._fill_ranges)."""
    for i in range(len(flat0)):
        row = flat[flat0[i]:flat0[i] + length[i]]      # a slice: no index check per write, so it vectorizes
        v = v0[i]
        for k in range(len(row)):
            row[k] = v + np.uint64(k) * step

"""Reading a table back: its leaves, and the fewest extents that describe them.

Tables are read level by level in bounded chunks, so decoding a 64 GiB mapping
never holds one array entry per page of it.
"""

from __future__ import annotations

import numpy as np

from . import descriptors as d
from .arrays import ragged
from .extents import Extents, merge_runs
from .format import ENTRIES, GRANULE_SHIFT, LAST_LEVEL, level_pages, level_shift

U64 = np.uint64
CHUNK_TABLES = 1024
_PAGE_STEPS = np.arange(ENTRIES, dtype=U64) << U64(GRANULE_SHIFT)     # a run of pages, entry by entry


def _is_leaf(level: int, desc: np.ndarray) -> np.ndarray:
    if level == 0:                       # no level-0 blocks with a 4 KiB granule
        return np.zeros(len(desc), bool)
    return (desc & U64(d.DESC_TYPE_MASK)) == U64(d.leaf_type(level))


def _touches(first: np.ndarray, stop: np.ndarray, ranges) -> np.ndarray:
    """Which page spans [first, stop) meet any of the sorted, disjoint page ranges."""
    s, e = ranges
    k = np.searchsorted(e, first, side="right")          # the first range ending after `first`
    return (k < len(s)) & (s[np.minimum(k, len(s) - 1)] < stop)


def _tables(pt, level: int, ranges):
    """(prefixes, pages) of a level's tables (not the root), those outside the ranges left out."""
    prefixes, pages = pt.pool.tables_of_level(level)
    if ranges is not None:
        span = ENTRIES * level_pages(level)
        keep = _touches(prefixes * span, (prefixes + 1) * span, ranges)
        prefixes, pages = prefixes[keep], pages[keep]
    return prefixes, pages


def leaf_chunks(pt, level: int, ranges=None, whole_rows=None):
    """(entry numbers, descriptors) of the valid leaves of a level, chunk by chunk.

    ranges: optional (starts, ends) of sorted disjoint page ranges; tables that
    lie outside all of them are not read. whole_rows: optional callback taking
    each chunk's (prefixes, rows) first and returning a mask of rows it has dealt
    with; their leaves are not listed.
    """
    if level == pt.fmt.start_level:
        rows = pt.pool.flat[: pt.fmt.root_entries]
        g = np.flatnonzero(_is_leaf(level, rows))
        if len(g):
            yield g, rows[g]
        return
    prefixes, pages = _tables(pt, level, ranges)
    for i in range(0, len(pages), CHUNK_TABLES):
        pre, rows = prefixes[i:i + CHUNK_TABLES], pt.pool.mem[pages[i:i + CHUNK_TABLES]]
        if whole_rows is not None:
            done = whole_rows(pre, rows)
            pre, rows = pre[~done], rows[~done]
        rows = rows.reshape(-1)
        pos = np.flatnonzero(_is_leaf(level, rows))
        if len(pos):
            yield pre[pos // ENTRIES] * ENTRIES + pos % ENTRIES, rows[pos]


def leaves(pt) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every valid leaf: (iova, level, descriptor), sorted by iova."""
    out = [(g.astype(U64) << U64(level_shift(level)), np.full(len(g), level, np.int8), desc)
           for level in pt.fmt.levels for g, desc in leaf_chunks(pt, level)]
    if not out:
        return np.zeros(0, U64), np.zeros(0, np.int8), np.zeros(0, U64)
    iova, lvl, desc = (np.concatenate(x) for x in zip(*out))
    order = np.argsort(iova, kind="stable")
    return iova[order], lvl[order], desc[order]


def _runs(iova, pa, npg, attrs):
    starts = merge_runs(iova, pa, npg, attrs)
    return iova[starts], pa[starts], np.add.reduceat(npg, starts), attrs[starts]


def _clip(first: np.ndarray, npg: np.ndarray, pa: np.ndarray, attrs: np.ndarray, ranges):
    """Cut leaves (first page, pages, output address) to the parts inside the ranges."""
    s, e = ranges
    lo = np.searchsorted(e, first, side="right")
    hi = np.searchsorted(s, first + npg, side="left")
    leaf, k = ragged(np.maximum(hi - lo, 0))
    r = lo[leaf] + k
    start = np.maximum(first[leaf], s[r])
    stop = np.minimum(first[leaf] + npg[leaf], e[r])
    out = pa[leaf] + ((start - first[leaf]).astype(U64) << U64(GRANULE_SHIFT))
    return start, stop - start, out, attrs[leaf]


def mappings(pt, ranges=None) -> Extents:
    """The table as the fewest extents: adjacent leaves with equal attributes merged.

    ranges: optional (starts, ends) of sorted disjoint page ranges to decode
    only; leaves that straddle a range's edge are cut at it.
    """
    keep = ~U64(d.OA_MASK_48 | d.DESC_TYPE_MASK)       # attribute bits, whatever the leaf size
    parts = []

    def add(iova, pa, npg, attrs):
        if ranges is not None:                 # cut runs, not leaves: far fewer of them
            first, npg, pa, attrs = _clip(iova.astype(np.int64) >> GRANULE_SHIFT, npg, pa, attrs, ranges)
            iova = first.astype(U64) << U64(GRANULE_SHIFT)
        parts.append((iova, pa, npg, attrs))

    def progressions(prefixes, rows):
        """Level-3 tables whose 512 pages follow on with one set of attributes are one run each."""
        first = rows[:, 0]
        whole = ((first & U64(d.DESC_TYPE_MASK)) == U64(d.DESC_PAGE)) & (rows == first[:, None] + _PAGE_STEPS).all(axis=1)
        if whole.any():
            f = first[whole]
            add(prefixes[whole].astype(U64) << U64(level_shift(LAST_LEVEL - 1)), f & U64(d.oa_mask(LAST_LEVEL)),
                np.full(len(f), ENTRIES, np.int64), f & keep)
        return whole

    for level in pt.fmt.levels:
        rows_first = progressions if level == LAST_LEVEL and level != pt.fmt.start_level else None
        for g, desc in leaf_chunks(pt, level, ranges, rows_first):
            npg = np.full(len(g), level_pages(level), np.int64)
            add(*_runs(g.astype(U64) << U64(level_shift(level)), desc & U64(d.oa_mask(level)), npg, desc & keep))
    if not parts:
        return Extents.empty()
    iova, pa, npg, attrs = (np.concatenate(x) for x in zip(*parts))
    order = np.argsort(iova, kind="stable")
    iova, pa, npg, attrs = _runs(iova[order], pa[order], npg[order], attrs[order])
    perm, memtype, sw = d.decode_leaf(pt.fmt, attrs)
    return Extents(iova, pa, npg, perm, memtype, sw)

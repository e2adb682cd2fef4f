"""Translation: the hardware's table walk, for arrays of input addresses.

The walk goes level by level with one gather per level. Like the hardware's
walk cache, a dense index from each 2 MiB region to its level-3 table (the
pool's, kept while no table comes or goes) lets most addresses skip the upper
levels.
Addresses are taken in chunks that fit the CPU caches, so the element-wise
steps between gathers run from cache and a walk costs little more than its
memory reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from . import descriptors as d
from .format import (
    ENTRIES,
    ENTRIES_SHIFT,
    GRANULE_SHIFT,
    LAST_LEVEL,
    Format,
    level_shift,
)

U64 = np.uint64
CHUNK = 1 << 15                      # addresses per step: the step's arrays fit a 512 KiB L2
_TYPE_MASK = U64(d.DESC_TYPE_MASK)
_TABLE = U64(d.DESC_TABLE)
_PAGE = U64(d.DESC_PAGE)
_L2_SHIFT = U64(level_shift(LAST_LEVEL - 1))
_PAGE_OFFSET = U64((1 << GRANULE_SHIFT) - 1)
_SLOT = U64(ENTRIES - 1)


@dataclass
class Translation:
    """Result of a walk per input address. perm, memtype and sw decode on first use."""

    pa: np.ndarray        # uint64 output addresses (0 where faulted)
    fault: np.ndarray     # bool
    level: np.ndarray     # int8 level of the leaf (-1 where faulted)
    desc: np.ndarray      # uint64 leaf descriptor (0 where faulted)
    fmt: Format = field(repr=False)

    @cached_property
    def _fields(self):
        return d.decode_leaf(self.fmt, self.desc)

    @property
    def perm(self) -> np.ndarray:
        """uint8: descriptors.PERM_R | PERM_W (0 where faulted)."""
        return np.where(self.fault, np.uint8(0), self._fields[0])

    @property
    def memtype(self) -> np.ndarray:
        """uint8: descriptors.MEMTYPES code (0 where faulted)."""
        return np.where(self.fault, np.uint8(0), self._fields[1])

    @property
    def sw(self) -> np.ndarray:
        """uint8 software bits (0 where faulted)."""
        return np.where(self.fault, np.uint8(0), self._fields[2])


def translate(pool, fmt: Format, a: np.ndarray) -> Translation:
    n = len(a)
    pa = np.zeros(n, U64)
    desc = np.zeros(n, U64)
    level = np.full(n, -1, np.int8)
    index = pool.level3_index()
    for i in range(0, n, CHUNK):
        out = (pa[i:i + CHUNK], desc[i:i + CHUNK], level[i:i + CHUNK])
        chunk = a[i:i + CHUNK]
        rest = _walk_cached(pool, index, chunk, *out) if index is not None else None
        _walk(pool, fmt, chunk, *out, todo=rest)
    return Translation(pa, level < 0, level, desc, fmt)


def _walk_cached(pool, index, a, pa_out, desc_out, level_out):
    """Walk from the level-3 table where the index knows it; return what is left (None: all)."""
    lo, dense = index
    region = (a >> _L2_SHIFT).view(np.int64)
    region -= lo
    if region.min() < 0 or region.max() >= len(dense):
        return None
    base = dense.take(region)
    if base.min() < 0:
        return None                                # some region has no level-3 table
    flat = a >> U64(GRANULE_SHIFT)
    flat &= _SLOT
    flat = flat.view(np.int64)
    flat += base
    pool.flat.take(flat, out=desc_out)
    np.bitwise_and(desc_out, U64(d.oa_mask(LAST_LEVEL)), out=pa_out)
    pa_out |= a & _PAGE_OFFSET
    level_out.fill(LAST_LEVEL)
    invalid = (desc_out & _TYPE_MASK) != _PAGE     # an empty slot: a fault
    if invalid.any():
        pa_out[invalid], desc_out[invalid], level_out[invalid] = 0, 0, -1
    return np.zeros(0, np.intp)


def _walk(pool, fmt: Format, a, pa_out, desc_out, level_out, todo=None) -> None:
    """The full walk from the root, for the addresses `todo` (None: all of `a`)."""
    if todo is not None:
        if not len(todo):
            return
        a = a[todo]
    flat_mem = pool.flat
    base = U64(pool.base)
    flat = (a >> U64(level_shift(fmt.start_level))).view(np.int64)
    live = None                                   # positions in `a` still walking (None: all)
    for level in fmt.levels:
        desc = flat_mem.take(flat)
        kind = desc & _TYPE_MASK
        is_table = kind == _TABLE if level < LAST_LEVEL else np.zeros(len(desc), bool)
        if not is_table.all():
            # Leaves end here: blocks (type 01) at levels 1-2, pages (type 11) at level 3.
            is_leaf = kind == U64(d.leaf_type(level)) if level > 0 else np.zeros(len(desc), bool)
            if is_leaf.any():
                pos = np.flatnonzero(is_leaf) if live is None else live[is_leaf]
                hit = pos if todo is None else todo[pos]
                pa_out[hit] = (desc[is_leaf] & U64(d.oa_mask(level))) | (a[pos] & U64((1 << level_shift(level)) - 1))
                desc_out[hit] = desc[is_leaf]
                level_out[hit] = level
            keep = np.flatnonzero(is_table)
            live = keep if live is None else live[keep]
            desc = desc[keep]
            if not len(live):
                return
        if level == LAST_LEVEL:
            return
        aa = a if live is None else a[live]
        # The next table's flat index: (table address - base) / 8, plus the slot.
        nxt = ((desc & U64(d.OA_MASK_48)) - base) >> U64(GRANULE_SHIFT - ENTRIES_SHIFT)
        nxt += (aa >> U64(level_shift(level + 1))) & _SLOT
        flat = nxt.view(np.int64)


def probe(pool, fmt: Format, a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where the walk of each input address ends: (level, is a leaf, output address).

    The level is the leaf's, or that of the invalid entry the walk stopped at; so a
    table exists at level L for an address iff its walk ends below L.
    """
    n = len(a)
    stop = np.full(n, fmt.start_level, np.int8)
    leaf = np.zeros(n, bool)
    pa = np.zeros(n, U64)
    base = U64(pool.base)
    live = np.arange(n)
    flat = (a >> U64(level_shift(fmt.start_level))).view(np.int64)
    for level in fmt.levels:
        desc = pool.flat.take(flat)
        kind = desc & _TYPE_MASK
        stop[live] = level
        is_leaf = kind == U64(d.leaf_type(level)) if level > 0 else np.zeros(len(desc), bool)
        hit = live[is_leaf]
        leaf[hit] = True
        pa[hit] = (desc[is_leaf] & U64(d.oa_mask(level))) | (a[hit] & U64((1 << level_shift(level)) - 1))
        if level == LAST_LEVEL:
            break
        down = kind == _TABLE
        live, desc = live[down], desc[down]
        if not len(live):
            break
        nxt = ((desc & U64(d.OA_MASK_48)) - base) >> U64(GRANULE_SHIFT - ENTRIES_SHIFT)
        nxt += (a[live] >> U64(level_shift(level + 1))) & _SLOT
        flat = nxt.view(np.int64)
    return stop, leaf, pa

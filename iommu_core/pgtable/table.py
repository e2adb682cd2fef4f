"""A vectorized ARM LPAE page table: map, unmap, translate, decode, account.

Work is done per level on arrays of entries or of table segments, never per
4 KiB page in Python. Addresses in the public API are bytes; inside, page
numbers (`pg`) and level-L entry numbers (`g`, the input address shifted by
the level's shift) are used. A level-L table is identified by the number of
the level-(L-1) entry that points to it (its "prefix", `g >> 9`).

Every map is checked in full before the first write, so a refused batch leaves
the table as it was.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from . import decode, smallcall, walk
from . import descriptors as d
from .accounting import OpAccount
from .extents import ExtentError, Extents, map_batch, unmap_batch
from .bulk import ROW_OFFSETS, U64, BulkPath
from .format import GRANULE, LAST_LEVEL, Format, level_pages
from .pool import TablePool
from .walk import Translation


class PageTable(BulkPath):
    """An ARM VMSAv8-64 translation table of one `Format`, held in a numpy pool.

    Provides ops.TableOps, the operations it shares with reference.ReferencePageTable.

    reclaim: free tables that an unmap leaves empty (Xen keeps them; off by default).
    xen_unmap: unmap as Xen's p2m_set_entry removes: by the order rule (order.py), so a
        block is split down to the order the range allows at its place, and a table
        whose whole entry one removal leaf covers is freed with its subtree
        (p2m_free_entry). Off: the largest entries inside the range are cleared and
        every table is kept.
    """

    def __init__(self, fmt: Format | str, base: int = 0x8000_0000, reclaim: bool = False,
                 xen_unmap: bool = False):
        self.fmt = Format.preset(fmt) if isinstance(fmt, str) else fmt
        if not isinstance(self.fmt, Format):
            raise ValueError(f"fmt must be a Format or a preset name, got {fmt!r}")
        self.reclaim = bool(reclaim)
        self.xen_unmap = bool(xen_unmap)
        self.pool = TablePool(self.fmt, base)
        self.table_bits = U64(d.table_desc_bits(self.fmt))     # of every table descriptor
        # For the single-extent path (smallcall.py): the perms a call may ask for,
        # attribute bits by (perm, memtype, sw), a leaf's address steps per level.
        self.perms = frozenset(d.allowed_perms(self.fmt))
        self.leaf_offsets = {lvl: ROW_OFFSETS * U64(level_pages(lvl) * GRANULE) for lvl in self.fmt.levels}

    # -- public surface ----------------------------------------------------
    @property
    def base(self) -> int:
        return self.pool.base

    @property
    def root(self) -> int:
        return self.pool.base

    @property
    def table_bytes(self) -> int:
        return self.pool.table_bytes

    def map(self, iova, pa, npages, perm="rw", memtype="normal", sw=0, leaf="auto", remap=False) -> dict:
        """Map extents; returns this call's accounting. See the module docstring."""
        if leaf not in ("auto", "4k"):
            raise ExtentError(f"leaf must be 'auto' or '4k', got {leaf!r}")
        # The one-extent path takes only empty slots, where a remap writes what a map does.
        done = smallcall.map_one(self, iova, pa, npages, perm, memtype, sw, leaf)
        if done is not None:
            return done
        return self.map_vectorized(iova, pa, npages, perm, memtype, sw, leaf, remap)

    def map_vectorized(self, iova, pa, npages, perm="rw", memtype="normal", sw=0, leaf="auto", remap=False) -> dict:
        """`map` by the vectorized path whatever the call's size: the one-extent path's oracle."""
        if leaf not in ("auto", "4k"):
            raise ExtentError(f"leaf must be 'auto' or '4k', got {leaf!r}")
        batch = map_batch(self.fmt, iova, pa, npages, perm, memtype, sw)
        levels = self.fmt.leaf_levels if leaf == "auto" else (LAST_LEVEL,)
        plan = self._plan_leaves(batch, levels)
        if not remap:
            for level, ranges in plan.items():
                self._check_free(level, ranges)
        op = OpAccount()
        for level, ranges in plan.items():
            self._write_leaves(level, ranges, op, remap)
        op.counts["pages_mapped"] = int(batch.npages.sum())
        return self.pool.record(op)

    def unmap(self, iova, npages) -> dict:
        """Unmap page ranges, splitting blocks that are only partly inside one."""
        done = smallcall.unmap_one(self, iova, npages)
        if done is not None:
            return done
        return self.unmap_vectorized(iova, npages)

    def unmap_vectorized(self, iova, npages) -> dict:
        """`unmap` by the vectorized path whatever the call's size: the one-extent path's oracle."""
        batch = unmap_batch(self.fmt, iova, npages)
        op = OpAccount()
        self._unmap(batch.in_page, batch.in_page + batch.npages, op)
        return self.pool.record(op)

    def probe(self, addrs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Where each address's walk ends: (level, is a leaf, output address); see walk.probe."""
        a = np.atleast_1d(np.asarray(addrs)).astype(U64)
        return walk.probe(self.pool, self.fmt, a)

    def translate(self, addrs) -> Translation:
        """Walk the table for each input byte address, as the hardware would."""
        a = np.asarray(addrs)
        if a.dtype.kind not in "iu" or a.ndim > 1:
            raise ExtentError(f"addresses must be a scalar or 1-d array of integers, got {a.dtype} {a.shape}")
        a = np.atleast_1d(a)
        bad = (a < 0) | (a >= (1 << self.fmt.ia_bits)) if a.dtype.kind == "i" else a >= U64(1 << self.fmt.ia_bits)
        if np.any(bad):
            i = int(np.argmax(bad))
            raise ExtentError(f"address {i}: {int(a[i]):#x} is outside the {self.fmt.ia_bits}-bit input "
                              f"range of {self.fmt.name}", i)
        return walk.translate(self.pool, self.fmt, a.astype(U64))

    def mappings(self, iova=None, npages=None) -> Extents:
        """The table decoded into the fewest extents (adjacent leaves with equal attributes merged).

        With iova and npages (scalars or arrays, like unmap's), only those input
        ranges are decoded, and extents are cut at their edges.
        """
        if iova is None and npages is None:
            return decode.mappings(self)
        b = unmap_batch(self.fmt, iova, npages)
        return decode.mappings(self, (b.in_page, b.in_page + b.npages))

    def leaves(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every valid leaf: (iova, level, descriptor), sorted by iova."""
        return decode.leaves(self)

    def stats(self) -> dict:
        return self.pool.stats()

    def export(self, path) -> tuple:
        from .image import export_image
        return export_image(self, path)

    @classmethod
    def load(cls, path) -> "PageTable":
        from .image import load_image
        return load_image(cls, path)

    # -- helpers -----------------------------------------------------------
    def leaf_attrs(self, perm: str, memtype: str, sw: int) -> int:
        """Leaf attribute bits of one (perm, memtype, sw), as a Python int (cached per format)."""
        return _leaf_attrs(self.fmt, perm, memtype, sw)


@lru_cache(maxsize=None)
def _leaf_attrs(fmt: Format, perm: str, memtype: str, sw: int) -> int:
    # A format's bits, not a table's: every fresh table of a stream's replay asks again.
    return int(d.leaf_attrs(fmt, [d.PERMS[perm]], [d.MEMTYPES[memtype]], [sw])[0])

"""A domain's P2M: the stage-2 table GFN -> MFN, with Xen's types in its entries.

`set_entry` takes arrays of extents as Xen's p2m_set_entry takes one: the
engine picks the leaf order by Xen's rule, splits superpages with
break-before-make and never frees intermediate tables before teardown. Each
call reports which GFN ranges it added, modified and removed, so that an
IOMMU can follow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..pgtable import Extents, Format, PageTable
from ..pgtable.extents import as_int_array, check_input_pages, merge_runs
from ..pgtable import smallcall
from ..pgtable.descriptors import DESC_PAGE, DESC_TYPE_MASK, oa_mask
from ..pgtable.format import ENTRIES_SHIFT, GRANULE, GRANULE_SHIFT, LAST_LEVEL
from .. import intervals as iv
from .p2m_stats import LeafEvents, XenStats, leaf_events, leaves_by_level
from .p2m_types import (
    CODE,
    DMA_PERM_BY_CODE,
    MEMTYPE_NAME_BY_CODE,
    PERM_NAME_BY_CODE,
    codes,
    one_or_each,
)

P2M_BASE = 0x40_0000_0000            # where the model puts P2M table pages (any aligned address works)


@dataclass
class Change:
    """GFN ranges (sorted, disjoint page ranges) one set_entry call changed, and its engine accounting."""

    added: tuple[np.ndarray, np.ndarray]
    modified: tuple[np.ndarray, np.ndarray]
    removed: tuple[np.ndarray, np.ndarray]
    # The extents written (valid types) and removed, as given: what an IOMMU mirrors.
    mapped: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]   # gfn, mfn, nr, type code
    unmapped: tuple[np.ndarray, np.ndarray]                          # gfn, nr
    stats: dict
    leaves: LeafEvents | None = None     # what Xen's code does leaf by leaf (p2m_stats)

    @property
    def touched(self) -> tuple[np.ndarray, np.ndarray]:
        """Every GFN range the call wrote or cleared."""
        gfn, _, nr, _ = self.mapped
        ug, un = self.unmapped
        return iv.normalize(np.concatenate((gfn, ug)), np.concatenate((nr, un)))

    @property
    def live_changed(self) -> bool:
        """Whether a valid entry was modified or removed (what needs a TLB flush)."""
        return bool(len(self.modified[0]) or len(self.removed[0]))


def _stats_sum(a: dict, b: dict) -> dict:
    return {k: a.get(k, 0) + b.get(k, 0) for k in set(a) | set(b) if isinstance(a.get(k, b.get(k)), int)}


def translation_view(ext: Extents) -> Extents:
    """Only what a translation gives a device: address and permission, runs merged again."""
    if not len(ext):
        return ext
    starts = merge_runs(ext.iova, ext.pa, ext.npages, ext.perm)
    z = np.zeros(len(starts), np.uint8)
    return Extents(ext.iova[starts], ext.pa[starts], np.add.reduceat(ext.npages, starts), ext.perm[starts], z, z)


class P2M:
    def __init__(self, fmt: Format | str = "p2m-s2-40", base: int = P2M_BASE):
        self.pt = PageTable(fmt, base=base, xen_unmap=True)
        self.xen = XenStats()
        if self.pt.fmt.stage != 2:
            raise ValueError(f"a P2M needs a stage-2 format, got {self.pt.fmt.name} (stage {self.pt.fmt.stage})")

    @property
    def fmt(self) -> Format:
        return self.pt.fmt

    def set_entry(self, gfn, mfn, nr, p2m_type) -> Change:
        """Map GFN ranges to MFN ranges with a type ("invalid" removes them)."""
        gfn = np.atleast_1d(as_int_array("gfn", gfn, None)).copy()
        nr, mfn = (_each(name, a, gfn.shape) for name, a in (("nr", nr), ("mfn", mfn)))
        code = codes(p2m_type, len(gfn))
        if len(gfn) == 1:
            change = self._set_pages(gfn, mfn, nr, code)
            if change is not None:
                return change
        check_input_pages(self.pt.fmt, gfn, nr)       # before the counters' walk reads beyond the table
        return self.set_entry_vectorized(gfn, mfn, nr, code)

    def set_entry_vectorized(self, gfn: np.ndarray, mfn: np.ndarray, nr: np.ndarray, code: np.ndarray) -> Change:
        """The vectorized path, whatever the batch's size (int64 arrays, type codes): what
        `set_entry` does for a batch, and the oracle of its one-call path."""
        if len(gfn) > 1 and not _disjoint(gfn, nr):
            raise ValueError("the calls of one P2M batch must not overlap (their order would matter): "
                             "make them one batch after another")
        valid = code != CODE["invalid"]
        events = leaf_events(self.pt, gfn, mfn, nr, ~valid)
        before = self._mapped_before(events)
        self.xen.add(events)
        stats = {}                               # the engine's counters of both calls, summed
        one = len(gfn) == 1                      # plain ints let the engine take its single-call path
        if (~valid).any():
            stats = _stats_sum(stats, self.pt.unmap(*(_ints(gfn * GRANULE, nr) if one else
                                                      (gfn[~valid] * GRANULE, nr[~valid]))))
        if valid.any():
            c = code[valid]
            perm, memtype = one_or_each(c, PERM_NAME_BY_CODE), one_or_each(c, MEMTYPE_NAME_BY_CODE)
            args = _ints(gfn * GRANULE, mfn * GRANULE, nr, c) if one else \
                (gfn[valid] * GRANULE, mfn[valid] * GRANULE, nr[valid], c)
            # Over empty slots only, the engine need not look for live entries to replace.
            stats = _stats_sum(stats, self.pt.map(*args[:3], perm=perm, memtype=memtype, sw=args[3],
                                                  remap=bool(events.old_valid.any())))
        written = iv.normalize(gfn[valid], nr[valid])
        cleared = iv.normalize(gfn[~valid], nr[~valid])
        return Change(added=iv.subtract(written, before), modified=iv.intersect(written, before),
                      removed=iv.intersect(cleared, before),
                      mapped=(gfn[valid], mfn[valid], nr[valid], code[valid]),
                      unmapped=(gfn[~valid], nr[~valid]), stats=stats, leaves=events)

    def _set_pages(self, gfn, mfn, nr, code) -> Change | None:
        """One call whose leaves are all 4 KiB pages with no block above them (most of a
        real Xen's calls: dom0's one-page foreign maps): each slot is read as a plain int
        instead of walked by arrays. None, before changing anything, for any other call."""
        g, m, n, c = int(gfn[0]), int(mfn[0]), int(nr[0]), int(code[0])
        pt = self.pt
        removing = c == CODE["invalid"]
        if not (0 < n <= smallcall.MAX_PAGES and g >= 0 and m >= 0 and g + n <= pt.fmt.ia_pages
                and m + n <= pt.fmt.oa_pages):
            return None
        if smallcall.leaf_runs(g, g + n, 0 if removing else m - g, pt.fmt.leaf_levels) != [(LAST_LEVEL, g, g + n)]:
            return None
        slots = smallcall.page_slots(pt, g, n)
        if slots is None:
            return None
        desc = np.array(slots, np.uint64)
        valid = (desc & np.uint64(DESC_TYPE_MASK)) == np.uint64(DESC_PAGE)
        if (desc[~valid] != 0).any():
            return None
        old_mfn = ((desc & np.uint64(oa_mask(LAST_LEVEL))) >> np.uint64(GRANULE_SHIFT)).astype(np.int64)
        new_mfn = np.zeros(n, np.int64) if removing else np.arange(m, m + n, dtype=np.int64)
        events = LeafEvents(np.arange(g, g + n, dtype=np.int64), np.full(n, LAST_LEVEL, np.int8),
                            np.zeros(n, np.int64), np.full(n, removing), valid, np.zeros(n, bool),
                            valid & (old_mfn == new_mfn))
        self.xen.add(events)
        before = iv.of_mask(g, valid)
        if removing:
            stats = _stats_sum({}, self.pt.unmap(g * GRANULE, n))
        else:
            stats = _stats_sum({}, self.pt.map(g * GRANULE, m * GRANULE, n, perm=str(PERM_NAME_BY_CODE[c]),
                                               memtype=str(MEMTYPE_NAME_BY_CODE[c]), sw=c, remap=bool(valid.any())))
        none = (np.zeros(0, np.int64), np.zeros(0, np.int64))
        if removing:                             # gfn, mfn, nr, code are set_entry's own copies
            return Change(added=none, modified=none, removed=before, mapped=(gfn[:0], mfn[:0], nr[:0], code[:0]),
                          unmapped=(gfn, nr), stats=stats, leaves=events)
        return Change(added=iv.of_mask(g, ~valid), modified=before, removed=none, mapped=(gfn, mfn, nr, code),
                      unmapped=(gfn[:0], nr[:0]), stats=stats, leaves=events)

    def _mapped_before(self, ev: LeafEvents) -> tuple[np.ndarray, np.ndarray]:
        """The pages of the batch's leaves that are mapped now: a valid slot maps its whole
        leaf; under a table, the table is decoded."""
        size = np.left_shift(1, (LAST_LEVEL - ev.level.astype(np.int64)) * ENTRIES_SHIFT)
        whole = ev.old_valid & ~ev.old_table
        s, e = iv.normalize(ev.page[whole], size[whole])
        if ev.old_table.any():
            ext = self.pt.mappings(ev.page[ev.old_table] * GRANULE, size[ev.old_table])
            s, e = iv.normalize(np.concatenate((s, ext.iova.astype(np.int64) // GRANULE)),
                                np.concatenate((e - s, ext.npages)))
        return s, e

    def entries(self, gfn=None, nr=None) -> Extents:
        """The P2M decoded (optionally within GFN ranges): sw holds the type code."""
        if gfn is None:
            return self.pt.mappings()
        s, e = iv.normalize(gfn, nr)
        if not len(s):
            return Extents.empty()
        return self.pt.mappings(s * GRANULE, e - s)

    def dma_view(self, gfn=None, nr=None) -> Extents:
        """What a device may reach: the entries whose type allows DMA, with the DMA permission."""
        ext = self.entries(gfn, nr)
        perm = DMA_PERM_BY_CODE[ext.sw]
        keep = perm != 0
        return translation_view(Extents(ext.iova[keep], ext.pa[keep], ext.npages[keep], perm[keep],
                                        ext.memtype[keep], ext.sw[keep]))

    def stats(self) -> dict:
        return self.pt.stats()

    def xen_counters(self) -> dict[str, int]:
        """Xen's own statistics (debug key q), and the valid leaves per level the table holds."""
        leaves = leaves_by_level(self.pt)
        out = self.xen.counters(leaves)
        out.update({f"leaves_{name}": leaves[lvl] for lvl, name in ((1, "1g"), (2, "2m"), (3, "4k"))})
        return out


def _each(name, a, shape) -> np.ndarray:
    """A copy of `a` per element of a batch of this shape (one value broadcast)."""
    a = as_int_array(name, a, None).copy()
    return a if a.shape == shape else np.broadcast_to(a, shape).copy()


def _ints(*arrays):
    """The single element of each array, as a plain int."""
    return tuple(int(a[0]) for a in arrays)


def _disjoint(gfn: np.ndarray, nr: np.ndarray) -> bool:
    o = np.argsort(gfn, kind="stable")
    return bool(np.all(gfn[o][1:] >= (gfn[o] + nr[o])[:-1]))


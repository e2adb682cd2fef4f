"""A real Xen's call log replayed fast: the calls run one by one in a compiled loop.

`replay_calls` gives the state that applying each call in turn gives
(xenlog.apply_call, then UnsharedIommu.follow, then invariant.check): the same
tables byte for byte, the same engine totals, Xen's counters and the IOMMU's
counts and latency sums. Calls of the shapes that make nearly all of a domU
build (a map over empty slots or over page leaves, a removal of page leaves,
either under a block that is split first) run in the compiled loop
(pgtable/kernel.py); any other call runs through the Python path, between
two stretches of the loop. The loop follows only the `per-page` API with the
4.12 flush rule (UnsharedIommu.syncs), the API of `eager`; the mirror of any
other API replays through the Python path.

The loop's rules are those of the Python path and cite nothing of their own:
the P2M's one-call path (P2M._set_pages) and its Xen counters (p2m_stats), the
IOMMU's map, unmap, _account and syncs (iommu.py).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..compiled import jit
from ..pgtable import kernel as kn
from ..pgtable.accounting import LINES_PER_TABLE
from ..pgtable.descriptors import (DESC_TYPE_MASK, MEMTYPE_NAMES, MEMTYPES, OA_MASK_48, PERM_NAMES, PERMS, SW_MASK,
                                   SW_SHIFT, allowed_perms, leaf_attrs)
from ..pgtable.format import ENTRIES, ENTRIES_SHIFT, GRANULE_SHIFT, LAST_LEVEL
from ..pgtable.smallcall import MAX_PAGES
from ..xenlog import CallLog, apply_call
from . import invariant
from .iommu import UnsharedIommu
from .p2m import P2M
from .p2m_types import CODE, DMA_PERM_BY_CODE, MEMTYPE_BY_CODE, MEMTYPE_NAME_BY_CODE, PERM_NAME_BY_CODE

DONE, PYTHON, GROW_P2M, GROW_IOMMU, MISMATCH = range(5)    # why the loop stopped
# IOMMU counts the loop keeps (IommuCounts' fields, and each latency's n)
(CALLS, INVALIDATIONS, CLEANS, DESCS, TABLES, SPLITS, PAGES_MAPPED, PAGES_UNMAPPED, UNREACHABLE, MAP_N,
 UNMAP_N) = range(11)
COUNT_FIELDS = ("calls", "invalidations", "cache_lines_cleaned", "descriptors_written", "tables_allocated",
                "block_splits", "pages_mapped", "pages_unmapped", "unreachable_pages")
# costs, in this order, and the latency sums (map total, map squares, unmap total, unmap squares)
MAP_CALL, UNMAP_CALL, INV, CLEAN, ALLOC_NS = range(5)
_INVALID = CODE["invalid"]
_TYPE = DESC_TYPE_MASK


def _attrs(fmt, perm_names, memtype_names, sw) -> np.ndarray:
    """Leaf attribute bits per type code (-1 where the format cannot hold the permission)."""
    out = np.full(len(perm_names), -1, np.int64)
    allowed = allowed_perms(fmt)
    held = [c for c, perm in enumerate(perm_names) if str(perm) in allowed]
    out[held] = leaf_attrs(fmt, [PERMS[str(perm_names[c])] for c in held],
                           [MEMTYPES[str(memtype_names[c])] for c in held], [int(sw[c]) for c in held])
    return out


@lru_cache(maxsize=None)
def _p2m_attrs(fmt) -> np.ndarray:
    """The P2M leaf's attribute bits per type code. A format's, so cached: read, never write."""
    return _attrs(fmt, PERM_NAME_BY_CODE, MEMTYPE_NAME_BY_CODE, np.arange(len(PERM_NAME_BY_CODE)))


@lru_cache(maxsize=None)
def _iommu_attrs(fmt) -> np.ndarray:
    """The IOMMU leaf's attribute bits per P2M type code (UnsharedIommu.map: the type's DMA
    permission and memory type, sw 0), -1 for a type no device may reach. Cached as above."""
    dma = DMA_PERM_BY_CODE[: len(PERM_NAME_BY_CODE)]
    attrs = _attrs(fmt, [PERM_NAMES[int(x)] for x in dma], [MEMTYPE_NAMES[int(x)] for x in
                   MEMTYPE_BY_CODE[: len(dma)]], np.zeros(len(dma), np.int64))
    return np.where(dma == 0, -1, attrs)


@jit(inline=True)
def _account(ic, lat, cost, op, pages, unmap):
    """UnsharedIommu._account of one per-page call: its counts and its latency sums."""
    tables, splits = 0, 0
    for lvl in range(LAST_LEVEL + 1):
        tables += op[kn.ALLOC + lvl]
        splits += op[kn.SPLITS + lvl]
    clean_ns = cost[CLEAN]
    ic[CALLS] += pages
    ic[CLEANS] += 0 if clean_ns < 0 else op[kn.DESCS] + tables * LINES_PER_TABLE
    ic[DESCS] += op[kn.DESCS]
    ic[TABLES] += tables
    ic[SPLITS] += splits
    clean_ns = max(clean_ns, 0.0)                  # < 0 marks a coherent walker: nothing cleaned
    call_ns = cost[UNMAP_CALL] if unmap else cost[MAP_CALL]
    inv_ns = cost[INV] if unmap else 0.0
    alloc_ns = tables * (cost[ALLOC_NS] + LINES_PER_TABLE * clean_ns)
    each = call_ns + clean_ns + inv_ns + (alloc_ns / pages if pages else 0.0)
    j = 2 if unmap else 0
    ic[UNMAP_N if unmap else MAP_N] += pages
    lat[j] += pages * each
    lat[j + 1] += pages * each * each


@jit(inline=True)
def _leaf(a, page):
    """(descriptor, level) of the leaf mapping `page`, or (0, 0)."""
    flat = page >> (ENTRIES_SHIFT * (LAST_LEVEL - a.start_level))
    for lvl in range(a.start_level, LAST_LEVEL + 1):
        desc = a.mem[flat]
        if desc == 0:
            return np.uint64(0), 0
        if lvl == LAST_LEVEL or desc & _TYPE != kn.TABLE:
            return desc, lvl
        table = ((desc & OA_MASK_48) - a.base) >> GRANULE_SHIFT
        flat = table * ENTRIES + ((page >> (ENTRIES_SHIFT * (LAST_LEVEL - lvl - 1))) & (ENTRIES - 1))
    return np.uint64(0), 0


@jit(inline=True)
def _same_view(p, q, g, n, dma_perm, attrs_q):
    """Whether the IOMMU maps pages [g, g + n) exactly as the P2M's DMA view says: each page
    with a DMA type at the same frame with the type's attributes, every other page not at all."""
    for page in range(g, g + n):
        pd, pl = _leaf(p, page)
        qd, ql = _leaf(q, page)
        code = (pd >> SW_SHIFT) & SW_MASK if pl else 0
        if pl == 0 or dma_perm[code] == 0:
            if ql:
                return False
            continue
        if ql == 0:
            return False
        frame_p = ((pd & OA_MASK_48) >> GRANULE_SHIFT) + (page & ((1 << (ENTRIES_SHIFT * (LAST_LEVEL - pl))) - 1))
        frame_q = ((qd & OA_MASK_48) >> GRANULE_SHIFT) + (page & ((1 << (ENTRIES_SHIFT * (LAST_LEVEL - ql))) - 1))
        attrs = qd & ~np.uint64(OA_MASK_48) & ~np.uint64(_TYPE)
        if frame_p != frame_q or attrs != np.uint64(attrs_q[code]):
            return False
    return True


@jit
def _run(k0, k1, gfn, mfn, nr, code, p, pst, p_bounds, p_levels, p_attrs, deficit, shattered,
         mirror, q, qst, q_bounds, q_levels, q_attrs, dma_perm, ic, lat, cost, check, scratch, op, out):
    """Calls [k0, k1) of one domain, in turn, until one the loop cannot take exactly: returns
    (k, why); out[0] = the tables a GROW needs."""
    moved = np.zeros(2, np.int64)
    p_ia, p_oa = p_bounds[0], p_bounds[1]
    q_ia, q_oa = q_bounds[0], q_bounds[1]
    for k in range(k0, k1):
        g, m, n, c = gfn[k], mfn[k], nr[k], code[k]
        removing = c == _INVALID
        if not (0 < n and g >= 0 and m >= 0 and g + n <= p_ia and m + n <= p_oa):
            return k, PYTHON
        # -- can both sides take it as it is? (nothing is written before both say yes)
        p_need, q_need, p_live, q_live = 0, 0, 0, 0
        if removing:
            if n > MAX_PAGES or not kn.pages_run(g, n, 0, p_levels):
                return k, PYTHON
            p_need = kn.check_unmap(p, g, n, True)
            if p_need < 0:
                return k, PYTHON
        else:
            if p_attrs[c] < 0:
                return k, PYTHON
            p_need, p_live = kn.check_map(p, g, m, n, p_levels)
            if p_need < 0:
                return k, PYTHON
        nq = min(n, max(q_ia - g, 0))
        dma = mirror and not removing and dma_perm[c] != 0
        if mirror and removing and nq > 0:
            q_need = kn.check_unmap(q, g, nq, False) if nq <= MAX_PAGES else -1
            if q_need < 0:
                return k, PYTHON
        if dma and nq > 0:
            if q_attrs[c] < 0 or m + nq > q_oa:
                return k, PYTHON
            q_need, q_live = kn.check_map(q, g, m, nq, q_levels)
            if q_need < 0:
                return k, PYTHON
        if not kn.fits(p, pst, p_need):
            out[0] = p_need
            return k, GROW_P2M
        if mirror and not kn.fits(q, qst, q_need):
            out[0] = q_need
            return k, GROW_IOMMU
        # -- the P2M, and Xen's counters: a removal of a frame-0 entry is not counted down,
        # a live entry given another frame is not counted up, a block split is shattered;
        # a per-page sync for each live leaf removed or given another frame (p2m_stats, syncs)
        below = 0
        if removing:
            zero, below = kn.unmap_pages(p, pst, g, n, op, q_ia, p_need > 0, scratch)
            deficit[LAST_LEVEL] -= zero
        else:
            moved[0], moved[1] = 0, 0
            kn.map_extent(p, pst, g, m, n, p_levels, p_attrs[c], scratch, op, n > MAX_PAGES or p_live > 0,
                          q_ia, moved)
            deficit[LAST_LEVEL] += moved[0]
            below = moved[1]
        for lvl in range(LAST_LEVEL):
            shattered[lvl] += op[kn.SPLITS + lvl]
        kn.merge(p, pst, op)
        if not mirror:
            continue
        # -- the IOMMU follows: unmap, or map what DMA may reach; per-page syncs per live leaf removed
        if removing and nq > 0:
            kn.unmap_pages(q, qst, g, nq, op, 0, q_need > 0, scratch)
            ic[PAGES_UNMAPPED] += op[kn.UNMAPPED]
            _account(ic, lat, cost, op, nq, True)
            kn.merge(q, qst, op)
        elif dma:
            ic[UNREACHABLE] += n - nq
            if nq > 0:
                kn.map_extent(q, qst, g, m, nq, q_levels, q_attrs[c], scratch, op,
                              nq > MAX_PAGES or q_live > 0, 0, moved)
                ic[PAGES_MAPPED] += nq
                _account(ic, lat, cost, op, nq, False)
                kn.merge(q, qst, op)
        ic[INVALIDATIONS] += below
        if check and nq > 0 and not _same_view(p, q, g, nq, dma_perm, q_attrs):
            return k + 1, MISMATCH
    return k1, DONE


def compiled_api(iommu) -> bool:
    """Whether the loop follows this IOMMU's API (the per-page one); otherwise it is mirrored
    through the Python path."""
    return iommu is None or (isinstance(iommu, UnsharedIommu) and iommu.rule.per_page_calls)


def replay_calls(log: CallLog, p2ms: dict[int, P2M], iommus: dict[int, UnsharedIommu] | None,
                 make_iommu=None, check: bool = False, p2m_format: str = "p2m-s2-40",
                 start: int = 0, stop: int | None = None) -> int:
    """Apply calls [start, stop) of the log as apply_call would, one by one, to a P2M per domain
    (made on its first call); with `iommus`, each domain's IOMMU (made by make_iommu()) follows
    every call, and with `check` the invariant is checked after each. Returns the calls run."""
    stop = len(log) if stop is None else min(stop, len(log))
    k = start
    while k < stop:
        d = int(log.domid[k])
        end = _domain_run_end(log, k, stop)
        if d not in p2ms:
            p2ms[d] = P2M(p2m_format)
        iommu = None
        if iommus is not None:
            iommu = iommus.get(d)
            if iommu is None:
                iommu = iommus[d] = make_iommu()
        k = _domain_run(log, d, k, end, p2ms[d], iommu, check) if compiled_api(iommu) else \
            _python_run(log, d, k, end, p2ms, iommu, check)
    return stop - start


def _domain_run_end(log: CallLog, k: int, stop: int) -> int:
    other = np.flatnonzero(log.domid[k:stop] != log.domid[k])
    return k + int(other[0]) if len(other) else stop


def _python_call(log, k, p2ms, iommu, check) -> None:
    d, change = apply_call(log, k, p2ms, p2ms[int(log.domid[k])].fmt.name)
    _follow(f"dom{d}", p2ms[d], iommu, change, check)


def _follow(name, p2m, iommu, change, check) -> None:
    if iommu is not None:
        iommu.follow(change)
        if check:
            invariant.check(name, iommu, p2m, change.touched)


def _python_run(log, d, k, end, p2ms, iommu, check) -> int:
    for j in range(k, end):
        _python_call(log, j, p2ms, iommu, check)
    return end


def _domain_run(log, d, k, end, p2m: P2M, iommu: UnsharedIommu | None, check: bool) -> int:
    calls = MirroredCalls(p2m, iommu, check, name=f"dom{d}")
    while k < end:
        k = calls.run(k, end, log.gfn, log.mfn, log.nr, log.type)
        if k < end:
            _python_call(log, k, {d: p2m}, iommu, check)
            k += 1
    return k


class _Side:
    """One table's kernel view, kept while its pool's arrays stay where they are (a Python
    call or a grown pool may move them)."""

    def __init__(self, pt):
        self.pt = pt
        self.a, self.st = kn.arrays(pt)
        self.mem, self.free = pt.pool.mem, pt.pool.free_pages

    def fresh(self) -> "_Side":
        pool = self.pt.pool
        if pool.mem is not self.mem or pool.free_pages is not self.free:
            return _Side(self.pt)
        self.st.fill(0)
        self.st[kn.TOP], self.st[kn.PEAK] = pool.top, pool.peak_pages
        return self

    def back(self):
        kn.write_back(self.pt, self.st)


class MirroredCalls:
    """p2m_set_entry calls on one P2M, each followed by its IOMMU (None: the P2M alone), run
    one by one in the compiled loop: the state and counters that P2M.set_entry of each call,
    then UnsharedIommu.follow, then (with `check`) invariant.check give. What the loop cannot
    take exactly, or an IOMMU of another API, runs through those Python calls instead."""

    def __init__(self, p2m: P2M, iommu: UnsharedIommu | None = None, check: bool = False, name: str = "domain"):
        self.p2m, self.iommu, self.check, self.name = p2m, iommu, check, name
        self.compiled = compiled_api(iommu)
        mirror = iommu is not None
        q_pt = iommu.pt if mirror else p2m.pt                  # a stand-in the loop never touches
        self._p = _Side(p2m.pt)
        self._q = _Side(q_pt) if mirror else self._p
        q_levels = (LAST_LEVEL,) if not mirror or iommu.rule.leaf == "4k" else tuple(q_pt.fmt.leaf_levels)
        if mirror:
            c = iommu.costs
            cost = np.array([c.map_call_ns, c.unmap_call_ns, c.iotlb_inv_ns,
                             -1.0 if q_pt.fmt.coherent_walk else c.cache_clean_line_ns, c.table_alloc_ns])
        else:
            cost = np.zeros(5)
        bounds = lambda pt: np.array([pt.fmt.ia_pages, pt.fmt.oa_pages], np.int64)
        p_attrs = _p2m_attrs(p2m.fmt)
        # The loop's arguments after the tables' own, in _run's order.
        self._p_args = (bounds(p2m.pt), tuple(p2m.fmt.leaf_levels), p_attrs)
        self._q_args = (bounds(q_pt), q_levels, _iommu_attrs(q_pt.fmt) if mirror else p_attrs,
                        DMA_PERM_BY_CODE.astype(np.int64))
        self._cost = cost
        self._scratch = np.zeros((kn.MAX_INTERVALS, 2), np.int64)
        self._op = np.zeros(kn.ST_LEN, np.int64)
        self._out = np.zeros(1, np.int64)
        self._ic = np.zeros(UNMAP_N + 1, np.int64)
        self._lat = np.zeros(4)
        self._buf = np.zeros(4, np.int64)
        self._one = tuple(self._buf[i:i + 1] for i in range(4))    # gfn, mfn, nr, code of one call
        self._entry = None                  # _run's machine code for call()'s argument types
        self._fixed = None                  # _run's arguments after the calls' arrays

    def run(self, k0: int, k1: int, gfn: np.ndarray, mfn: np.ndarray, nr: np.ndarray, code: np.ndarray) -> int:
        """Calls [k0, k1) of the int64 arrays (type codes) in the loop, until one it cannot
        take exactly: returns that call's index (k1 when all ran)."""
        return self._loop(k0, k1, (gfn, mfn, nr, code), _run) if self.compiled else k0

    def call(self, gfn, mfn, nr, p2m_type) -> None:
        """One p2m_set_entry of nr pages at gfn (mfn, a P2M type name; "invalid" removes them),
        with its IOMMU following. Ints or length-1 arrays; the loop's refusals and bad values
        go to P2M.set_entry, which does the work or names what is wrong."""
        code = CODE.get(p2m_type) if isinstance(p2m_type, str) else None
        g, m, n = _int(gfn), _int(mfn), _int(nr)
        if self.compiled and code is not None and None not in (g, m, n):
            self._buf[:] = (g, m, n, code)
            if self._loop(0, 1, self._one, self._entry or _run) == 1:
                return
        _follow(self.name, self.p2m, self.iommu, self.p2m.set_entry(gfn, mfn, nr, p2m_type), self.check)

    def _loop(self, k, k1, calls, fn) -> int:
        mirror, iommu = self.iommu is not None, self.iommu
        while k < k1:
            p = self._p.fresh()
            q = self._q.fresh() if mirror else p
            if p is not self._p or q is not self._q or self._fixed is None:
                self._p, self._q, self._entry, fn = p, q, None, _run     # new arrays: types checked again
                xen = self.p2m.xen
                self._fixed = (p.a, p.st, *self._p_args, xen.deficit, xen.shattered, mirror, q.a, q.st,
                               *self._q_args, self._ic, self._lat, self._cost, self.check and mirror,
                               self._scratch, self._op, self._out)
            ic, lat = self._ic, self._lat
            ic.fill(0)
            if mirror:
                ml, ul = iommu.counts.map_latency, iommu.counts.unmap_latency
                lat[:] = (ml.total, ml.squares, ul.total, ul.squares)
            args = (k, k1, *calls, *self._fixed)
            k, why = fn(*args)
            if calls is self._one and self._entry is None:
                self._entry = _entry_point(_run, args)
            p.back()
            if mirror:
                q.back()
                _count(iommu, ic, lat)
            if why == PYTHON:
                return k
            if why in (GROW_P2M, GROW_IOMMU):
                (p if why == GROW_P2M else q).pt.pool.reserve(int(self._out[0]))
            elif why == MISMATCH:
                gfn, nr = calls[0], calls[2]
                touched = (np.array([gfn[k - 1]]), np.array([gfn[k - 1] + nr[k - 1]]))
                invariant.check(self.name, iommu, self.p2m, touched)
                raise RuntimeError(f"call {k - 1}: the compiled invariant check and invariant.check disagree")
        return k


def _entry_point(dispatcher, args):
    """The machine code numba compiled for these arguments' types, called without the
    dispatcher's type matching (5 us for _run's 27 arguments, most of a single call's time);
    None when no overload has exactly those types. The caller must keep the types."""
    sig = tuple(dispatcher.typeof_pyval(a) for a in args)
    return dispatcher.overloads[sig].entry_point if sig in dispatcher.overloads else None


def _int(x):
    """x as a plain int when it holds one integer that fits the loop's int64 (an int, a numpy
    integer, a length-1 integer array), else None."""
    if type(x) is int:                      # the common case first
        return x if -(1 << 63) <= x < 1 << 63 else None
    if isinstance(x, np.ndarray):
        if x.size != 1 or x.ndim > 1 or x.dtype.kind not in "iu":
            return None
        x = x.item()
    elif isinstance(x, np.integer):
        x = int(x)
    if isinstance(x, bool) or not isinstance(x, int) or not -(1 << 63) <= x < 1 << 63:
        return None
    return x


def _count(iommu: UnsharedIommu, ic: np.ndarray, lat: np.ndarray) -> None:
    c = iommu.counts
    v = ic.tolist()
    for name, n in zip(COUNT_FIELDS, v):
        if n:
            setattr(c, name, getattr(c, name) + n)
    c.map_latency.n += v[MAP_N]
    c.unmap_latency.n += v[UNMAP_N]
    c.map_latency.total, c.map_latency.squares, c.unmap_latency.total, c.unmap_latency.squares = lat.tolist()

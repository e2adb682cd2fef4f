"""The host's machine memory and its MFN allocator.

Memory is counted in machine frames (MFN = physical address >> 12, 4 KiB pages)
and kept as extents (first MFN, page count), never per page: a 512 GiB host has
128M pages, and an allocation of gigabytes costs a few vector operations over
the free extents, whatever its size.

How memory is handed out (modelled on Xen: the toolstack populates a guest with
1 GiB extents while it can, then 2 MiB, then 4 KiB; Xen's buddy allocator
serves each order from the smallest free block that fits):

1. while at least 1 GiB is still wanted: whole free 1 GiB-aligned chunks,
   lowest address first;
2. while at least 2 MiB is still wanted: whole free 2 MiB-aligned chunks,
   first those lying outside any whole free 1 GiB chunk (so as not to split
   one), then those inside, each in address order;
3. the rest page by page, from the memory that cannot make a superpage, in
   this order: (a) pieces of intact free memory that are not part of a whole
   free 2 MiB chunk (bank edges, leftovers of earlier allocations), as runs;
   (b) free pages of broken chunks (below), one page per extent; (c) only then
   a run cut from the start of a whole 2 MiB chunk (outside 1 GiB chunks first).

The extents come back in that order, which is the order the guest uses them:
the caller maps guest RAM in order onto them, so a guest whose RAM starts
1 GiB-aligned gets its 1 GiB and 2 MiB chunks where it can map them as blocks.
Extents are not merged with their neighbours in the answer: each one is one
allocation unit (a 4 MiB request gives two 2 MiB extents).

Fragmentation. At construction a fraction `fragmentation` of the host's whole
2 MiB-aligned chunks, chosen with `seed`, is *broken*, as if other allocations
had interleaved with it: a broken chunk is never handed out as a superpage, and
its pages come out one at a time in a shuffled order. This also removes every
1 GiB chunk that contains a broken chunk. Broken chunks stay broken for the life
of the host: their pages go back to the broken pool when freed.

Broken chunks are broken lazily: the allocator keeps the sorted array of broken
chunks whose pages are all free and untouched, and the first time pages of one
are needed (by `alloc`, or by `alloc_at` touching it) it draws that chunk's page
order from the seeded generator and moves its pages to the *loose* pool, a numpy
array of single MFNs handed out from its front (freed broken pages are appended
at its end). So a 512 GiB host with fragmentation 0.1 (26K broken chunks, 13M
pages) holds 26K chunk numbers, not 13M pages, until those pages are used.

Everything is deterministic for a seed and a sequence of calls. A refused call
(bad argument, out of memory, page not free / not owned) changes nothing.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Sequence

import numpy as np

from .. import intervals as iv
from .board import checked_int

PAGE_SHIFT = 12
PAGE = 1 << PAGE_SHIFT
CHUNK_2M = 512                 # pages in a 2 MiB chunk
CHUNK_1G = 512 * 512           # pages in a 1 GiB chunk

_I64 = np.int64
_EMPTY = np.zeros(0, _I64)


class OutOfMemory(ValueError):
    """The host has fewer free pages than a request asks for."""


# --- extent sets -----------------------------------------------------------------------------
# An extent set is a pair (start, count) of int64 arrays. "Merged" means sorted, counts > 0,
# and no two extents touching or overlapping: iommu_core.intervals' set form, with counts
# for ends. The algebra is that module's; these only convert.

def _merge(a):
    """The merged extent set of the pages of extents in any order (pages covered twice count once)."""
    s, e = iv.normalize(*a)
    return s, e - s


def _union(a, b):
    return _merge((np.concatenate((a[0], b[0])), np.concatenate((a[1], b[1]))))


def _diff(a, b):
    s, e = iv.subtract(iv.normalize(*a), iv.normalize(*b))
    return s, e - s


def _inter(a, b):
    s, e = iv.intersect(iv.normalize(*a), iv.normalize(*b))
    return s, e - s


def _blocks(s: np.ndarray, c: np.ndarray, size: int, k: int) -> np.ndarray:
    """First MFNs of the first `k` whole `size`-aligned blocks inside the extents, in extent order."""
    if k <= 0 or not len(s):
        return _EMPTY
    lo = -(-s // size) * size
    hi = (s + c) // size * size
    nb = np.maximum(hi - lo, 0) // size
    cum = np.cumsum(nb)
    if not len(cum) or cum[-1] == 0:
        return _EMPTY
    k = min(k, int(cum[-1]))
    j = int(np.searchsorted(cum, k))             # extents 0..j supply the k blocks
    m = nb[: j + 1].copy()
    m[j] -= int(cum[j]) - k
    offs = np.cumsum(m) - m
    return np.repeat(lo[: j + 1], m) + (np.arange(k, dtype=_I64) - np.repeat(offs, m)) * size


def _head(s: np.ndarray, c: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `k` pages of the extents (in extent order), as extents."""
    if k <= 0 or not len(s):
        return _EMPTY, _EMPTY
    cum = np.cumsum(c)
    k = min(k, int(cum[-1]))
    j = int(np.searchsorted(cum, k))
    cc = c[: j + 1].copy()
    cc[j] -= int(cum[j]) - k
    return s[: j + 1].copy(), cc


def _split_at_1g(s: np.ndarray, c: np.ndarray):
    """Split extents into the parts inside whole 1 GiB-aligned chunks and the parts outside."""
    e = s + c
    lo = -(-s // CHUNK_1G) * CHUNK_1G
    hi = e // CHUNK_1G * CHUNK_1G
    has = hi > lo
    inner = (lo[has], (hi - lo)[has])
    # outside: [s, lo) and [hi, e) where there is a 1 GiB chunk, [s, e) where there is none
    os_ = np.stack((s, np.where(has, hi, e)), axis=1).ravel()
    oe = np.stack((np.where(has, lo, e), e), axis=1).ravel()
    keep = oe > os_
    return (os_[keep], (oe - os_)[keep]), inner


def _fragments(s: np.ndarray, c: np.ndarray):
    """The parts of extents outside whole 2 MiB-aligned chunks, in address order."""
    e = s + c
    a2 = -(-s // CHUNK_2M) * CHUNK_2M
    b2 = e // CHUNK_2M * CHUNK_2M
    has = b2 > a2
    fs = np.stack((s, np.where(has, b2, e)), axis=1).ravel()
    fe = np.stack((np.where(has, a2, e), e), axis=1).ravel()
    keep = fe > fs
    return fs[keep], (fe - fs)[keep]


def _owner(owner) -> int:
    return checked_int("owner (a domain id)", owner, 0)


def _extent_args(mfn, count, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate caller extents: 1-D integer arrays of equal length, counts > 0, MFNs >= 0, disjoint."""
    m = np.atleast_1d(np.asarray(mfn))
    n = np.atleast_1d(np.asarray(count))
    for name, a in (("mfn", m), ("count", n)):
        if a.ndim != 1:
            raise ValueError(f"{what}: {name} must be one-dimensional, got shape {a.shape}")
        if len(a) and (a.dtype.kind not in "iu"):
            raise ValueError(f"{what}: {name} must be integers, got dtype {a.dtype}")
    if m.shape != n.shape:
        raise ValueError(f"{what}: mfn and count differ in length ({len(m)} and {len(n)})")
    m = m.astype(_I64)
    n = n.astype(_I64)
    bad = np.flatnonzero(n <= 0)
    if len(bad):
        i = int(bad[0])
        raise ValueError(f"{what}: extent {i}: count must be positive, got {int(n[i])}")
    bad = np.flatnonzero(m < 0)
    if len(bad):
        i = int(bad[0])
        raise ValueError(f"{what}: extent {i}: mfn must be non-negative, got {int(m[i])}")
    if len(m) > 1:
        order = np.argsort(m, kind="stable")
        ms, ns = m[order], n[order]
        over = np.flatnonzero(ms[1:] < ms[:-1] + ns[:-1])
        if len(over):
            i, j = int(order[over[0]]), int(order[over[0] + 1])
            raise ValueError(f"{what}: extent {max(i, j)} (mfn {int(m[max(i, j)]):#x}, {int(n[max(i, j)])} "
                             f"pages) overlaps extent {min(i, j)} (mfn {int(m[min(i, j)]):#x}, "
                             f"{int(n[min(i, j)])} pages)")
    return m, n


def _first_hit(m: np.ndarray, n: np.ndarray, bad_s: np.ndarray) -> int:
    """Index of the caller extent holding the first page of the first bad extent."""
    p = int(bad_s[0])
    return int(np.flatnonzero((m <= p) & (p < m + n))[0])


class MachineMemory:
    """The machine memory of a host: free extents, per-owner extents, broken 2 MiB chunks."""

    def __init__(self, banks: Sequence[tuple[int, int]], fragmentation: float = 0.0, seed: int = 0):
        if (isinstance(fragmentation, bool) or not isinstance(fragmentation, numbers.Real)
                or not math.isfinite(fragmentation) or not 0.0 <= fragmentation <= 1.0):
            raise ValueError(f"fragmentation must be a number in [0, 1], got {fragmentation!r}")
        seed = checked_int("seed", seed, 0)
        bs, bc = [], []
        for bank in banks:
            try:
                base, size = (operator.index(v) for v in bank)
            except (TypeError, ValueError):
                raise ValueError(f"a RAM bank must be a pair of integers (base, size), got {bank!r}") from None
            if base < 0 or size <= 0 or base % PAGE or size % PAGE:
                raise ValueError(f"RAM bank ({base:#x}, {size:#x}) must have a non-negative base and a positive "
                                 f"size, both multiples of 4 KiB")
            bs.append(base >> PAGE_SHIFT)
            bc.append(size >> PAGE_SHIFT)
        if not bs:
            raise ValueError("a host needs at least one RAM bank, got none")
        order = np.argsort(bs, kind="stable")
        bs_a, bc_a = np.asarray(bs, _I64)[order], np.asarray(bc, _I64)[order]
        over = np.flatnonzero(bs_a[1:] < bs_a[:-1] + bc_a[:-1])
        if len(over):
            i = int(over[0])
            raise ValueError(f"RAM banks ({int(bs_a[i]) << PAGE_SHIFT:#x}, {int(bc_a[i]) << PAGE_SHIFT:#x}) and "
                             f"({int(bs_a[i + 1]) << PAGE_SHIFT:#x}, {int(bc_a[i + 1]) << PAGE_SHIFT:#x}) overlap")
        self.fragmentation = float(fragmentation)
        self.seed = seed
        self._banks = (bs_a, bc_a)
        self._ram = _merge(self._banks)
        self._total = int(bc_a.sum())
        self._rng = np.random.default_rng(seed)

        # Whole 2 MiB chunks of the banks, and the broken ones among them.
        lo = -(-bs_a // CHUNK_2M) * CHUNK_2M
        hi = (bs_a + bc_a) // CHUNK_2M * CHUNK_2M
        per = np.maximum(hi - lo, 0) // CHUNK_2M
        nchunks = int(per.sum())
        nbroken = math.floor(self.fragmentation * nchunks + 0.5)
        if nbroken:
            pick = np.sort(self._rng.choice(nchunks, size=nbroken, replace=False)).astype(_I64)
            cum = np.cumsum(per)
            bank = np.searchsorted(cum, pick, side="right")
            broken = lo[bank] + (pick - (cum - per)[bank]) * CHUNK_2M
        else:
            broken = _EMPTY
        self._broken = broken                                   # first MFNs, sorted: permanent
        self._broken_ext = _merge((broken, np.full(len(broken), CHUNK_2M, _I64)))
        self._untouched = broken.copy()                         # broken, all pages free, not yet shuffled
        self._loose = _EMPTY                                    # free pages of broken chunks, in hand-out order
        self._fs, self._fc = _diff(self._ram, self._broken_ext)  # intact free memory, merged
        self._owned: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._free = self._total

    # --- queries ---------------------------------------------------------------------------

    @property
    def total_pages(self) -> int:
        return self._total

    @property
    def free_pages(self) -> int:
        return self._free

    def owned_pages(self, owner: int) -> int:
        ext = self._owned.get(_owner(owner))
        return int(ext[1].sum()) if ext is not None else 0

    @property
    def owners(self) -> list[int]:
        return sorted(self._owned)

    @property
    def banks(self) -> tuple[tuple[int, int], ...]:
        """RAM banks as (first MFN, pages), sorted."""
        return tuple((int(s), int(c)) for s, c in zip(*self._banks))

    @property
    def broken_chunks(self) -> np.ndarray:
        """First MFNs of the broken 2 MiB chunks, sorted."""
        return self._broken.copy()

    def owned_extents(self, owner: int) -> tuple[np.ndarray, np.ndarray]:
        """The owner's pages as merged (first mfn, count) arrays (empty for an unknown owner)."""
        ext = self._owned.get(_owner(owner))
        return (ext[0].copy(), ext[1].copy()) if ext is not None else (_EMPTY.copy(), _EMPTY.copy())

    def free_extents(self) -> tuple[np.ndarray, np.ndarray]:
        """All free pages (intact and broken) as merged (first mfn, count) arrays."""
        u = self._untouched
        parts = (np.concatenate((self._fs, self._loose, u)),
                 np.concatenate((self._fc, np.ones(len(self._loose), _I64), np.full(len(u), CHUNK_2M, _I64))))
        return _merge(parts)

    # --- allocation ------------------------------------------------------------------------

    def alloc(self, npages: int, owner: int) -> tuple[np.ndarray, np.ndarray]:
        """Take `npages` free pages for `owner`: (first mfn, count) arrays of extents, in the order to use them."""
        n = checked_int("npages", npages, 1)
        owner = _owner(owner)
        if n > self._free:
            raise OutOfMemory(f"cannot allocate {n} pages ({n * 4} KiB) for owner {owner}: "
                              f"{self._free} pages free of {self._total}")
        F = (self._fs, self._fc)
        out_s: list[np.ndarray] = []
        out_c: list[np.ndarray] = []
        r = n

        def take_from_f(s: np.ndarray, c: np.ndarray) -> None:
            nonlocal F, r
            if len(s):
                F = _diff(F, (s, c))
                out_s.append(s)
                out_c.append(c)
                r -= int(c.sum())

        # 1. whole 1 GiB chunks
        if r >= CHUNK_1G:
            g = _blocks(F[0], F[1], CHUNK_1G, r // CHUNK_1G)
            take_from_f(g, np.full(len(g), CHUNK_1G, _I64))
        # 2. whole 2 MiB chunks, outside whole 1 GiB chunks first
        if r >= CHUNK_2M:
            outer, inner = _split_at_1g(*F)
            b = _blocks(outer[0], outer[1], CHUNK_2M, r // CHUNK_2M)
            if len(b) < r // CHUNK_2M:
                b = np.concatenate((b, _blocks(inner[0], inner[1], CHUNK_2M, r // CHUNK_2M - len(b))))
            take_from_f(b, np.full(len(b), CHUNK_2M, _I64))
        # 3a. intact memory that cannot make a 2 MiB chunk
        if r:
            take_from_f(*_head(*_fragments(*F), r))
        # 3b. loose pages of broken chunks, then 3c. break untouched broken chunks
        loose, untouched = self._loose, self._untouched
        if r and (len(loose) or len(untouched)):
            if len(loose) < r and len(untouched):
                k = min(len(untouched), -(-(r - len(loose)) // CHUNK_2M))
                loose = np.concatenate((loose, self._shuffled_pages(untouched[:k])))
                untouched = untouched[k:]
            m = min(r, len(loose))
            out_s.append(loose[:m])
            out_c.append(np.ones(m, _I64))
            loose = loose[m:]
            r -= m
        # 3d. a run cut from a whole 2 MiB chunk, outside whole 1 GiB chunks first
        if r:
            assert r < CHUNK_2M, "the free page count and the free extents disagree"
            outer, inner = _split_at_1g(*F)
            b = _blocks(outer[0], outer[1], CHUNK_2M, 1)
            if not len(b):
                b = _blocks(inner[0], inner[1], CHUNK_2M, 1)
            assert len(b), "the free page count and the free extents disagree"
            take_from_f(b[:1], np.array([r], _I64))
        assert r == 0
        s, c = np.concatenate(out_s), np.concatenate(out_c)
        # commit
        self._fs, self._fc = F
        self._loose, self._untouched = loose, untouched
        self._owned[owner] = _union(self._owned.get(owner, (_EMPTY, _EMPTY)), (s, c))
        self._free -= n
        return s, c

    def alloc_at(self, mfn, count, owner: int) -> None:
        """Take exactly these extents for `owner` (dom0's direct map); every page must be free."""
        m, n = _extent_args(mfn, count, "alloc_at")
        owner = _owner(owner)
        if not len(m):
            return
        req = _merge((m, n))
        rb = _inter(req, self._broken_ext)
        ri = _diff(req, self._broken_ext)
        bad = _diff(ri, (self._fs, self._fc))
        # broken pages are free if in an untouched chunk or in the loose pool
        ub = (self._untouched, np.full(len(self._untouched), CHUNK_2M, _I64))
        if not len(bad[0]) and len(rb[0]):
            rest = iv.pages(*_diff(rb, ub))
            missing = rest[~np.isin(rest, self._loose)] if len(rest) else rest
            if len(missing):
                bad = (missing[:1], np.ones(1, _I64))
        if len(bad[0]):
            i = _first_hit(m, n, bad[0])
            p = int(bad[0][0])
            raise ValueError(f"alloc_at: extent {i} (mfn {int(m[i]):#x}, {int(n[i])} pages) is not all free: "
                             f"mfn {p:#x} {self._whose(p)}")
        # commit
        self._fs, self._fc = _diff((self._fs, self._fc), ri)
        if len(rb[0]):
            us = self._untouched
            j = np.searchsorted(req[0], us + CHUNK_2M, side="left") - 1
            touched = (j >= 0) & ((req[0] + req[1])[np.maximum(j, 0)] > us)
            loose = np.concatenate((self._loose, self._shuffled_pages(us[touched])))
            self._untouched = us[~touched]
            self._loose = loose[~np.isin(loose, iv.pages(*rb))]
        self._owned[owner] = _union(self._owned.get(owner, (_EMPTY, _EMPTY)), req)
        self._free -= int(n.sum())

    def free(self, mfn, count, owner: int) -> None:
        """Give the extents back; every page must be owned by `owner`."""
        m, n = _extent_args(mfn, count, "free")
        owner = _owner(owner)
        if not len(m):
            return
        req = _merge((m, n))
        mine = self._owned.get(owner, (_EMPTY, _EMPTY))
        bad = _diff(req, mine)
        if len(bad[0]):
            i = _first_hit(m, n, bad[0])
            p = int(bad[0][0])
            raise ValueError(f"free: extent {i} (mfn {int(m[i]):#x}, {int(n[i])} pages) is not all owned by "
                             f"{owner}: mfn {p:#x} {self._whose(p)}")
        left = _diff(mine, req)
        if len(left[0]):
            self._owned[owner] = left
        else:
            del self._owned[owner]
        rb = _inter(req, self._broken_ext)
        ri = _diff(req, self._broken_ext)
        self._fs, self._fc = _union((self._fs, self._fc), ri)
        if len(rb[0]):
            self._loose = np.concatenate((self._loose, iv.pages(*rb)))
        self._free += int(n.sum())

    # --- internals -------------------------------------------------------------------------

    def _shuffled_pages(self, chunks: np.ndarray) -> np.ndarray:
        """The pages of these broken chunks, each chunk's pages in a seeded random order."""
        if not len(chunks):
            return _EMPTY
        offs = self._rng.permuted(np.tile(np.arange(CHUNK_2M, dtype=_I64), (len(chunks), 1)), axis=1)
        return (chunks[:, None] + offs).ravel()

    def _whose(self, p: int) -> str:
        """Who holds page p, for error messages."""
        for o, (s, c) in self._owned.items():
            i = int(np.searchsorted(s, p, side="right")) - 1
            if i >= 0 and p < s[i] + c[i]:
                return f"is owned by {o}"
        rs, rc = self._ram
        i = int(np.searchsorted(rs, p, side="right")) - 1
        if i < 0 or p >= rs[i] + rc[i]:
            return "is outside the host's RAM"
        return "is free"

    def check(self) -> None:
        """Assert internal consistency: free + owned == total, no page twice, all pages in RAM."""
        fs, fc = self._fs, self._fc
        for name, (s, c) in [("free", (fs, fc))] + [(f"owner {o}", e) for o, e in self._owned.items()]:
            assert len(s) == len(c), f"{name}: start and count differ in length"
            assert (c > 0).all(), f"{name}: an extent has no page"
            assert (s[1:] > s[:-1] + c[:-1]).all(), f"{name}: extents not sorted and merged"
        assert not len(_inter((fs, fc), self._broken_ext)[0]), "intact free memory holds broken pages"
        br = self._broken
        assert (br % CHUNK_2M == 0).all() and (np.diff(br) > 0).all(), "broken chunks not sorted aligned chunks"
        u = self._untouched
        assert (np.diff(u) > 0).all() and np.isin(u, br).all(), "untouched chunks are not broken chunks"
        lp = self._loose
        assert len(np.unique(lp)) == len(lp), "a loose page is listed twice"
        assert np.isin(lp // CHUNK_2M * CHUNK_2M, br).all(), "a loose page is not in a broken chunk"
        assert not np.isin(lp // CHUNK_2M * CHUNK_2M, u).any(), "a loose page is in an untouched chunk"
        free = int(fc.sum()) + len(lp) + CHUNK_2M * len(u)
        assert free == self._free, f"free page count {self._free} but the free extents hold {free}"
        s = np.concatenate([fs, lp, u] + [e[0] for e in self._owned.values()])
        c = np.concatenate([fc, np.ones(len(lp), _I64), np.full(len(u), CHUNK_2M, _I64)]
                           + [e[1] for e in self._owned.values()])
        order = np.argsort(s, kind="stable")
        s, c = s[order], c[order]
        assert (s[1:] >= s[:-1] + c[:-1]).all(), "a page is held twice"
        assert not len(_diff((s, c), self._ram)[0]), "a page outside the host's RAM is held"
        assert int(c.sum()) == self._total, f"free + owned = {int(c.sum())} pages, total {self._total}"

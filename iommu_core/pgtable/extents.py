"""Extents: the engine's unit of work, and the checks every batch passes first.

A batch is a set of extents given as parallel arrays (or scalars, broadcast).
All checks run before anything is written, so a rejected batch changes nothing;
each error names the first bad extent and why.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .descriptors import MEMTYPE_NAMES, MEMTYPES, PERM_NAMES, PERMS, allowed_perms
from .format import GRANULE, Format


class ExtentError(ValueError):
    """A batch was refused; `index` is the first bad extent (None: the batch as a whole)."""

    def __init__(self, message: str, index: int | None = None):
        super().__init__(message)
        self.index = index


class MappingConflict(ExtentError):
    """A map would replace a live mapping and remap mode is off."""


@dataclass(eq=False)
class Extents:
    """Decoded mappings: byte addresses, 4 KiB page counts and attribute codes."""

    iova: np.ndarray
    pa: np.ndarray
    npages: np.ndarray
    perm: np.ndarray
    memtype: np.ndarray
    sw: np.ndarray

    FIELDS = ("iova", "pa", "npages", "perm", "memtype", "sw")

    def __len__(self) -> int:
        return len(self.iova)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Extents):
            return NotImplemented
        return all(np.array_equal(getattr(self, f), getattr(other, f)) for f in self.FIELDS)

    def to_records(self) -> list[tuple[int, int, int, str, str, int]]:
        """Plain tuples (iova, pa, npages, perm, memtype, sw), for reading and for tests."""
        return [(int(v), int(p), int(n), PERM_NAMES[int(pe)], MEMTYPE_NAMES[int(m)], int(s))
                for v, p, n, pe, m, s in zip(self.iova, self.pa, self.npages,
                                             self.perm, self.memtype, self.sw)]

    @property
    def total_pages(self) -> int:
        return int(self.npages.sum())

    @classmethod
    def empty(cls) -> "Extents":
        z = np.zeros(0, dtype=np.uint64)
        b = np.zeros(0, dtype=np.uint8)
        return cls(z, z.copy(), np.zeros(0, dtype=np.int64), b, b.copy(), b.copy())


def merge_runs(iova: np.ndarray, pa: np.ndarray, npages: np.ndarray, attrs: np.ndarray) -> np.ndarray:
    """Indexes of the entries that start a run, for leaves sorted by iova.

    A run continues while the next leaf follows on in input and output address
    and has the same attribute bits.
    """
    if len(iova) == 0:
        return np.zeros(0, dtype=np.intp)
    size = npages.astype(np.uint64) * np.uint64(GRANULE)
    follows = ((iova[1:] == iova[:-1] + size[:-1]) & (pa[1:] == pa[:-1] + size[:-1])
               & (attrs[1:] == attrs[:-1]))
    return np.flatnonzero(np.concatenate(([True], ~follows)))


def as_int_array(name: str, value, n: int | None) -> np.ndarray:
    """value as int64 (a scalar, or a 1-d array broadcast to n when n is given); floats only
    when they hold whole numbers, so no value is silently cut."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.floor(arr)):
            arr = arr.astype(np.int64)
        else:
            raise ExtentError(f"{name} must be integers, got dtype {arr.dtype} ({value!r:.60})")
    if arr.ndim > 1:
        raise ExtentError(f"{name} must be a scalar or a 1-d array, got shape {arr.shape}")
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 8 and arr.size and arr.max() >= 1 << 63:
        i = int(np.argmax(arr >= np.uint64(1 << 63)))
        raise ExtentError(f"extent {i}: {name} {int(arr.flat[i]):#x} is beyond any address size", i)
    arr = arr.astype(np.int64, copy=False)
    return arr if n is None or arr.ndim == 1 else np.broadcast_to(arr, (n,))


def name_codes(name: str, value, table: dict[str, int], allowed, n: int) -> np.ndarray:
    """Codes of a batch's named values (one for all, or one per extent); unknown names are refused."""
    arr = np.asarray(value)
    if arr.ndim > 1:
        raise ExtentError(f"{name} must be a scalar or a 1-d array, got shape {arr.shape}")
    if arr.ndim == 0:
        v = arr.item()
        if v not in allowed:
            raise ExtentError(f"extent 0: unknown {name} {v!r}; choose from {list(allowed)}", 0)
        return np.full(n, table[v], dtype=np.uint8)
    if len(arr) != n:
        raise ExtentError(f"{name} has {len(arr)} entries for {n} extents")
    uniq, inv = np.unique(arr, return_inverse=True)
    for v in uniq.tolist():
        if v not in allowed:
            i = int(np.flatnonzero(arr == v)[0])
            raise ExtentError(f"extent {i}: unknown {name} {v!r}; choose from {list(allowed)}", i)
    return np.array([table[v] for v in uniq], dtype=np.uint8)[inv]


@dataclass
class Batch:
    """A validated batch: page numbers, sorted by input page."""

    in_page: np.ndarray      # int64, 4 KiB input page numbers
    out_page: np.ndarray     # int64 (map only)
    npages: np.ndarray       # int64
    perm: np.ndarray         # uint8 codes
    memtype: np.ndarray
    sw: np.ndarray
    index: np.ndarray        # position of each extent in the caller's batch, for error messages

    def __len__(self) -> int:
        return len(self.in_page)


def _count(iova, *others) -> int:
    sizes = {np.size(a) for a in (iova, *others) if np.ndim(a) == 1}
    if len(sizes) > 1:
        raise ExtentError(f"extent arrays differ in length: {sorted(sizes)}")
    return sizes.pop() if sizes else 1


def _check_pages(fmt: Format, iova: np.ndarray, npages: np.ndarray, name: str, limit_pages: int,
                 limit_bits: int) -> None:
    bad = (iova < 0) | (iova % GRANULE != 0)
    if bad.any():
        i = int(np.argmax(bad))
        raise ExtentError(f"extent {i}: {name} {int(iova[i]):#x} is negative or not 4 KiB-aligned", i)
    _check_ends(fmt, iova // GRANULE, npages, name, limit_pages, limit_bits)


def _check_ends(fmt: Format, page: np.ndarray, npages: np.ndarray, name: str, limit_pages: int,
                limit_bits: int) -> None:
    bad = page > limit_pages - npages
    if bad.any():
        i = int(np.argmax(bad))
        raise ExtentError(f"extent {i}: {name} range {int(page[i]) * GRANULE:#x} + {int(npages[i])} pages "
                          f"goes beyond the {limit_bits}-bit address size of {fmt.name}", i)


def _check_counts(npages: np.ndarray) -> None:
    bad = npages <= 0
    if bad.any():
        i = int(np.argmax(bad))
        raise ExtentError(f"extent {i}: npages must be positive, got {int(npages[i])}", i)


def check_input_pages(fmt: Format, page: np.ndarray, npages: np.ndarray) -> None:
    """Refuse input ranges given as 4 KiB page numbers and counts (int64 arrays) that no table
    of fmt holds, as map_batch and unmap_batch would: a caller that walks the table before
    calling them (the P2M's counters) must not read beyond it."""
    _check_counts(npages)
    bad = page < 0
    if bad.any():
        i = int(np.argmax(bad))
        raise ExtentError(f"extent {i}: iova {int(page[i]) * GRANULE:#x} is negative", i)
    _check_ends(fmt, page, npages, "iova", fmt.ia_pages, fmt.ia_bits)


def _check_disjoint(in_page: np.ndarray, npages: np.ndarray, order: np.ndarray) -> None:
    start = in_page[order]
    end = start + npages[order]
    overlap = start[1:] < end[:-1]
    if overlap.any():
        k = int(np.argmax(overlap))
        a, b = sorted((int(order[k]), int(order[k + 1])))
        raise ExtentError(f"extent {b}: overlaps extent {a} in the same batch "
                          f"(iova {int(in_page[b]) * GRANULE:#x})", b)


def _input_ranges(fmt: Format, iova, npages, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Checked input ranges of a batch: (4 KiB page numbers, page counts, order by page)."""
    iova_a = as_int_array("iova", iova, n)
    np_a = as_int_array("npages", npages, n)
    if n == 0:
        raise ExtentError("empty batch: no extents given")
    _check_counts(np_a)
    _check_pages(fmt, iova_a, np_a, "iova", fmt.ia_pages, fmt.ia_bits)
    in_page = iova_a // GRANULE
    order = np.argsort(in_page, kind="stable")
    return in_page, np_a, order


def map_batch(fmt: Format, iova, pa, npages, perm, memtype, sw) -> Batch:
    n = _count(iova, pa, npages, perm, memtype, sw)
    in_page, np_a, order = _input_ranges(fmt, iova, npages, n)
    pa_a = as_int_array("pa", pa, n)
    sw_a = as_int_array("sw", sw, n)
    _check_pages(fmt, pa_a, np_a, "pa", fmt.oa_pages, fmt.oa_bits)
    bad = (sw_a < 0) | (sw_a > 15)
    if bad.any():
        i = int(np.argmax(bad))
        raise ExtentError(f"extent {i}: sw {int(sw_a[i])} does not fit the 4 software bits (0..15)", i)
    perm_c = name_codes("perm", perm, PERMS, allowed_perms(fmt), n)
    mem_c = name_codes("memtype", memtype, MEMTYPES, tuple(MEMTYPES), n)
    _check_disjoint(in_page, np_a, order)
    return Batch(in_page[order], (pa_a // GRANULE)[order], np_a[order], perm_c[order],
                 mem_c[order], sw_a[order].astype(np.uint8), order)


def unmap_batch(fmt: Format, iova, npages) -> Batch:
    n = _count(iova, npages)
    in_page, np_a, order = _input_ranges(fmt, iova, npages, n)
    _check_disjoint(in_page, np_a, order)
    z = np.zeros(0, dtype=np.uint8)
    return Batch(in_page[order], np.zeros(0, np.int64), np_a[order], z, z, z, order)

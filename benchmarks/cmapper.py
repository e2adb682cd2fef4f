"""The C yardstick of the engine's big maps: benchmarks/cmapper.c built with gcc -O3.

The engine's big-map targets are ratios to this mapper measured in the same run:
`batched` walks once per level-3 table, as a C driver mapping an extent would;
`per-page` walks once per page. Both write the descriptors the engine writes for
4 KiB leaves (tests/test_cmapper.py), and neither keeps any count.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from iommu_core.pgtable.format import ENTRIES, GRANULE, GRANULE_SHIFT

SOURCE = Path(__file__).with_name("cmapper.c")
OA_MASK = 0x0000_FFFF_FFFF_F000
# Generic x86-64 -O3, as a distribution builds; IOMMU_BENCH_CFLAGS tries others (the README
# gives what -march=native did here).
CFLAGS = os.environ.get("IOMMU_BENCH_CFLAGS", "-O3 -shared -fPIC").split()
_I64P = np.ctypeslib.ndpointer(np.int64, flags="C_CONTIGUOUS")
_U64P = np.ctypeslib.ndpointer(np.uint64, flags="C_CONTIGUOUS")


class NoCompiler(RuntimeError):
    """No C compiler here: the C yardstick cannot be built."""


def _library() -> ctypes.CDLL:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise NoCompiler("no gcc or cc on PATH: the C yardstick needs one (Debian: apt-get install gcc)")
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(CFLAGS).encode()).hexdigest()[:16]
    lib = Path(tempfile.gettempdir()) / f"iommu-bench-cmapper-{digest}.so"
    if not lib.exists():
        part = lib.with_suffix(f".{digest}.part")
        subprocess.run([cc, *CFLAGS, "-o", str(part), str(SOURCE)], check=True, capture_output=True, text=True)
        part.replace(lib)                   # whole or not at all, if two processes build at once
    dll = ctypes.CDLL(str(lib))
    dll.map_extents.restype = ctypes.c_int64
    dll.map_extents.argtypes = [_U64P, ctypes.c_int64, _I64P, ctypes.c_uint64, ctypes.c_int, _I64P, _I64P, _I64P,
                                ctypes.c_int64, ctypes.c_uint64, ctypes.c_int, ctypes.c_int]
    return dll


class CMapper:
    """A C page table of `capacity` pages at `base` (root at page 0, levels start_level..3)."""

    def __init__(self, capacity: int, base: int, start_level: int, attrs: int, per_page: bool = False):
        self._lib = _library()
        self.mem = np.zeros(capacity * ENTRIES, np.uint64)
        self.top = np.ones(1, np.int64)
        self.base, self.start_level, self.attrs, self.per_page = base, start_level, attrs, per_page

    def _call(self, iova, pa, npages, clear: bool) -> int:
        pages = lambda a: np.ascontiguousarray(np.asarray(a, np.int64) // GRANULE)
        npages = np.ascontiguousarray(npages, np.int64)
        done = self._lib.map_extents(self.mem, len(self.mem) // ENTRIES, self.top, self.base, self.start_level,
                                     pages(iova), pages(pa), npages, len(npages), self.attrs,
                                     int(self.per_page), int(clear))
        if done < 0:
            raise MemoryError(f"C mapper: pool of {len(self.mem) // ENTRIES} pages is full")
        return done

    def map(self, iova, pa, npages) -> int:
        return self._call(iova, pa, npages, False)

    def unmap(self, iova, npages) -> int:
        return self._call(iova, iova, npages, True)

    def leaves(self) -> np.ndarray:
        """The level-3 descriptors that are set, sorted (what the maps wrote): the tree walked
        down from the root."""
        rows = self.mem.reshape(-1, ENTRIES)
        tables = np.zeros(1, np.int64)
        for _ in range(self.start_level, 3):
            desc = rows[tables].ravel()
            desc = desc[desc != 0]
            tables = ((desc & np.uint64(OA_MASK)) - np.uint64(self.base)).astype(np.int64) >> GRANULE_SHIFT
        desc = rows[tables].ravel()
        return np.sort(desc[desc != 0])

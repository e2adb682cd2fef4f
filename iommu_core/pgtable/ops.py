"""The operations every page table of this package provides, declared once.

`table.PageTable` (the vectorized engine) and `reference.ReferencePageTable`
(the per-page oracle) both satisfy `TableOps`, so code and tests that drive
either one can say so. What the two do differently stays off this list:
translate's result (a `walk.Translation` from the engine, a tuple of arrays
from the reference), table_bytes (a property of the engine, a method of the
reference) and everything only the engine has (stats, probe, load).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from .extents import Extents
from .format import Format


@runtime_checkable
class TableOps(Protocol):
    fmt: Format
    reclaim: bool

    @property
    def base(self) -> int:
        """Physical address of the table pool (the root sits there)."""

    @property
    def root(self) -> int:
        """Physical address of the root table."""

    def map(self, iova, pa, npages, perm="rw", memtype="normal", sw=0, leaf="auto", remap=False):
        """Map extents (scalars or arrays) of `npages` 4 KiB pages; all or nothing."""

    def unmap(self, iova, npages):
        """Unmap page ranges, splitting blocks that are only partly inside one."""

    def leaves(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every valid leaf: (iova, level, descriptor), sorted by iova."""

    def mappings(self) -> Extents:
        """The table decoded into the fewest extents."""

    def export(self, path):
        """Write <path>.bin (the pool from `base`) and <path>.json (what a walker needs)."""

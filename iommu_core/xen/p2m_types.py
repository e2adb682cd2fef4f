"""Xen on ARM's P2M types: kept in each stage-2 entry's software bits.

The permission a device gets through the IOMMU is derived from the type by
one table (as Xen's p2m_set_permission derives the CPU's), never stored twice.
"""

from __future__ import annotations

import numpy as np

from ..pgtable.descriptors import MEMTYPES, PERMS
from ..pgtable.extents import name_codes

# Order = the code stored in the entry's software bits [58:55].
TYPES = ("invalid", "ram_rw", "ram_ro", "mmio_direct_dev", "mmio_direct_nc", "mmio_direct_c",
         "map_foreign_rw", "map_foreign_ro", "grant_map_rw", "grant_map_ro", "iommu_map_rw", "iommu_map_ro")
CODE = {name: code for code, name in enumerate(TYPES)}

# Permission of a device's DMA to a page of each type (HARDWARE.md); the CPU's
# stage-2 permission is the same in Xen on ARM.
DMA_PERM = {
    "invalid": "none",
    "ram_rw": "rw", "ram_ro": "r",
    "mmio_direct_dev": "rw", "mmio_direct_nc": "rw", "mmio_direct_c": "rw",
    "map_foreign_rw": "rw", "map_foreign_ro": "r",
    "grant_map_rw": "rw", "grant_map_ro": "r",
    "iommu_map_rw": "rw", "iommu_map_ro": "r",
}
MEMTYPE = {name: ("device" if name == "mmio_direct_dev" else "normal-nc" if name == "mmio_direct_nc" else "normal")
           for name in TYPES}

# Lookups by code, for arrays of entries.
PERM_NAME_BY_CODE = np.array([DMA_PERM[t] for t in TYPES])
MEMTYPE_NAME_BY_CODE = np.array([MEMTYPE[t] for t in TYPES])
DMA_PERM_BY_CODE = np.array([PERMS[DMA_PERM[t]] for t in TYPES] + [0] * (16 - len(TYPES)), np.uint8)
MEMTYPE_BY_CODE = np.array([MEMTYPES[MEMTYPE[t]] for t in TYPES] + [0] * (16 - len(TYPES)), np.uint8)


def codes(types, n: int) -> np.ndarray:
    """Type codes of a batch: one name for all, or one per extent. Unknown names are refused."""
    return name_codes("P2M type", types, CODE, TYPES, n)


def one_or_each(codes: np.ndarray, names) -> str | list[str]:
    """The engine's names for per-extent codes: one name when the whole batch shares it (the usual
    case, and far cheaper for the engine to check than a list), else one per extent."""
    first = int(codes[0])
    return str(names[first]) if (codes == first).all() else [str(names[c]) for c in codes.tolist()]

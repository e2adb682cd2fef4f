"""The cost model: counts of work times constants, each with its source.

A figure nobody has published is still a named constant with a stated default,
so a sweep can vary it. Times are in nanoseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

SOURCES = {
    "map_call_ns": "Linux iommupt patches (2025): software iommu_map of one 4 KiB page ~60-70 ns",
    "map_page_ns": "same: 256 x 4 KiB in one call ~390 ns, so (390 - 65) / 255 per further page",
    "unmap_call_ns": "same: unmap of one 4 KiB page ~70-90 ns",
    "iotlb_inv_ns": "Akaros commit 81b6433a: VT-d IOTLB invalidation and wait ~800 ns; the IPMMU polls "
                    "up to 100 us (Linux/Xen ipmmu-vmsa.c) with no measured figure: sweep it",
    "cache_clean_line_ns": "not published: the clean of one 64-byte line for a non-coherent walker; swept",
    "table_alloc_ns": "not published: allocating and zeroing a 4 KiB table page (its 64 line cleans "
                      "are charged separately); assumed",
    "populate_page_ns": "not published: finding one mapped GFN by a walk of the P2M (no M2P on ARM); assumed",
    "p2m_call_ns": "assumed equal to an IOMMU map call: the same table code walks the stage-2 table",
    "tlb_flush_ns": "assumed equal to an IOTLB invalidation: a stage-2 TLB flush by VMID after a "
                    "break-before-make",
}


@dataclass(frozen=True)
class CostModel:
    map_call_ns: float = 65.0
    map_page_ns: float = 1.27
    unmap_call_ns: float = 80.0
    iotlb_inv_ns: float = 800.0
    cache_clean_line_ns: float = 20.0
    table_alloc_ns: float = 500.0
    populate_page_ns: float = 50.0
    p2m_call_ns: float = 65.0
    tlb_flush_ns: float = 800.0

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, (int, float)) or v < 0 or v != v:
                raise ValueError(f"cost model: {f.name} must be a non-negative number of ns, got {v!r}")

    @classmethod
    def with_overrides(cls, **overrides) -> "CostModel":
        unknown = sorted(set(overrides) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"cost model: unknown constant {unknown[0]!r}; known: {sorted(SOURCES)}")
        return cls(**overrides)

"""iommu-bench: what an unshared IOMMU page table costs a hypervisor."""

from .pgtable import (
           PRESETS,
           ExtentError,
           Extents,
           Format,
           MappingConflict,
           PageTable,
           Translation,
)

__version__ = "0.1.0"

__all__ = ["Extents", "ExtentError", "Format", "MappingConflict", "PRESETS", "PageTable", "Translation",
           "__version__"]

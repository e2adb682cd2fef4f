"""The page-table engine: ARM LPAE formats, descriptors and a vectorized table.

Knows formats and descriptors, nothing of Xen.
"""

from .extents import ExtentError, Extents, MappingConflict
from .format import PRESETS, Format
from .table import PageTable, Translation

__all__ = ["Extents", "ExtentError", "Format", "MappingConflict", "PRESETS", "PageTable", "Translation"]

"""Reading device-tree nodes (python-fdt's): a node's path, a property's bytes, strings and
32-bit cells, #address-cells style counts, availability. The board reader (devicetree.py) and
what Xen's domain builder takes from a tree (xen_dom0.py) both read nodes through these."""

from __future__ import annotations

import struct

import fdt

DEFAULT_ADDRESS_CELLS = 2
DEFAULT_SIZE_CELLS = 1


def node_path(node) -> str:
    if node.parent is None:
        return "/"
    parent = node.path
    return (parent.rstrip("/") + "/" + node.name) if parent != "/" else "/" + node.name


def prop_bytes(prop) -> bytes:
    """A property's value as the bytes a blob holds, whatever class fdt chose for it."""
    if prop is None:
        return b""
    if isinstance(prop, fdt.PropWords):
        return b"".join(struct.pack(">I", w) for w in prop.data)
    if isinstance(prop, fdt.PropBytes):
        return bytes(prop.data)
    if isinstance(prop, fdt.PropStrings):
        return b"".join(s.encode("ascii") + b"\0" for s in prop.data)
    return b""


def prop_strings(node, name: str) -> list[str]:
    raw = prop_bytes(node.get_property(name))
    return [s.decode("ascii", "replace") for s in raw.split(b"\0") if s]


def prop_cells(node, name: str, where: str) -> list[int]:
    raw = prop_bytes(node.get_property(name))
    if len(raw) % 4:
        raise ValueError(f"{where}: {name} is {len(raw)} bytes, not a whole number of 32-bit cells")
    return [w for (w,) in struct.iter_unpack(">I", raw)]


def cell_count(node, name: str, default: int, where: str) -> int:
    if node.get_property(name) is None:
        return default
    cells = prop_cells(node, name, where)
    if len(cells) != 1:
        raise ValueError(f"{where}: {name} must be one cell, got {len(cells)}")
    return cells[0]


def join_cells(cells: list[int]) -> int:
    v = 0
    for c in cells:
        v = (v << 32) | c
    return v


def is_available(node) -> bool:
    status = prop_strings(node, "status")
    return not status or status[0] in ("okay", "ok")

"""Board profiles from flattened device trees (.dts text or .dtb blobs), and back.

`board_from_devicetree(path)` reads a tree with the pure-Python `fdt` package and
builds a `Board` (iommu_core.xen.board); `board_to_dts(board)` writes a .dts that
reads back to the same board. data/h3.dts is `board_to_dts(h3())`.

Reading rules
-------------
- Format: a file starting with the FDT magic 0xd00dfeed, or named *.dtb / *.dtbo,
  is a blob; anything else is .dts text. The .dts must be preprocessed (no
  `#include`: run cpp, or compile with dtc to a .dtb) and fdt's parser does not
  apply top-level `&label { ... };` overrides (compile those with dtc too).
- Addresses: a node's `reg` is parsed with its parent's `#address-cells` /
  `#size-cells` (default 2 and 1, as the devicetree spec says; they are not
  inherited). The walk starts at the root and descends only into `simple-bus`
  nodes (compatible contains "simple-bus", e.g. /soc), each with its own cells;
  children of other nodes (PCI, I2C, reserved-memory, ...) are not memory-mapped
  and are ignored. A bus without `ranges`, or with an empty `ranges;`, is taken as
  identity; a non-empty `ranges` is applied (one level of (child, parent, size)
  windows per bus; a `reg` outside every window is an error).
- Status: a node whose `status` is present and not "okay"/"ok" (e.g. "disabled")
  is skipped with its whole subtree.
- RAM: a node with device_type = "memory", or named memory / memory@..., gives one
  RAM bank per reg pair (zero-sized pairs ignored), sorted by base.
- IOMMUs: a node whose compatible contains "ipmmu", or whose name starts with
  "iommu" or "ipmmu", is an IOMMU and contributes no MMIO. IOMMU nodes without
  `renesas,ipmmu-main` are main IPMMUs: `Board.ipmmus` is their number (at least 1),
  numbered in tree order; a cache IPMMU's `renesas,ipmmu-main = <&main N>` names its
  main IPMMU.
- DMA masters: a node with `reg` and `iommus` (or `iommu-map`, whose second cell is
  the phandle) is a `DmaMaster`: name = node name without the unit address (when
  names repeat among masters, the full node name with the unit address, and the
  full path if that repeats too); regions = its reg pairs; ipmmu = the label of the
  IOMMU node its first phandle points to (the node's dts label, else its label in
  /__symbols__ of a `dtc -@` blob, else its node name without the unit address)
  with an "ipmmu_" / "ipmmu-" prefix stripped ("ipmmu_ds0" -> "ds0"), or "unknown"
  when the phandle resolves to no node; main_ipmmu = the index of that IOMMU's main
  IPMMU (0 when unknown).
- Other MMIO: every other node with `reg` (not RAM, not an IOMMU, not a master).
- Pages: a region's base is rounded down to 4 KiB and its end up. A master's own
  regions keep their reg order and are merged only where they then overlap
  (touching ones stay apart, like PCIe windows); other MMIO regions are
  sorted and merged where they overlap or touch, and pages that belong to a master
  are cut out of them, so Board's overlap checks only fail for genuine clashes
  (two masters, or MMIO and RAM).
- Board: name = `name` or the file's stem ("h3.dts" -> "h3"); ipmmu_contexts and
  reserved_contexts come from the arguments (a tree does not say them).
- Whole trees only: a .dts must close every comment, string, `{` (with `};`), `<`
  and `[` before the file ends; a .dtb's header sizes must fit the file and its
  structure block must run from FDT_BEGIN_NODE to FDT_END (fdt's parser would take
  the first part of a cut file, or fail with an IndexError).
- Errors: a missing or unreadable file, a tree that is not whole, a tree fdt cannot parse, a `reg` whose
  length is not a whole number of (address + size) cells, a `reg` outside its
  bus's ranges, no memory node, or a Board that refuses the result: ValueError
  naming the file and the node path.

So `board_from_devicetree(board_to_dts(b))` equals `b` except that other_mmio is
sorted and merged as above (the same pages) and the name comes from the file.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import fdt
import numpy as np

from iommu_core import intervals as iv
from iommu_core.xen.board import PAGE, Board, DmaMaster, MmioRegion

from .fdtnodes import (
    DEFAULT_ADDRESS_CELLS,
    DEFAULT_SIZE_CELLS,
    cell_count,
    is_available,
    join_cells,
    node_path,
    prop_cells,
    prop_strings,
)
from .xen_dom0 import boot_modules, cpu_pa_bits, dom0_mmio_calls

FDT_MAGIC = b"\xd0\x0d\xfe\xed"

__all__ = ["board_from_devicetree", "board_to_dts"]


def _base_name(name: str) -> str:
    return name.split("@", 1)[0]


def _is_memory(node) -> bool:
    return "memory" in prop_strings(node, "device_type") or _base_name(node.name) == "memory"


def _is_iommu(node) -> bool:
    return (any("ipmmu" in c for c in prop_strings(node, "compatible"))
            or node.name.startswith(("iommu", "ipmmu")))


def _is_bus(node) -> bool:
    return "simple-bus" in prop_strings(node, "compatible")


def _all_nodes(root):
    stack = [root]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(node.nodes))


# --- reading --------------------------------------------------------------------------------

_FDT_BEGIN_NODE, _FDT_END = 0x1, 0x9
_HEADER = struct.Struct(">10I")       # magic, totalsize, off_dt_struct, off_dt_strings, off_mem_rsvmap,
                                      # version, last_comp_version, boot_cpuid_phys, size_dt_strings, size_dt_struct


def _check_dtb(data: bytes, path: Path) -> None:
    """A blob is whole before fdt reads it: header sizes within the file, a structure block that starts
    with a node and ends with FDT_END (fdt's parser reads past a truncated end with an IndexError)."""
    def bad(what):
        return ValueError(f"{path}: cannot parse the device tree (node /): not a whole blob: {what}")
    if len(data) < _HEADER.size:
        raise bad(f"{len(data)} bytes, shorter than the {_HEADER.size}-byte header")
    (magic, total, off_struct, off_strings, off_rsv, version, _, _, size_strings,
     size_struct) = _HEADER.unpack_from(data)
    if magic != 0xD00DFEED:
        raise bad(f"magic {magic:#010x} (expected 0xd00dfeed)")
    if total > len(data):
        raise bad(f"the header says {total} bytes, the file has {len(data)} (truncated?)")
    if version < 16:
        raise bad(f"version {version} (expected 16 or later)")
    if version < 17:
        size_struct = total - off_struct          # version 16 does not give the size
    for name, off, size in (("memory reservation block", off_rsv, 16), ("structure block", off_struct, size_struct),
                            ("strings block", off_strings, size_strings)):
        if off < _HEADER.size or off + size > total:
            raise bad(f"the {name} [{off}, {off + size}) lies outside the blob's {total} bytes")
    if size_struct < 8 or size_struct % 4:
        raise bad(f"a structure block of {size_struct} bytes (expected a whole number of 4-byte tokens)")
    first, = struct.unpack_from(">I", data, off_struct)
    last, = struct.unpack_from(">I", data, off_struct + size_struct - 4)
    if first != _FDT_BEGIN_NODE or (version >= 17 and last != _FDT_END):
        raise bad(f"the structure block starts with token {first:#x} and ends with {last:#x} "
                  f"(expected FDT_BEGIN_NODE {_FDT_BEGIN_NODE:#x} ... FDT_END {_FDT_END:#x})")


def _check_dts(text: str, path: Path) -> None:
    """The text is one whole tree: comments and strings closed, braces balanced, every `}` followed by `;`,
    every `<` closed by `>` and `[` by `]` before the statement ends, and nothing left open at the end.
    fdt's parser accepts a file cut in half, or a `}` without its `;`, and silently drops the rest."""
    def bad(line, what):
        return ValueError(f"{path}: cannot parse the device tree: line {line}: {what}")
    stack: list[tuple[str, int]] = []          # open '{', '<', '[' with their lines
    line, i, n, last = 1, 0, len(text), ""
    closers = {"{": "}", "<": ">", "[": "]"}
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end < 0:
                raise bad(line, "a comment /* is never closed (expected */)")
            line += text.count("\n", i, end)
            i = end + 2
            continue
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        elif c == '"' or (c == "'" and stack and stack[-1][0] == "<"):
            j = i + 1
            while j < n and text[j] != c:
                if text[j] == "\n":
                    raise bad(line, f"a string opened with {c} is not closed on its line (expected {c})")
                j += 2 if text[j] == "\\" else 1
            if j >= n:
                raise bad(line, f"a string opened with {c} is never closed (expected {c})")
            i, last = j + 1, c
            continue
        elif stack and stack[-1][0] == "<":           # inside a cell list: ( ) nest, > closes it
            if text.startswith("&{", i):                # a path reference, <&{/soc/node}>
                end = text.find("}", i)
                if end < 0 or "\n" in text[i:end]:
                    raise bad(line, "a path reference &{ is not closed on its line (expected })")
                i = end + 1
                continue
            if c == "(":
                stack.append(("(", line))
            elif c == ">":
                stack.pop()
            elif c in ";{}":
                raise bad(line, f"{c!r} inside the cell list opened with '<' at line {stack[-1][1]} "
                                f"(expected '>' first)")
        elif stack and stack[-1][0] == "(":
            if c == "(":
                stack.append(("(", line))
            elif c == ")":
                stack.pop()
            elif c in ";{}":
                raise bad(line, f"{c!r} inside the '(' opened at line {stack[-1][1]} (expected ')' first)")
        elif stack and stack[-1][0] == "[":
            if c == "]":
                stack.pop()
            elif c in ";{}<":
                raise bad(line, f"{c!r} inside the byte string opened with '[' at line {stack[-1][1]} "
                                f"(expected ']' first)")
        elif c in "{<[":
            stack.append((c, line))
        elif c == "}":
            if not stack:
                raise bad(line, "'}' without a '{' to close")
            stack.pop()
            j = i + 1
            while j < n and text[j] in " \t\r\n":
                j += 1
            if j >= n or text[j] != ";":
                raise bad(line, f"'}}' not followed by ';' (expected '}};' to end the node; got "
                                f"{text[j:j + 10]!r})")
        elif c in ">])":
            raise bad(line, f"{c!r} without an opening bracket")
        if not c.isspace():
            last = c
        i += 1
    if stack:
        kind, opened = stack[-1]
        raise bad(line, f"the file ends inside the {kind!r} opened at line {opened} (expected "
                        f"{closers.get(kind, ')')!r}: is the file cut short?)")
    if last not in ("", ";"):
        raise bad(line, f"the file ends with {last!r} (expected ';' after the last statement)")


def _load(path: Path):
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{path}: no such device tree file (node /)") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read the device tree (node /): {e}") from None
    try:
        if data.startswith(FDT_MAGIC) or path.suffix in (".dtb", ".dtbo"):
            _check_dtb(data, path)
            tree = fdt.parse_dtb(data)
        else:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}: neither a device tree blob (no magic 0xd00dfeed) nor UTF-8 .dts "
                                 f"text (byte {e.start} is {data[e.start]:#04x})") from None
            if re.search(r"^\s*#include\b", text, flags=re.MULTILINE):
                raise ValueError("#include is not supported: preprocess with cpp or compile with dtc")
            _check_dts(text, path)
            tree = fdt.parse_dts(text, root_dir=str(path.parent))
    except ValueError as e:
        if str(e).startswith(str(path)):
            raise
        raise ValueError(f"{path}: cannot parse the device tree (node /): {e}") from None
    except Exception as e:  # noqa: BLE001 -- fdt raises bare Exception, AssertionError, struct.error, ...
        raise ValueError(f"{path}: cannot parse the device tree (node /): {type(e).__name__}: {e}") from None
    if tree.root is None:
        raise ValueError(f"{path}: the device tree has no root node (node /)")
    return tree


class _Reader:
    def __init__(self, path: Path, tree):
        self.file = path
        self.root = tree.root
        self.by_phandle: dict[int, object] = {}
        symbols: dict[str, str] = {}
        for node in _all_nodes(self.root):
            for prop in ("phandle", "linux,phandle"):
                cells = prop_cells(node, prop, self.where(node)) if node.get_property(prop) is not None else []
                if len(cells) == 1:
                    self.by_phandle.setdefault(cells[0], node)
            if node.name == "__symbols__" and node.parent is self.root:
                for prop in node.props:
                    value = prop_strings(node, prop.name)
                    if value:
                        symbols.setdefault(value[0], prop.name)
        self.symbols = symbols
        self.mains = [n for n in _all_nodes(self.root)
                      if _is_iommu(n) and is_available(n) and n.get_property("renesas,ipmmu-main") is None]

    def where(self, node) -> str:
        return f"{self.file}: node {node_path(node)}"

    # addresses

    def _reg(self, node, ac: int, sc: int, windows) -> list[tuple[int, int]]:
        where = self.where(node)
        cells = prop_cells(node, "reg", where)
        step = ac + sc
        if step == 0 or len(cells) % step:
            raise ValueError(f"{where}: reg has {len(cells)} cells, not a multiple of "
                             f"#address-cells + #size-cells = {ac} + {sc}")
        out = []
        for i in range(0, len(cells), step):
            base = join_cells(cells[i:i + ac])
            size = join_cells(cells[i + ac:i + step])
            out.append((self._translate(base, size, windows, where), size))
        return out

    @staticmethod
    def _translate(base: int, size: int, windows, where: str) -> int:
        if windows is None:
            return base
        for child, parent, length in windows:
            if child <= base and base + size <= child + length:
                return parent + (base - child)
        raise ValueError(f"{where}: reg [{base:#x}, {base + size:#x}) lies outside its bus's ranges")

    def _windows(self, bus, ac: int, sc: int, parent_ac: int, parent_windows):
        """The bus's ranges as (child, parent-bus address, size) triples, None for identity."""
        where = self.where(bus)
        if bus.get_property("ranges") is None:
            return parent_windows
        cells = prop_cells(bus, "ranges", where)
        if not cells:
            return parent_windows
        step = ac + parent_ac + sc
        if len(cells) % step:
            raise ValueError(f"{where}: ranges has {len(cells)} cells, not a multiple of "
                             f"child + parent address cells + size cells = {ac} + {parent_ac} + {sc}")
        out = []
        for i in range(0, len(cells), step):
            child = join_cells(cells[i:i + ac])
            parent = join_cells(cells[i + ac:i + ac + parent_ac])
            size = join_cells(cells[i + ac + parent_ac:i + step])
            out.append((child, self._translate(parent, size, parent_windows, where), size))
        if all(c == p for c, p, _ in out) and parent_windows is None:
            return None
        return out

    def walk(self):
        """Yield (node, [(base, size), ...]) for every available node with reg on the root or a simple-bus."""
        def visit(bus, windows, bus_ac):
            where = self.where(bus)
            ac = cell_count(bus, "#address-cells", DEFAULT_ADDRESS_CELLS, where)
            sc = cell_count(bus, "#size-cells", DEFAULT_SIZE_CELLS, where)
            if bus is not self.root:
                windows = self._windows(bus, ac, sc, bus_ac, windows)
            for child in bus.nodes:
                if not is_available(child):
                    continue
                if child.get_property("reg") is not None:
                    yield child, self._reg(child, ac, sc, windows)
                if _is_bus(child):
                    yield from visit(child, windows, ac)
        yield from visit(self.root, None, None)

    # IOMMUs

    def iommu_of(self, node) -> tuple[str, int]:
        where = self.where(node)
        if node.get_property("iommus") is not None:
            cells = prop_cells(node, "iommus", where)
            phandle = cells[0] if cells else None
        else:
            cells = prop_cells(node, "iommu-map", where)
            phandle = cells[1] if len(cells) > 1 else None
        target = self.by_phandle.get(phandle)
        if target is None:
            return "unknown", 0
        label = target.label or self.symbols.get(node_path(target)) or _base_name(target.name)
        for prefix in ("ipmmu_", "ipmmu-"):
            if label.startswith(prefix) and len(label) > len(prefix):
                label = label[len(prefix):]
                break
        return label, self._main_index(target)

    def _main_index(self, iommu) -> int:
        # fdt's Node.__eq__ compares contents: look nodes up by identity.
        ids = [id(n) for n in self.mains]
        if id(iommu) in ids:
            return ids.index(id(iommu))
        if iommu.get_property("renesas,ipmmu-main") is not None:
            cells = prop_cells(iommu, "renesas,ipmmu-main", self.where(iommu))
            main = self.by_phandle.get(cells[0]) if cells else None
            if id(main) in ids:
                return ids.index(id(main))
        return 0


def _pages(base: int, size: int) -> tuple[int, int]:
    start = base // PAGE * PAGE
    end = -(-(base + size) // PAGE) * PAGE
    return start, end


def _in_pages(spans: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Page-aligned (start, end) byte spans as int64 arrays of first and end pages (exact for
    any 64-bit address, where bytes might not fit)."""
    a = np.array([(b // PAGE, e // PAGE) for b, e in spans], np.int64).reshape(-1, 2)
    return a[:, 0], a[:, 1]


def _in_bytes(pages: tuple) -> list[tuple[int, int]]:
    """(start, end) byte spans, Python ints, from arrays of first and end pages."""
    return [(b * PAGE, e * PAGE) for b, e in zip(pages[0].tolist(), pages[1].tolist())]


def board_from_devicetree(path, name: str | None = None, contexts: int = 8, reserved: int = 1) -> Board:
    """The Board a .dts or .dtb file describes (rules: the module docstring)."""
    path = Path(path)
    tree = _load(path)
    r = _Reader(path, tree)
    banks: list[tuple[int, int]] = []
    saw_memory = False
    found: list[tuple[object, list[tuple[int, int]], str, int]] = []   # masters: node, regs, ipmmu, main
    other: list[tuple[int, int]] = []
    for node, regs in r.walk():
        if _is_memory(node):
            saw_memory = True
            banks.extend((b, s) for b, s in regs if s)
        elif _is_iommu(node):
            continue
        elif node.get_property("iommus") is not None or node.get_property("iommu-map") is not None:
            found.append((node, regs, *r.iommu_of(node)))
        else:
            other.extend(_pages(b, s) for b, s in regs if s)
    if not saw_memory:
        raise ValueError(f"{path}: no memory node (device_type = \"memory\" or memory@...) "
                         f"under / or a simple-bus (node /)")
    base_names = [_base_name(n.name) for n, *_ in found]
    full_names = [n.name for n, *_ in found]
    masters = []
    for node, regs, ipmmu, main in found:
        mname = _base_name(node.name)
        if base_names.count(mname) > 1:
            mname = node.name if full_names.count(node.name) == 1 else node_path(node)
        spans = _in_bytes(iv.union_in_order(*_in_pages([_pages(b, s) for b, s in regs if s])))
        if not spans:
            raise ValueError(f"{r.where(node)}: DMA master has no non-empty reg region")
        try:
            masters.append(DmaMaster(mname, tuple(MmioRegion(b, e - b) for b, e in spans), ipmmu, main))
        except ValueError as e:
            raise ValueError(f"{r.where(node)}: {e}") from None
    held = iv.union(*_in_pages([(rg.base, rg.end) for m in masters for rg in m.regions]))
    other_regions = tuple(MmioRegion(b, e - b) for b, e in _in_bytes(iv.subtract(iv.union(*_in_pages(other)), held)))

    banks = sorted(banks)
    try:
        return Board(name=name or path.stem, ram_banks=tuple(banks), masters=tuple(masters),
                     other_mmio=other_regions, ipmmu_contexts=contexts, reserved_contexts=reserved,
                     ipmmus=max(1, len(r.mains)), dom0_mmio=tuple(dom0_mmio_calls(tree.root)),
                     pa_bits=cpu_pa_bits(tree.root), boot_modules=tuple(boot_modules(tree.root)))
    except ValueError as e:
        raise ValueError(f"{path}: node /: {e}") from None


# --- writing --------------------------------------------------------------------------------

_NODE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9,._+-]*$")


def _reg(base: int, size: int) -> str:
    return f"<0x{base >> 32:x} 0x{base & 0xFFFF_FFFF:x} 0x{size >> 32:x} 0x{size & 0xFFFF_FFFF:x}>"


def board_to_dts(board: Board) -> str:
    """A .dts text of `board` that board_from_devicetree reads back to the same board.

    Layout: 2/2 cells everywhere; one memory@... node per RAM bank; a /soc simple-bus
    (identity `ranges;`) holding main IPMMU nodes ipmmu_mm (ipmmu_mm0, ipmmu_mm1, ...
    when the board has several), one cache IPMMU node per group (label ipmmu_<group>,
    `renesas,ipmmu-main = <&ipmmu_mm N>`), one node <name>@<first base> per master with
    `iommus = <&ipmmu_<group> N>` (N counts masters within the group: a made-up
    micro-TLB number), and one mmio@<base> node per other MMIO region. IPMMU nodes have
    no reg (a board profile does not say where their registers are).
    """
    for m in board.masters:
        if (not _NODE_NAME.match(m.name) or _base_name(m.name) == "memory"
                or m.name.startswith(("iommu", "ipmmu"))):
            raise ValueError(f"board {board.name}: master name {m.name!r} cannot be a device tree node name "
                             f"that reads back as a DMA master")
    groups: dict[str, int] = {}
    for m in board.masters:
        if not re.match(r"^[A-Za-z0-9_-]+$", m.ipmmu):
            raise ValueError(f"board {board.name}: IPMMU group {m.ipmmu!r} cannot be a device tree label")
        if groups.setdefault(m.ipmmu, m.main_ipmmu) != m.main_ipmmu:
            raise ValueError(f"board {board.name}: IPMMU group {m.ipmmu!r} sits behind main IPMMUs "
                             f"{groups[m.ipmmu]} and {m.main_ipmmu}; a tree gives a group one main IPMMU")
    mains = ["ipmmu_mm"] if board.ipmmus == 1 else [f"ipmmu_mm{i}" for i in range(board.ipmmus)]
    t = "\t"
    lines = [
        "/dts-v1/;",
        "",
        "/ {",
        f'{t}model = "iommu-bench board {board.name}";',
        f'{t}compatible = "iommu-bench,{board.name}";',
        f"{t}#address-cells = <2>;",
        f"{t}#size-cells = <2>;",
        "",
    ]
    for base, size in board.ram_banks:
        lines += [f"{t}memory@{base:x} {{",
                  f'{t}{t}device_type = "memory";',
                  f"{t}{t}reg = {_reg(base, size)};",
                  f"{t}}};", ""]
    lines += [f"{t}soc {{",
              f'{t}{t}compatible = "simple-bus";',
              f"{t}{t}#address-cells = <2>;",
              f"{t}{t}#size-cells = <2>;",
              f"{t}{t}ranges;", ""]
    for label in mains:
        lines += [f"{t}{t}{label}: {label.replace('_', '-')} {{",
                  f'{t}{t}{t}compatible = "renesas,ipmmu-vmsa";',
                  f"{t}{t}{t}#iommu-cells = <1>;",
                  f"{t}{t}}};", ""]
    for i, (group, main) in enumerate(groups.items()):
        label = f"ipmmu_{group}"
        lines += [f"{t}{t}{label}: ipmmu-{group} {{",
                  f'{t}{t}{t}compatible = "renesas,ipmmu-vmsa";',
                  f"{t}{t}{t}#iommu-cells = <1>;",
                  f"{t}{t}{t}renesas,ipmmu-main = <&{mains[main]} {i}>;",
                  f"{t}{t}}};", ""]
    utlb: dict[str, int] = {}
    for m in board.masters:
        n = utlb.get(m.ipmmu, 0)
        utlb[m.ipmmu] = n + 1
        regs = ", ".join(_reg(r.base, r.size) for r in m.regions)
        lines += [f"{t}{t}{m.name}@{m.regions[0].base:x} {{",
                  f"{t}{t}{t}reg = {regs};",
                  f"{t}{t}{t}iommus = <&ipmmu_{m.ipmmu} {n}>;",
                  f"{t}{t}}};", ""]
    for r in board.other_mmio:
        lines += [f"{t}{t}mmio@{r.base:x} {{",
                  f"{t}{t}{t}reg = {_reg(r.base, r.size)};",
                  f"{t}{t}}};", ""]
    lines += [f"{t}}};", "};", ""]
    return "\n".join(lines)


# --- the shipped H3 profile -----------------------------------------------------------------

H3_DTS = Path(__file__).with_name("data") / "h3.dts"

H3_DTS_HEADER = """\
// R-Car H3 Salvator-X board profile of iommu-bench: the h3() board of
// iommu_core/xen/board.py, from the "R-Car H3 Salvator-X" section of
// shared/HARDWARE.md (RAM banks, DMA masters and their IPMMU groups, other MMIO).
// Not a Linux device tree: only what a Board needs. Node names are the master
// names; the second iommus cell is a made-up micro-TLB number; IPMMU nodes have
// no reg. Edit it, or copy it, and load it with
// iommu_core.scenarios.devicetree.board_from_devicetree(path).
// Regenerate with: python -m iommu_core.scenarios.devicetree
"""


def h3_dts() -> str:
    """The text of data/h3.dts: the header comment, then board_to_dts(h3())."""
    from iommu_core.xen.board import h3
    return H3_DTS_HEADER + "\n" + board_to_dts(h3())


if __name__ == "__main__":
    H3_DTS.write_text(h3_dts())
    print(f"wrote {H3_DTS}")

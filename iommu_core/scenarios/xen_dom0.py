"""What Xen 4.17's domain builder takes from a device tree for dom0.

- MMIO: handle_node walks the whole tree (xen-project/xen:xen/arch/arm/domain_build.c
  @ RELEASE-4.17.0:2522) and skips, with their subtrees: the compatibles and paths of
  skip_matches (multiboot modules, PSCI, PMUs, /cpus, memory, the memory-mapped
  timer), the interrupt controller (replaced by Xen's own node), the architected
  timer, the UART Xen uses (its console: /chosen stdout-path), IOMMUs, disabled
  nodes and nodes with PPIs. For every other node, handle_device maps each `reg`
  range, and for a PCI host bridge each `ranges` window too, one map_regions_p2mt
  call per range of PFN_UP(size) pages from the range's first frame, as
  mmio_direct_c, in tree order.
- The CPU's physical address size, from the first CPU's compatible (geometry.CPU_PA_BITS).
- The boot modules Xen holds when it builds dom0 (/chosen's multiboot,module nodes);
  its own image and heap are added for every board (xen/dom0.py).
"""

from __future__ import annotations

from ..units import MIB, PAGE
from ..xen.geometry import CPU_PA_BITS
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

SKIP_COMPATIBLE = ("xen,xen", "xen,multiboot-module", "multiboot,module", "arm,psci", "arm,psci-0.2",
                   "arm,psci-1.0", "arm,cortex-a7-pmu", "arm,cortex-a15-pmu", "arm,cortex-a53-edac",
                   "arm,armv8-pmuv3", "arm,armv7-timer-mem",
                   # DT_MATCH_TIMER
                   "arm,armv7-timer", "arm,armv8-timer")
GIC_COMPATIBLE = ("arm,gic-v3", "arm,gic-400", "arm,cortex-a15-gic", "arm,cortex-a9-gic", "arm,gic-v2")
PPI = 1                               # the GIC binding's first interrupt cell: 1 is a PPI


def _stdout_path(root) -> str:
    chosen = next((n for n in root.nodes if n.name == "chosen"), None)
    if chosen is None:
        return ""
    path = (prop_strings(chosen, "stdout-path") or [""])[0].split(":")[0]
    return path


def _skipped(node, console: str) -> bool:
    compat = prop_strings(node, "compatible")
    return (any(c in SKIP_COMPATIBLE for c in compat) or node_path(node) == "/cpus"
            or "memory" in prop_strings(node, "device_type") or not is_available(node)
            or node.get_property("interrupt-controller") is not None and any(c in GIC_COMPATIBLE for c in compat)
            or node_path(node) == console or node.get_property("#iommu-cells") is not None
            or _uses_ppi(node))


def _uses_ppi(node) -> bool:
    if node.get_property("interrupts") is None:
        return False
    cells = prop_cells(node, "interrupts", node_path(node))
    return len(cells) % 3 == 0 and any(cells[i] == PPI for i in range(0, len(cells), 3))


def dom0_mmio_calls(root) -> list[tuple[int, int]]:
    """(first frame, pages) of every map_regions_p2mt call Xen makes for dom0, in order."""
    console = _stdout_path(root)
    calls: list[tuple[int, int]] = []

    def add(base: int, size: int) -> None:
        if size:
            calls.append((base // PAGE, -(-size // PAGE)))

    def visit(node, ac: int, sc: int) -> None:
        where = node_path(node)
        if node.parent is not None:
            if _skipped(node, console):
                return
            if node.get_property("reg") is not None:
                cells = prop_cells(node, "reg", where)
                for i in range(0, len(cells) - ac - sc + 1, ac + sc):
                    add(join_cells(cells[i:i + ac]), join_cells(cells[i + ac:i + ac + sc]))
        own_ac = cell_count(node, "#address-cells", DEFAULT_ADDRESS_CELLS, where)
        own_sc = cell_count(node, "#size-cells", DEFAULT_SIZE_CELLS, where)
        if "pci" in prop_strings(node, "device_type") and node.get_property("ranges") is not None:
            cells = prop_cells(node, "ranges", where)
            step = own_ac + ac + own_sc              # child (3 cells), parent address, size
            for i in range(0, len(cells) - step + 1, step):
                add(join_cells(cells[i + own_ac:i + own_ac + ac]), join_cells(cells[i + own_ac + ac:i + step]))
        for child in node.nodes:
            visit(child, own_ac, own_sc)

    visit(root, DEFAULT_ADDRESS_CELLS, DEFAULT_SIZE_CELLS)
    return calls


def cpu_pa_bits(root) -> int | None:
    cpus = next((n for n in root.nodes if n.name == "cpus"), None)
    for cpu in (cpus.nodes if cpus is not None else []):
        for c in prop_strings(cpu, "compatible"):
            if c in CPU_PA_BITS:
                return CPU_PA_BITS[c]
    return None


def boot_modules(root) -> list[tuple[int, int]]:
    """(base, size) of the boot modules /chosen lists (the kernel and ramdisk Xen loads for dom0)."""
    out = []
    chosen = next((n for n in root.nodes if n.name == "chosen"), None)
    for mod in (chosen.nodes if chosen is not None else []):
        if "multiboot,module" in prop_strings(mod, "compatible") and mod.get_property("reg") is not None:
            # Cells come from the nearest node that says them (dt_n_addr_cells): /chosen, else /.
            ac = cell_count(chosen, "#address-cells",
                             cell_count(root, "#address-cells", DEFAULT_ADDRESS_CELLS, "/"), node_path(chosen))
            sc = cell_count(chosen, "#size-cells",
                             cell_count(root, "#size-cells", DEFAULT_SIZE_CELLS, "/"), node_path(chosen))
            cells = prop_cells(mod, "reg", node_path(mod))
            if len(cells) >= ac + sc:
                out.append((join_cells(cells[:ac]), join_cells(cells[ac:ac + sc])))
    return out

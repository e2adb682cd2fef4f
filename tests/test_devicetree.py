"""Board profiles from device trees: iommu_core.scenarios.devicetree.

Every tree is built here with the `fdt` package (no dtc, no system package).
"""

from __future__ import annotations

from dataclasses import replace

import fdt
import pytest

from iommu_core.scenarios.devicetree import (
    H3_DTS,
    board_from_devicetree,
    board_to_dts,
    h3_dts,
)
from iommu_core.xen.board import GIB, MIB, PAGE, Board, MmioRegion, h3, server


def pages(regions) -> set[int]:
    return {p for r in regions for p in range(r.mfn, r.mfn + r.pages)}


def assert_same_board(got: Board, want: Board):
    assert got.ram_banks == want.ram_banks
    assert [(m.name, m.regions, m.ipmmu, m.main_ipmmu) for m in got.masters] == \
           [(m.name, m.regions, m.ipmmu, m.main_ipmmu) for m in want.masters]
    assert pages(got.other_mmio) == pages(want.other_mmio)
    assert (got.ipmmu_contexts, got.reserved_contexts, got.ipmmus) == \
           (want.ipmmu_contexts, want.reserved_contexts, want.ipmmus)


def assert_h3(board: Board):
    assert board.ram_bytes == 3968 * MIB
    assert [b for b, _ in board.ram_banks] == [0x0_4800_0000, 0x5_0000_0000, 0x6_0000_0000, 0x7_0000_0000]
    assert_same_board(board, h3())
    assert board.master("etheravb").regions == (MmioRegion(0xE680_0000, PAGE), MmioRegion(0xE6A0_0000, 0x10000))
    assert board.master("pcie0").ipmmu == "hc"
    assert {m.ipmmu for m in board.masters} == {"ds0", "ds1", "hc", "mp0", "vi0", "vi1"}


# --- round trips -----------------------------------------------------------------------------

def test_h3_round_trip_through_dts(tmp_path):
    path = tmp_path / "h3.dts"
    path.write_text(board_to_dts(h3()))
    board = board_from_devicetree(path)
    assert board.name == "h3"
    assert_h3(board)


def test_h3_round_trip_through_dtb(tmp_path):
    blob = fdt.parse_dts(board_to_dts(h3())).to_dtb(version=17)
    path = tmp_path / "salvator-x.dtb"
    path.write_bytes(blob)
    board = board_from_devicetree(path, name="h3")
    assert board.name == "h3"
    assert_h3(board)
    # The blob carries phandle numbers, not labels: the IPMMU groups come from node names.
    tree = fdt.parse_dtb(blob)
    assert tree.get_node("/soc/ipmmu-ds0").get_property("phandle") is not None


def test_dtb_is_recognised_by_content(tmp_path):
    path = tmp_path / "board.bin"
    path.write_bytes(fdt.parse_dts(board_to_dts(h3())).to_dtb(version=17))
    assert_h3(board_from_devicetree(path))


def test_multi_ipmmu_board_round_trips_exactly(tmp_path):
    want = server(ram_gib=16, functions=8)
    path = tmp_path / "server.dts"
    path.write_text(board_to_dts(want))
    got = board_from_devicetree(path)
    # What Xen's builder maps for dom0 from the tree: every region, one call each.
    assert sorted(got.dom0_mmio) == sorted([(r.mfn, r.pages) for m in want.masters for r in m.regions]
                                           + [(r.mfn, r.pages) for r in want.other_mmio])
    assert replace(got, dom0_mmio=()) == want


def test_shipped_h3_dts_loads_as_h3():
    assert H3_DTS.is_file()
    assert_h3(board_from_devicetree(H3_DTS))
    assert H3_DTS.read_text() == h3_dts(), "data/h3.dts is stale: python -m iommu_core.scenarios.devicetree"


def test_contexts_and_name_arguments(tmp_path):
    path = tmp_path / "h3.dts"
    path.write_text(board_to_dts(h3()))
    board = board_from_devicetree(path, name="gen4ish", contexts=16, reserved=1)
    assert (board.name, board.ipmmu_contexts, board.usable_contexts) == ("gen4ish", 16, 15)


# --- a small hand-built tree -----------------------------------------------------------------

def words(name, *values):
    return fdt.PropWords(name, *values)


def strings(name, *values):
    return fdt.PropStrings(name, *values)


def small_tree(memory: bool = True, bad_reg: bool = False) -> fdt.FDT:
    tree = fdt.FDT()
    root = tree.root
    root.append(words("#address-cells", 2))
    root.append(words("#size-cells", 2))
    if memory:
        # Two banks in one node.
        root.append(fdt.Node("memory@48000000", strings("device_type", "memory"),
                             words("reg", 0x0, 0x4800_0000, 0x0, 0x3800_0000, 0x5, 0x0, 0x0, 0x4000_0000)))
    soc = fdt.Node("soc", strings("compatible", "simple-bus"), words("#address-cells", 1),
                   words("#size-cells", 1), fdt.Property("ranges"))
    root.append(soc)
    ipmmu = fdt.Node("iommu@e6740000", strings("compatible", "renesas,ipmmu-r8a7795"),
                     words("reg", 0xE674_0000, 0x1000), words("#iommu-cells", 1), words("phandle", 5))
    ipmmu.set_label("ipmmu_ds0")
    soc.append(ipmmu)
    # Two DMA controllers: same node name, so each is named with its unit address.
    soc.append(fdt.Node("dma-controller@e6700000", words("reg", 0xE670_0000, 0x10000),
                        words("iommus", 5, 0, 5, 1), strings("status", "okay")))
    soc.append(fdt.Node("dma-controller@e7300000", words("reg", 0xE730_0000, 0x10000), words("iommus", 5, 2)))
    # An Ethernet controller whose IOMMU phandle points nowhere, with an unaligned 2 KiB region.
    soc.append(fdt.Node("ethernet@e6800000", words("reg", 0xE680_0000, 0x800, 0xE6A0_0000, 0x10000),
                        words("iommus", 99, 0)))
    soc.append(fdt.Node("mmc@ee100000", words("reg", 0xEE10_0000, 0x2000), words("iommus", 5, 3),
                        strings("status", "disabled")))
    soc.append(fdt.Node("serial@e6e88000", words("reg", 0xE6E8_8000, 0x40)))
    soc.append(fdt.Node("gpio@e6050050", words("reg", 0xE605_0050, 0x50)))
    # Two small devices in neighbouring pages: merged into one other-MMIO region.
    soc.append(fdt.Node("pwm@e6e30000", words("reg", 0xE6E3_0000, 8)))
    soc.append(fdt.Node("pwm@e6e31000", words("reg", 0xE6E3_1000, 8)))
    # An I2C bus: its child's reg is an I2C address, not MMIO.
    soc.append(fdt.Node("i2c@e6510000", words("reg", 0xE651_0000, 0x40), words("#address-cells", 1),
                        words("#size-cells", 0), fdt.Node("eeprom@50", words("reg", 0x50))))
    if bad_reg:
        soc.append(fdt.Node("bad@e6000000", words("reg", 0xE600_0000, 0x1000, 0xE600_2000)))
    # A bus with a real translation: child 0x0.. is parent 0xf2000000..
    root.append(fdt.Node("lbus", strings("compatible", "simple-bus"), words("#address-cells", 1),
                         words("#size-cells", 1), words("ranges", 0x0, 0x0, 0xF200_0000, 0x10_0000),
                         fdt.Node("timer@1000", words("reg", 0x1000, 0x100))))
    # A disabled bus hides its children.
    root.append(fdt.Node("obus", strings("compatible", "simple-bus"), strings("status", "disabled"),
                         words("#address-cells", 2), words("#size-cells", 2), fdt.Property("ranges"),
                         fdt.Node("uart@f3000000", words("reg", 0, 0xF300_0000, 0, 0x100))))
    root.append(fdt.Node("chosen", strings("bootargs", "console=ttySC0")))
    return tree


@pytest.fixture(params=["dts", "dtb", "dtb-symbols"])
def small_board(request, tmp_path):
    tree = small_tree()
    if request.param == "dts":
        path = tmp_path / "small.dts"
        path.write_text(tree.to_dts())
    else:
        if request.param == "dtb-symbols":      # what `dtc -@` adds: labels survive in the blob
            tree.root.append(fdt.Node("__symbols__", strings("ipmmu_ds0", "/soc/iommu@e6740000")))
        path = tmp_path / "small.dtb"
        path.write_bytes(tree.to_dtb(version=17))
    return request.param, board_from_devicetree(path)


def test_small_tree_is_read_as_documented(small_board):
    kind, board = small_board
    assert board.name == "small"
    assert board.ram_banks == ((0x4800_0000, 896 * MIB), (0x5_0000_0000, GIB))
    # The IOMMU node's label is known in the .dts and through __symbols__; a bare blob
    # only has the node name "iommu@e6740000".
    group = "iommu" if kind == "dtb" else "ds0"
    assert [(m.name, m.regions, m.ipmmu) for m in board.masters] == [
        ("dma-controller@e6700000", (MmioRegion(0xE670_0000, 0x10000),), group),
        ("dma-controller@e7300000", (MmioRegion(0xE730_0000, 0x10000),), group),
        ("ethernet", (MmioRegion(0xE680_0000, PAGE), MmioRegion(0xE6A0_0000, 0x10000)), "unknown"),
    ]
    assert board.ipmmus == 1 and all(m.main_ipmmu == 0 for m in board.masters)
    # Other MMIO: sorted, page-rounded, neighbours merged; not the IOMMU, not the disabled
    # mmc, not the I2C child, not the disabled bus's uart; the translated timer is there.
    assert board.other_mmio == (
        MmioRegion(0xE605_0000, PAGE),          # gpio, base rounded down
        MmioRegion(0xE651_0000, PAGE),          # i2c controller
        MmioRegion(0xE6E3_0000, 2 * PAGE),      # two pwm pages merged
        MmioRegion(0xE6E8_8000, PAGE),          # serial
        MmioRegion(0xF200_1000, PAGE),          # timer through lbus's ranges
    )
    assert 0xEE10_0000 // PAGE not in pages(board.all_mmio())
    assert 0xE674_0000 // PAGE not in pages(board.all_mmio())


def test_default_cells_are_2_and_1(tmp_path):
    tree = fdt.FDT()
    tree.root.append(fdt.Node("memory", strings("device_type", "memory"), words("reg", 0x0, 0x8000_0000, 0x4000_0000)))
    tree.root.append(fdt.Node("uart@0x1c090000", words("reg", 0x0, 0x1C09_0000, 0x1000)))
    path = tmp_path / "defaults.dts"
    path.write_text(tree.to_dts())
    board = board_from_devicetree(path)
    assert board.ram_banks == ((0x8000_0000, GIB),)
    assert board.other_mmio == (MmioRegion(0x1C09_0000, PAGE),)
    assert board.masters == ()


def test_other_mmio_overlapping_a_master_page_is_cut(tmp_path):
    tree = fdt.FDT()
    tree.root.append(words("#address-cells", 1))
    tree.root.append(words("#size-cells", 1))
    tree.root.append(fdt.Node("memory@40000000", strings("device_type", "memory"),
                              words("reg", 0x4000_0000, 0x1000_0000)))
    tree.root.append(fdt.Node("dma@10000000", words("reg", 0x1000_0000, 0x800), words("iommus", 1, 0)))
    tree.root.append(fdt.Node("ctl@10000800", words("reg", 0x1000_0800, 0x1800)))   # shares the dma's page
    path = tmp_path / "shared.dts"
    path.write_text(tree.to_dts())
    board = board_from_devicetree(path)
    assert board.master("dma").regions == (MmioRegion(0x1000_0000, PAGE),)
    assert board.other_mmio == (MmioRegion(0x1000_1000, PAGE),)


# --- errors ----------------------------------------------------------------------------------

def test_missing_file(tmp_path):
    path = tmp_path / "nope.dts"
    with pytest.raises(ValueError, match="nope.dts") as e:
        board_from_devicetree(path)
    assert "node /" in str(e.value)


@pytest.mark.parametrize("suffix", ["dts", "dtb"])
def test_reg_with_a_bad_length(tmp_path, suffix):
    tree = small_tree(bad_reg=True)
    path = tmp_path / f"bad.{suffix}"
    if suffix == "dts":
        path.write_text(tree.to_dts())
    else:
        path.write_bytes(tree.to_dtb(version=17))
    with pytest.raises(ValueError, match=rf"bad\.{suffix}.*/soc/bad@e6000000.*3 cells"):
        board_from_devicetree(path)


def test_no_memory_node(tmp_path):
    path = tmp_path / "nomem.dts"
    path.write_text(small_tree(memory=False).to_dts())
    with pytest.raises(ValueError, match=r"nomem\.dts.*no memory node.*node /"):
        board_from_devicetree(path)


def test_unparsable_tree(tmp_path):
    path = tmp_path / "junk.dtb"
    path.write_bytes(b"\xd0\x0d\xfe\xed" + b"\x00" * 12)
    with pytest.raises(ValueError, match=r"junk\.dtb.*cannot parse"):
        board_from_devicetree(path)
    path = tmp_path / "cpp.dts"
    path.write_text('#include "r8a7795.dtsi"\n/dts-v1/;\n/ { };\n')
    with pytest.raises(ValueError, match=r"cpp\.dts.*#include"):
        board_from_devicetree(path)


def test_board_to_dts_refuses_names_that_would_not_read_back():
    from dataclasses import replace
    b = h3()
    bad = replace(b, masters=(replace(b.masters[0], name="memory"),) + b.masters[1:])
    with pytest.raises(ValueError, match="memory"):
        board_to_dts(bad)


def test_linux_style_dts_with_references_and_iommu_map(tmp_path):
    text = """/dts-v1/;
/ {
	#address-cells = <2>;
	#size-cells = <2>;
	memory@48000000 {
		device_type = "memory";
		reg = <0x0 0x48000000 0x0 0x38000000>;
	};
	soc {
		compatible = "simple-bus";
		#address-cells = <2>;
		#size-cells = <2>;
		ranges;
		ipmmu_mm: iommu@e67b0000 {
			compatible = "renesas,ipmmu-r8a7795", "renesas,ipmmu-vmsa";
			reg = <0 0xe67b0000 0 0x1000>;
			#iommu-cells = <1>;
		};
		ipmmu_hc: iommu@e6570000 {
			compatible = "renesas,ipmmu-r8a7795";
			reg = <0 0xe6570000 0 0x1000>;
			renesas,ipmmu-main = <&ipmmu_mm 2>;
			#iommu-cells = <1>;
		};
		pcie@fe000000 {
			reg = <0 0xfe000000 0 0x80000>;
			iommu-map = <0 &ipmmu_hc 0 1>;
		};
		sata@ee300000 {
			reg = <0 0xee300000 0 0x200000>;
			iommus = <&ipmmu_hc 2>;
		};
	};
};
"""
    path = tmp_path / "linux.dts"
    path.write_text(text)
    dts_board = board_from_devicetree(path)
    path = tmp_path / "linux.dtb"
    path.write_bytes(fdt.parse_dts(text).to_dtb(version=17))
    dtb_board = board_from_devicetree(path)
    assert [(m.name, m.ipmmu) for m in dts_board.masters] == [("pcie", "hc"), ("sata", "hc")]
    assert [(m.name, m.ipmmu) for m in dtb_board.masters] == [("pcie", "iommu"), ("sata", "iommu")]
    for board in (dts_board, dtb_board):
        assert board.ipmmus == 1 and board.other_mmio == ()
        assert board.master("sata").regions == (MmioRegion(0xEE30_0000, 2 * MIB),)

"""Board profiles: the H3 Salvator-X exactly as ../shared/HARDWARE.md lists it, M3-W, a server."""

import dataclasses
import itertools

import pytest

from iommu_core.xen.board import (
    BOARDS,
    Board,
    DmaMaster,
    MmioRegion,
    board,
    h3,
    m3w,
    server,
)

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30

# HARDWARE.md, "R-Car H3 Salvator-X": name -> (regions (base, size), IPMMU group)
H3_MASTERS = {
    "sys-dmac0": ([(0xE6700000, 64 * KIB)], "ds0"),
    "sys-dmac1": ([(0xE7300000, 64 * KIB)], "ds1"),
    "sys-dmac2": ([(0xE7310000, 64 * KIB)], "ds1"),
    "etheravb": ([(0xE6800000, 4 * KIB), (0xE6A00000, 64 * KIB)], "ds0"),     # 2K rounded up to a page
    "sdhi0": ([(0xEE100000, 8 * KIB)], "ds1"),
    "sdhi1": ([(0xEE120000, 8 * KIB)], "ds1"),
    "sdhi2": ([(0xEE140000, 8 * KIB)], "ds1"),
    "sdhi3": ([(0xEE160000, 8 * KIB)], "ds1"),
    "sata": ([(0xEE300000, 2 * MIB)], "hc"),
    "pcie0": ([(0xFE000000, 512 * KIB), (0xFE100000, 1 * MIB), (0xFE200000, 2 * MIB),
               (0x30000000, 128 * MIB), (0x38000000, 128 * MIB)], "hc"),
    "pcie1": ([(0xEE800000, 512 * KIB), (0xEE900000, 1 * MIB), (0xEEA00000, 2 * MIB),
               (0xC0000000, 128 * MIB), (0xC8000000, 128 * MIB)], "hc"),
    "audio-dmac0": ([(0xEC700000, 64 * KIB)], "mp0"),
    "audio-dmac1": ([(0xEC720000, 64 * KIB)], "mp0"),
    "fcpvd0": ([(0xFEA27000, 0x8000)], "vi0"),
    "fcpvd1": ([(0xFEA2F000, 0x8000)], "vi0"),
    "fcpvd2": ([(0xFEA37000, 0x8000)], "vi1"),
}


def regions(m):
    return [(r.base, r.size) for r in m.regions]


def test_h3_ram():
    b = h3()
    assert b.ram_bytes == 3968 * MIB
    assert b.ram_banks == ((0x0_4800_0000, 896 * MIB), (0x5_0000_0000, GIB), (0x6_0000_0000, GIB),
                           (0x7_0000_0000, GIB))
    assert b.ram_pages == 3968 * 256


def test_h3_masters():
    b = h3()
    assert {m.name for m in b.masters} == set(H3_MASTERS)
    for name, (regs, group) in H3_MASTERS.items():
        m = b.master(name)
        assert regions(m) == regs, name
        assert m.ipmmu == group, name
        assert m.main_ipmmu == 0


def test_h3_other_mmio_and_contexts():
    b = h3()
    bases = {r.base: r.size for r in b.other_mmio}
    assert bases[0xF1010000] == 0x1000                       # GIC distributor
    assert bases[0xFEB00000] == 512 * KIB                    # DU
    assert bases[0xEE000000] == 0x1000                       # xHCI, 0xc00 rounded up
    assert b.ipmmu_contexts == 8 and b.reserved_contexts == 1 and b.ipmmus == 1
    assert b.usable_contexts == 7


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_all_mmio_sorted_merged_and_complete(name):
    b = board(name)
    mm = b.all_mmio()
    for r0, r1 in itertools.pairwise(mm):
        assert r0.end < r1.base                               # sorted, disjoint, touching ones merged
    every = [r for m in b.masters for r in m.regions] + list(b.other_mmio)
    for r in every:
        assert any(x.base <= r.base and r.end <= x.end for x in mm)
    assert sum(r.size for r in mm) == sum(r.size for r in every)   # nothing overlapped
    for r in mm:                                              # and none of it is RAM
        assert all(r.end <= base or base + size <= r.base for base, size in b.ram_banks)


def test_h3_all_mmio_merges_touching():
    mm = {r.base: r.size for r in h3().all_mmio()}
    assert mm[0x30000000] == 256 * MIB                        # PCIe0's two 128 MiB windows
    assert mm[0xE7300000] == 128 * KIB                        # SYS-DMAC1 + 2
    assert mm[0xFEA27000] == 3 * 0x8000                       # the three VSP fetchers


def test_m3w():
    b = m3w()
    names = {m.name for m in b.masters}
    assert "sata" not in names and "pcie1" not in names
    assert names == set(H3_MASTERS) - {"sata", "pcie1"}
    for name in names:
        assert regions(b.master(name)) == H3_MASTERS[name][0]
    assert b.ram_banks[0][0] == 0x0_4800_0000 and b.ram_banks[1] == (0x6_0000_0000, 2 * GIB)
    assert b.usable_contexts == 7


def test_server():
    b = server(512)
    assert b.ram_bytes == 512 * GIB
    assert b.ram_banks == ((0x8000_0000, 2 * GIB), (0x1_0000_0000, 510 * GIB))
    assert len(b.masters) == 64 and b.ipmmus == 4 and b.usable_contexts == 28
    assert b.other_mmio == (MmioRegion(0x3000_0000, 256 * MIB),)
    for i in range(64):
        m = b.master(f"pcie-fn{i}")
        bar0, bar2 = m.regions
        assert bar0.size == 64 * KIB and bar0.base % (64 * KIB) == 0
        assert bar2.size == 16 * MIB and bar2.base % (16 * MIB) == 0
        assert bar0.base >= 0x40_0000_0000 and bar2.base >= 0x40_0000_0000
        assert m.main_ipmmu == i % 4
    # a small server keeps its window at 0x40_0000_0000; a big one moves it above RAM
    assert min(r.base for m in server(64, 2).masters for r in m.regions) == 0x40_0000_0000
    assert min(r.base for m in b.masters for r in m.regions) == 0xC0_0000_0000
    assert server(1).ram_banks == ((0x8000_0000, GIB),)
    assert server(2).ram_banks == ((0x8000_0000, 2 * GIB),)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"ram_gib": 0}, "0"), ({"ram_gib": -3}, "-3"), ({"ram_gib": 1.5}, "1.5"), ({"ram_gib": True}, "True"),
    ({"functions": 0}, "0"), ({"functions": "8"}, "'8'"),
])
def test_server_bad_arguments(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        server(**kwargs)


def test_unknown_names():
    with pytest.raises(ValueError, match="'rcar-x5'.*h3"):
        board("rcar-x5")
    with pytest.raises(ValueError, match="'gpu'.*sata"):
        h3().master("gpu")
    assert board("server", ram_gib=4).ram_bytes == 4 * GIB


def test_mmio_region_validation():
    assert MmioRegion(0x1000, 1).size == 0x1000
    assert MmioRegion(0x1000, 0x2001).size == 0x3000
    with pytest.raises(ValueError, match="0x1800"):
        MmioRegion(0x1800, 0x1000)
    with pytest.raises(ValueError, match="0"):
        MmioRegion(0x1000, 0)
    with pytest.raises(ValueError, match="-4096"):
        MmioRegion(-0x1000, 0x1000)


def test_board_validation():
    r = MmioRegion(0x1000_0000, 0x1000)
    ok = {"name": "t", "ram_banks": ((0x4000_0000, GIB),), "masters": (DmaMaster("d", (r,), "hc"),), "other_mmio": ()}
    Board(**ok)
    with pytest.raises(ValueError, match="overlaps"):
        Board(**{**ok, "other_mmio": (MmioRegion(0x1000_0000, 0x2000),)})
    with pytest.raises(ValueError, match="RAM"):
        Board(**{**ok, "other_mmio": (MmioRegion(0x4000_0000, 0x1000),)})
    with pytest.raises(ValueError, match="overlap"):
        Board(**{**ok, "ram_banks": ((0x4000_0000, GIB), (0x6000_0000, GIB))})
    with pytest.raises(ValueError, match=r"\['d'\]"):
        Board(**{**ok, "masters": (DmaMaster("d", (r,), "hc"), DmaMaster("d", (MmioRegion(0x2000_0000, 1),), "hc"))})
    with pytest.raises(ValueError, match="reserved_contexts 8"):
        Board(**ok, reserved_contexts=8)
    with pytest.raises(ValueError, match="main IPMMU 1"):
        Board(**{**ok, "masters": (DmaMaster("d", (r,), "hc", main_ipmmu=1),)})
    with pytest.raises(ValueError, match="no MMIO region"):
        DmaMaster("d", (), "hc")


def test_boards_are_frozen_values():
    b = h3()
    assert b == h3() and hash(b) == hash(h3())
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.ipmmus = 2

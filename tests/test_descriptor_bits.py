"""Leaf and table descriptors against values computed by hand from the Arm ARM.

Stage 1 leaf bits: [1:0] type, [4:2] AttrIndx, [5] NS, [6] AP[1], [7] AP[2],
[9:8] SH, [10] AF, [11] nG, [54] XN, [58:55] software. Stage 2: [5:2] MemAttr,
[7:6] S2AP, [9:8] SH, [10] AF, [54] XN.
"""

import numpy as np
import pytest

from iommu_core import PageTable

XN = 1 << 54
NSTABLE = 1 << 63

# (preset, iova, pa, npages, perm, memtype, sw) -> (leaf level, descriptor)
CASES = [
    # valid+page 0x3, NS 0x20, AP1 0x40, SH inner 0x300, AF 0x400, nG 0x800
    (("ipmmu-s1-39", 0x1000, 0x4000_1000, 1, "rw", "normal", 0), (3, 0x4000_1000 | 0xF63)),
    # ... plus AP2 (read-only) 0x80
    (("ipmmu-s1-32", 0x1000, 0x4000_1000, 1, "r", "normal", 0), (3, 0x4000_1000 | 0xFE3)),
    # device: AttrIndx 2 (0x8), SH outer 0x200, XN
    (("ipmmu-s1-39", 0x1000, 0xE670_0000, 1, "rw", "device", 0), (3, XN | 0xE670_0000 | 0xE6B)),
    # non-cacheable: AttrIndx 1 (0x4), SH outer, software bits 5 << 55
    (("ipmmu-s1-39", 0x1000, 0x4000_1000, 1, "rw", "normal-nc", 5), (3, (5 << 55) | 0x4000_1000 | 0xE67)),
    # 2 MiB block: type 0b01
    (("ipmmu-s1-39", 0x20_0000, 0x4020_0000, 512, "rw", "normal", 0), (2, 0x4020_0000 | 0xF61)),
    # 1 GiB block at stage 1, 32-bit input: level 1 is the root
    (("ipmmu-s1-32", 0x4000_0000, 0x8000_0000, 1 << 18, "rw", "normal", 0), (1, 0x8000_0000 | 0xF61)),
    # stage 2 page: MemAttr 0xF (0x3C), S2AP rw (0xC0), SH inner, AF, P2M type 3 in sw
    (("p2m-s2-40", 0x4000_0000, 0x4800_0000, 1, "rw", "normal", 3), (3, (3 << 55) | 0x4800_0000 | 0x7FF)),
    # stage 2 device read-only: MemAttr 0x1 (0x4), S2AP r (0x40), SH outer, XN
    (("p2m-s2-40", 0xE670_0000, 0xE670_0000, 1, "r", "device", 0), (3, XN | 0xE670_0000 | 0x647)),
    # stage 2 write-only and no-access leaves are expressible
    (("p2m-s2-48", 0x1000, 0x2000, 1, "w", "normal", 0), (3, 0x2000 | 0x3 | 0x3C | 0x80 | 0x300 | 0x400)),
    (("p2m-s2-48", 0x1000, 0x2000, 1, "none", "normal", 0), (3, 0x2000 | 0x3 | 0x3C | 0x300 | 0x400)),
    # stage 2 blocks
    (("p2m-s2-40", 0x4020_0000, 0x6_0020_0000, 512, "rw", "normal", 1),
     (2, (1 << 55) | 0x6_0020_0000 | 0x7FD)),
    (("p2m-s2-48", 0x4000_0000, 0x6_4000_0000, 1 << 18, "rw", "normal", 0), (1, 0x6_4000_0000 | 0x7FD)),
]


@pytest.mark.parametrize("args, expected", CASES, ids=lambda c: str(c[0]) if isinstance(c[0], str) else None)
def test_leaf_descriptor_matches_the_hand_computed_value(args, expected):
    preset, iova, pa, n, perm, memtype, sw = args
    pt = PageTable(preset)
    pt.map(iova, pa, n, perm=perm, memtype=memtype, sw=sw)
    va, level, desc = pt.leaves()
    assert (int(va[0]), int(level[0]), int(desc[0])) == (iova, *expected)
    assert len(va) == 1


@pytest.mark.parametrize("preset, table_bits", [("ipmmu-s1-39", NSTABLE | 0x3), ("p2m-s2-48", 0x3)])
def test_table_descriptors_hold_the_next_table_address(preset, table_bits):
    base = 0x8000_0000
    pt = PageTable(preset, base=base)
    pt.map(0x1000, 0x1000, 1)
    root = pt.pool.mem[0]
    first = int(root[0])
    assert first & ~((1 << 12) - 1) & ((1 << 48) - 1) == base + 0x1000   # the next page of the pool
    assert first & ~(((1 << 48) - 1) & ~0xFFF) == table_bits


def test_four_kib_only_mode_maps_an_aligned_block_as_pages():
    pt = PageTable("p2m-s2-40")
    pt.map(0x4000_0000, 0x4000_0000, 512, leaf="4k")
    _, level, _ = pt.leaves()
    assert level.tolist() == [3] * 512


def test_xen_order_rule_needs_the_remaining_length_aligned():
    pt = PageTable("p2m-s2-40")
    pt.map(0x4000_0000, 0x4000_0000, 512 + 1)          # 2 MiB + 4 KiB: all pages, as Xen does
    assert set(pt.leaves()[1].tolist()) == {3}
    pt2 = PageTable("p2m-s2-40")
    # starts 4 KiB below a 2 MiB boundary, ends on one: one page, then a block
    pt2.map(0x4000_0000 - 0x1000, 0x8000_0000 - 0x1000, 513)
    assert pt2.leaves()[1].tolist() == [3, 2]
    pt3 = PageTable("p2m-s2-40")
    pt3.map(0x4000_0000, 0x4000_1000, 512)             # output misaligned: pages only
    assert set(pt3.leaves()[1].tolist()) == {3}


def test_level_of_translation_and_fields_decode():
    pt = PageTable("p2m-s2-48")
    pt.map([0x4000_0000, 0x8000_0000], [0x1_4000_0000, 0x9000_0000], [1 << 18, 3],
           perm=np.array(["r", "rw"]), memtype=["normal", "device"], sw=[7, 2])
    t = pt.translate(np.array([0x4000_0000 + 0x1234_5678, 0x8000_2ABC, 0x8000_3000]))
    assert t.pa.tolist() == [0x1_4000_0000 + 0x1234_5678, 0x9000_2ABC, 0]
    assert t.level.tolist() == [1, 3, -1]
    assert t.perm.tolist() == [1, 3, 0]
    assert t.memtype.tolist() == [0, 2, 0]
    assert t.sw.tolist() == [7, 2, 0]
    assert t.fault.tolist() == [False, False, True]

"""The independent walker, on small images written by hand.

Every descriptor and expected address below is computed in the comments from
the architecture rules, not by any project code.
"""

import json
import struct

import pytest
from armwalk import WalkError, attr_bits, load_image, stage1_perm, stage2_perm

# Descriptor bits, spelled out (Arm ARM, VMSAv8-64 long descriptors).
VALID, TABLE = 1 << 0, 1 << 1                 # table / page: 0b11, block: 0b01
AF = 1 << 10
SH_INNER, SH_OUTER = 0b11 << 8, 0b10 << 8
XN = 1 << 54
S1_NS, S1_AP1, S1_AP2, S1_NG, S1_NSTABLE = 1 << 5, 1 << 6, 1 << 7, 1 << 11, 1 << 63
S2_RD, S2_WR = 1 << 6, 1 << 7
S2_NORMAL, S2_DEVICE = 0xF << 2, 0x1 << 2
MAIR = 0xFF | 0x44 << 8 | 0x04 << 16           # AttrIndx 0 WB, 1 NC, 2 Device-nGnRE

S1_RW = AF | SH_INNER | S1_AP1 | S1_NG | S1_NS  # = 0xF60
S2_RW = AF | SH_INNER | S2_NORMAL | S2_RD | S2_WR  # = 0x7FC


def write_image(tmp_path, name, manifest, entries, npages):
    """entries: {physical offset from base: descriptor}."""
    data = bytearray(npages * 4096)
    for off, desc in entries.items():
        struct.pack_into("<Q", data, off, desc)
    (tmp_path / f"{name}.bin").write_bytes(bytes(data))
    (tmp_path / f"{name}.json").write_text(json.dumps({"granule": 4096, "t0sz": 64 - manifest["ia_bits"],
                                                       **manifest}))
    return tmp_path / name


# -- stage 1, 39-bit input: levels 1..3, one 512-entry root --------------------
# base 0x4000_0000: root page 0, L2 table page 1 (0x4000_1000), L3 table page 2 (0x4000_2000).
# VA 0x8020_3000: L1 index 0x8020_3000 >> 30 = 2; L2 (>> 21) & 511 = 0x401 & 511 = 1;
#                 L3 (>> 12) & 511 = 0x80203 & 511 = 3.
# VA 0x8060_0000: L1 2, L2 0x403 & 511 = 3 -> a 2 MiB block.
S1_BASE = 0x4000_0000
S1_PAGE = 0x12_3456_7000 | S1_RW | VALID | TABLE
S1_BLOCK = 0x1_2340_0000 | S1_RW | S1_AP2 | VALID          # 0x1_2340_0000 = 0x91A * 2 MiB
S1_ENTRIES = {
    0x0000 + 2 * 8: 0x4000_1000 | S1_NSTABLE | VALID | TABLE,  # root[2] -> L2
    0x1000 + 1 * 8: 0x4000_2000 | S1_NSTABLE | VALID | TABLE,  # L2[1] -> L3
    0x1000 + 3 * 8: S1_BLOCK,                                  # L2[3] block
    0x2000 + 3 * 8: S1_PAGE,                                   # L3[3] page
    0x2000 + 5 * 8: 0x12_3456_8000 | S1_RW | VALID,            # L3[5]: bit 1 clear at L3 -> invalid
}
S1_MANIFEST = {"base": S1_BASE, "root": S1_BASE, "stage": 1, "ia_bits": 39, "oa_bits": 40,
               "start_level": 1, "root_tables": 1, "mair": MAIR}


@pytest.fixture
def s1(tmp_path):
    return load_image(write_image(tmp_path, "s1", S1_MANIFEST, S1_ENTRIES, 3))


def test_stage1_page_walk(s1):
    # 0x12_3456_7000 + low 12 bits 0xabc
    assert s1.walk(0x8020_3ABC) == (0x12_3456_7ABC, S1_PAGE, 3)
    assert s1.path(0x8020_3ABC) == [(1, 0x4000_0010, S1_ENTRIES[0x10]),
                                    (2, 0x4000_1008, S1_ENTRIES[0x1008]),
                                    (3, 0x4000_2018, S1_PAGE)]


def test_stage1_block_walk(s1):
    # 0x1_2340_0000 + low 21 bits 0x1_2345
    assert s1.walk(0x8060_0000 + 0x1_2345) == (0x1_2341_2345, S1_BLOCK, 2)
    assert s1.walk(0x807F_FFFF) == (0x1_235F_FFFF, S1_BLOCK, 2)


def test_stage1_faults(s1):
    assert s1.walk(0x8020_4000) is None          # L3[4] zero
    assert s1.walk(0x8020_5000) is None          # L3[5] valid but bit 1 clear
    assert s1.walk(0) is None                    # root[0] zero
    assert s1.walk((1 << 39) - 1) is None        # root[511] zero
    with pytest.raises(ValueError, match="input range"):
        s1.walk(1 << 39)


def test_stage1_mappings_and_attributes(s1):
    assert s1.mappings() == [(0x8020_3000, 0x12_3456_7000, 4096, S1_RW),
                             (0x8060_0000, 0x1_2340_0000, 2 << 20, S1_RW | S1_AP2)]
    assert attr_bits(S1_PAGE) == 0xF60
    assert s1.perm(S1_PAGE) == stage1_perm(S1_PAGE) == "rw"
    assert s1.perm(S1_BLOCK) == "r"
    assert s1.memattr(S1_PAGE) == 0xFF           # AttrIndx 0
    assert s1.memattr(0x2 << 2) == 0x04          # AttrIndx 2


def test_load_image_accepts_either_file_name(tmp_path):
    p = write_image(tmp_path, "s1", S1_MANIFEST, S1_ENTRIES, 3)
    assert load_image(f"{p}.json").walk(0x8020_3000)[0] == 0x12_3456_7000
    assert load_image(f"{p}.bin").walk(0x8020_3000)[0] == 0x12_3456_7000


@pytest.mark.parametrize("entry, desc, va", [
    # root[3] -> a table at 0x5000_0000, far outside the 3-page image
    (0x18, 0x5000_0000 | VALID | TABLE, 0xC000_0000),
    # a 2 MiB block whose address has bit 12 set
    (0x1000 + 3 * 8, 0x1_2340_1000 | S1_RW | VALID, 0x8060_0000),
    # a page beyond the 40-bit output size
    (0x2000 + 3 * 8, 1 << 40 | S1_RW | VALID | TABLE, 0x8020_3000),
])
def test_stage1_broken_tables_raise(tmp_path, entry, desc, va):
    img = load_image(write_image(tmp_path, "bad", S1_MANIFEST, {**S1_ENTRIES, entry: desc}, 3))
    with pytest.raises(WalkError):
        img.walk(va)
    with pytest.raises(WalkError):
        img.mappings()


def test_table_reached_twice_raises(tmp_path):
    # root[2] and root[3] both point at the L2 table
    img = load_image(write_image(tmp_path, "dup", S1_MANIFEST,
                                 {**S1_ENTRIES, 0x18: 0x4000_1000 | VALID | TABLE}, 3))
    with pytest.raises(WalkError, match="twice"):
        img.mappings()


@pytest.mark.parametrize("change", [{"start_level": 0}, {"root_tables": 2}, {"root": S1_BASE + 8}])
def test_manifest_geometry_checked(tmp_path, change):
    with pytest.raises(ValueError):
        load_image(write_image(tmp_path, "m", {**S1_MANIFEST, **change}, S1_ENTRIES, 3))


# -- stage 2, 40-bit IPA: level 1 start, 1024 root entries in 2 concatenated pages --
# base 0x8000_0000: root pages 0-1, L2 table page 2 (0x8000_2000), L3 table page 3 (0x8000_3000).
# IPA 0xC0_8060_5000: root index >> 30 = 0x302 = 770 -> page 1, slot 258, at 0x8000_0000 + 770*8
#   = 0x8000_1810; L2 (>> 21) & 511 = 0x60403 & 511 = 3; L3 (>> 12) & 511 = 0xC080605 & 511 = 5.
# IPA 0x80_0000_0000: root index 512 -> page 1 slot 0 (0x8000_1000): a 1 GiB read-only block.
# IPA 0x4000_0000: root index 1 -> page 0 slot 1: a 1 GiB device block.
S2_BASE = 0x8000_0000
S2_PAGE = 0x5_6789_A000 | S2_RW | VALID | TABLE
S2_BLOCK_RO = 0x1_4000_0000 | AF | SH_INNER | S2_NORMAL | S2_RD | VALID
S2_BLOCK_DEV = 0xC000_0000 | AF | SH_OUTER | S2_DEVICE | S2_RD | S2_WR | XN | VALID
S2_ENTRIES = {
    770 * 8: 0x8000_2000 | VALID | TABLE,
    0x2000 + 3 * 8: 0x8000_3000 | VALID | TABLE,
    0x3000 + 5 * 8: S2_PAGE,
    512 * 8: S2_BLOCK_RO,
    1 * 8: S2_BLOCK_DEV,
}
S2_MANIFEST = {"base": S2_BASE, "root": S2_BASE, "stage": 2, "ia_bits": 40, "oa_bits": 40,
               "start_level": 1, "root_tables": 2}


@pytest.fixture
def s2(tmp_path):
    return load_image(write_image(tmp_path, "s2", S2_MANIFEST, S2_ENTRIES, 4))


def test_stage2_walk_through_second_root_page(s2):
    # 0x5_6789_A000 + 0x123
    assert s2.walk(0xC0_8060_5123) == (0x5_6789_A123, S2_PAGE, 3)
    assert s2.path(0xC0_8060_5123)[0][:2] == (1, 0x8000_1810)
    # 0x1_4000_0000 + low 30 bits 0x12_3456
    assert s2.walk(0x80_0012_3456) == (0x1_4012_3456, S2_BLOCK_RO, 1)
    # 0xC000_0000 + 0x10
    assert s2.walk(0x4000_0010) == (0xC000_0010, S2_BLOCK_DEV, 1)


def test_stage2_faults(s2):
    assert s2.walk(0x80_4000_0000) is None       # root index 513 zero
    assert s2.walk(0x40_8060_5000) is None       # index 258 of page 0: zero (no wrap into page 1)
    assert s2.walk(0xC0_8060_6000) is None       # L3[6] zero
    with pytest.raises(ValueError):
        s2.walk(1 << 40)


def test_stage2_mappings_and_attributes(s2):
    assert s2.mappings() == [(0x4000_0000, 0xC000_0000, 1 << 30, attr_bits(S2_BLOCK_DEV)),
                             (0x80_0000_0000, 0x1_4000_0000, 1 << 30, attr_bits(S2_BLOCK_RO)),
                             (0xC0_8060_5000, 0x5_6789_A000, 4096, S2_RW)]
    assert attr_bits(S2_PAGE) == 0x7FC
    assert s2.perm(S2_PAGE) == "rw"
    assert s2.perm(S2_BLOCK_RO) == "r"
    assert stage2_perm(S2_WR | VALID) == "w"
    assert stage2_perm(VALID) == "none"
    assert s2.memattr(S2_PAGE) == 0xF
    assert s2.memattr(S2_BLOCK_DEV) == 0x1


def test_stage2_root_count_checked(tmp_path):
    with pytest.raises(ValueError):
        load_image(write_image(tmp_path, "m", {**S2_MANIFEST, "root_tables": 1}, S2_ENTRIES, 4))


# -- stage 2, 48-bit IPA: level 0 start, where blocks are invalid ---------------
# root[0] looks like a block (bits 1:0 = 01): invalid at level 0.
# root[1] -> L1 table page 1; L1[0] a 1 GiB block at 0x40_0000_0000: IPA (1 << 39) + 0x123.
def test_level0_block_is_a_fault(tmp_path):
    entries = {0: 0x40_0000_0000 | S2_RW | VALID,
               8: 0x8000_1000 | VALID | TABLE,
               0x1000: 0x40_0000_0000 | S2_RW | VALID}
    img = load_image(write_image(tmp_path, "s48", {**S2_MANIFEST, "ia_bits": 48, "oa_bits": 48,
                                                   "start_level": 0, "root_tables": 1}, entries, 2))
    assert img.walk(0x1000) is None
    assert img.walk((1 << 39) + 0x123) == (0x40_0000_0123, entries[0x1000], 1)
    assert img.mappings() == [(1 << 39, 0x40_0000_0000, 1 << 30, S2_RW)]

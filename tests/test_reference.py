"""The per-page reference table, against descriptors and table counts computed by hand.

Leaf attribute bits (Arm ARM, VMSAv8-64 long descriptors):
  stage 1 (IPMMU, NS quirk), rw normal: NS 0x20 | AP[1] 0x40 | SH inner 0x300 | AF 0x400 | nG 0x800
      = 0xF60; read-only adds AP[2] 0x80; device: AttrIndx 2 (0x8), SH outer 0x200, XN bit 54;
      non-cacheable: AttrIndx 1 (0x4), SH outer.
  stage 2, rw normal: MemAttr 0xF << 2 = 0x3C | S2AP 0xC0 | SH inner 0x300 | AF 0x400 = 0x7FC;
      device: MemAttr 0x1 << 2 = 0x4, SH outer 0x200, XN; normal-nc: MemAttr 0x5 << 2 = 0x14, SH outer.
  type bits: page / table 0b11, block 0b01. Stage-1 table descriptors carry NSTable (bit 63).
"""

import pytest
from armwalk import load_image

from iommu_core.pgtable.extents import ExtentError, MappingConflict
from iommu_core.pgtable.format import Format
from iommu_core.pgtable.reference import ReferencePageTable

GIB, MIB2 = 1 << 30, 1 << 21
BASE = 0x8000_0000
XN = 1 << 54

# preset -> hand values: rw normal leaf attributes, table descriptor bits, start level, root pages
HAND = {
    "ipmmu-s1-32": dict(rw=0xF60, table=(1 << 63) | 0b11, start=1, roots=1),
    "ipmmu-s1-39": dict(rw=0xF60, table=(1 << 63) | 0b11, start=1, roots=1),
    "p2m-s2-40": dict(rw=0x7FC, table=0b11, start=1, roots=2),
    "p2m-s2-48": dict(rw=0x7FC, table=0b11, start=0, roots=1),
}
PRESETS = list(HAND)
S1, S2 = PRESETS[:2], PRESETS[2:]


def leaves(t):
    """leaves() as plain tuples (iova, level, descriptor)."""
    return [(int(a), int(b), int(c)) for a, b, c in zip(*t.leaves())]


def levels(t):
    """Leaf count per level."""
    out = {}
    for _, lv, _ in leaves(t):
        out[lv] = out.get(lv, 0) + 1
    return out


def counts(preset, **extra):
    """Expected tables_by_level: the root plus `extra` {level: n}."""
    h = HAND[preset]
    c = {lv: 0 for lv in range(h["start"], 4)}
    c[h["start"]] = 1
    for k, v in extra.items():
        c[int(k[1])] += v
    return c


# -- descriptors -----------------------------------------------------------------
@pytest.mark.parametrize("preset", PRESETS)
def test_one_page(preset):
    h = HAND[preset]
    t = ReferencePageTable(Format.preset(preset))
    # iova 0x4000_3000: L1 index 1, L2 index (>> 21) & 511 = 0x200 & 511 = 0, L3 index 3
    t.map(0x4000_3000, 0x1_2345_6000, 1)
    assert leaves(t) == [(0x4000_3000, 3, 0x1_2345_6000 | h["rw"] | 0b11)]
    first = h["roots"]                      # first page after the root
    if h["start"] == 1:
        assert t.tables[0][1] == h["table"] | (BASE + first * 4096)          # root[1] -> L2
        assert t.tables[first][0] == h["table"] | (BASE + (first + 1) * 4096)  # L2[0] -> L3
        assert t.tables[first + 1][3] == 0x1_2345_6000 | h["rw"] | 0b11
        assert t.tables_by_level() == counts(preset, L2=1, L3=1)
    else:                                   # 48-bit: root[0] -> L1, L1[1] -> L2, L2[0] -> L3
        assert t.tables[0][0] == h["table"] | (BASE + 0x1000)
        assert t.tables[1][1] == h["table"] | (BASE + 0x2000)
        assert t.tables[3][3] == 0x1_2345_6000 | h["rw"] | 0b11
        assert t.tables_by_level() == counts(preset, L1=1, L2=1, L3=1)
    assert t.table_bytes() == (h["roots"] + 3 - h["start"]) * 4096


@pytest.mark.parametrize("preset", PRESETS)
def test_blocks(preset):
    h = HAND[preset]
    t = ReferencePageTable(Format.preset(preset))
    t.map(0x4020_0000, 0x1_2340_0000, 512)             # 2 MiB: 0x1_2340_0000 is 2 MiB-aligned
    t.map(0x8000_0000, 0x1_4000_0000, 1 << 18)         # 1 GiB
    assert leaves(t) == [(0x4020_0000, 2, 0x1_2340_0000 | h["rw"] | 0b01),
                         (0x8000_0000, 1, 0x1_4000_0000 | h["rw"] | 0b01)]
    if h["start"] == 1:                                 # the 1 GiB block sits in the root
        assert t.tables[0][2] == 0x1_4000_0000 | h["rw"] | 0b01
        assert t.tables_by_level() == counts(preset, L2=1)
    else:
        assert t.tables_by_level() == counts(preset, L1=1, L2=1)


@pytest.mark.parametrize("preset, perm, memtype, sw, attrs", [
    ("ipmmu-s1-32", "r", "normal", 0, 0xFE0),
    ("ipmmu-s1-39", "rw", "device", 0, XN | 0xE68),
    ("ipmmu-s1-39", "rw", "normal-nc", 5, (5 << 55) | 0xE64),
    ("p2m-s2-40", "r", "normal", 0, 0x77C),             # S2AP read only 0x40
    ("p2m-s2-40", "w", "normal", 0, 0x7BC),             # S2AP write only 0x80
    ("p2m-s2-48", "none", "normal", 15, (15 << 55) | 0x73C),
    ("p2m-s2-48", "rw", "device", 0, XN | 0x6C4),
    ("p2m-s2-40", "rw", "normal-nc", 0, 0x6D4),
])
def test_attributes(preset, perm, memtype, sw, attrs):
    t = ReferencePageTable(preset)
    t.map(0x1000, 0xE670_0000, 1, perm, memtype, sw)
    assert leaves(t) == [(0x1000, 3, 0xE670_0000 | attrs | 0b11)]
    pa, p, m, s, fault = t.translate([0x1ABC, 0x2000])
    assert pa.tolist() == [0xE670_0ABC, 0] and fault.tolist() == [False, True]
    assert t.mappings().to_records() == [(0x1000, 0xE670_0000, 1, perm, memtype, sw)]


# -- Xen's order rule ---------------------------------------------------------------
@pytest.mark.parametrize("preset", PRESETS)
def test_leaf_order(preset):
    t = ReferencePageTable(preset)
    t.map(0x4000_0000, 0x1_0000_0000, 513)             # 2 MiB + 4 KiB: the count never divides by 512
    assert levels(t) == {3: 513}
    t.map(0x407F_F000, 0x1_007F_F000, 513)             # one page, then an aligned 2 MiB with 512 left
    assert [lv for _, lv, _ in leaves(t)][513:] == [3, 2]
    t.map(0x40A0_0000, 0x1_00A0_1000, 512)             # pa not 2 MiB-aligned
    t.map(0x40C0_0000, 0x1_00C0_0000, 512, leaf="4k")
    assert levels(t) == {3: 513 + 1 + 512 + 512, 2: 1}


def test_leaf_sizes_of_the_format():
    fmt = Format.preset("p2m-s2-40").with_leaf_sizes(("4K", "2M"))
    t = ReferencePageTable(fmt)
    t.map(GIB, GIB, 1 << 18)
    assert levels(t) == {2: 512}


# -- splits ---------------------------------------------------------------------------
@pytest.mark.parametrize("preset", PRESETS)
def test_partial_unmap_splits_a_2m_block(preset):
    h = HAND[preset]
    t = ReferencePageTable(preset)
    t.map(0x4020_0000, 0x1_2340_0000, 512)
    before = t.tables_by_level()
    t.unmap(0x4020_5000, 1)
    after = t.tables_by_level()
    assert after[3] == before[3] + 1 and after[2] == before[2]
    assert levels(t) == {3: 511}
    assert leaves(t)[0] == (0x4020_0000, 3, 0x1_2340_0000 | h["rw"] | 0b11)
    assert t.mappings().to_records() == [(0x4020_0000, 0x1_2340_0000, 5, "rw", "normal", 0),
                                         (0x4020_6000, 0x1_2340_6000, 506, "rw", "normal", 0)]
    assert t.translate(0x4020_5000)[4].tolist() == [True]


@pytest.mark.parametrize("preset", PRESETS)
def test_partial_unmap_splits_a_1g_block_twice(preset):
    t = ReferencePageTable(preset)
    t.map(GIB, 0x1_4000_0000, 1 << 18, "r", sw=2)
    before = t.tables_by_level()
    t.unmap(GIB + 3 * MIB2, 1)                          # inside the fourth 2 MiB block
    after = t.tables_by_level()
    assert (after[2] - before[2], after[3] - before[3]) == (1, 1)
    assert levels(t) == {2: 511, 3: 511}
    assert t.mappings().to_records() == [
        (GIB, 0x1_4000_0000, 3 * 512, "r", "normal", 2),
        (GIB + 3 * MIB2 + 0x1000, 0x1_4000_0000 + 3 * MIB2 + 0x1000, (1 << 18) - 3 * 512 - 1, "r", "normal", 2)]


@pytest.mark.parametrize("preset", PRESETS)
def test_unmap_of_whole_blocks_does_not_split(preset):
    t = ReferencePageTable(preset)
    t.map([0x4020_0000, GIB * 2], [0x1_2340_0000, 0x1_4000_0000], [512, 1 << 18])
    before = t.tables_by_level()
    t.unmap([0x4000_0000, GIB * 2], [1024, 1 << 18])   # unmapped space around the block is skipped
    assert leaves(t) == [] and t.tables_by_level() == before


@pytest.mark.parametrize("preset", PRESETS)
def test_remap_inside_a_block_splits_it(preset):
    t = ReferencePageTable(preset)
    t.map(0x4020_0000, 0x1_2340_0000, 512)
    with pytest.raises(MappingConflict):
        t.map(0x4020_3000, 0x5000_0000, 1, "r")
    t.map(0x4020_3000, 0x5000_0000, 1, "r", remap=True)
    assert levels(t) == {3: 512}
    assert t.mappings().to_records() == [(0x4020_0000, 0x1_2340_0000, 3, "rw", "normal", 0),
                                         (0x4020_3000, 0x5000_0000, 1, "r", "normal", 0),
                                         (0x4020_4000, 0x1_2340_4000, 508, "rw", "normal", 0)]


@pytest.mark.parametrize("preset", PRESETS)
def test_remap_of_a_whole_block_overwrites_it(preset):
    h = HAND[preset]
    t = ReferencePageTable(preset)
    t.map(0x4020_0000, 0x1_2340_0000, 512)
    before = t.tables_by_level()
    t.map(0x4020_0000, 0x1_2360_0000, 512, remap=True)
    assert leaves(t) == [(0x4020_0000, 2, 0x1_2360_0000 | h["rw"] | 0b01)]
    assert t.tables_by_level() == before


@pytest.mark.parametrize("preset", PRESETS)
def test_block_replaces_a_table_and_frees_it(preset):
    t = ReferencePageTable(preset)
    t.map(0x4020_0000, 0x1_2340_0000, 3)
    l3 = max(t.tables)                                  # the level-3 table's page
    with_table = t.tables_by_level()
    with pytest.raises(MappingConflict):                # the table holds live pages
        t.map(0x4020_0000, 0x1_2340_0000, 512)
    t.map(0x4020_0000, 0x1_2340_0000, 512, remap=True)
    assert levels(t) == {2: 1}
    assert t.tables_by_level()[3] == with_table[3] - 1
    t.map(0x4060_0000, 0x1_2360_0000, 1)                # the freed page is the next one allocated
    assert max(t.tables) == l3


@pytest.mark.parametrize("preset", PRESETS)
def test_block_over_an_emptied_table_needs_no_remap(preset):
    t = ReferencePageTable(preset)
    t.map(0x4020_0000, 0x1_2340_0000, 3)
    t.unmap(0x4020_0000, 3)                             # Xen keeps the empty table
    assert t.tables_by_level()[3] == 1
    t.map(0x4020_0000, 0x1_2340_0000, 512)
    assert levels(t) == {2: 1} and t.tables_by_level()[3] == 0


# -- conflicts leave the table unchanged ----------------------------------------------
@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("iova, pa, npages", [
    ([0x1000], [0x1000], [1]),                          # the same page again
    ([0], [0], [512]),                                  # a block over a table with a live page
    ([0x4000_0000, 0x4020_1000], [0, 0x1000], [512, 1]),  # second extent lands inside the block
    ([GIB * 2], [0], [1 << 18]),                        # a 1 GiB block over a live page
])
def test_conflict_changes_nothing(preset, iova, pa, npages):
    t = ReferencePageTable(preset)
    t.map([0x1000, 0x4020_0000, GIB * 2 + 0x5000], [0x7000, 0x1_2340_0000, 0x9000], [1, 512, 1])
    snapshot = {p: list(e) for p, e in t.tables.items()}
    with pytest.raises(MappingConflict) as e:
        t.map(iova, pa, npages, "r")
    assert e.value.index == len(iova) - 1
    assert t.tables == snapshot


# -- reclaim --------------------------------------------------------------------------
@pytest.mark.parametrize("preset", PRESETS)
def test_reclaim_frees_emptied_tables(preset):
    t = ReferencePageTable(preset, reclaim=True)
    empty = t.tables_by_level()
    t.map([0x4000_0000, 0x4040_0000], [0x1_0000_0000, 0x1_0040_0000], [1, 1])  # two L3 tables, one L2
    mapped = t.tables_by_level()
    assert mapped[3] == 2
    t.unmap(0x4000_0000, 1)
    assert t.tables_by_level() == {**mapped, 3: 1}
    t.unmap(0x4040_0000, 1)
    assert t.tables_by_level() == empty and t.table_bytes() == HAND[preset]["roots"] * 4096
    assert not any(e for p in range(HAND[preset]["roots"]) for e in t.tables[p])


@pytest.mark.parametrize("preset", PRESETS)
def test_reclaim_after_a_split_in_one_call(preset):
    t = ReferencePageTable(preset, reclaim=True)
    empty = t.tables_by_level()
    t.map(0x4020_0000, 0x1_2340_0000, 512)
    t.unmap([0x4020_0000, 0x4030_0000], [256, 256])     # the first half splits, the second empties
    assert t.tables_by_level() == empty and leaves(t) == []


@pytest.mark.parametrize("preset", PRESETS)
def test_no_reclaim_keeps_tables(preset):
    t = ReferencePageTable(preset)
    t.map(0x4000_0000, 0x1_0000_0000, 1)
    before = t.tables_by_level()
    t.unmap(0x4000_0000, 1)
    assert t.tables_by_level() == before and leaves(t) == []


# -- round trip, translate, the independent walker ------------------------------------------
def populate(t):
    recs = [  # (iova, pa, npages, perm, memtype, sw), sorted, as mappings() should give them back
        (0x4000_0000, 0x1_0000_0000, 515, "rw", "normal", 0),
        (0x4100_0000, 0x2_0000_0000, 1024, "r", "device", 3),
        (0x4200_0000, 0x3_0000_0000, 16, "rw", "normal-nc", 0),
        (0x8000_0000, 0x4000_0000, 1 << 18, "r", "normal", 0),
        (0xC010_0000, 0x4010_0000, 700, "rw", "normal", 15),
    ]
    # the third record is given as two extents (7 + 9 pages) that merge back
    ext = recs[:2] + [(0x4200_0000, 0x3_0000_0000, 7, "rw", "normal-nc", 0),
                      (0x4200_7000, 0x3_0000_7000, 9, "rw", "normal-nc", 0)] + recs[3:]
    t.map(*zip(*ext))
    return recs


@pytest.mark.parametrize("preset", PRESETS)
def test_round_trip(preset):
    t = ReferencePageTable(preset)
    recs = populate(t)
    assert t.mappings().to_records() == recs
    pa, perm, memtype, sw, fault = t.translate([0x4000_0123, 0x4100_0FFF, 0x8765_4321, 0x4300_0000])
    assert pa.tolist() == [0x1_0000_0123, 0x2_0000_0FFF, 0x4765_4321, 0]
    assert perm.tolist() == [3, 1, 1, 0] and memtype.tolist() == [0, 2, 0, 0]
    assert sw.tolist() == [0, 3, 0, 0] and fault.tolist() == [False, False, False, True]
    t.unmap([r[0] for r in recs], [r[2] for r in recs])
    assert len(t.mappings()) == 0


@pytest.mark.parametrize("preset", PRESETS)
def test_the_walker_agrees(preset, tmp_path):
    t = ReferencePageTable(preset)
    populate(t)
    t.unmap(0x8010_0000, 3)                             # split the 1 GiB block
    t.export(tmp_path / "t")
    img = load_image(tmp_path / "t")
    iova, level, desc = t.leaves()
    walked = img.mappings()
    assert [w[0] for w in walked] == iova.tolist()
    assert [w[2] for w in walked] == [1 << (12 + 9 * (3 - int(lv))) for lv in level]
    for va in (0x4000_0123, 0x4100_0FFF, 0x8765_4321, 0x8010_1000, 0xC03F_F000, 0x4300_0000):
        w = img.walk(va)
        pa, *_, fault = t.translate(va)
        assert (w is None) == bool(fault[0]) and (w is None or w[0] == int(pa[0]))


# -- input -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [
    dict(iova=0x1001, pa=0, npages=1),
    dict(iova=0x1000, pa=0x800, npages=1),
    dict(iova=0x1000, pa=0, npages=0),
    dict(iova=1 << 32, pa=0, npages=1),                 # beyond the 32-bit input
    dict(iova=0, pa=(1 << 40) - 0x1000, npages=2),      # beyond the 40-bit output
    dict(iova=0, pa=0, npages=1, perm="w"),             # stage 1 cannot say write-only
    dict(iova=0, pa=0, npages=1, memtype="cached"),
    dict(iova=0, pa=0, npages=1, sw=16),
    dict(iova=0, pa=0, npages=1, leaf="2m"),
    dict(iova=[0, 0x1000], pa=[0, 0x1000], npages=[2, 1]),  # overlapping extents
    dict(iova=[0, 0x1000], pa=[0], npages=1),
    dict(iova=[], pa=[], npages=[]),
    dict(iova=0.5, pa=0, npages=1),
])
def test_bad_input_is_refused(kwargs):
    t = ReferencePageTable("ipmmu-s1-32")
    with pytest.raises(ValueError):
        t.map(**kwargs)
    assert leaves(t) == []


def test_bad_unmap_and_translate():
    t = ReferencePageTable("p2m-s2-40")
    for args in [(0x800, 1), (0, 0), (1 << 40, 1), ([0, 0], [1, 1])]:
        with pytest.raises(ExtentError):
            t.unmap(*args)
    with pytest.raises(ValueError):
        t.translate([0, 1 << 40])
    with pytest.raises(ValueError):
        ReferencePageTable("p2m-s2-40", base=0x8000_1000)   # concatenated roots need 8 KiB alignment

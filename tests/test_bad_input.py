"""Every refused batch names the first bad extent and leaves the table as it was."""

import numpy as np
import pytest

from iommu_core import ExtentError, MappingConflict, PageTable


def snapshot(pt):
    return pt.pool.mem[: pt.pool.top].copy(), pt.stats(), pt.mappings()


@pytest.fixture
def pt():
    t = PageTable("ipmmu-s1-32")
    t.map([0x10_0000, 0x40_0000], [0x4000_0000, 0x4020_0000], [16, 512])   # pages, and one 2 MiB block
    return t


BAD_MAPS = [
    # (args, kwargs, message fragment, bad extent index)
    (([0x1000, 0x1800], 0x0, [1, 1]), {}, "iova 0x1800 is negative or not 4 KiB-aligned", 1),
    (([0x1000, -0x1000], 0x0, [1, 1]), {}, "negative", 1),
    ((0x1000, 0x123, 1), {}, "pa 0x123", 0),
    (([0x1000, 0x8000], [0, 0x8000], [1, 0]), {}, "npages must be positive, got 0", 1),
    (([0x1000, 0x8000], [0, 0x8000], [1, -3]), {}, "got -3", 1),
    ((0xFFFF_F000, 0x0, 2), {}, "beyond the 32-bit address size", 0),
    ((0x1000, (1 << 40) - 0x1000, 2), {}, "beyond the 40-bit address size", 0),
    (([0x1000, 0x3000, 0x2000], [0, 0x10000, 0x20000], [1, 1, 2]), {}, "extent 2: overlaps extent 1", 2),
    ((0x1000, 0x0, 1), {"perm": "x"}, "unknown perm 'x'", 0),
    ((0x1000, 0x0, 1), {"perm": "w"}, "unknown perm 'w'", 0),            # stage 1 cannot express it
    (([0x1000, 0x2000], [0, 0x1000], 1), {"perm": ["r", "rwx"]}, "extent 1: unknown perm 'rwx'", 1),
    ((0x1000, 0x0, 1), {"memtype": "wc"}, "unknown memtype 'wc'", 0),
    ((0x1000, 0x0, 1), {"sw": 16}, "sw 16", 0),
    (([0x1000, 0x2000], [0, 0x1000], [1, 1, 1]), {}, "differ in length", None),
    ((4096.5, 0x0, 1), {}, "integers", None),
    (([], [], []), {}, "empty batch", None),
    (([0x200_0000, 0x10_3000], [0x0, 0x1000_0000], [1, 1]), {}, "extent 1: iova 0x103000", 1),  # live page
    ((0x40_1000, 0x1000_0000, 1), {}, "a block above it maps it already", 0),                  # under a block
    ((0x40_0000, 0x5000_0000, 512), {}, "mapped already", 0),                                   # block on block
    ((0x0, 0x5000_0000, 512), {}, "iova 0x0 cannot be mapped: smaller mappings below it are live", 0),
]


@pytest.mark.parametrize("args, kwargs, fragment, index", BAD_MAPS)
def test_bad_map_is_refused_and_changes_nothing(pt, args, kwargs, fragment, index):
    before = snapshot(pt)
    with pytest.raises(ExtentError, match=fragment.replace("(", r"\(")) as info:
        pt.map(*args, **kwargs)
    assert info.value.index == index
    after = snapshot(pt)
    assert np.array_equal(before[0], after[0])
    assert before[1] == after[1] and before[2] == after[2]


def test_live_mapping_conflict_is_its_own_error_type(pt):
    with pytest.raises(MappingConflict):
        pt.map(0x10_0000, 0x0, 1)


def test_bad_leaf_mode_and_remap_still_validate(pt):
    with pytest.raises(ExtentError, match="leaf must be"):
        pt.map(0x1000, 0x0, 1, leaf="2m")
    with pytest.raises(ExtentError, match="not 4 KiB-aligned"):
        pt.map(0x1001, 0x0, 1, remap=True)


@pytest.mark.parametrize("args, fragment", [
    ((0x1234, 1), "not 4 KiB-aligned"),
    ((0x1000, 0), "positive"),
    (([0x1000, 0x2000], [2, 1]), "overlaps"),
    ((0xFFFF_F000, 2), "beyond the 32-bit"),
])
def test_bad_unmap_is_refused(pt, args, fragment):
    before = snapshot(pt)
    with pytest.raises(ExtentError, match=fragment):
        pt.unmap(*args)
    assert np.array_equal(before[0], snapshot(pt)[0])


def test_translate_refuses_addresses_outside_the_input_range(pt):
    with pytest.raises(ExtentError, match=r"address 1: 0x100000000 is outside the 32-bit"):
        pt.translate(np.array([0x1000, 1 << 32]))
    with pytest.raises(ExtentError, match="integers"):
        pt.translate(np.array([1.5]))


def test_bad_base_and_format_names():
    with pytest.raises(ValueError, match="not aligned to the 0x2000-byte root"):
        PageTable("p2m-s2-40", base=0x8000_1000)
    with pytest.raises(ValueError, match="unknown format preset"):
        PageTable("ipmmu-s2")
    with pytest.raises(ValueError, match="beyond the 40-bit"):
        PageTable("ipmmu-s1-32", base=1 << 40)


def test_two_unmap_ranges_inside_one_block_split_it_once():
    pt = PageTable("p2m-s2-40", reclaim=True)
    pt.map(0x4000_0000, 0x4000_0000, 512)
    pt.unmap([0x4000_1000, 0x4001_0000], [2, 3])
    s = pt.stats()
    assert s["tables_by_level"] == {1: 1, 2: 1, 3: 1} and s["block_splits"] == 1
    assert len(pt.mappings()) == 3

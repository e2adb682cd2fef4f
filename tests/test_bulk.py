"""Large mappings take the streaming paths (row templates, cache-line writes);
they must write exactly what many small calls write."""

import numpy as np

from iommu_core import PageTable

PAGES = 300 * 512 + 77          # more than one 256-table template run, plus a ragged tail


def piecewise(fmt, iova, pa, n, piece):
    pt = PageTable(fmt)
    for k in range(0, n, piece):
        m = min(piece, n - k)
        pt.map(iova + k * 4096, pa + k * 4096, m, leaf="4k")
    return pt


def same_table(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a.leaves(), b.leaves())) and a.mappings() == b.mappings()


def test_one_big_call_writes_what_many_small_calls_write():
    iova, pa = 0x80_0000_0000 + 0x3000, 0x10_0000_0000 + 0x3000
    big = PageTable("p2m-s2-48")
    big.map(iova, pa, PAGES, leaf="4k")
    assert same_table(big, piecewise("p2m-s2-48", iova, pa, PAGES, 4096))
    s = big.stats()
    assert s["descriptors_written"] - s["tables_allocated"] == PAGES


def test_a_break_in_the_output_restarts_the_progression():
    # Two extents that meet in input space but not in output: the row values jump.
    pt = PageTable("p2m-s2-48")
    half = 280 * 512
    pt.map([0x40_0000_0000, 0x40_0000_0000 + half * 4096], [0x1_0000_0000, 0x9_0000_0000], [half, half], leaf="4k")
    want = [(0x40_0000_0000, 0x1_0000_0000, half, "rw", "normal", 0),
            (0x40_0000_0000 + half * 4096, 0x9_0000_0000, half, "rw", "normal", 0)]
    assert pt.mappings().to_records() == want
    t = pt.translate(np.array([0x40_0000_0000 + (half - 1) * 4096 + 5, 0x40_0000_0000 + half * 4096 + 5]))
    assert t.pa.tolist() == [0x1_0000_0000 + (half - 1) * 4096 + 5, 0x9_0000_0000 + 5]


def test_unmap_and_remap_of_a_big_range_leave_the_tables_for_reuse():
    pt = PageTable("p2m-s2-48")
    pt.map(0x40_0000_0000, 0x1_0000_0000, PAGES, leaf="4k")
    before = pt.stats()["tables"]
    pt.unmap(0x40_0000_0000, PAGES)
    assert len(pt.mappings()) == 0 and pt.stats()["tables"] == before
    r = pt.map(0x40_0000_0000, 0x2_0000_0000, PAGES, leaf="4k")
    assert r["tables_allocated"] == 0 and pt.stats()["tables"] == before
    assert pt.mappings().to_records() == [(0x40_0000_0000, 0x2_0000_0000, PAGES, "rw", "normal", 0)]
    r = pt.map(0x40_0000_0000, 0x3_0000_0000, PAGES, leaf="4k", remap=True)
    assert r["bbm_breaks"] == PAGES
    assert pt.mappings().to_records() == [(0x40_0000_0000, 0x3_0000_0000, PAGES, "rw", "normal", 0)]

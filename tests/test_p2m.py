"""The P2M: types in entries, change reports, the DMA view."""

import numpy as np
import pytest

from iommu_core import intervals as iv
from iommu_core.xen.p2m import P2M
from iommu_core.xen.p2m_types import CODE, DMA_PERM, TYPES


def ranges(r):
    return list(zip(r[0].tolist(), r[1].tolist()))


def test_types_live_in_the_entries_and_give_the_dma_permission():
    p2m = P2M()
    gfns = np.arange(1, len(TYPES)) * 0x10
    change = p2m.set_entry(gfns, gfns + 0x100000, 1, list(TYPES[1:]))
    assert ranges(change.added) == [(g, g + 1) for g in gfns.tolist()] and not len(change.modified[0])
    ent = p2m.entries()
    assert [TYPES[c] for c in ent.sw.tolist()] == list(TYPES[1:])
    dma = p2m.dma_view()
    perms = {"r": 1, "rw": 3}
    assert dma.perm.tolist() == [perms[DMA_PERM[t]] for t in TYPES[1:]]


def test_change_report_added_modified_removed():
    p2m = P2M()
    p2m.set_entry(0x40000, 0x80000, 512, "ram_rw")
    c = p2m.set_entry([0x40100, 0x41000], [0x90000, 0x91000], [0x200, 16], "grant_map_rw")
    assert ranges(c.modified) == [(0x40100, 0x40200)]
    assert ranges(c.added) == [(0x40200, 0x40300), (0x41000, 0x41010)]
    c = p2m.set_entry([0x400f0, 0x41008], 0, [0x20, 0x100], "invalid")
    assert ranges(c.removed) == [(0x400f0, 0x40110), (0x41008, 0x41010)]
    assert c.live_changed
    assert ranges(c.touched) == [(0x400f0, 0x40110), (0x41008, 0x41108)]


def test_superpages_where_gfn_mfn_and_count_align_and_split_on_change():
    p2m = P2M()
    p2m.set_entry(0x40000, 0x80000, 1024, "ram_rw")
    assert p2m.stats()["tables_by_level"] == {1: 1, 2: 1, 3: 0}
    p2m.set_entry(0x40010, 0, 1, "invalid")
    s = p2m.stats()
    assert s["block_splits"] == 1 and s["tables_by_level"][3] == 1


def test_unknown_type_is_named():
    with pytest.raises(ValueError, match="unknown P2M type 'ram_rx'"):
        P2M().set_entry(0x1000, 0x1000, 1, "ram_rx")
    with pytest.raises(ValueError, match="stage-2"):
        P2M("ipmmu-s1-39")


def test_interval_algebra():
    a = iv.normalize([0, 10, 5], [5, 5, 3])        # [0,8) and [10,15)
    assert ranges(a) == [(0, 8), (10, 15)]
    b = iv.normalize([3, 12], [9, 1])               # [3,12) [12,13) -> merged [3,13)
    assert ranges(iv.intersect(a, b)) == [(3, 8), (10, 13)]
    assert ranges(iv.subtract(a, b)) == [(0, 3), (13, 15)]
    assert iv.size(a) == 13
    assert CODE["invalid"] == 0


@pytest.mark.parametrize("gfn, nr, match", [(-1, 1, "iova -0x1000 is negative"), (1 << 40, 1, "beyond the 40-bit"),
                                            (0x1000, 0, "npages must be positive"), (1.5, 1, "gfn must be integers")])
def test_bad_gfns_are_named_and_change_nothing(gfn, nr, match):
    p2m = P2M()
    p2m.set_entry(0x40000, 0x80000, 4, "ram_rw")
    before = p2m.pt.mappings(), p2m.xen_counters()
    with pytest.raises(ValueError, match=match):
        p2m.set_entry(gfn, 0x90000, nr, "ram_rw")
    assert before == (p2m.pt.mappings(), p2m.xen_counters())
    p2m.set_entry(2.0, 0x90000, 1, "ram_rw")       # a whole float is a page number
    assert p2m.pt.mappings(2 << 12, 1).pa.tolist() == [0x90000 << 12]

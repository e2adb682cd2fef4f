"""The P2M against a call-by-call Xen 4.17 P2M (tests/xenp2m.py): tables, leaves and Xen's counters."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from iommu_core.pgtable import PageTable
from iommu_core.xen.p2m import P2M
from iommu_core.xen.p2m_types import TYPES, codes
from xenp2m import XenP2M

G1 = 1 << 18                                           # pages in 1 GiB
bases = st.sampled_from([0, 512, G1, G1 + 512, 2 * G1 - 512, 3 * G1])
offsets = st.sampled_from([0, 0, 1, 5, 511])
counts = st.sampled_from([1, 1, 2, 7, 511, 512, 513, 1024, G1, G1 + 1])
call = st.tuples(bases, offsets, counts,
                 st.one_of(st.none(), st.tuples(st.sampled_from([0, 512, G1, 5 * G1]), offsets)),
                 st.sampled_from([1, 2, 5]))


def model_extents(p2m):
    ext = p2m.entries()
    return [(int(g) // 4096, int(m) // 4096, int(n), int(t))
            for g, m, n, t in zip(ext.iova, ext.pa, ext.npages, ext.sw)]


def ref_extents(ref):
    merged = []
    for g, m, n, t in ref.extents():
        if merged and merged[-1][0] + merged[-1][2] == g and merged[-1][1] + merged[-1][2] == m and merged[-1][3] == t:
            merged[-1] = (merged[-1][0], merged[-1][1], merged[-1][2] + n, t)
        else:
            merged.append((g, m, n, t))
    return merged


@settings(max_examples=150, deadline=None)
@given(st.lists(call, min_size=1, max_size=12))
def test_p2m_counts_as_xen_does(calls):
    p2m, ref = P2M("p2m-s2-40"), XenP2M(root_level=1)
    for base, off, nr, out, t in calls:
        gfn = base + off
        mfn = None if out is None else out[0] + out[1]
        p2m.set_entry(gfn, 0 if mfn is None else mfn, nr, "invalid" if mfn is None else TYPES[t])
        ref.set_entry(gfn, nr, mfn, t)
        c = p2m.xen_counters()
        assert (c["mappings_1g"], c["mappings_2m"], c["mappings_4k"]) == (ref.mappings[1], ref.mappings[2],
                                                                          ref.mappings[3])
        assert (c["shattered_1g"], c["shattered_2m"]) == (ref.shattered[1], ref.shattered[2])
        assert (c["leaves_1g"], c["leaves_2m"], c["leaves_4k"]) == tuple(ref.leaves().values())
        tables = p2m.stats()["tables_by_level"]
        assert {lvl: tables.get(lvl, 0) for lvl in ref.tables} == ref.tables
    assert model_extents(p2m) == ref_extents(ref)


def test_replacing_a_valid_entry_with_another_mfn_leaves_the_4k_counter_one_below():
    # dom0's shared_info: a page of its 1:1 RAM block remapped to a Xen page (p2m.c:1195 and :1231).
    p2m = P2M("p2m-s2-40")
    p2m.set_entry(0x60000, 0x60000, 512, "ram_rw")
    p2m.set_entry(0x6001c, 0xbffbc, 1, "ram_rw")
    c = p2m.xen_counters()
    assert (c["mappings_2m"], c["shattered_2m"], c["leaves_4k"], c["mappings_4k"]) == (0, 1, 512, 511)


def test_removing_an_entry_whose_mfn_is_0_is_not_counted_down():
    p2m = P2M("p2m-s2-40")
    p2m.set_entry(0, 0, 1, "mmio_direct_c")
    p2m.set_entry(0, 0, 1, "invalid")
    assert p2m.xen_counters()["mappings_4k"] == 1 and p2m.xen_counters()["leaves_4k"] == 0


def test_xen_unmap_frees_a_table_a_removal_leaf_covers_and_splits_by_the_order_rule():
    pt = PageTable("p2m-s2-40", xen_unmap=True)
    pt.map(0, 0, 512, leaf="4k")
    pt.unmap(0, 512)                                  # one 2 MiB removal leaf: the L3 table goes
    assert pt.stats()["tables_by_level"][3] == 0
    pt.map(0, 0, 512)                                 # a block
    pt.unmap(0, 511)                                  # 4 KiB leaves only: the block is split, then emptied
    assert pt.stats()["tables_by_level"][3] == 1 and len(pt.mappings()) == 1


def test_overlapping_calls_in_one_batch_are_refused():
    p2m = P2M("p2m-s2-40")
    try:
        p2m.set_entry(np.array([0, 1]), np.array([0, 1]), np.array([2, 1]), "ram_rw")
    except ValueError as e:
        assert "overlap" in str(e)
    else:
        raise AssertionError("overlapping calls were accepted")


# Small calls over a few pages near a 2 MiB block, so that slots get written, replaced with the
# same or another MFN, removed and removed again, and some calls meet the block (the batch path).
small_call = st.tuples(st.integers(0, 40), st.sampled_from([1, 1, 1, 2, 3, 9]),
                       st.one_of(st.none(), st.integers(0, 6)), st.sampled_from([1, 2, 5]))


def _same_change(a, b):
    for name in ("added", "modified", "removed", "mapped", "unmapped"):
        for x, y in zip(getattr(a, name), getattr(b, name), strict=True):
            assert x.dtype == y.dtype and np.array_equal(x, y), name
    assert a.stats == b.stats
    for name in ("page", "level", "call", "removing", "old_valid", "old_table", "same_mfn"):
        x, y = getattr(a.leaves, name), getattr(b.leaves, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name
    assert a.leaves.splits == b.leaves.splits


@settings(max_examples=200, deadline=None)
@given(st.lists(small_call, min_size=1, max_size=30), st.booleans())
def test_one_call_path_equals_the_batch_path(calls, block):
    """set_entry's one-call path against set_entry_vectorized on the same stream: the same changes,
    the same table bytes, engine counters and Xen counters after every call."""
    fast, slow = P2M("p2m-s2-40"), P2M("p2m-s2-40")
    if block:                                    # a 2 MiB leaf just above the pages the calls touch
        for p in (fast, slow):
            p.set_entry(512, 1024, 512, "ram_rw")
    for off, nr, out, t in calls:
        gfn = 500 + off                          # straddles the block's first pages
        mfn, kind = (0, "invalid") if out is None else (4096 + out * 3, TYPES[t])
        a = fast.set_entry(np.array([gfn]), np.array([mfn]), np.array([nr]), kind)
        b = slow.set_entry_vectorized(np.array([gfn], np.int64), np.array([mfn], np.int64),
                                      np.array([nr], np.int64), codes(kind, 1))
        _same_change(a, b)
        assert fast.pt.pool.mem.tobytes() == slow.pt.pool.mem.tobytes()
        assert fast.stats() == slow.stats() and fast.xen_counters() == slow.xen_counters()

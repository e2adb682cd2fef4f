"""iommu_core.intervals: the package's one interval algebra (P2M, dom0, machine memory,
device trees and cache-line accounting all use it)."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from iommu_core import intervals as iv


def pairs(r):
    return list(zip(r[0].tolist(), r[1].tolist()))


def test_union_merges_overlapping_and_touching_and_drops_empty():
    assert pairs(iv.union([10, 0, 5, 20, 30], [12, 5, 8, 20, 31])) == [(0, 8), (10, 12), (30, 31)]
    assert pairs(iv.union([], [])) == []


def test_union_in_order_keeps_touching_apart_and_the_first_member_order():
    # [8,10) first; [0,4) and [3,6) overlap; [6,7) only touches [3,6)
    got = iv.union_in_order([8, 3, 6, 0], [10, 6, 7, 4])
    assert pairs(got) == [(8, 10), (0, 6), (6, 7)]
    # a later interval joining two earlier ones takes the place of the first of them
    assert pairs(iv.union_in_order([5, 0, 3], [9, 4, 6])) == [(0, 9)]


def test_union_size_counts_the_union_without_building_it():
    rng = np.random.default_rng(0)
    for _ in range(200):
        s = rng.integers(0, 40, rng.integers(0, 8))
        e = s + rng.integers(0, 6, len(s))
        want = iv.size(iv.union(s, e))
        assert iv.union_size(s, e) == want
        assert iv.union_size_small(pairs((s, e))) == want


@settings(max_examples=200, deadline=None)
@given(st.integers(-5, 1000), st.lists(st.booleans(), min_size=1, max_size=40))
def test_of_mask_is_the_set_the_mask_names(first, mask):
    got = iv.of_mask(first, np.array(mask))
    assert [p for s, e in pairs(got) for p in range(s, e)] == [first + i for i, m in enumerate(mask) if m]
    assert all(np.array_equal(x, y) for x, y in zip(got, iv.union(*got)))      # already in set form

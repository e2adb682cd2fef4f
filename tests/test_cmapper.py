"""The C yardstick (benchmarks/cmapper.py) writes the very leaves the engine writes, batched
or per page, so the engine's ratio to it compares the same work."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.cmapper import CMapper
from iommu_core import PageTable

FMT, BASE = "p2m-s2-48", 0x8000_0000


def engine_leaves(pt: PageTable) -> np.ndarray:
    pool = pt.pool
    rows = pool.mem[: pool.top][pool.level[: pool.top] == 3].ravel()
    return np.sort(rows[rows != 0])


@st.composite
def extents(draw):
    """Disjoint extents that cross level-3 and level-2 tables."""
    starts = sorted(draw(st.sets(st.integers(0, 3000), min_size=1, max_size=6)))
    out = []
    for k, s in enumerate(starts):
        room = (starts[k + 1] if k + 1 < len(starts) else 3001) - s
        out.append((0x8_0000_0000 // 4096 + s * 300, draw(st.integers(1, room * 300)),
                    draw(st.integers(0, 1 << 20))))
    return out


@settings(max_examples=40, deadline=None)
@given(extents(), st.booleans())
def test_c_mapper_writes_the_engines_leaves(ext, per_page):
    iova = np.array([g for g, _, _ in ext], np.int64) * 4096
    npages = np.array([n for _, n, _ in ext], np.int64)
    pa = np.array([m for _, _, m in ext], np.int64) * 4096
    pt = PageTable(FMT, base=BASE)
    pt.map(iova, pa, npages, leaf="4k")
    c = CMapper(4096, BASE, pt.fmt.start_level, pt.leaf_attrs("rw", "normal", 0), per_page)
    assert c.map(iova, pa, npages) == npages.sum()
    assert np.array_equal(c.leaves(), engine_leaves(pt))
    c.unmap(iova, npages)
    assert len(c.leaves()) == 0


def test_a_full_pool_is_an_error():
    c = CMapper(2, BASE, 0, 0)
    with pytest.raises(MemoryError, match="pool of 2 pages is full"):
        c.map(np.array([0]), np.array([0]), np.array([1]))

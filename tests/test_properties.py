"""Random map / unmap / remap / translate sequences against the per-page dict model
and the per-page reference implementation, in every preset, with and without blocks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pagemodel import PAGE, DictModel

from iommu_core import MappingConflict, PageTable
from iommu_core.pgtable.arrays import count_distinct
from iommu_core.pgtable.descriptors import MEMTYPE_NAMES, PERM_NAMES, allowed_perms
from iommu_core.pgtable.format import PRESETS

BLOCK = 512                      # pages in 2 MiB
GIB_PAGES = 1 << 18              # pages in 1 GiB


def extents_strategy(fmt, window_pages, base_page, out_base_page, max_len, align=BLOCK):
    perms = list(allowed_perms(fmt))

    @st.composite
    def extents(draw, with_attrs=True):
        raw = draw(st.lists(st.tuples(
            st.one_of(st.integers(0, window_pages // align - 1).map(lambda k: k * align),
                      st.integers(0, window_pages // BLOCK - 1).map(lambda k: k * BLOCK),
                      st.integers(0, window_pages - 1)),
            st.one_of(st.integers(1, max(1, max_len // align)).map(lambda k: k * align),
                      st.integers(1, max(1, max_len // BLOCK)).map(lambda k: k * BLOCK),
                      st.integers(1, max_len)),
            st.one_of(st.just(None), st.integers(0, 4 * window_pages)),      # None: output moves with input
            st.sampled_from(perms), st.sampled_from(["normal", "normal-nc", "device"]),
            st.integers(0, 15)), min_size=1, max_size=4))
        out, end = [], 0
        for start, n, out_off, perm, memtype, sw in sorted(raw, key=lambda r: r[0]):
            n = min(n, window_pages - start)
            if start < end or n <= 0:
                continue
            end = start + n
            pa = (out_base_page + (start if out_off is None else out_off)) * PAGE
            out.append(((base_page + start) * PAGE, pa, n, perm, memtype, sw) if with_attrs
                       else ((base_page + start) * PAGE, n))
        return out or ([((base_page) * PAGE, out_base_page * PAGE, 1, perms[-1], "normal", 0)]
                       if with_attrs else [(base_page * PAGE, 1)])
    return extents


def ops_strategy(fmt, window_pages, base_page, out_base_page, max_len, align=BLOCK, max_ops=8):
    ext = extents_strategy(fmt, window_pages, base_page, out_base_page, max_len, align)
    op = st.one_of(
        st.tuples(st.just("map"), ext(), st.sampled_from(["auto", "4k"]), st.booleans()),
        st.tuples(st.just("unmap"), ext(with_attrs=False)),
    )
    return st.lists(op, min_size=1, max_size=max_ops)


def apply_map(pt, extents, leaf, remap, scalars=True, vectorized=False):
    if len(extents) == 1 and scalars:          # one extent: plain ints take the single-extent path
        iova, pa, n, perm, memtype, sw = extents[0]
        return pt.map(iova, pa, n, perm=perm, memtype=memtype, sw=sw, leaf=leaf, remap=remap)
    cols = list(zip(*extents))
    mapper = pt.map_vectorized if vectorized else pt.map
    return mapper(np.array(cols[0]), np.array(cols[1]), np.array(cols[2]), perm=list(cols[3]),
                  memtype=list(cols[4]), sw=np.array(cols[5]), leaf=leaf, remap=remap)


def check_against_model(pt, model, ref, window):
    assert pt.mappings().to_records() == model.records()
    rng = np.random.default_rng(len(model.pages))
    # Decoding only some ranges cuts the same extents at the ranges' edges.
    cuts = np.unique(rng.choice(window, 6, replace=False))
    ranges = [(int(a) * PAGE, int(b - a)) for a, b in zip(cuts[0::2], cuts[1::2])]
    if ranges:
        got = pt.mappings([r[0] for r in ranges], [r[1] for r in ranges]).to_records()
        assert got == model.records(ranges)
    if len(window) > 8192:                  # large windows: a sample, plus every page near a 2 MiB edge
        edges = window[(window % BLOCK < 2) | (window % BLOCK > BLOCK - 3)]
        window = np.union1d(rng.choice(window, 4096, replace=False), edges[:4096])
    addrs = window * PAGE + rng.integers(0, PAGE, len(window))
    t = pt.translate(addrs)
    for a, pa, perm, memtype, sw, fault in zip(addrs.tolist(), t.pa.tolist(), t.perm.tolist(),
                                               t.memtype.tolist(), t.sw.tolist(), t.fault.tolist()):
        want = model.lookup(a)
        got = None if fault else (pa, PERM_NAMES[perm], MEMTYPE_NAMES[memtype], sw)
        assert got == want, hex(a)
    pool = pt.pool                          # the engine's own count of live slots per table
    assert np.array_equal(pool.used[: pool.top], np.count_nonzero(pool.mem[: pool.top], axis=1))
    s = pt.stats()
    assert s["tables"] == 1 + s["tables_allocated"] - s["tables_freed"]
    assert sum(s["tables_by_level"].values()) == s["tables"]
    assert s["table_bytes"] == (s["tables"] - 1 + pt.fmt.root_tables) * PAGE
    assert s["peak_table_bytes"] >= s["table_bytes"]
    if ref is not None:
        ra, rl, rd = ref.leaves()
        ea, el, ed = pt.leaves()
        assert np.array_equal(ra, ea) and np.array_equal(rl, el) and np.array_equal(rd, ed)
        assert ref.tables_by_level() == s["tables_by_level"]
        assert ref.table_bytes() == s["table_bytes"]


def run_sequence(fmt, ops, window_pages, base_page, reclaim=False, with_reference=True):
    pt = PageTable(fmt, reclaim=reclaim)
    ref = None
    if with_reference:
        from iommu_core.pgtable.reference import ReferencePageTable
        ref = ReferencePageTable(fmt, reclaim=reclaim)
    model = DictModel()
    window = np.arange(base_page - 8, base_page + window_pages + 8)
    for op in ops:
        if op[0] == "map":
            _, extents, leaf, remap = op
            if not remap and model.would_conflict(extents):
                before = pt.pool.mem[: pt.pool.top].copy(), pt.stats()
                with pytest.raises(MappingConflict):
                    apply_map(pt, extents, leaf, remap)
                assert np.array_equal(before[0], pt.pool.mem[: pt.pool.top]) and before[1] == pt.stats()
                continue
            apply_map(pt, extents, leaf, remap)
            if ref is not None:
                apply_map(ref, extents, leaf, remap)
            model.map(extents)
        elif len(op[1]) == 1:
            (iova, n), = op[1]
            pt.unmap(iova, n)
            if ref is not None:
                ref.unmap(iova, n)
            model.unmap(op[1])
        else:
            cols = list(zip(*op[1]))
            pt.unmap(np.array(cols[0]), np.array(cols[1]))
            if ref is not None:
                ref.unmap(np.array(cols[0]), np.array(cols[1]))
            model.unmap(op[1])
        check_against_model(pt, model, ref, window)
    # Unmapping everything leaves no mapping (and, with reclaim, no table but the root).
    pt.unmap(window[0] * PAGE, len(window))
    assert len(pt.mappings()) == 0
    if reclaim:
        assert pt.stats()["tables"] == 1


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
WINDOW = 4 * BLOCK                       # 8 MiB
BASE = (1 << 18) - 2 * BLOCK             # straddles the 1 GiB boundary: two level-1 entries


@pytest.mark.parametrize("preset", sorted(PRESETS))
@SETTINGS
@given(data=st.data())
def test_random_sequences_match_the_model_and_the_reference(preset, data):
    fmt = PRESETS[preset]
    ops = data.draw(ops_strategy(fmt, WINDOW, BASE, GIB_PAGES, 3 * BLOCK))
    run_sequence(fmt, ops, WINDOW, BASE)


@pytest.mark.parametrize("preset", ["ipmmu-s1-39", "p2m-s2-40"])
@SETTINGS
@given(data=st.data())
def test_random_sequences_with_reclaim(preset, data):
    fmt = PRESETS[preset]
    ops = data.draw(ops_strategy(fmt, WINDOW, BASE, GIB_PAGES, 3 * BLOCK))
    run_sequence(fmt, ops, WINDOW, BASE, reclaim=True)



@pytest.mark.slow
@pytest.mark.parametrize("preset", ["ipmmu-s1-32", "p2m-s2-48"])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_sequences_with_gigabyte_blocks(preset, data):
    fmt = PRESETS[preset]
    ops = data.draw(ops_strategy(fmt, 2 * GIB_PAGES, GIB_PAGES, 2 * GIB_PAGES, GIB_PAGES + 2 * BLOCK, align=GIB_PAGES,
                                  max_ops=5))
    run_sequence(fmt, ops, 2 * GIB_PAGES, GIB_PAGES, with_reference=False)


def same_history(ops, one, other) -> None:
    """Each op through two tables, each (table, map options for apply_map, unmap): the same
    result (or the same refusal) call by call."""
    for op in ops:
        for extents in op[1]:
            if op[0] == "map":
                results = []
                for pt, options, _ in (one, other):
                    try:
                        results.append(apply_map(pt, [extents], op[2], op[3], **options))
                    except MappingConflict as e:
                        results.append(str(e))
            else:
                results = [unmap(*extents) for _, _, unmap in (one, other)]
            assert results[0] == results[1]


@pytest.mark.parametrize("preset", ["ipmmu-s1-32", "p2m-s2-40"])
@SETTINGS
@given(data=st.data())
def test_single_extent_path_writes_and_counts_like_the_batch_path(preset, data):
    """The same history through the one-extent path (plain ints) and the vectorized path."""
    fmt = PRESETS[preset]
    ops = data.draw(ops_strategy(fmt, WINDOW, BASE, GIB_PAGES, 3 * BLOCK))
    small, batch = PageTable(fmt), PageTable(fmt)
    same_history(ops, (small, {"scalars": True}, small.unmap),
                 (batch, {"scalars": False, "vectorized": True},
                  lambda iova, n: batch.unmap_vectorized(np.array([iova]), np.array([n]))))
    assert small.stats() == batch.stats()
    assert all(np.array_equal(a, b) for a, b in zip(small.leaves(), batch.leaves()))


@pytest.mark.parametrize("preset", ["ipmmu-s1-32", "p2m-s2-40"])
@SETTINGS
@given(data=st.data())
def test_one_element_arrays_take_the_one_extent_path_and_count_the_same(preset, data):
    """Length-1 arrays and lists (as the P2M and IOMMU layers pass one call), remap or not, against
    the vectorized path: the same results, tables and counters."""
    fmt = PRESETS[preset]
    ops = data.draw(ops_strategy(fmt, WINDOW, BASE, GIB_PAGES, 3 * BLOCK))
    arrays, vectorized = PageTable(fmt), PageTable(fmt)
    same_history(ops, (arrays, {"scalars": False}, lambda iova, n: arrays.unmap(np.array([iova]), np.array([n]))),
                 (vectorized, {"scalars": False, "vectorized": True},
                  lambda iova, n: vectorized.unmap_vectorized(np.array([iova]), np.array([n]))))
    # Not byte for byte: the two paths number new table pages in another order.
    assert arrays.stats() == vectorized.stats()
    assert all(np.array_equal(a, b) for a, b in zip(arrays.leaves(), vectorized.leaves()))


@given(st.lists(st.integers(-5, 5), max_size=40), st.booleans())
def test_count_distinct_counts_the_set_of_values_sorted_or_not(values, in_order):
    a = np.array(sorted(values) if in_order else values, dtype=np.int64)
    assert count_distinct(a) == len(set(values))

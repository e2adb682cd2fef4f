"""The compiled stream replay (xen/stream.py) against the calls applied one by one
(xenlog.apply_call, UnsharedIommu.follow, invariant.check): random streams, the captured one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks import stream as bench_stream
from iommu_core.scenarios.files import XEN_CAPTURE
from iommu_core.xen import invariant, stream
from iommu_core.xen.iommu import UnsharedIommu
from iommu_core.xen.p2m_types import CODE
from iommu_core.xenlog import CallLog, apply_call, read_capture

IOMMU_PAGES = 1 << 27           # the 39-bit IPMMU's reach, in pages
TYPES = [CODE[t] for t in ("invalid", "invalid", "ram_rw", "ram_ro", "mmio_direct_dev", "mmio_direct_c",
                           "map_foreign_rw", "grant_map_ro")]


def make_log(calls) -> CallLog:
    cols = list(zip(*calls))
    n = len(calls)
    arr = lambda c: np.array(c, np.int64)
    return CallLog(Path("random"), arr(range(n)), arr(cols[0]), arr(cols[1]), arr(cols[2]),
                   np.where(arr(cols[4]) == 0, 0, arr(cols[3])), arr(cols[4]), ["r"] * n, [""] * n, ["p"] * n)


@st.composite
def streams(draw):
    """Calls that meet and overlap: a few windows (one across the IPMMU's reach), lengths
    that cross tables and 2 MiB blocks, removals, remaps, two domains."""
    window = draw(st.sampled_from([0, 512 * 7, IOMMU_PAGES - 600]))
    call = st.tuples(
        st.sampled_from([0, 0, 0, 1]),
        st.one_of(st.integers(0, 2047), st.integers(0, 3).map(lambda k: k * 512)).map(lambda g: window + g),
        st.sampled_from([1, 1, 1, 2, 3, 9, 511, 512, 600, 1024, 5000]),
        st.integers(0, 1 << 20).map(lambda m: m & ~0x1FF if m & 1 else m),
        st.sampled_from(TYPES))
    return draw(st.lists(call, min_size=1, max_size=40))


@st.composite
def block_streams(draw):
    """Blocks first (2 MiB ones, and maybe a 1 GiB one), then small maps and removals in and
    around them: each splits a block, or meets one split already."""
    giant = draw(st.booleans())
    blocks = [(0, 0, 1 << 18, 1 << 19, CODE["ram_rw"])] if giant else []
    blocks += [(0, k * 512, 512, (k + 64) * 512, CODE["ram_rw"]) for k in draw(st.sets(st.integers(1, 5), min_size=1))]
    call = st.tuples(
        st.sampled_from([0, 0, 1]), st.integers(0, 7 * 512),
        st.sampled_from([1, 1, 2, 3, 9, 100, 511]), st.integers(0, 1 << 20), st.sampled_from(TYPES))
    return blocks + draw(st.lists(call, min_size=1, max_size=20))


def one_by_one(log, api="per-page", check=False):
    p2ms, iommus = {}, {}
    for k in range(len(log)):
        d, change = apply_call(log, k, p2ms, "p2m-s2-40")
        iommu = iommus.setdefault(d, UnsharedIommu("ipmmu-s1-39", api))
        iommu.follow(change)
        if check:
            invariant.check(f"dom{d}", iommu, p2ms[d], change.touched)
    return p2ms, iommus


def compiled(log, api="per-page", check=False, mirror=True):
    p2ms, iommus = {}, {} if mirror else None
    stream.replay_calls(log, p2ms, iommus, lambda: UnsharedIommu("ipmmu-s1-39", api), check=check)
    return p2ms, iommus


def table_state(pt) -> tuple:
    pool = pt.pool
    top = pool.top
    return (pool.mem[:top].tobytes(), pool.used[:top].tobytes(), pool.level[:top].tobytes(),
            pool.prefix[:top].tobytes(), top, pool._free.tolist(), list(pool._live), pool.stats())


def assert_same(a, b) -> None:
    (p1, i1), (p2, i2) = a, b
    assert sorted(p1) == sorted(p2)
    for d in p1:
        assert table_state(p1[d].pt) == table_state(p2[d].pt), f"dom{d}: P2M tables or engine totals differ"
        assert p1[d].xen_counters() == p2[d].xen_counters()
        if i2 is not None:
            assert table_state(i1[d].pt) == table_state(i2[d].pt), f"dom{d}: IOMMU tables differ"
            assert i1[d].counts == i2[d].counts          # every count and the latency sums, bit for bit


def calls_ok(calls) -> bool:
    """Whether the one-by-one path takes every call (the generator may draw one out of range)."""
    try:
        one_by_one(make_log(calls))
    except ValueError:
        return False
    return True


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_random_streams_replay_as_one_by_one(calls):
    log = make_log(calls)
    try:
        want = one_by_one(log)
    except ValueError:
        with pytest.raises(ValueError):
            compiled(log)
        return
    assert_same(want, compiled(log))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(block_streams())
def test_blocks_split_in_the_loop_as_one_by_one(calls):
    log = make_log(calls)
    want = one_by_one(log, check=True)
    assert_same(want, compiled(log, check=True))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_p2m_alone_and_checked_replays_agree(calls):
    log = make_log(calls)
    try:
        want = one_by_one(log, check=True)
    except ValueError:
        return
    assert_same(want, compiled(log, check=True))
    p2ms, _ = compiled(log, mirror=False)
    assert_same((want[0], None), (p2ms, None))


def test_other_apis_replay_through_python():
    calls = [(0, 5, 1, 9, CODE["ram_rw"]), (0, 5, 1, 0, CODE["invalid"]), (0, 0, 512, 1024, CODE["ram_rw"])]
    log = make_log(calls)
    assert_same(one_by_one(log, api="batched"), compiled(log, api="batched"))


def test_the_captured_stream_replays_as_one_by_one(monkeypatch):
    log = read_capture(XEN_CAPTURE)
    want = one_by_one(log)
    slow = []
    python_call = stream._python_call
    monkeypatch.setattr(stream, "_python_call", lambda log, k, *a: (slow.append(k), python_call(log, k, *a)))
    assert_same(want, compiled(log))
    assert slow == []           # every call of a real domU build runs in the loop


def _views_agree(p2m, iommu, gfn, n) -> bool:
    q_attrs = stream._iommu_attrs(iommu.pt.fmt)
    return stream._same_view(stream.kn.arrays(p2m.pt)[0], stream.kn.arrays(iommu.pt)[0], gfn, n,
                             stream.DMA_PERM_BY_CODE.astype(np.int64), q_attrs)


@pytest.mark.parametrize("corrupt", ["moved", "lost", "extra", "read-only"])
def test_the_compiled_check_sees_what_invariant_check_sees(corrupt):
    log = make_log([(0, 40, 4, 100, CODE["ram_rw"]), (0, 600, 2, 0, CODE["mmio_direct_c"])])
    p2ms, iommus = compiled(log, check=True)
    p2m, iommu = p2ms[0], iommus[0]
    assert _views_agree(p2m, iommu, 0, 1024)
    pt = iommu.pt
    if corrupt in ("moved", "lost", "read-only"):
        pt.unmap(42 * 4096, 1)
    if corrupt == "moved":
        pt.map(42 * 4096, 999 * 4096, 1)
    if corrupt == "read-only":
        pt.map(42 * 4096, 102 * 4096, 1, perm="r")
    if corrupt == "extra":
        pt.map(44 * 4096, 7 * 4096, 1)
    assert not _views_agree(p2m, iommu, 40, 8)
    with pytest.raises(invariant.InvariantError):
        invariant.check("dom0", iommu, p2m, (np.array([40]), np.array([48])))
    assert _views_agree(p2m, iommu, 0, 40) and _views_agree(p2m, iommu, 48, 1000)


# -- MirroredCalls.call: one call at a time, as P2M.set_entry then UnsharedIommu.follow ---------

ARG_KINDS = {"int": int, "numpy int": np.int64, "array": lambda x: np.array([x], np.int64),
             "int32 array": lambda x: np.array([x], np.int32)}


def calls_by_hand(calls, kinds, api="per-page", check=False, mirror=True):
    """Each call through MirroredCalls.call, its arguments of the kinds drawn; every call is
    domain 0's. On a ValueError, the index of the call that raised it."""
    p2m = stream.P2M("p2m-s2-40")
    iommu = UnsharedIommu("ipmmu-s1-39", api) if mirror else None
    mirrored = stream.MirroredCalls(p2m, iommu, check=check)
    for k, ((_, gfn, nr, mfn, code), kind) in enumerate(zip(calls, kinds)):
        as_kind = ARG_KINDS[kind]
        try:
            mirrored.call(as_kind(gfn), as_kind(mfn if code else 0), as_kind(nr), TYPES_BY_CODE[code])
        except ValueError:
            return ({0: p2m}, {0: iommu} if mirror else None), k
    return ({0: p2m}, {0: iommu} if mirror else None), None


TYPES_BY_CODE = {code: name for name, code in CODE.items()}


def one_by_one_until_error(calls, api="per-page", check=False):
    """one_by_one on domain 0 alone; on a ValueError, the state so far and the call's index."""
    calls = [(0, *c[1:]) for c in calls]
    log = make_log(calls)
    p2ms, iommus = {}, {}
    for k in range(len(log)):
        try:
            d, change = apply_call(log, k, p2ms, "p2m-s2-40")
        except ValueError:
            return (p2ms, iommus), k
        iommus.setdefault(d, UnsharedIommu("ipmmu-s1-39", api)).follow(change)
        if check:
            invariant.check(f"dom{d}", iommus[d], p2ms[d], change.touched)
    return (p2ms, iommus), None


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(streams(), block_streams()).flatmap(
    lambda calls: st.tuples(st.just(calls), st.lists(st.sampled_from(sorted(ARG_KINDS)), min_size=len(calls),
                                                    max_size=len(calls)), st.booleans())))
def test_single_calls_as_one_by_one(drawn):
    calls, kinds, check = drawn
    want, want_error = one_by_one_until_error(calls, check=check)
    got, got_error = calls_by_hand(calls, kinds, check=check)
    assert got_error == want_error
    if want[0]:
        assert_same(want, got)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_single_calls_on_the_p2m_alone_and_other_apis(calls):
    want, want_error = one_by_one_until_error(calls, api="batched")
    got, got_error = calls_by_hand(calls, ["int"] * len(calls), api="batched")
    assert got_error == want_error
    if want[0]:
        assert_same(want, got)
        alone, _ = calls_by_hand(calls, ["array"] * len(calls), mirror=False)
        assert_same((want[0], None), alone)


def test_single_calls_that_grow_the_pools_as_one_by_one():
    """Calls 2 MiB apart: each takes a new table on both sides, so the pools grow under the
    loop many times (and the loop's views of them are taken again)."""
    calls = [(0, k * 512 + 3, 1, 7000 + k, CODE["ram_rw"]) for k in range(700)]
    calls += [(0, k * 512 + 3, 1, 0, CODE["invalid"]) for k in range(0, 700, 3)]
    want, _ = one_by_one_until_error(calls)
    got, _ = calls_by_hand(calls, ["int"] * len(calls))
    assert_same(want, got)


@pytest.mark.parametrize("bad", [dict(gfn=-1), dict(gfn=np.array([-1])), dict(nr=0), dict(nr=-3), dict(gfn=1 << 40),
                                 dict(gfn=(1 << 28) - 1, nr=2), dict(mfn=-5), dict(mfn=np.uint64(1 << 63)),
                                 dict(gfn=1.5), dict(gfn="x"), dict(gfn=np.array([[5]])), dict(p2m_type="ram_rx"),
                                 dict(p2m_type=3), dict(gfn=np.array([1, 2]), nr=np.array([1, 2, 3]))])
def test_bad_single_calls_raise_what_set_entry_raises_and_change_nothing(bad):
    args = dict(gfn=0x80000, mfn=0x90000, nr=1, p2m_type="ram_rw") | bad
    p2m = stream.P2M("p2m-s2-40")
    with pytest.raises(ValueError) as direct:
        p2m.set_entry(**args)
    p2m = stream.P2M("p2m-s2-40")
    iommu = UnsharedIommu("ipmmu-s1-39", "per-page")
    mirrored = stream.MirroredCalls(p2m, iommu)
    mirrored.call(5, 9, 1, "ram_rw")
    before = table_state(p2m.pt), table_state(iommu.pt), p2m.xen_counters(), iommu.counts
    with pytest.raises(direct.type) as got:
        mirrored.call(**args)
    assert str(got.value) == str(direct.value)
    assert before == (table_state(p2m.pt), table_state(iommu.pt), p2m.xen_counters(), iommu.counts)


# -- the asv and harness measure of a small call (benchmarks/stream.py) ----------
SMALL_GFN = 0x80001      # where benchmarks/stream.py's small_call_pair maps


@pytest.mark.parametrize("arguments", bench_stream.ARGUMENTS)
def test_the_benchmarks_small_call_pair_maps_and_removes_the_page_alike_on_both_paths(arguments):
    after = {}
    for path in bench_stream.PATHS:
        call = bench_stream.small_call_pair(arguments, path)
        for _ in range(3):
            call.pair()
        invariant.check(path, call.iommu, call.p2m, (np.array([SMALL_GFN]), np.array([SMALL_GFN + 1])))
        assert len(call.p2m.entries(SMALL_GFN, 1).iova) == 0, "the pair ends with the page removed"
        assert len(call.p2m.entries(SMALL_GFN - 1, 1).iova) == 1, "the booted page stays"
        after[path] = (table_state(call.p2m.pt), table_state(call.iommu.pt), call.p2m.xen_counters(),
                       call.iommu.counts)
    assert after["compiled"] == after["python"]
    assert bench_stream.small_call_us(arguments, tries=2, pairs=20) > 0


@pytest.mark.parametrize("bad", [dict(arguments="list"), dict(arguments="int", path="c")])
def test_the_benchmarks_small_call_names_an_unknown_choice(bad):
    with pytest.raises(ValueError, match=repr(bad.get("path", bad["arguments"]))):
        bench_stream.small_call_pair(**bad)

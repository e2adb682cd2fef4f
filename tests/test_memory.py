"""The MFN allocator against a model that is obviously right: a Python set of free pages."""

import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iommu_core.xen.board import h3, server
from iommu_core.xen.memory import CHUNK_1G, CHUNK_2M, MachineMemory, OutOfMemory

PAGE = 4096
MIB, GIB = 1 << 20, 1 << 30

# A small host in pages: a bank that starts and ends off 2 MiB alignment (fragments at both
# edges) and an aligned one of four 2 MiB chunks.
SMALL_BANKS = [((2 * CHUNK_2M - 5) * PAGE, (3 * CHUNK_2M + 17) * PAGE),
               (16 * CHUNK_2M * PAGE, 4 * CHUNK_2M * PAGE)]


def pages(s, c):
    return [p for a, n in zip(s.tolist(), c.tolist()) for p in range(a, a + n)]


def snapshot(mm):
    return (mm.free_pages, [x.tolist() for x in mm.free_extents()],
            {o: [x.tolist() for x in mm.owned_extents(o)] for o in mm.owners})


class Model:
    """Free pages as a set, owners' pages as sets."""

    def __init__(self, banks, broken):
        self.free = {p for base, size in banks for p in range(base // PAGE, (base + size) // PAGE)}
        self.total = len(self.free)
        self.owned = {}
        self.broken = set(broken.tolist())
        self.chunks = sorted(c for c in {p // CHUNK_2M * CHUNK_2M for p in self.free}
                             if self.free.issuperset(range(c, c + CHUNK_2M)))      # whole 2 MiB chunks of RAM

    def intact_free_chunks(self):
        return sum(1 for c in self.chunks if c not in self.broken and self.free.issuperset(range(c, c + CHUNK_2M)))

    def take(self, owner, ps):
        assert self.free.issuperset(ps)
        self.free -= set(ps)
        self.owned.setdefault(owner, set()).update(ps)

    def give(self, owner, ps):
        self.owned[owner] -= set(ps)
        self.free |= set(ps)

    def check(self, mm):
        mm.check()
        assert set(pages(*mm.free_extents())) == self.free
        assert mm.free_pages == len(self.free)
        assert mm.total_pages == self.total
        for o, ps in self.owned.items():
            assert set(pages(*mm.owned_extents(o))) == ps
            assert mm.owned_pages(o) == len(ps)
        assert set(mm.owners) == {o for o, ps in self.owned.items() if ps}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), fragmentation=st.sampled_from([0.0, 0.3, 1.0]), seed=st.integers(0, 2**16))
def test_against_the_set_model(data, fragmentation, seed):
    mm = MachineMemory(SMALL_BANKS, fragmentation=fragmentation, seed=seed)
    model = Model(SMALL_BANKS, mm.broken_chunks)
    model.check(mm)
    for _ in range(data.draw(st.integers(1, 25), label="steps")):
        op = data.draw(st.sampled_from(["alloc", "alloc", "alloc_at", "free", "free"]), label="op")
        owner = data.draw(st.integers(0, 3), label="owner")
        before = snapshot(mm)
        if op == "alloc":
            n = data.draw(st.one_of(st.integers(1, 700), st.integers(1, model.total + 3)), label="npages")
            if n > len(model.free):
                with pytest.raises(OutOfMemory, match=str(n)):
                    mm.alloc(n, owner)
                assert snapshot(mm) == before
                continue
            whole = model.intact_free_chunks()
            s, c = mm.alloc(n, owner)
            got = pages(s, c)
            assert len(got) == n == len(set(got))
            assert (c > 0).all()
            # as many 2 MiB chunks as asked for and available, each aligned and intact
            big = (c == CHUNK_2M) & (s % CHUNK_2M == 0)
            assert int(big.sum()) == min(n // CHUNK_2M, whole)
            assert not set(s[big].tolist()) & model.broken
            assert (np.flatnonzero(big) == np.arange(int(big.sum()))).all()     # superpages come first
            # pages of broken chunks come one per extent
            in_broken = np.isin(s // CHUNK_2M * CHUNK_2M, mm.broken_chunks)
            assert (c[in_broken] == 1).all()
            model.take(owner, got)
        elif op == "alloc_at":
            runs = []
            for _ in range(data.draw(st.integers(1, 3), label="runs")):
                if model.free and data.draw(st.booleans(), label="from free"):
                    p = data.draw(st.sampled_from(sorted(model.free)), label="page")
                else:
                    p = data.draw(st.integers(0, 21 * CHUNK_2M), label="any page")
                runs.append((p, data.draw(st.integers(1, 600), label="count")))
            m, n = np.array([r[0] for r in runs]), np.array([r[1] for r in runs])
            want = [p for a, k in runs for p in range(a, a + k)]
            if len(set(want)) < len(want):
                with pytest.raises(ValueError, match="overlaps"):
                    mm.alloc_at(m, n, owner)
                assert snapshot(mm) == before
            elif not model.free.issuperset(want):
                with pytest.raises(ValueError, match="not all free"):
                    mm.alloc_at(m, n, owner)
                assert snapshot(mm) == before
            else:
                mm.alloc_at(m, n, owner)
                model.take(owner, want)
        else:
            mine = sorted(model.owned.get(owner, ()))
            if mine and data.draw(st.booleans(), label="own page"):
                p = data.draw(st.sampled_from(mine), label="page")
            else:
                p = data.draw(st.integers(0, 21 * CHUNK_2M), label="any page")
            k = data.draw(st.integers(1, 1100), label="count")
            want = list(range(p, p + k))
            if model.owned.get(owner, set()).issuperset(want):
                mm.free(p, k, owner)
                model.give(owner, want)
            else:
                with pytest.raises(ValueError, match="not all owned"):
                    mm.free(p, k, owner)
                assert snapshot(mm) == before
        model.check(mm)


# A host of a few GiB, modelled as an owner map of its pages (-2 no RAM, -1 free, else owner):
# a bank a little over 1 GiB that starts 3 pages past a 1 GiB boundary, and an aligned 2 GiB bank.
BIG_BANKS = [(GIB + 3 * PAGE, GIB + 6 * MIB), (4 * GIB, 2 * GIB)]
BIG_LO = GIB // PAGE


def whole_chunks(free, broken, size):
    """Whole `size`-page aligned chunks that are all free and hold no broken 2 MiB chunk."""
    n = len(free) // size
    ok = free[: n * size].reshape(n, size).all(axis=1)
    bad = np.unique((broken - BIG_LO) // size)
    ok[bad[bad < n]] = False
    return int(ok.sum())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), fragmentation=st.sampled_from([0.0, 0.002, 0.3]), seed=st.integers(0, 2**16))
def test_superpages_against_an_owner_map(data, fragmentation, seed):
    mm = MachineMemory(BIG_BANKS, fragmentation=fragmentation, seed=seed)
    span = 6 * GIB // PAGE - BIG_LO
    owner_of = np.full(span, -2, np.int8)
    for base, size in BIG_BANKS:
        owner_of[base // PAGE - BIG_LO:(base + size) // PAGE - BIG_LO] = -1
    broken = mm.broken_chunks
    for _ in range(data.draw(st.integers(1, 12), label="steps")):
        op = data.draw(st.sampled_from(["alloc", "alloc", "alloc_at", "free"]), label="op")
        owner = data.draw(st.integers(0, 3), label="owner")
        free = owner_of == -1
        if op == "alloc":
            n = data.draw(st.one_of(st.integers(1, 2000), st.integers(1, 3 * CHUNK_1G),
                                    st.integers(1, int(free.sum()) + 2)), label="npages")
            if n > free.sum():
                with pytest.raises(OutOfMemory):
                    mm.alloc(n, owner)
                continue
            g1 = whole_chunks(free, broken, CHUNK_1G)
            g2 = whole_chunks(free, broken, CHUNK_2M)
            s, c = mm.alloc(n, owner)
            got = np.repeat(s - (np.cumsum(c) - c), c) + np.arange(n) - BIG_LO
            assert int(c.sum()) == n and (owner_of[got] == -1).all() and len(np.unique(got)) == n
            k1 = int(((c == CHUNK_1G) & (s % CHUNK_1G == 0)).sum())
            k2 = int(((c == CHUNK_2M) & (s % CHUNK_2M == 0)).sum())
            assert k1 == min(n // CHUNK_1G, g1)
            assert k2 == min((n - k1 * CHUNK_1G) // CHUNK_2M, g2 - 512 * k1)
            owner_of[got] = owner
        elif op == "alloc_at":
            idx = np.flatnonzero(free)
            if not len(idx):
                continue
            p = int(idx[data.draw(st.integers(0, len(idx) - 1), label="page")])
            k = data.draw(st.integers(1, 3 * CHUNK_2M), label="count")
            run = np.arange(p, min(p + k, span))
            if (owner_of[run] == -1).all():
                mm.alloc_at(p + BIG_LO, len(run), owner)
                owner_of[run] = owner
            else:
                with pytest.raises(ValueError, match="not all free"):
                    mm.alloc_at(p + BIG_LO, len(run), owner)
        else:
            idx = np.flatnonzero(owner_of == owner)
            if not len(idx):
                continue
            p = int(idx[data.draw(st.integers(0, len(idx) - 1), label="page")])
            k = data.draw(st.integers(1, 2 * CHUNK_1G), label="count")
            run = np.arange(p, min(p + k, span))
            if (owner_of[run] == owner).all():
                mm.free(p + BIG_LO, len(run), owner)
                owner_of[run] = -1
            else:
                with pytest.raises(ValueError, match="not all owned"):
                    mm.free(p + BIG_LO, len(run), owner)
        mm.check()
        fs, fc = mm.free_extents()
        seen = np.full(span, -2, np.int8)
        seen[owner_of != -2] = 99
        seen[np.repeat(fs - (np.cumsum(fc) - fc), fc) + np.arange(int(fc.sum())) - BIG_LO] = -1
        for o in mm.owners:
            os_, oc = mm.owned_extents(o)
            seen[np.repeat(os_ - (np.cumsum(oc) - oc), oc) + np.arange(int(oc.sum())) - BIG_LO] = o
        assert np.array_equal(seen, owner_of)


def test_4mib_from_an_aligned_region_is_two_2mib_extents():
    mm = MachineMemory([(0x4000_0000, 64 * MIB)])
    s, c = mm.alloc(1024, owner=1)
    assert c.tolist() == [512, 512]
    assert (s % CHUNK_2M == 0).all()
    assert s.tolist() == [0x4000_0000 // PAGE, 0x4000_0000 // PAGE + 512]


def test_gib_then_2mib_then_pages():
    mm = MachineMemory([(0x4000_0000, 2 * GIB)])
    s, c = mm.alloc(CHUNK_1G + CHUNK_2M + 5, owner=1)
    assert c.tolist() == [CHUNK_1G, CHUNK_2M, 5]
    assert s.tolist() == [0x40000, 0x80000, 0x80200]
    mm.check()


def test_2mib_chunks_spare_whole_gib_chunks():
    mm = MachineMemory([(0x4000_0000, GIB + 2 * MIB)])
    s, c = mm.alloc(CHUNK_2M, owner=1)
    assert s.tolist() == [0x8000_0000 // PAGE] and c.tolist() == [CHUNK_2M]


def test_small_requests_use_fragments_first():
    banks = [((0x4000_0000 + 3 * PAGE), 4 * MIB)]           # starts 3 pages past a 2 MiB boundary
    mm = MachineMemory(banks)
    s, c = mm.alloc(10, owner=1)
    assert s.tolist() == [0x40003] and c.tolist() == [10]
    mm = MachineMemory(banks)
    s, c = mm.alloc(600, owner=1)
    assert c.tolist() == [512, 88] and s.tolist() == [0x40200, 0x40003]


def test_fragmentation_breaks_chunks_into_shuffled_pages():
    banks = [(0x4000_0000, 8 * MIB)]
    mm = MachineMemory(banks, fragmentation=1.0, seed=5)
    assert mm.broken_chunks.tolist() == [0x40000, 0x40200, 0x40400, 0x40600]
    s, c = mm.alloc(700, owner=1)
    assert (c == 1).all() and len(set(s.tolist())) == 700
    assert set(s[:512].tolist()) == set(range(0x40000, 0x40200))   # one chunk after the other
    assert not (np.diff(s) > 0).all()                                # in shuffled order
    again = MachineMemory(banks, fragmentation=1.0, seed=5).alloc(700, owner=1)[0]
    other = MachineMemory(banks, fragmentation=1.0, seed=6).alloc(700, owner=1)[0]
    assert np.array_equal(s, again) and not np.array_equal(s, other)
    # freed broken pages stay broken: they come back one by one
    mm.free(s[:512], c[:512], owner=1)
    _, c2 = mm.alloc(512, owner=2)
    assert (c2 == 1).all()
    mm.check()


def test_fragmentation_fraction_and_determinism():
    b = h3()
    mm = MachineMemory(b.ram_banks, fragmentation=0.25, seed=11)
    assert len(mm.broken_chunks) == round(0.25 * b.ram_bytes // (2 * MIB))
    assert np.array_equal(mm.broken_chunks, MachineMemory(b.ram_banks, 0.25, seed=11).broken_chunks)
    assert not np.array_equal(mm.broken_chunks, MachineMemory(b.ram_banks, 0.25, seed=12).broken_chunks)
    # a GiB guest on this host: no 1 GiB chunk is left whole, 2 MiB chunks back it
    _, c = mm.alloc(CHUNK_1G, owner=1)
    assert (c == CHUNK_2M).all()
    mm.check()


def test_alloc_at_takes_broken_and_intact_pages():
    mm = MachineMemory([(0x4000_0000, 8 * MIB)], fragmentation=0.5, seed=1)
    broken = mm.broken_chunks.tolist()
    intact = [x for x in range(0x40000, 0x40800, 512) if x not in broken]
    mm.alloc_at([broken[0] + 7, intact[0] + 3], [100, 500], owner=0)     # dom0's direct map
    assert mm.owned_pages(0) == 600
    mm.check()
    with pytest.raises(ValueError, match=r"extent 0 .* not all free: mfn 0x%x is owned by 0" % (broken[0] + 7)):
        mm.alloc_at(broken[0], 8, owner=3)
    mm.free([broken[0] + 7], [100], owner=0)
    mm.check()
    assert mm.owned_pages(0) == 500


def test_out_of_memory_changes_nothing():
    mm = MachineMemory(SMALL_BANKS, fragmentation=0.3, seed=2)
    mm.alloc(1000, owner=1)
    before = snapshot(mm)
    free = mm.free_pages
    with pytest.raises(OutOfMemory, match=f"{free + 1} pages .* {free} pages free"):
        mm.alloc(free + 1, owner=2)
    assert snapshot(mm) == before
    assert isinstance(OutOfMemory("x"), ValueError)
    _, c = mm.alloc(free, owner=2)                       # everything that is left is fine
    assert mm.free_pages == 0 and int(c.sum()) == free
    mm.check()


@pytest.mark.parametrize("args, fragment", [
    (([(0x1000, 0x1800)],), "0x1800"),
    (([(0x1800, 0x1000)],), "0x1800"),
    (([(0x1000, 0)],), "0x0"),
    (([(0x0, 0x4000), (0x2000, 0x4000)],), "overlap"),
    (([],), "none"),
    (([(1, 2, 3)],), r"\(1, 2, 3\)"),
    (([(0, 0x1000)], -0.1), "-0.1"),
    (([(0, 0x1000)], 1.5), "1.5"),
    (([(0, 0x1000)], float("nan")), "nan"),
    (([(0, 0x1000)], "0.1"), "'0.1'"),
    (([(0, 0x1000)], 0.0, -1), "-1"),
])
def test_bad_construction(args, fragment):
    with pytest.raises(ValueError, match=fragment):
        MachineMemory(*args)


@pytest.mark.parametrize("call, fragment", [
    (lambda mm: mm.alloc(0, 1), "got 0"),
    (lambda mm: mm.alloc(-4, 1), "got -4"),
    (lambda mm: mm.alloc(1.5, 1), "1.5"),
    (lambda mm: mm.alloc(True, 1), "True"),
    (lambda mm: mm.alloc(1, -2), "-2"),
    (lambda mm: mm.alloc(1, "dom1"), "'dom1'"),
    (lambda mm: mm.alloc_at([0x40000, 0x40001], [2, 1], 1), "extent 1 .* overlaps extent 0"),
    (lambda mm: mm.alloc_at([0x40000], [0], 1), "extent 0: count must be positive, got 0"),
    (lambda mm: mm.alloc_at([0x40000], [1, 2], 1), "differ in length"),
    (lambda mm: mm.alloc_at([262144.0], [1], 1), "integers"),
    (lambda mm: mm.alloc_at([-1], [1], 1), "got -1"),
    (lambda mm: mm.alloc_at([0x3FFFF], [2], 1), "mfn 0x3ffff is outside the host's RAM"),
    (lambda mm: mm.free([0x40000], [1], 1), "not all owned by 1: mfn 0x40000 is free"),
])
def test_bad_calls_change_nothing(call, fragment):
    mm = MachineMemory([(0x4000_0000, 4 * MIB)], fragmentation=0.5, seed=3)
    before = snapshot(mm)
    with pytest.raises(ValueError, match=fragment):
        call(mm)
    assert snapshot(mm) == before


def test_free_of_another_owners_pages_names_the_owner():
    mm = MachineMemory([(0x4000_0000, 4 * MIB)])
    s, c = mm.alloc(10, owner=1)
    with pytest.raises(ValueError, match=f"not all owned by 2: mfn {int(s[0]):#x} is owned by 1"):
        mm.free(s, c, owner=2)


def test_large_host_without_per_page_memory():
    """Not timed: an 8 GiB alloc on a 512 GiB host works and stays small in memory."""
    banks = server(512).ram_banks
    for fragmentation, unit in ((0.0, CHUNK_1G), (0.1, CHUNK_2M)):
        tracemalloc.start()
        mm = MachineMemory(banks, fragmentation=fragmentation, seed=7)
        s, c = mm.alloc(8 * GIB // PAGE, owner=1)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert mm.total_pages == 512 * GIB // PAGE
        assert int(c.sum()) == 8 * GIB // PAGE and (c == unit).all() and (s % unit == 0).all()
        assert peak < 32 * MIB, f"{peak / MIB:.1f} MiB for fragmentation {fragmentation}"
        mm.free(s, c, owner=1)
        assert mm.free_pages == mm.total_pages

"""The page-table engine against its yardsticks and against the per-page reference.

Workloads (stage-2, 48-bit, the P2M's format):
  contiguous      the 64 GiB guest: 16M 4 KiB pages in one extent
  random-extents  2,000 extents of 512 pages, 4 KiB- but not 2 MiB-aligned on
                  both sides, scattered without overlap over 64 GiB (seeded)
The reference walks every page in Python, so it runs the same workloads scaled
down (64K pages, 100 extents, 20K translates); rates per page compare.

time_ / peakmem_ classes measure one operation each. The track_ classes report
the targets as plain numbers, all measured in one process by `measure_figures`
(shared through asv's setup_cache), so every ratio has both sides from the
same run. `python -m benchmarks.harness pgtable` prints them with their targets.

Heavy sizes can be shrunk through the environment (IOMMU_BENCH_GUEST_PAGES,
IOMMU_BENCH_EXTENTS, IOMMU_BENCH_TRANSLATES, IOMMU_BENCH_REPEAT); the floors
stay at 128 MiB, so shrunk ratios are not the targets' ratios.
"""

from __future__ import annotations

import numpy as np

from .common import (
    GRANULE,
    GUEST_IOVA,
    GUEST_PA,
    SEED,
    SMALL_IOVA,
    SMALL_PA,
    SMALL_PAGES,
    WORKLOADS,
    small_table,
    translate_case,
    mapped,
    C_WAYS,
    measure_figures,
    new_table,
    warm,
    workload,
)


# -- engine --------------------------------------------------------------------
class MapGuest:
    """Map the 64 GiB guest with 4 KiB leaves in one call, into a fresh or a warm table."""

    number = 1                  # the call changes the table: one call per setup

    params = [["fresh", "warm"]]
    param_names = ["table"]

    def setup(self, table):
        self.w = workload("contiguous")
        self.pt = new_table() if table == "fresh" else warm("engine", self.w)

    def teardown(self, table):
        del self.pt

    def time_map(self, table):
        self.pt.map(self.w.iova, self.w.pa, self.w.npages, leaf="4k")


class MapExtents:
    """Map 2,000 random 512-page extents in one call."""

    number = 1                  # the call changes the table: one call per setup

    params = [["4k", "auto"], ["fresh", "warm"]]
    param_names = ["leaf", "table"]

    def setup(self, leaf, table):
        self.w = workload("random-extents")
        self.pt = new_table() if table == "fresh" else warm("engine", self.w, leaf)

    def teardown(self, leaf, table):
        del self.pt

    def time_map(self, leaf, table):
        self.pt.map(self.w.iova, self.w.pa, self.w.npages, leaf=leaf)


class Unmap:
    """Unmap a whole workload (mapped with 4 KiB leaves) in one call."""

    number = 1                  # the call changes the table: one call per setup

    params = [WORKLOADS]
    param_names = ["workload"]

    def setup(self, workload_name):
        self.w = workload(workload_name)
        self.pt = mapped("engine", self.w)

    def teardown(self, workload_name):
        del self.pt

    def time_unmap(self, workload_name):
        self.pt.unmap(self.w.iova, self.w.npages)


class Translate:
    """Translate 1M random addresses inside a workload's mapping."""

    params = [WORKLOADS]
    param_names = ["workload"]

    def setup(self, workload_name):
        self.pt, self.addrs = translate_case(workload_name)

    def time_translate(self, workload_name):
        self.pt.translate(self.addrs)


class SmallCall:
    """One call with a single small extent (target: <= 20 us)."""

    number = 1                  # the call changes the table: one call per setup

    params = [SMALL_PAGES]
    param_names = ["npages"]
    repeat = (20, 200, 5.0)

    def setup(self, npages):
        self.empty = small_table(npages, live=False)
        self.full = small_table(npages, live=True)

    def time_map(self, npages):
        self.empty.map(SMALL_IOVA, SMALL_PA, npages, leaf="4k")

    def time_unmap(self, npages):
        self.full.unmap(SMALL_IOVA, npages)


class Sizes:
    """Map, unmap and translate one contiguous guest region of several sizes, with 4 KiB leaves or with
    2 MiB / 1 GiB blocks where aligned (the region is 1 GiB-aligned on both sides)."""

    number = 1                  # the call changes the table: one call per setup

    params = [["4k", "blocks"], [64, 1024, 16384]]
    param_names = ["leaf", "MiB"]
    repeat = (3, 10, 20.0)

    def setup(self, leaf, mib):
        self.leaf = "4k" if leaf == "4k" else "auto"
        self.npages = mib << 8
        self.fresh = new_table()
        self.full = new_table()
        self.full.map(GUEST_IOVA, GUEST_PA, self.npages, leaf=self.leaf)
        rng = np.random.default_rng(SEED)
        self.addrs = (GUEST_IOVA + rng.integers(0, self.npages * GRANULE, 1 << 16)).astype(np.uint64)

    def teardown(self, leaf, mib):
        del self.fresh, self.full

    def time_map(self, leaf, mib):
        self.fresh.map(GUEST_IOVA, GUEST_PA, self.npages, leaf=self.leaf)

    def time_unmap(self, leaf, mib):
        self.full.unmap(GUEST_IOVA, self.npages)

    def time_translate(self, leaf, mib):
        self.full.translate(self.addrs)


class GuestMemory:
    """Peak resident memory of mapping the 64 GiB guest (4 KiB leaves) into a fresh table."""

    def setup(self):
        self.w = workload("contiguous")

    def peakmem_map_guest_4k(self):
        new_table().map(self.w.iova, self.w.pa, self.w.npages, leaf="4k")


# -- the per-page reference, scaled down -----------------------------------------
class ReferenceMap:
    """Reference: 64K contiguous pages or 100 random extents, 4 KiB leaves, one call."""

    number = 1                  # the call changes the table: one call per setup

    params = [WORKLOADS, ["fresh", "warm"]]
    param_names = ["workload", "table"]
    repeat = (1, 5, 10.0)

    def setup(self, workload_name, table):
        self.w = workload(workload_name, "reference")
        self.t = new_table("reference") if table == "fresh" else warm("reference", self.w)

    def time_map(self, workload_name, table):
        self.t.map(self.w.iova, self.w.pa, self.w.npages, leaf="4k")


class ReferenceUnmap:
    """Reference: unmap the scaled-down workload in one call."""

    number = 1                  # the call changes the table: one call per setup

    params = [WORKLOADS]
    param_names = ["workload"]
    repeat = (1, 5, 10.0)

    def setup(self, workload_name):
        self.w = workload(workload_name, "reference")
        self.t = mapped("reference", self.w)

    def time_unmap(self, workload_name):
        self.t.unmap(self.w.iova, self.w.npages)


class ReferenceTranslate:
    """Reference: 20K random addresses inside the scaled-down mapping."""

    params = [WORKLOADS]
    param_names = ["workload"]
    repeat = (1, 5, 10.0)

    def setup(self, workload_name):
        self.t, self.addrs = translate_case(workload_name, "reference")

    def time_translate(self, workload_name):
        self.t.translate(self.addrs)


class _Figures:
    """Base of the track_ classes: one shared setup_cache (asv keys it by this source line)."""

    timeout = 900

    def setup_cache(self):
        return measure_figures()


class FloorRatio(_Figures):
    """Engine rate / numpy floor. Targets: map-warm contiguous >= 0.8, random-extents >= 0.2, translate >= 0.5."""

    params = [["map-warm/contiguous", "map-fresh/contiguous", "map-warm/random-extents",
               "map-warm-auto/random-extents", "unmap/contiguous", "unmap/random-extents",
               "translate/contiguous", "translate/random-extents"]]
    param_names = ["case"]

    def track_ratio(self, figures, case):
        return figures[f"floor/{case}"]

    track_ratio.unit = "engine/floor"


class ReferenceRatio(_Figures):
    """Engine rate / reference rate per page. Targets: map >= 200, unmap >= 200, translate >= 50."""

    params = [["map-warm", "unmap", "translate"], WORKLOADS]
    param_names = ["op", "workload"]

    def track_ratio(self, figures, op, workload_name):
        return figures.get(f"reference/{op}/{workload_name}", float("nan"))

    track_ratio.unit = "engine/reference"


class CMapperRatio(_Figures):
    """Engine rate / the C mapper's (cmapper.c, gcc -O3), warm maps measured in the same run.
    Targets (batched C): contiguous >= 0.9, random-extents >= 0.5."""

    params = [list(C_WAYS), WORKLOADS]
    param_names = ["c_mapper", "workload"]

    def track_ratio(self, figures, way, workload_name):
        return figures.get(f"{way}/map-warm/{workload_name}", float("nan"))

    track_ratio.unit = "engine/C"


class SmallCallTime(_Figures):
    """Best time of one map or unmap of a single small extent. Target: <= 20 us."""

    params = [["map", "unmap"], SMALL_PAGES]
    param_names = ["op", "npages"]

    def track_us(self, figures, op, npages):
        return figures[f"small-us/{op}/{npages}"]

    track_us.unit = "us"


class Rate(_Figures):
    """The rates behind the ratios: pages, addresses or descriptors per second."""

    params = [["write-floor", "gather-floor",
               *(f"{impl}/{op}/{name}" for impl in ("engine", "reference")
                 for op in ("map-warm", "unmap", "translate") for name in WORKLOADS),
               "engine/map-warm-auto/random-extents", "engine/map-fresh/contiguous",
               *(f"{way}/map-warm/{name}" for way in C_WAYS for name in WORKLOADS)]]
    param_names = ["case"]

    def track_rate(self, figures, case):
        return figures.get(f"rate/{case}", float("nan"))

    track_rate.unit = "items/s"


class GuestTableBytes(_Figures):
    """Table memory after mapping the 64 GiB guest with 4 KiB leaves."""

    params = [["table", "peak-table"]]
    param_names = ["kind"]

    def track_bytes(self, figures, kind):
        return figures[f"bytes/{kind}"]

    track_bytes.unit = "bytes"

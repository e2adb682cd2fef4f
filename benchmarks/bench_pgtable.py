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
same run. `python -m benchmarks.bench_pgtable` prints them with their targets.

Heavy sizes can be shrunk through the environment (IOMMU_BENCH_GUEST_PAGES,
IOMMU_BENCH_EXTENTS, IOMMU_BENCH_TRANSLATES, IOMMU_BENCH_REPEAT); the floors
stay at 128 MiB, so shrunk ratios are not the targets' ratios.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass

import numpy as np

from iommu_core import Format, PageTable

try:
    from iommu_core.pgtable.reference import ReferencePageTable
except ImportError:             # commits older than the reference: its benchmarks are skipped
    ReferencePageTable = None

from .yardsticks import best_seconds, measure_gather_floor, measure_write_floor


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        n = int(value, 0)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if n <= 0:
        raise ValueError(f"{name} must be positive, got {n}")
    return n


FMT = "p2m-s2-48"
BASE = 0x8000_0000
GRANULE = 4096
GUEST_IOVA = 0x8_0000_0000          # 1 GiB-aligned, like a guest RAM bank
GUEST_PA = 0x10_0000_0000
WINDOW_PAGES = 1 << 24              # random extents scatter over 64 GiB on each side
EXTENT_PAGES = 512
SMALL_IOVA = 0x40_0000_1000         # not 2 MiB-aligned: 4 KiB leaves whatever the size
SMALL_PA = 0x50_0000_1000
SMALL_PAGES = [1, 16, 512]
SMALL_CALLS = 200
SEED = 20240601
WORKLOADS = ["contiguous", "random-extents"]

# (guest pages, extents, translates) per implementation.
SIZES = {
    "engine": (_env_int("IOMMU_BENCH_GUEST_PAGES", 1 << 24),
               _env_int("IOMMU_BENCH_EXTENTS", 2000),
               _env_int("IOMMU_BENCH_TRANSLATES", 1 << 20)),
    "reference": (1 << 16, 100, 20_000),
}
REPEAT = _env_int("IOMMU_BENCH_REPEAT", 7)
REF_REPEAT = min(REPEAT, 5)         # the reference is slow and steady

# Targets: figure key (as `measure_figures` names it) -> (comparison, bound).
TARGETS = {
    "floor/map-warm/contiguous": (">=", 0.8),
    "floor/map-warm/random-extents": (">=", 0.2),
    "floor/map-warm-auto/random-extents": (">=", 0.2),
    "floor/translate/contiguous": (">=", 0.5),
    "floor/translate/random-extents": (">=", 0.5),
    "reference/map-warm/contiguous": (">=", 200),
    "reference/map-warm/random-extents": (">=", 200),
    "reference/unmap/contiguous": (">=", 200),
    "reference/unmap/random-extents": (">=", 200),
    "reference/translate/contiguous": (">=", 50),
    "reference/translate/random-extents": (">=", 50),
    **{f"small-us/{op}/{n}": ("<=", 20) for op in ("map", "unmap") for n in SMALL_PAGES},
}


# -- workloads ---------------------------------------------------------------
@dataclass(frozen=True)
class Workload:
    name: str
    iova: np.ndarray      # int64 bytes, one entry per extent
    pa: np.ndarray
    npages: np.ndarray

    @property
    def pages(self) -> int:
        return int(self.npages.sum())


def _scattered(rng: np.random.Generator, count: int) -> np.ndarray:
    """Start pages of `count` disjoint 512-page extents, 4 KiB- but not 2 MiB-aligned."""
    slot = 2 * EXTENT_PAGES         # one extent per slot; a slot start is 2 MiB-aligned
    slots = WINDOW_PAGES // slot
    if count > slots:
        raise ValueError(f"{count} extents do not fit {slots} slots of {slot} pages")
    start = rng.choice(slots, count, replace=False) * slot
    return start + rng.integers(1, EXTENT_PAGES, count)     # offset 1..511: never 2 MiB-aligned


@functools.lru_cache(maxsize=None)
def workload(name: str, impl: str = "engine") -> Workload:
    guest_pages, extents, _ = SIZES[impl]
    if name == "contiguous":
        return Workload(name, np.array([GUEST_IOVA]), np.array([GUEST_PA]), np.array([guest_pages]))
    if name == "random-extents":
        rng = np.random.default_rng(SEED)
        iova = GUEST_IOVA + _scattered(rng, extents) * GRANULE
        pa = GUEST_PA + _scattered(rng, extents) * GRANULE
        return Workload(name, iova, pa, np.full(extents, EXTENT_PAGES))
    raise ValueError(f"unknown workload {name!r}; choose from {WORKLOADS}")


@functools.lru_cache(maxsize=None)
def addresses(name: str, impl: str = "engine") -> np.ndarray:
    """Random byte addresses inside the workload's mapping, seeded (uint64)."""
    w = workload(name, impl)
    rng = np.random.default_rng(SEED + 1)
    k = rng.integers(0, len(w.iova), SIZES[impl][2])
    return (w.iova[k] + rng.integers(0, w.npages[k] * GRANULE)).astype(np.uint64)


def new_table(impl: str = "engine"):
    if impl == "engine":
        return PageTable(FMT, base=BASE)
    if ReferencePageTable is None:
        raise NotImplementedError("this commit has no iommu_core.pgtable.reference")   # asv: skipped
    return ReferencePageTable(Format.preset(FMT), base=BASE)


def mapped(impl: str, w: Workload, leaf: str = "4k"):
    t = new_table(impl)
    t.map(w.iova, w.pa, w.npages, leaf=leaf)
    return t


def warm(impl: str, w: Workload, leaf: str = "4k"):
    """A table whose tables for the workload exist but map nothing (unmap keeps them)."""
    t = mapped(impl, w, leaf)
    t.unmap(w.iova, w.npages)
    return t


@functools.lru_cache(maxsize=None)
def _translate_case(name: str, impl: str = "engine"):
    """Translate leaves the table alone, so samples share one mapped table."""
    return mapped(impl, workload(name, impl)), addresses(name, impl)


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
        self.pt, self.addrs = _translate_case(workload_name)

    def time_translate(self, workload_name):
        self.pt.translate(self.addrs)


class SmallCall:
    """One call with a single small extent (target: <= 20 us)."""

    number = 1                  # the call changes the table: one call per setup

    params = [SMALL_PAGES]
    param_names = ["npages"]
    repeat = (20, 200, 5.0)

    def setup(self, npages):
        self.empty = _small_table(npages, live=False)
        self.full = _small_table(npages, live=True)

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


def _small_table(npages: int, live: bool) -> PageTable:
    pt = new_table()
    pt.map(SMALL_IOVA, SMALL_PA, npages, leaf="4k")
    if not live:
        pt.unmap(SMALL_IOVA, npages)
    return pt


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
        self.t, self.addrs = _translate_case(workload_name, "reference")

    def time_translate(self, workload_name):
        self.t.translate(self.addrs)


# -- figures and targets ------------------------------------------------------------
def _map_rate(impl: str, name: str, leaf: str, repeat: int) -> float:
    w = workload(name, impl)
    return w.pages / best_seconds(lambda t: t.map(w.iova, w.pa, w.npages, leaf=leaf),
                                  lambda: warm(impl, w, leaf), repeat)


def _unmap_rate(impl: str, name: str, repeat: int) -> float:
    w = workload(name, impl)
    return w.pages / best_seconds(lambda t: t.unmap(w.iova, w.npages), lambda: mapped(impl, w), repeat)


def _translate_rate(impl: str, name: str, repeat: int) -> float:
    t, addrs = mapped(impl, workload(name, impl)), addresses(name, impl)
    return len(addrs) / best_seconds(lambda _: t.translate(addrs), repeat=repeat)


def small_call_us(npages: int, calls: int = SMALL_CALLS) -> tuple[float, float]:
    """Best microseconds of (map, unmap) of one small extent over `calls` tries.

    The best, like every rate here: on a shared machine the median measures the neighbours.
    """
    pt = _small_table(npages, live=False)
    map_s, unmap_s = [], []
    for _ in range(calls):
        t0 = time.perf_counter()
        pt.map(SMALL_IOVA, SMALL_PA, npages, leaf="4k")
        t1 = time.perf_counter()
        pt.unmap(SMALL_IOVA, npages)
        map_s.append(t1 - t0)
        unmap_s.append(time.perf_counter() - t1)
    return min(map_s) * 1e6, min(unmap_s) * 1e6


def _fresh_map_rate(name: str, repeat: int) -> float:
    w = workload(name)
    return w.pages / best_seconds(lambda t: t.map(w.iova, w.pa, w.npages, leaf="4k"), new_table, repeat)


def measure_figures(repeat: int = REPEAT) -> dict[str, float]:
    """Every rate, ratio and size the track_ benchmarks report, measured in this process.

    Rates are best of `repeat` (pages, addresses or descriptors per second);
    warm maps go into a table whose tables exist, as after a previous unmap.
    The floors are taken at the start and at the end and the best kept, so a
    busy spell on a shared machine does not flatter the engine.
    """
    floors = [(measure_write_floor(repeat), measure_gather_floor(repeat))]
    f = {}
    impls = ["engine"] + (["reference"] if ReferencePageTable is not None else [])
    for impl in impls:
        rep = repeat if impl == "engine" else REF_REPEAT
        for name in WORKLOADS:
            f[f"rate/{impl}/map-warm/{name}"] = _map_rate(impl, name, "4k", rep)
            f[f"rate/{impl}/unmap/{name}"] = _unmap_rate(impl, name, rep)
            f[f"rate/{impl}/translate/{name}"] = _translate_rate(impl, name, rep)
    f["rate/engine/map-warm-auto/random-extents"] = _map_rate("engine", "random-extents", "auto", repeat)
    f["rate/engine/map-fresh/contiguous"] = _fresh_map_rate("contiguous", repeat)
    floors.append((measure_write_floor(repeat), measure_gather_floor(repeat)))
    f["rate/write-floor"] = max(w for w, _ in floors)
    f["rate/gather-floor"] = max(g for _, g in floors)
    for key in [k for k in f if k.startswith("rate/engine/")]:
        op, name = key.split("/")[2:]
        floor = f["rate/gather-floor"] if op == "translate" else f["rate/write-floor"]
        f[f"floor/{op}/{name}"] = f[key] / floor
        ref = f.get(f"rate/reference/{op}/{name}")
        if ref:
            f[f"reference/{op}/{name}"] = f[key] / ref
    for n in SMALL_PAGES:
        f[f"small-us/map/{n}"], f[f"small-us/unmap/{n}"] = small_call_us(n)
    stats = mapped("engine", workload("contiguous")).stats()
    f["bytes/table"], f["bytes/peak-table"] = stats["table_bytes"], stats["peak_table_bytes"]
    return f


def missed_targets(figures: dict[str, float]) -> list[str]:
    out = []
    for key, (cmp, bound) in TARGETS.items():
        value = figures.get(key, float("nan"))
        if not (value >= bound if cmp == ">=" else value <= bound):
            out.append(f"{key} = {value:.3g}, target {cmp} {bound}")
    return out


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
               "engine/map-warm-auto/random-extents", "engine/map-fresh/contiguous"]]
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


if __name__ == "__main__":
    figures = measure_figures()
    for key, value in figures.items():
        bound = TARGETS.get(key)
        print(f"{key:45s} {value:14.4g}" + (f"   target {bound[0]} {bound[1]}" if bound else ""))
    misses = missed_targets(figures)
    print("\nmissed targets:" if misses else "\nall targets met", *misses, sep="\n  ")

"""What the benchmarks share: the engine's workloads and tables, and the figures the track_
classes report, all measured in one process by `measure_figures`."""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from iommu_core import Format, PageTable

try:
    from iommu_core.pgtable.reference import ReferencePageTable
except ImportError:             # commits older than the reference: its benchmarks are skipped
    ReferencePageTable = None

from iommu_core.store.results import read_results
from iommu_core.sweep.grid import Sweep, load_sweep
from iommu_core.sweep.runner import Run, run_sweep

from .cmapper import CMapper, NoCompiler
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
def translate_case(name: str, impl: str = "engine"):
    """Translate leaves the table alone, so samples share one mapped table."""
    return mapped(impl, workload(name, impl)), addresses(name, impl)


def small_table(npages: int, live: bool) -> PageTable:
    pt = new_table()
    pt.map(SMALL_IOVA, SMALL_PA, npages, leaf="4k")
    if not live:
        pt.unmap(SMALL_IOVA, npages)
    return pt


# -- figures ------------------------------------------------------------
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


C_WAYS = {"c": False, "c-per-page": True}       # the C yardstick's name -> walks per page
C_POOL_PAGES = 48 * 1024                         # room for either workload's tables (about 33,000)


def _c_map_rate(name: str, per_page: bool, repeat: int) -> float:
    """Pages/s of the C mapper (cmapper.c) into warm tables, the engine's workload and leaves."""
    w, pt = workload(name), new_table()
    c = CMapper(C_POOL_PAGES, BASE, pt.fmt.start_level, pt.leaf_attrs("rw", "normal", 0), per_page)
    c.map(w.iova, w.pa, w.npages)                # the tables, then only leaves are timed

    def unmapped():
        c.unmap(w.iova, w.npages)
        return c
    return w.pages / best_seconds(lambda t: t.map(w.iova, w.pa, w.npages), unmapped, repeat)


def small_call_us(npages: int, calls: int = SMALL_CALLS) -> tuple[float, float]:
    """Best microseconds of (map, unmap) of one small extent over `calls` tries.

    The best, like every rate here: on a shared machine the median measures the neighbours.
    """
    pt = small_table(npages, live=False)
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
    try:
        for way, per_page in C_WAYS.items():
            for name in WORKLOADS:
                f[f"rate/{way}/map-warm/{name}"] = _c_map_rate(name, per_page, repeat)
    except NoCompiler as e:
        print(f"C yardstick skipped: {e}")
    floors.append((measure_write_floor(repeat), measure_gather_floor(repeat)))
    f["rate/write-floor"] = max(w for w, _ in floors)
    f["rate/gather-floor"] = max(g for _, g in floors)
    for key in [k for k in f if k.startswith("rate/engine/")]:
        op, name = key.split("/")[2:]
        floor = f["rate/gather-floor"] if op == "translate" else f["rate/write-floor"]
        f[f"floor/{op}/{name}"] = f[key] / floor
        for other in ("reference", *C_WAYS):
            rate = f.get(f"rate/{other}/{op}/{name}")
            if rate:
                f[f"{other}/{op}/{name}"] = f[key] / rate
    for n in SMALL_PAGES:
        f[f"small-us/map/{n}"], f[f"small-us/unmap/{n}"] = small_call_us(n)
    stats = mapped("engine", workload("contiguous")).stats()
    f["bytes/table"], f["bytes/peak-table"] = stats["table_bytes"], stats["peak_table_bytes"]
    return f


# -- sweeps ---------------------------------------------------------------------
SCALING_GRID = """
[sweep]
name = "scaling"
scenarios = ["server"]
policies = ["eager", "declared"]
apis = ["per-page", "batched"]
seeds = [0, 1, 2, 3]
"""
SMALL_GRID = """
[sweep]
name = "small"
scenarios = ["small-h3", "m3w"]
policies = ["eager", "lazy"]
apis = ["batched"]
seeds = [0, 1]
"""



def sweep_of(text: str, where: Path) -> Sweep:
    (where / "sweep.toml").write_text(text)
    return load_sweep(where / "sweep.toml")


def timed_run(sweep: Sweep, workers: int | None, where: Path) -> dict:
    """The run's manifest (ray_start_s: Ray's start; wall_s: submitting cells to the last result) and
    the summed wall time of its cells, in seconds."""
    run_dir = run_sweep(sweep, where, workers=workers)
    manifest = Run(run_dir).manifest
    table = read_results(run_dir)
    cells = {c: w for c, w in zip(table.column("cell").to_pylist(), table.column("cell_wall_s").to_pylist())}
    manifest["cells_wall_s"] = sum(cells.values())
    return manifest

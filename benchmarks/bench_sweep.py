"""The sweep on a local Ray: throughput, scaling over workers, and Ray's overhead.

`python -m benchmarks.bench_sweep` measures, on this machine, the speed-up from
1 to 2 workers on a CPU-bound grid (median of 3 runs each) and Ray's share of
the default sweep's wall time; asv tracks a small sweep's boots per second.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

from iommu_core.store.results import MANIFEST_NAME, read_results
from iommu_core.sweep.grid import Sweep, load_sweep
from iommu_core.sweep.runner import run_sweep

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
    manifest = json.loads((run_dir / MANIFEST_NAME).read_text())
    table = read_results(run_dir)
    cells = {c: w for c, w in zip(table.column("cell").to_pylist(), table.column("cell_wall_s").to_pylist())}
    manifest["cells_wall_s"] = sum(cells.values())
    return manifest


class SmallSweep:
    """A small grid (8 cells, 2 scenarios) on a local Ray with every CPU."""

    timeout = 300
    number = 1
    repeat = (1, 1, 60.0)

    def setup_cache(self):
        with tempfile.TemporaryDirectory() as d:
            m = timed_run(sweep_of(SMALL_GRID, Path(d)), None, Path(d))
            table = read_results(Path(d))
            return {"boots": len(set(zip(table.column("cell").to_pylist(), table.column("domain").to_pylist()))),
                    **m}

    def track_boots_per_second(self, m):
        return m["boots"] / m["wall_s"]

    track_boots_per_second.unit = "domain boots/s"

    def track_ray_start_seconds(self, m):
        return m["ray_start_s"]

    track_ray_start_seconds.unit = "s"


class SmallSweepTime:
    """The small grid end to end on a local Ray with every CPU: Ray's start, the cells, Ray's stop."""

    timeout = 300
    number = 1
    repeat = (1, 3, 120.0)

    def setup(self):
        self.dir = tempfile.TemporaryDirectory()
        self.sweep = sweep_of(SMALL_GRID, Path(self.dir.name))

    def teardown(self):
        self.dir.cleanup()

    def time_sweep(self):
        run_sweep(self.sweep, Path(self.dir.name))


def scaling(where: Path) -> None:
    grid = sweep_of(SCALING_GRID, where)
    walls = {}
    for workers in (1, 2):
        runs = [timed_run(grid, workers, where) for _ in range(3)]
        walls[workers] = statistics.median(r["wall_s"] for r in runs)
        each = ", ".join(f"{r['wall_s']:.1f}" for r in runs)
        print(f"scaling grid ({len(grid.cells)} cells), {workers} worker(s): median {walls[workers]:.1f} s "
              f"({each}), Ray start {statistics.median(r['ray_start_s'] for r in runs):.1f} s", flush=True)
    print(f"speed-up 1 -> 2 workers: {walls[1] / walls[2]:.2f}x")


def overhead(where: Path) -> None:
    """Ray's share of the default sweep: its start plus whatever of the run the cells do not fill."""
    shares = []
    for _ in range(3):
        run = timed_run(load_sweep(), None, where)
        total = run["ray_start_s"] + run["wall_s"]
        shares.append((total - run["cells_wall_s"] / run["workers"]) / total)
        print(f"default sweep ({run['cells']} cells, {run['workers']} workers): {total:.1f} s in all, Ray start "
              f"{run['ray_start_s']:.1f} s; cells' own time {run['cells_wall_s']:.1f} s; Ray's share (start and "
              f"scheduling) {shares[-1]:.1%}", flush=True)
    print(f"Ray's share of the default sweep: median {statistics.median(shares):.1%} of 3 runs")


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("scaling", "overhead"), help="measure only this (default: both)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        if args.only != "overhead":
            scaling(Path(d))
        if args.only != "scaling":
            overhead(Path(d))


if __name__ == "__main__":
    main()

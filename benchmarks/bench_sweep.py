"""The sweep on a local Ray: throughput, scaling over workers, and Ray's overhead.

`python -m benchmarks.harness sweep` measures, on this machine, the speed-up from
1 to 2 workers on a CPU-bound grid (median of 3 runs each) and Ray's share of
the default sweep's wall time; asv tracks a small sweep's boots per second.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from iommu_core.store.results import read_results
from iommu_core.sweep.runner import run_sweep

from .common import SMALL_GRID, sweep_of, timed_run


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

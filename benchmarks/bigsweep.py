"""A big grid of small cells on a local 3-node Ray cluster, against a 100-cell grid on the same cluster:
the driver's peak RSS (issue 16: within 50 MiB), its wall time and the files the run wrote.

The driver is a real `iommu-bench sweep` process, end-of-run summary included; its peak RSS is the one
the kernel reports when it exits (wait4's ru_maxrss). The cluster is `ray.cluster_utils.Cluster`: three
raylets of one CPU each on this machine, as tests/test_cluster.py makes it.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

from iommu_core.xen.rules import APIS, POLICIES

NODES = 3


def grid(cells: int) -> str:
    """A sweep of at least `cells` small-h3 cells: every policy and API, as many seeds as it takes."""
    seeds = math.ceil(cells / (len(POLICIES) * len(APIS)))
    return (f'[sweep]\nname = "big-{cells}"\nscenarios = ["small-h3"]\npolicies = {list(POLICIES)}\n'
            f'apis = {list(APIS)}\nseeds = {list(range(seeds))}\ncheck = false\n').replace("'", '"')


def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 100 * 2**20})
    for _ in range(NODES - 1):
        c.add_node(num_cpus=1, object_store_memory=100 * 2**20)
    c.wait_for_nodes()
    return c


def driver_run(cells: int, address: str, where: Path) -> dict:
    """One `iommu-bench sweep` of `cells` cells on the cluster: its wall time, peak RSS and files written."""
    sweep_file = where / f"big-{cells}.toml"
    sweep_file.write_text(grid(cells))
    results = where / f"runs-{cells}"
    log = where / f"big-{cells}.log"
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "iommu_core.cli", "sweep", str(sweep_file), "--address",
                                 address, "--results", str(results), "--quiet", "--max-cells", str(2 * cells)],
                                stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"the {cells}-cell sweep failed (exit {os.waitstatus_to_exitcode(status)}): see {log}")
    return {"cells": len(grid_cells(sweep_file)), "wall_s": wall, "peak_mib": usage.ru_maxrss / 1024,
            "files": sum(1 for _ in results.rglob("*.parquet")), "log": log}


def grid_cells(sweep_file: Path):
    from iommu_core.sweep.grid import load_sweep
    return load_sweep(sweep_file, max_cells=10**7).cells


def measure(cells: int, where: Path, small: int = 100) -> list[dict]:
    c = cluster()
    try:
        return [driver_run(n, c.address, where) for n in (small, cells)]
    finally:
        c.shutdown()

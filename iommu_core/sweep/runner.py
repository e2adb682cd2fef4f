"""Running a sweep on Ray: the only module that imports ray.

Cells go to plain Ray tasks in small batches (so each task does real work);
at most a few tasks are in flight (backpressure with ray.wait); every finished
task's rows go straight to the run's Parquet dataset, so the driver never
holds all rows. A cell that raises is recorded with its error and the sweep
goes on; a task whose worker dies is retried by Ray (cells are deterministic).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from .. import __version__
from ..results import MANIFEST_NAME, placeholder, row, write_part
from .grid import Cell, Sweep
from .progress import Eta, Quiet

SMALL_CELLS_PER_TASK = 2            # cells of small hosts (~0.3 s each): pairs, so a task is not all overhead
                                    # and the last tasks leave little tail


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_cells(cells: list[Cell], costs: dict, run_id: str) -> list[dict]:
    """Run cells (deterministic for their seeds); one row per domain, or one row for a failed cell."""
    from ..scenarios.files import load_scenario
    from ..xen.costs import CostModel
    from ..xen.host import Host
    from ..xen.iommu import NotApplicable

    worker = f"{socket.gethostname()}:{os.getpid()}"
    rows = []
    for c in cells:
        meta = {"run_id": run_id, "cell": c.key, "scenario": Path(c.scenario).stem, "policy": c.policy,
                "api": c.api, "format": c.format, "p2m_format": c.p2m_format, "costs": c.costs, "seed": c.seed,
                "worker": worker}
        start = time.perf_counter()
        try:
            s = load_scenario(c.scenario, seed=c.seed)
            config = s.host_config(policy=c.policy, api=c.api, iommu_format=c.format, p2m_format=c.p2m_format,
                                   seed=c.seed, check=c.check)
            records = Host(s.board, config, CostModel.with_overrides(**costs[c.costs])).run(list(s.specs))
            wall = time.perf_counter() - start
            rows += [row(r, {**meta, "status": "ok", "error": "", "cell_wall_s": wall}) for r in records]
        except NotApplicable as e:
            rows.append(placeholder({**meta, "cell_wall_s": time.perf_counter() - start}, "not-applicable", str(e)))
        except Exception as e:                      # a failing cell is recorded; the sweep goes on
            rows.append(placeholder({**meta, "cell_wall_s": time.perf_counter() - start}, "failed",
                                    f"{type(e).__name__}: {e}"))
    return rows


# Rough relative cost of a cell, to start the longest first (fewer idle workers at the end).
_API_WEIGHT = {"per-page": 3, "batched": 2, "blocks": 1}
_POLICY_WEIGHT = {"eager": 4, "declared": 2, "lazy": 2, "shared": 1}


def _batches(cells: tuple[Cell, ...]) -> list[list[Cell]]:
    big = [c for c in cells if Path(c.scenario).stem == "server"]
    big.sort(key=lambda c: -_API_WEIGHT[c.api] * _POLICY_WEIGHT[c.policy])
    small = [c for c in cells if Path(c.scenario).stem != "server"]
    batches = [[c] for c in big] + [small[i:i + SMALL_CELLS_PER_TASK] for i in range(0, len(small),
                                                                                    SMALL_CELLS_PER_TASK)]
    # One early batch of each scenario, so the ETA knows every scenario's cost from the start.
    first: dict[str, int] = {}
    for i, b in enumerate(batches):
        first.setdefault(b[0].scenario, i)
    probes = sorted(first.values())
    return [batches[i] for i in probes] + [b for i, b in enumerate(batches) if i not in first.values()]


def _check_address(address: str, timeout: float = 3.0) -> None:
    """Fail within seconds when a cluster address does not answer (Ray may wait a minute)."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host or hostport, int(port or 6379)), timeout=timeout):
            pass
    except (OSError, ValueError) as e:
        raise ConnectionError(f"Ray cluster at {address!r} does not answer ({e}); start it, or leave out "
                              f"--address / RAY_ADDRESS to run on a local Ray") from None


def cells_done(run_dir: Path) -> set[str]:
    """Keys of the cells a run already has rows for (whatever their status)."""
    import pyarrow.parquet as pq

    return {c for f in run_dir.rglob("*.parquet") if not f.name.startswith(".")
            for c in pq.read_table(f, columns=["cell"]).column("cell").to_pylist()}


def run_sweep(sweep: Sweep, results: Path, address: str | None = None, workers: int | None = None,
              object_store_mb: int | None = None, progress=Quiet, resume: str | None = None) -> Path:
    """Run every cell (with resume: only those the run has no rows for); return the run's directory.
    `progress`: a class like progress.Quiet (or progress.Bar), made with the number of cells to run."""
    note = None
    if resume is not None:
        run_dir = Path(results) / resume
        if not run_dir.is_dir():
            raise ValueError(f"--resume {resume!r}: no such run under {results}")
        have = cells_done(run_dir)
        sweep = Sweep(sweep.name, sweep.file, tuple(c for c in sweep.cells if c.key not in have), sweep.costs)
        note = f"resuming {resume}: {len(have)} cells have results, {len(sweep.cells)} to run"
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    ray_t0 = time.perf_counter()
    if address:
        _check_address(address)
        ray.init(address=address, log_to_driver=False)
    else:
        # address="local": always an embedded Ray of our own, never a cluster someone started here.
        ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False,
                 object_store_memory=object_store_mb * 2**20 if object_store_mb else None)
    ray_start_s = time.perf_counter() - ray_t0
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        parallel = min(cpus, workers or cpus)
        if resume is None:
            run_id = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
            run_dir = Path(results) / run_id
            run_dir.mkdir(parents=True)
        else:
            run_id = resume
        attempt = uuid.uuid4().hex[:6]             # part names of this attempt never clash with a resumed one
        started = datetime.datetime.now(datetime.timezone.utc).isoformat()
        provenance = {"package_version": __version__, "git_commit": _git_commit(), "host": platform.node(),
                      "python": sys.version.split()[0], "ray_nodes": len(ray.nodes()), "ray_cpus": cpus,
                      "workers": parallel, "sweep": sweep.name, "sweep_file": sweep.file,
                      "seeds": sorted({c.seed for c in sweep.cells}), "start": started, "run_id": run_id}
        task = ray.remote(max_retries=3)(run_cells)
        batches = _batches(sweep.cells)
        pending, in_flight, done, failed, t0 = list(enumerate(batches)), {}, 0, 0, time.perf_counter()
        eta = Eta(sweep.cells, parallel)
        progress = progress(len(sweep.cells))
        if note:
            progress.message(note)
        status = "complete"
        try:
            while pending or in_flight:
                while pending and len(in_flight) < 2 * parallel:
                    k, cells = pending.pop(0)
                    in_flight[task.remote(cells, sweep.costs, run_id)] = (k, len(cells))
                ready, _ = ray.wait(list(in_flight), num_returns=1)
                k, n = in_flight.pop(ready[0])
                rows = ray.get(ready[0])
                write_part(run_dir, rows, f"part-{attempt}-{k:05d}", provenance)
                done += n
                failed += len({r["cell"] for r in rows if r["status"] == "failed"})
                progress.update(done, failed, eta.after(rows))
        except KeyboardInterrupt:                 # stop cleanly: only whole files are left
            status = "interrupted"
            for ref in in_flight:
                ray.cancel(ref, force=True)
            progress.message(f"interrupted: {done} cells have results; iommu-bench sweep --resume {run_id} finishes")
        finally:
            progress.close()
        manifest = {**provenance, "end": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                    "status": status, "cells": len(sweep.cells), "cells_done": done, "cells_failed": failed,
                    "ray_start_s": ray_start_s, "wall_s": time.perf_counter() - t0}
        tmp = run_dir / f".{MANIFEST_NAME}.tmp"
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
        os.replace(tmp, run_dir / MANIFEST_NAME)
        return run_dir
    finally:
        ray.shutdown()

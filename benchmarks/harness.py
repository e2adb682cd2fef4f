"""The harnesses: each area's figures measured in one process and printed beside their targets.

  python -m benchmarks.harness pgtable   the engine's rates, ratios and small-call times (TARGETS)
  python -m benchmarks.harness model     the server boot's wall time per policy and API, invariant off and on
  python -m benchmarks.harness sweep     1 -> 2 workers on a CPU-bound grid and on the default sweep, Ray's share
  python -m benchmarks.harness stream    the captured stream replayed call by call: calls/s per mode, on one core;
                                         then one mirrored single-page call on its own (us)
  python -m benchmarks.harness bigsweep  10,000 small cells on a local 3-node Ray cluster: the driver's peak RSS
  python -m benchmarks.harness bighost   the server with 100 to 5,000 small domUs: a cell's time and peak RSS

asv runs the benchmark classes of bench_*.py; these print what a person reads once.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from iommu_core.cli import positive_int
from iommu_core.sweep.grid import load_sweep
from iommu_core.xen.rules import APIS, POLICIES

from .bench_model import DOMUS, boot
from . import bighost as bighosts
from . import bigsweep as bigsweeps
from . import stream as streams
from .common import SCALING_GRID, SMALL_PAGES, measure_figures, sweep_of, timed_run

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
    # the stream-speed issue: the engine against the C mapper (cmapper.c) in the same run
    "c/map-warm/contiguous": (">=", 0.9),
    "c/map-warm/random-extents": (">=", 0.5),
}


def missed_targets(figures: dict[str, float]) -> list[str]:
    out = []
    for key, (cmp, bound) in TARGETS.items():
        value = figures.get(key, float("nan"))
        if not (value >= bound if cmp == ">=" else value <= bound):
            out.append(f"{key} = {value:.3g}, target {cmp} {bound}")
    return out


def pgtable(args) -> None:
    figures = measure_figures()
    for key, value in figures.items():
        bound = TARGETS.get(key)
        print(f"{key:45s} {value:14.4g}" + (f"   target {bound[0]} {bound[1]}" if bound else ""))
    misses = missed_targets(figures)
    print("\nmissed targets:" if misses else "\nall targets met", *misses, sep="\n  ")


def model(args) -> None:
    """Print the server boot's wall time per policy and API, invariant off and on."""
    for policy in POLICIES:
        for api in APIS:
            secs = []
            for check in (False, True):
                start = time.perf_counter()
                boot(policy, api, "server", check=check, domus=DOMUS)
                secs.append(time.perf_counter() - start)
            print(f"{policy:9s} {api:9s} off {secs[0]:5.2f} s  on {secs[1]:5.2f} s  ratio {secs[1] / secs[0]:.2f}",
                  flush=True)


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


# The default sweep on 2 workers against 1, whole commands with Ray's start (issue 16).
END_TO_END_SPEEDUP = 1.7


def end_to_end(where: Path) -> None:
    """`iommu-bench sweep` (the default sweep) as a user runs it, on 1 worker and on 2: whole commands."""
    walls = {}
    for workers in (1, 2):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "iommu_core.cli", "sweep", "--workers", str(workers), "--results",
                        str(where / f"runs-{workers}"), "--quiet"], check=True, stdout=subprocess.DEVNULL)
        walls[workers] = time.perf_counter() - start
        print(f"default sweep, whole command, {workers} worker(s): {walls[workers]:.1f} s", flush=True)
    print(f"speed-up 1 -> 2 workers, end to end: {walls[1] / walls[2]:.2f}x   target >= {END_TO_END_SPEEDUP}x")


def sweep(args) -> None:
    with tempfile.TemporaryDirectory() as d:
        for part, run in (("scaling", scaling), ("overhead", overhead), ("end-to-end", end_to_end)):
            if args.only in (None, part):
                run(Path(d))


# Calls per second per core, per replay mode (issue 16's targets), and the invariant's cost.
STREAM_TARGETS = {"p2m": 5_000_000, "iommu": 2_000_000}
CHECK_SLOWDOWN = 3.0
SMALL_CALL_US = 10                  # one mirrored single-page call outside a stream, at most


def stream(args) -> None:
    log = streams.captured_log()
    rates = {}
    for mode in args.modes:
        rates[mode] = streams.calls_per_second(log, mode, args.calls, args.path)
        target = STREAM_TARGETS.get(mode)
        print(f"{mode:12s} {args.path:8s} {args.calls:>10,} calls  {rates[mode]:12,.0f} calls/s"
              + (f"   target >= {target:,}" if target else ""), flush=True)
    if "iommu" in rates and "iommu+check" in rates:
        print(f"invariant on / off: {rates['iommu'] / rates['iommu+check']:.2f}x slower   "
              f"target <= {CHECK_SLOWDOWN}x")
    pairs = streams.small_pairs(args.path)
    for arguments in streams.ARGUMENTS:
        us = streams.small_call_us(arguments, args.path)
        print(f"small call   {args.path:8s} {arguments:5s} arguments   {us:8.2f} us a call (best of 7 x {pairs:,} "
              f"map-and-unmap pairs)   target <= {SMALL_CALL_US} us", flush=True)


# The big grid's driver may take at most this much more memory than a 100-cell grid's (issue 16).
BIG_SWEEP_EXTRA_MIB = 50


def bigsweep(args) -> None:
    with tempfile.TemporaryDirectory() as d:
        runs = bigsweeps.measure(args.cells, Path(d))
        for r in runs:
            print(f"{r['cells']:>7,} cells on {bigsweeps.NODES} nodes: {r['wall_s']:7.1f} s, driver peak RSS "
                  f"{r['peak_mib']:6.1f} MiB, {r['files']:,} Parquet files", flush=True)
    extra = runs[1]["peak_mib"] - runs[0]["peak_mib"]
    print(f"driver peak RSS, big grid minus 100 cells: {extra:+.1f} MiB   target <= {BIG_SWEEP_EXTRA_MIB} MiB")


# An eager cell of 2,000 domUs: at most this wall time and peak RSS (issue 16).
BIG_HOST = (2000, 5.0, 500)


def bighost(args) -> None:
    rows = []
    for domus in args.sizes:
        for policy in bighosts.POLICIES:
            r = bighosts.measured(domus, policy)
            rows.append(r)
            print(f"{domus:>6,} domUs {policy:6s}: {r['wall_s']:7.2f} s, peak RSS {r['peak_mib']:6.0f} MiB, "
                  f"{r['booted']:,} of {r['domains']:,} domains booted, {1e3 * r['wall_s'] / r['booted']:.1f} ms "
                  f"per booted domain", flush=True)
    print(f"plot: {bighosts.plot(rows, Path(args.plot))}, figures: {bighosts.save(rows, Path(args.plot))}")
    domus, wall, mib = BIG_HOST
    for r in rows:
        if r["domus"] == domus and r["policy"] == "eager":
            print(f"eager at {domus:,} domUs: {r['wall_s']:.2f} s (target <= {wall} s), {r['peak_mib']:.0f} MiB "
                  f"(target < {mib} MiB)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    areas = parser.add_subparsers(dest="area", required=True)
    areas.add_parser("pgtable", help="the engine's figures and targets").set_defaults(run=pgtable)
    areas.add_parser("model", help="the server boot per policy and API").set_defaults(run=model)
    s = areas.add_parser("sweep", help="worker scaling and Ray's share")
    s.add_argument("--only", choices=("scaling", "overhead", "end-to-end"),
                   help="measure only this (default: all three; end-to-end times the default sweep's whole command "
                        "on 1 and 2 workers, about 9 minutes)")
    s.set_defaults(run=sweep)
    r = areas.add_parser("stream", help="the captured stream's replay rate per mode, and a small call's time")
    r.add_argument("--calls", type=positive_int, default=1_000_000,
                   help="calls per mode: the capture (33,353 calls) repeated as often as it takes (default 1,000,000)")
    r.add_argument("--modes", nargs="+", choices=streams.MODES, default=list(streams.MODES),
                   help="which replays to time (default: all; benchmarks/stream.py says what each keeps)")
    r.add_argument("--path", choices=streams.PATHS, default="compiled",
                   help="compiled: the compiled loop (xen/stream.py, the default); python: the calls applied "
                        "one by one, its oracle (about 15,000 calls/s: use --calls 100000)")
    r.set_defaults(run=stream)
    b = areas.add_parser("bigsweep", help="a big grid's driver memory against a 100-cell grid's (a 3-node Ray)")
    b.add_argument("--cells", type=positive_int, default=10_000,
                   help="cells of the big grid: small-h3, every policy and API, seeds as needed (default 10,000; "
                        "about 15 minutes on 2 cores)")
    b.set_defaults(run=bigsweep)
    h = areas.add_parser("bighost", help="a server cell's time and memory against its number of domUs")
    h.add_argument("--sizes", nargs="+", type=positive_int, default=list(bighosts.SIZES),
                   help=f"domUs per host (default {' '.join(map(str, bighosts.SIZES))})")
    h.add_argument("--plot", default="results/scale/big-hosts.png", help="where the plot goes "
                   "(default results/scale/big-hosts.png, the README's)")
    h.set_defaults(run=bighost)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()

"""Interrupted and concurrent sweeps lose no row and duplicate none.

Real `python -m iommu_core.cli sweep` processes on a tiny sweep: SIGINT, SIGTERM and SIGKILL of the
driver, then a resume while a second resume is refused; rows are counted per cell after each step.
The lock's takeover is also checked without Ray, on a planted stale lock.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from iommu_core.cli import main
from iommu_core.store.results import MANIFEST_NAME, read_results
from iommu_core.sweep.grid import load_sweep
from iommu_core.sweep.runner import LOCK_NAME, RunLock, reap_stale_runs

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
SWEEP = """
[sweep]
name = "tiny"
scenarios = ["small-h3"]
policies = ["eager", "shared"]
apis = ["batched", "blocks"]
p2m_formats = ["p2m-s2-40", "p2m-s2-48"]
seeds = [0, 1, 2, 3]
"""
DOMAINS = 5                     # small-h3: dom0 and four domUs; a not-applicable cell has one row


def sweep_cmd(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "iommu_core.cli", "sweep", *args, "--workers", "2", "--quiet"],
                            env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def parts(runs: Path) -> set[Path]:
    return {p for p in runs.rglob("*.parquet") if not p.name.startswith(".")}


def signal_after_new_part(proc: subprocess.Popen, runs: Path, signum: int, timeout: float = 120) -> list[int]:
    """Send `signum` once the process has written a part of its own; return its process tree's PIDs."""
    import ray  # noqa: F401 -- makes Ray's psutil importable
    import psutil
    before = parts(runs)
    end = time.monotonic() + timeout
    while not parts(runs) - before:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, "no part written"
        time.sleep(0.05)
    tree = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    proc.send_signal(signum)
    return tree


def rows_per_cell(run_dir: Path) -> dict[str, int]:
    rows = read_results(run_dir).select(["cell", "domain", "status"]).to_pylist()
    pairs = [(r["cell"], r["domain"]) for r in rows]
    dup = [p for p, n in collections.Counter(pairs).items() if n > 1]
    assert not dup, f"duplicated rows: {dup[:5]}"
    per_cell = collections.Counter(r["cell"] for r in rows)
    for r in rows:
        assert per_cell[r["cell"]] == (DOMAINS if r["status"] == "ok" else 1), r
    return per_cell


def alive(pids) -> list[int]:
    import ray  # noqa: F401
    import psutil
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def stopped_cleanly(proc, code: int, run_dir: Path, tree: list[int], signame: str) -> dict:
    out, err = proc.communicate(timeout=120)
    if proc.returncode != code and "Tried to complete task that was not pending" in err:
        # Ray's own core worker sometimes aborted while the driver force-cancelled its tasks (task_manager.cc:
        # 1329, seen 2 runs in 6); the driver no longer cancels on a local Ray (its shutdown stops the tasks),
        # so this should not recur; if it does, the driver died inside Ray before it could clean up.
        pytest.xfail("Ray's core worker aborted during the cancel (Ray bug, task_manager.cc:1329)")
    assert proc.returncode == code, err
    manifest = json.loads((run_dir / MANIFEST_NAME).read_text())
    assert manifest["status"] == "interrupted" and manifest["attempts"][-1]["signal"] == signame
    assert not list(run_dir.rglob("*.tmp")) and not (run_dir / LOCK_NAME).exists()
    deadline = time.monotonic() + 10
    while alive(tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(tree), "the local Ray outlived its driver"
    assert "--resume" in err
    return manifest


@pytest.mark.slow
def test_sigint_sigterm_sigkill_and_a_concurrent_resume_lose_and_duplicate_no_row(tmp_path):
    (tmp_path / "s.toml").write_text(SWEEP)
    expected = {c.key for c in load_sweep(tmp_path / "s.toml").cells}
    runs = tmp_path / "runs"
    runs.mkdir()

    # Ctrl-C: exit 130, manifest "interrupted", no temporary file, the local Ray stopped.
    proc = sweep_cmd(str(tmp_path / "s.toml"), "--results", str(runs))
    tree = signal_after_new_part(proc, runs, signal.SIGINT)
    run_dir = next(p for p in runs.iterdir() if p.is_dir())
    first = stopped_cleanly(proc, 130, run_dir, tree, "SIGINT")
    done = rows_per_cell(run_dir)
    assert 0 < len(done) < len(expected) and first["cells_done"] == len(done)

    # SIGTERM of a resume given no sweep file: the run's own sweep, exit 143.
    proc = sweep_cmd("--resume", run_dir.name, "--results", str(runs))
    tree = signal_after_new_part(proc, runs, signal.SIGTERM)
    second = stopped_cleanly(proc, 143, run_dir, tree, "SIGTERM")
    done = rows_per_cell(run_dir)
    assert set(done) <= expected and second["cells_done"] == len(done) < len(expected)
    assert second["start"] == first["start"] and len(second["attempts"]) == 2

    # SIGKILL: nothing can clean up now; a half-written part stays (planted: a kill mid-write is not
    # reproducible), and so does the lock with the Ray it started.
    proc = sweep_cmd("--resume", run_dir.name, "--results", str(runs))
    signal_after_new_part(proc, runs, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    lock = json.loads((run_dir / LOCK_NAME).read_text())
    left_ray = [pid for pid, _ in lock["ray"]]
    assert lock["pid"] == proc.pid and left_ray
    stray = next(iter(parts(runs))).parent / ".part-dead-00000.parquet.tmp"
    stray.write_bytes(b"half a file")
    rows_per_cell(run_dir)

    # A resume takes the dead driver's lock over (its Ray stopped, the stray file removed); a second
    # resume at the same time is refused with the first one's PID; the first finishes the run.
    proc = sweep_cmd("--resume", run_dir.name, "--results", str(runs))
    deadline = time.monotonic() + 60
    while True:
        try:
            holder = json.loads((run_dir / LOCK_NAME).read_text()).get("pid")
        except (OSError, ValueError):
            holder = None
        if holder == proc.pid:
            break
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    assert not stray.exists()
    second_writer = sweep_cmd("--resume", run_dir.name, "--results", str(runs))
    _, err = second_writer.communicate(timeout=60)
    assert second_writer.returncode == 2 and f"PID {proc.pid}" in err, err
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert not alive(left_ray), "the Ray a killed driver left was not stopped"
    assert rows_per_cell(run_dir).keys() == expected                 # 0 lost, 0 duplicated, no foreign cell
    manifest = json.loads((run_dir / MANIFEST_NAME).read_text())
    assert manifest["status"] == "complete" and manifest["cells_done"] == manifest["cells"] == len(expected)
    assert manifest["sweep"] == "tiny" and manifest["start"] == first["start"]
    assert [a["status"] for a in manifest["attempts"]] == ["interrupted", "interrupted", "killed", "complete"]
    assert all(a["start"] and a["end"] for a in manifest["attempts"] if a["status"] != "killed")
    assert manifest["wall_s"] == pytest.approx(sum(a.get("wall_s") or 0 for a in manifest["attempts"]))
    assert not list(run_dir.rglob("*.tmp")) and not (run_dir / LOCK_NAME).exists()


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path, capsys):
    run_dir = tmp_path / "runs" / "r1"
    run_dir.mkdir(parents=True)
    lock = RunLock(run_dir).acquire()
    try:
        assert main(["sweep", "--resume", "r1", "--results", str(tmp_path / "runs")]) == 2
    finally:
        lock.release()
    err = capsys.readouterr().err
    assert f"being written by PID {os.getpid()}" in err and len(err.strip().splitlines()) == 1
    assert not (run_dir / LOCK_NAME).exists()


def test_a_stale_lock_is_taken_over_and_what_the_dead_writer_left_is_cleaned(tmp_path):
    import ray  # noqa: F401
    import psutil
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = subprocess.Popen(["sleep", "60"])                        # stands in for a Ray process left behind
    other = subprocess.Popen(["sleep", "60"])                       # recorded with another start time: a reused PID
    try:
        run_dir = tmp_path / "runs" / "r1"
        (run_dir / "scenario=x").mkdir(parents=True)
        (run_dir / "scenario=x" / ".part-a-00001.parquet.tmp").write_bytes(b"half")
        (run_dir / MANIFEST_NAME).write_text(json.dumps({"status": "running", "attempts": [{"status": "running"}]}))
        (run_dir / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "ray": [
            [left.pid, psutil.Process(left.pid).create_time()],
            [other.pid, psutil.Process(other.pid).create_time() - 100]]}))
        notes = reap_stale_runs(tmp_path / "runs")
        assert len(notes) == 1 and f"PID {dead.pid} (dead)" in notes[0] and "1 temporary files" in notes[0]
        assert left.wait(timeout=10) is not None                   # stopped
        assert other.poll() is None                                # never touched
        assert not list(run_dir.rglob("*.tmp")) and not (run_dir / LOCK_NAME).exists()
        manifest = json.loads((run_dir / MANIFEST_NAME).read_text())
        assert manifest["status"] == "killed" and manifest["attempts"][-1]["status"] == "killed"
    finally:
        for p in (left, other):
            p.kill()
            p.wait()

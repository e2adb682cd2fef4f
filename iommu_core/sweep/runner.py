"""Running a sweep on Ray: the only module that imports ray.

Cells go to plain Ray tasks in small batches (so each task does real work);
at most a few tasks are in flight (backpressure with ray.wait); finished
tasks' rows are kept as Arrow and written to the run's Parquet dataset as one
part every PART_AGE_S seconds (the attempt's first at once), so the driver
never holds all rows and a long run is a few hundred files, not one per task.
A cell that raises is recorded with its error and the sweep goes on; a task
whose worker dies is retried by Ray (cells are deterministic), and recorded as
failed when it dies every time.

A run is written by one process at a time: its folder holds a lock file
(`.lock`, flock'ed, with the writer's PID and the local Ray's processes). A
lock whose holder is gone is taken over: its temporary files are removed and
the Ray processes the dead driver left are stopped. SIGINT and SIGTERM stop a
sweep cleanly (manifest "interrupted", no temporary file, the local Ray
stopped) and raise SweepStopped, whose exit code is 130 or 143.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import errno
import fcntl
import functools
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pyarrow as pa

from .. import __version__
from ..store.results import ResultsError, as_table, placeholder, read_manifest, row, write_manifest, write_part
from .grid import MAX_CELLS, Cell, Sweep, SweepError, sweep_from_text
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


BIG_HOST_DOMAINS = 32               # a host of this many domains is a task of its own (domU builds dominate)


@functools.lru_cache(maxsize=None)
def _domains(scenario: str) -> int:
    """How many domains a scenario's host runs (the seed draws sizes, not the count)."""
    from ..scenarios.files import load_scenario
    return len(load_scenario(scenario).specs)


def _batches(cells: tuple[Cell, ...]) -> list[list[Cell]]:
    big = [c for c in cells if _domains(c.scenario) >= BIG_HOST_DOMAINS]
    big.sort(key=lambda c: -_domains(c.scenario) * _API_WEIGHT[c.api] * _POLICY_WEIGHT[c.policy])
    small = [c for c in cells if _domains(c.scenario) < BIG_HOST_DOMAINS]
    batches = [[c] for c in big] + [small[i:i + SMALL_CELLS_PER_TASK] for i in range(0, len(small),
                                                                                    SMALL_CELLS_PER_TASK)]
    # One early batch of each scenario, so the ETA knows every scenario's cost from the start.
    first: dict[str, int] = {}
    for i, b in enumerate(batches):
        first.setdefault(b[0].scenario, i)
    probes = sorted(first.values())
    return [batches[i] for i in probes] + [b for i, b in enumerate(batches) if i not in first.values()]



# --- a cluster address ------------------------------------------------------------------------

# HTTP/2's client preface and an empty SETTINGS frame: every gRPC server (Ray's GCS, Ray Client)
# answers with a SETTINGS frame of its own; a listener that is not Ray says nothing or something else.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
_H2_SETTINGS = 0x4


def _check_address(address: str, timeout: float = 3.0) -> None:
    """Fail within seconds when a cluster address does not answer, or answers but not as Ray's gRPC
    (Ray itself may wait a minute, or forever on a listener that says nothing)."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host or hostport, int(port or 6379)), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(_H2_PREFACE)
            reply = b""
            while len(reply) < 9:
                chunk = sock.recv(9 - len(reply))
                if not chunk:
                    break
                reply += chunk
    except socket.timeout:
        raise ConnectionError(f"Ray cluster at {address!r}: something listens there but does not answer as "
                              f"Ray's gRPC within {timeout:g} s (expected a Ray GCS or Ray Client address)") \
            from None
    except (OSError, ValueError) as e:
        raise ConnectionError(f"Ray cluster at {address!r} does not answer ({e}); start it, or leave out "
                              f"--address / RAY_ADDRESS to run on a local Ray") from None
    if len(reply) < 9 or reply[3] != _H2_SETTINGS:
        raise ConnectionError(f"Ray cluster at {address!r}: the listener there is not Ray (it answered "
                              f"{reply[:16]!r}, expected gRPC's HTTP/2 settings)")


# --- the local Ray ----------------------------------------------------------------------------

def _ray_token() -> Path:
    return Path.home() / ".ray" / "auth_token"


@contextlib.contextmanager
def _loopback_only():
    """A local Ray that listens on 127.0.0.1 only. Ray binds its gRPC servers to loopback only when the
    node's address is 127.0.0.1, and turns a 127.0.0.1 given to ray.init into the machine's address
    unless clusters are off (ray_constants.ENABLE_RAY_CLUSTER, read from this variable at import)."""
    from ray._private import ray_constants

    saved_env = {k: os.environ.get(k) for k in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_USAGE_STATS_ENABLED")}
    saved = ray_constants.ENABLE_RAY_CLUSTER
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _private_token() -> None:
    token = _ray_token()
    if token.exists() and token.stat().st_mode & 0o077:
        token.chmod(0o600)


def ray_processes() -> list[tuple[int, float]]:
    """(pid, start time) of every process under this one: a local Ray's GCS, raylet, agents, workers."""
    import psutil                      # ships with ray (ray/thirdparty_files), importable once ray is

    out = []
    for p in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            out.append((p.pid, p.create_time()))
    return out


@contextlib.contextmanager
def started_ray(address: str | None = None, workers: int | None = None, object_store_mb: int | None = None):
    """Ray for a sweep: the cluster at `address` (checked first), else a local Ray of our own bound to
    127.0.0.1, with min(workers, CPUs) CPUs. Yields (seconds Ray took to start, whether it is local)."""
    import ray

    t0 = time.perf_counter()
    local = not address
    if address:
        _check_address(address)
        ray.init(address=address, log_to_driver=False)
    else:
        cpus = min(workers, os.cpu_count() or 1) if workers else None
        old_umask = os.umask(0o077)                     # Ray writes ~/.ray/auth_token with the umask
        try:
            with _loopback_only():
                # address="local": always an embedded Ray of our own, never a cluster someone started here.
                ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                         _node_ip_address="127.0.0.1",
                         object_store_memory=object_store_mb * 2**20 if object_store_mb else None)
        finally:
            os.umask(old_umask)
    try:
        _private_token()
        yield time.perf_counter() - t0, local
    finally:
        ray.shutdown()


def stop_processes(procs) -> int:
    """Stop recorded processes still running as the same process (pid and start time match, so a
    reused PID is never touched), with their children; the number stopped."""
    import ray  # noqa: F401 -- makes psutil importable
    import psutil

    victims = []
    for pid, created in procs:
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(int(pid))
            if abs(p.create_time() - float(created)) < 0.01:
                victims += [p, *p.children(recursive=True)]
    for p in victims:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(victims, timeout=5)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    return len(victims)


# --- the run's lock ---------------------------------------------------------------------------

LOCK_NAME = ".lock"                 # a dot name: Arrow's dataset readers skip it


class RunLocked(ValueError):
    """Another process is writing the run."""


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True
    return True


class RunLock:
    """An flock on <run>/.lock holding JSON: the writer's PID and its local Ray's processes."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.fd: int | None = None
        self.previous: dict = {}           # what a holder that died left in the file
        self.cleaned: list[str] = []       # what taking the lock over removed or stopped

    def acquire(self) -> "RunLock":
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                holder = _read_lock(self.path).get("pid", "unknown")
                raise RunLocked(f"{self.run_dir}: the run is being written by PID {holder} (lock {self.path}); "
                                f"wait for it to finish, or stop it first") from None
            try:                           # the file we locked may have been removed by a holder finishing
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.fd = fd
        self.previous = _read_lock_fd(fd)
        self._take_over()
        self.write(ray=[])
        return self

    def _take_over(self) -> None:
        """We hold the lock: whatever a previous writer left (it is dead, or it would hold the lock) goes."""
        pid = self.previous.get("pid")
        if pid is not None and pid != os.getpid():
            self.cleaned.append(f"took over the lock of PID {pid} ({'alive' if _pid_alive(pid) else 'dead'})")
        stopped = stop_processes(self.previous.get("ray", [])) if self.previous.get("ray") else 0
        if stopped:
            self.cleaned.append(f"stopped {stopped} Ray processes PID {pid} left behind")
        tmps = [p for p in self.run_dir.rglob("*.tmp") if p.is_file()]
        for p in tmps:
            p.unlink(missing_ok=True)
        if tmps:
            self.cleaned.append(f"removed {len(tmps)} temporary files")

    def write(self, **info) -> None:
        data = json.dumps({"pid": os.getpid(), **info}).encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()            # while still holding it: a waiting writer re-checks the inode
        os.close(self.fd)
        self.fd = None


def _read_lock_fd(fd: int) -> dict:
    try:
        data = json.loads(os.pread(fd, 1 << 20, 0) or b"{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _read_lock(path: Path) -> dict:
    try:
        data = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def reap_stale_runs(results: Path) -> list[str]:
    """Clean every run under `results` whose writer died (a SIGKILL): temporary files, the Ray it left,
    a manifest still saying "running"; one line per run cleaned."""
    notes = []
    if not results.is_dir():
        return notes
    for run_dir in sorted(p for p in results.iterdir() if (p / LOCK_NAME).is_file()):
        lock = RunLock(run_dir)
        try:
            lock.acquire()
        except (RunLocked, OSError):
            continue                        # a live writer: not ours to touch
        try:
            with contextlib.suppress(ResultsError):
                manifest = read_manifest(run_dir)
                if manifest.get("status") == "running":
                    manifest["status"] = "killed"
                    if manifest.get("attempts"):
                        manifest["attempts"][-1]["status"] = "killed"
                    write_manifest(run_dir, manifest)
                    lock.cleaned.append("manifest marked killed")
            if lock.cleaned:
                notes.append(f"{run_dir.name}: " + "; ".join(lock.cleaned))
        finally:
            lock.release()
    return notes


# --- signals ----------------------------------------------------------------------------------

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class SweepStopped(Exception):
    """The sweep was stopped by SIGINT / SIGTERM (or Ctrl-C) and cleaned up after itself."""

    def __init__(self, run_dir: Path, signum: int, message: str):
        super().__init__(message)
        self.run_dir, self.signum = run_dir, signum
        self.exit_code = 128 + signum


class _Stop(BaseException):
    """Raised by the signal handler; a BaseException so no `except Exception` swallows it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class _Signals:
    """SIGINT and SIGTERM raise _Stop, except inside `shielded()` (writing a file, starting or stopping
    Ray), where they are noted and raised at its end (or never, with raise_after=False)."""

    def __init__(self):
        self.pending: int | None = None
        self.shield = 0
        self.old: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.old = {s: signal.signal(s, self._handler) for s in STOP_SIGNALS}
        return self

    def reinstall(self) -> None:              # after ray.init, in case Ray installed handlers of its own
        if self.old:
            for s in STOP_SIGNALS:
                signal.signal(s, self._handler)

    def __exit__(self, *exc):
        for s, h in self.old.items():
            signal.signal(s, h)

    def _handler(self, signum, frame):
        if self.pending is not None:           # a second signal while stopping: the clean-up goes on
            return
        self.pending = signum
        if not self.shield:
            raise _Stop(signum)

    @contextlib.contextmanager
    def shielded(self, raise_after: bool = True):
        self.shield += 1
        try:
            yield
        finally:
            self.shield -= 1
        if raise_after and self.pending is not None and not self.shield:
            raise _Stop(self.pending)


# --- the sweep --------------------------------------------------------------------------------

def cells_done(run_dir: Path) -> dict[str, str]:
    """The cells a run already has rows for: key -> status of its rows."""
    import pyarrow.parquet as pq

    out: dict[str, str] = {}
    for f in Path(run_dir).rglob("*.parquet"):
        if not f.name.startswith("."):
            t = pq.read_table(f, columns=["cell", "status"])
            out.update(zip(t.column("cell").to_pylist(), t.column("status").to_pylist()))
    return out


# Landed rows wait (as Arrow, a tenth of their size as dicts) and are written as one part at most every
# PART_AGE_S seconds or PART_ROWS rows; the attempt's first part at once, so a run shows rows from its start.
# One part per task made thousands of tiny files (each file's footer is ~30 KB of this schema), which
# every reader of the dataset pays for; a SIGKILL now loses at most PART_AGE_S of landed work, which
# --resume runs again (SIGINT and SIGTERM write what has landed).
PART_AGE_S = 30.0
PART_ROWS = 50_000


class PendingRows:
    """Landed rows not written yet; `write(table, k)` writes the k-th part of the attempt."""

    def __init__(self, write, age_s: float | None = None, max_rows: int | None = None):
        self.write = write
        self.age_s = PART_AGE_S if age_s is None else age_s
        self.max_rows = PART_ROWS if max_rows is None else max_rows
        self.tables, self.rows, self.since, self.parts = [], 0, 0.0, 0

    def add(self, rows: list[dict]) -> None:
        if not self.tables:
            self.since = time.monotonic()
        self.tables.append(as_table(rows))
        self.rows += len(rows)
        if not self.parts or self.rows >= self.max_rows or time.monotonic() - self.since >= self.age_s:
            self.flush()

    def flush(self) -> None:
        if self.tables:
            self.write(pa.concat_tables(self.tables), self.parts)
            self.tables, self.rows, self.parts = [], 0, self.parts + 1


class Run:
    """A run's folder over its life: made (or resumed), locked while an attempt uses it, each part of
    rows written whole, and its manifest saying how every attempt went."""

    def __init__(self, run_dir):
        self.dir = Path(run_dir)
        self.id = self.dir.name
        self.lock: RunLock | None = None

    @classmethod
    def create(cls, results: Path) -> Run:
        run_id = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
        run_dir = Path(results) / run_id
        try:
            run_dir.mkdir(parents=True)
        except OSError as e:
            raise ValueError(f"--results {str(results)!r}: cannot make the run folder {run_dir}: {e.strerror}") \
                from None
        return cls(run_dir)

    @classmethod
    def resume(cls, results: Path, run_id: str) -> Run:
        if not run_id or "/" in run_id or run_id in (".", ".."):
            raise ValueError(f"--resume {run_id!r}: not a run id (expected a run folder's name under {results})")
        if not (Path(results) / run_id).is_dir():
            raise ValueError(f"--resume {run_id!r}: no such run under {results}")
        return cls(Path(results) / run_id)

    def __enter__(self) -> Run:
        self.lock = RunLock(self.dir).acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.lock.release()

    @property
    def manifest(self) -> dict:
        return read_manifest(self.dir)

    def cells_done(self) -> dict[str, str]:
        return cells_done(self.dir)

    def begin(self, sweep: Sweep, have: dict[str, str]) -> tuple[dict, dict]:
        """Record a new attempt in the manifest (kept from earlier attempts); (manifest, this attempt)."""
        manifest = self.manifest
        started = _now()
        # part names of this attempt never clash with a resumed one's
        this = {"attempt": uuid.uuid4().hex[:6], "pid": os.getpid(), "start": started, "end": None,
                "status": "running", "cells_run": 0, "cells_failed": 0}
        definition = ({"name": sweep.name, "file": sweep.file, "sha256": sweep.sha256, "toml": sweep.text}
                      if sweep.text else manifest.get("sweep_definition"))
        manifest = {**manifest, "run_id": self.id, "package_version": __version__, "git_commit": _git_commit(),
                    "host": platform.node(), "sweep": sweep.name, "sweep_file": sweep.file,
                    "sweep_sha256": sweep.sha256, "seed_count": len({c.seed for c in sweep.cells}),
                    "start": manifest.get("start", started), "end": None, "status": "running",
                    "cells": len(sweep.cells), "cells_done": len(have),
                    "cells_failed": sum(s == "failed" for s in have.values()),
                    "attempts": [*manifest.get("attempts", []), this], "sweep_definition": definition}
        if manifest["attempts"][:-1] == [] and "wall_s" in manifest:      # a run from before attempts were kept
            manifest["attempts"].insert(0, {k: manifest.get(k) for k in ("start", "end", "status", "wall_s",
                                                                          "ray_start_s", "workers")})
        write_manifest(self.dir, manifest)
        return manifest, this

    def write_part(self, rows, name: str, provenance: dict) -> None:
        write_part(self.dir, rows, name, provenance)

    def finish(self, manifest: dict, this: dict, status: str, stop_signal, done: int, failed: int,
               wall_s: float, parallel: int) -> None:
        """The end of an attempt, however it ended: no temporary file, the manifest saying how it ended."""
        for p in self.dir.rglob("*.tmp"):
            p.unlink(missing_ok=True)
        now = _now()
        total = self.cells_done()
        this.update(end=now, status=status, cells_run=done, cells_failed=failed, wall_s=wall_s,
                    signal=signal.Signals(stop_signal).name if stop_signal else None)
        attempts = manifest["attempts"]
        manifest.update(end=now, status=status, cells_done=len(total),
                        cells_failed=sum(s == "failed" for s in total.values()),
                        workers=parallel or manifest.get("workers"), ray_cpus=this.get("ray_cpus"),
                        ray_nodes=this.get("ray_nodes"),
                        ray_start_s=sum(a.get("ray_start_s") or 0.0 for a in attempts),
                        wall_s=sum(a.get("wall_s") or 0.0 for a in attempts))
        write_manifest(self.dir, manifest)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


def _results_root(results) -> Path:
    root = Path(results)
    if root.exists() and not root.is_dir():
        raise ValueError(f"--results {str(root)!r}: a file, not a folder (expected a folder for runs)")
    if not root.exists() and root.parent.exists() and not root.parent.is_dir():
        raise ValueError(f"--results {str(root)!r}: {root.parent} is a file, not a folder")
    return root


def _recorded_sweep(run_dir: Path, manifest: dict, given: Sweep | None, max_cells: int | None) -> Sweep:
    """The sweep a run was started with (its manifest keeps the whole definition)."""
    definition = manifest.get("sweep_definition")
    if not definition:
        if given is None:
            raise ValueError(f"--resume {run_dir.name}: its manifest records no sweep definition (a run from an "
                             f"older version); give the sweep file it was started with")
        if manifest.get("sweep") not in (None, given.name):
            raise ValueError(f"--resume {run_dir.name}: the run is sweep {manifest['sweep']!r}, not "
                             f"{given.name!r} ({given.file}); give the run's own sweep file")
        return given
    if not isinstance(definition, dict) or not {"toml", "file", "sha256"} <= set(definition):
        raise ValueError(f"{run_dir}: manifest's sweep_definition is malformed (expected toml, file, sha256)")
    if given is not None and given.sha256 and given.sha256 != definition["sha256"]:
        raise ValueError(f"--resume {run_dir.name}: the sweep file {given.file} differs from the one the run "
                         f"was started with ({definition['file']}, sha256 {definition['sha256'][:12]}); leave "
                         f"it out: --resume uses the run's own sweep")
    try:
        return sweep_from_text(definition["toml"], definition["file"], max_cells)
    except SweepError as e:
        raise ValueError(f"--resume {run_dir.name}: the run's recorded sweep: {e}") from None


def provenance(sweep: Sweep, run_id: str, attempt: str, started: str, ray_nodes: int, cpus: int,
               parallel: int) -> dict:
    """What every Parquet file of an attempt carries: small and of constant size (the sweep's hash and
    seed count; the whole definition is in the manifest, once)."""
    return {"package_version": __version__, "git_commit": _git_commit(), "host": platform.node(),
            "python": sys.version.split()[0], "ray_nodes": ray_nodes, "ray_cpus": cpus, "workers": parallel,
            "sweep": sweep.name, "sweep_file": sweep.file, "sweep_sha256": sweep.sha256,
            "seed_count": len({c.seed for c in sweep.cells}), "start": started, "run_id": run_id,
            "attempt": attempt}


def run_sweep(sweep: Sweep | None, results: Path, address: str | None = None, workers: int | None = None,
              object_store_mb: int | None = None, progress=Quiet, resume: str | None = None,
              max_cells: int | None = MAX_CELLS) -> Path:
    """Run every cell (with resume: only those the run has no rows for); return the run's directory.
    `progress`: a class like progress.Quiet (or progress.Bar), made with the number of cells to run.
    With resume, `sweep` may be None: the run's manifest gives the sweep; a different one is refused.
    Stopped by SIGINT / SIGTERM: raises SweepStopped after writing the manifest and cleaning up."""
    results = _results_root(results)
    if resume is None and sweep is None:
        raise ValueError("a sweep is needed to start a run (only --resume takes the run's own)")
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        _check_address(address)                   # before anything is written
    notes = reap_stale_runs(results)
    run = Run.resume(results, resume) if resume is not None else Run.create(results)
    with run:
        return _locked_sweep(sweep, run, notes, address, workers, object_store_mb, progress, resume, max_cells)


def _locked_sweep(sweep, run: Run, notes, address, workers, object_store_mb, progress, resume,
                  max_cells) -> Path:
    run_dir, run_id, lock = run.dir, run.id, run.lock
    if resume is not None:
        sweep = _recorded_sweep(run_dir, run.manifest, sweep, max_cells)
    if lock.cleaned:
        notes.append(f"{run_id}: " + "; ".join(lock.cleaned))
    have = run.cells_done()
    todo = Sweep(sweep.name, sweep.file, tuple(c for c in sweep.cells if c.key not in have), sweep.costs,
                 sweep.sha256, sweep.text)
    if resume is not None:
        notes.append(f"resuming {resume}: {len(have)} cells have results, {len(todo.cells)} to run")
    manifest, this = run.begin(sweep, have)
    attempt, started = this["attempt"], this["start"]

    import ray

    status, stop_signal, done, failed, t0, parallel, bar = "running", None, 0, 0, time.perf_counter(), 0, None
    pending: PendingRows | None = None
    with _Signals() as sig:
        try:
            with sig.shielded(raise_after=False):        # a signal now stops us once Ray is up
                ray_cm = started_ray(address, workers, object_store_mb)
                ray_start_s, local = ray_cm.__enter__()
            in_flight: dict = {}
            try:
                sig.reinstall()
                if local:
                    lock.write(ray=ray_processes())
                if sig.pending is not None:
                    raise _Stop(sig.pending)
                cpus = int(ray.cluster_resources().get("CPU", 1))
                parallel = min(cpus, workers or cpus)
                # A local Ray runs at most its CPUs (min(workers, CPUs)) at once; a cluster's Ray would run
                # as many as it has, so there --workers N keeps at most N tasks in flight.
                in_flight_max = parallel if (workers and not local) else 2 * parallel
                prov = provenance(sweep, run_id, attempt, started, len(ray.nodes()), cpus, parallel)
                this.update(workers=parallel, ray_cpus=cpus, ray_nodes=prov["ray_nodes"], ray_start_s=ray_start_s)
                eta = Eta(todo.cells, parallel)
                bar = progress(len(todo.cells))
                for n in notes:
                    bar.message(n)
                t0 = time.perf_counter()

                pending = PendingRows(lambda table, k: run.write_part(table, f"part-{attempt}-{k:05d}", prov))

                def landed(cells: list[Cell], rows) -> None:
                    nonlocal done, failed
                    if isinstance(rows, Exception):            # the task's worker died on every retry
                        why = f"{type(rows).__name__}: {str(rows).splitlines()[0] if str(rows) else ''}"
                        rows = [_failed_row(c, run_id, why) for c in cells]
                    with sig.shielded():                   # a part is written whole, or not at all
                        pending.add(rows)
                    done += len(cells)
                    failed += len({r["cell"] for r in rows if r["status"] == "failed"})
                    bar.update(done, failed, eta.after(rows))

                _drain(ray.remote(max_retries=3)(run_cells), _batches(todo.cells), (todo.costs, run_id),
                       in_flight_max, landed, in_flight)
                status = "complete"
            finally:
                with sig.shielded(raise_after=False):
                    if not local:                          # a local Ray's shutdown stops its tasks anyway
                        for ref in in_flight:
                            with contextlib.suppress(Exception):
                                ray.cancel(ref, force=True)
                    ray_cm.__exit__(None, None, None)     # ray.shutdown: stops the local Ray we started
                    lock.write(ray=[])
        except (_Stop, KeyboardInterrupt) as e:
            status, stop_signal = "interrupted", getattr(e, "signum", signal.SIGINT)
        except BaseException:
            status = "failed"
            raise
        finally:
            with sig.shielded(raise_after=False):
                if pending is not None:
                    try:                                   # what has landed is written, however the attempt ends
                        pending.flush()
                    except Exception:
                        if status != "failed":
                            raise
                if bar is not None:
                    if status == "interrupted":
                        bar.message(f"interrupted: {len(have) + done} cells have results; iommu-bench sweep "
                                    f"--resume {run_id} finishes")
                    bar.close()
                run.finish(manifest, this, status, stop_signal, done, failed, time.perf_counter() - t0, parallel)
    if status == "interrupted":
        raise SweepStopped(run_dir, stop_signal,
                           f"interrupted by {signal.Signals(stop_signal).name}: {len(have) + done} of "
                           f"{len(sweep.cells)} cells have results; iommu-bench sweep --resume {run_id} finishes")
    return run_dir


def _drain(task, batches: list[list[Cell]], args: tuple, in_flight_max: int, landed, in_flight: dict) -> None:
    """The scheduling loop: keep at most `in_flight_max` batches in flight and hand each finished one
    to `landed(cells, rows)` (rows, or the Ray error that killed its task), in the order they finish.
    `in_flight` is the caller's, so that it can cancel what is left if the loop is interrupted."""
    import ray

    pending = collections.deque(batches)
    while pending or in_flight:
        while pending and len(in_flight) < in_flight_max:
            cells = pending.popleft()
            in_flight[task.remote(cells, *args)] = cells
        # a timeout, so a signal's handler runs within a second even while Ray waits
        ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
        if not ready:
            continue
        cells = in_flight.pop(ready[0])
        try:
            rows = ray.get(ready[0])
        except ray.exceptions.RayError as e:
            rows = e
        landed(cells, rows)


def _failed_row(c: Cell, run_id: str, error: str) -> dict:
    return placeholder({"run_id": run_id, "cell": c.key, "scenario": Path(c.scenario).stem, "policy": c.policy,
                        "api": c.api, "format": c.format, "p2m_format": c.p2m_format, "costs": c.costs,
                        "seed": c.seed}, "failed", error)



"""The sweep: a grid on a local Ray, results in a Parquet dataset with provenance."""

import json
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from iommu_core.store.results import MANIFEST_NAME, SCHEMA_VERSION, ResultsError, read_results
from iommu_core.sweep.grid import SweepError, load_sweep, sweep_from_text
from iommu_core.sweep.progress import Quiet
from iommu_core.sweep import runner
from iommu_core.sweep.runner import SweepStopped, _check_address, run_sweep

SMALL = """
[sweep]
name = "small"
scenarios = ["small-h3"]
policies = ["eager", "shared"]
apis = ["batched"]
p2m_formats = ["p2m-s2-40", "p2m-s2-48"]
seeds = [0, 1]
check = true

[costs.default]

[costs.slow]
iotlb_inv_ns = 100000
"""


def test_a_small_sweep_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "PART_AGE_S", 3600.0)
    (tmp_path / "s.toml").write_text(SMALL)
    sweep = load_sweep(tmp_path / "s.toml")
    assert len(sweep.cells) == 2 * 2 * 2 * 2
    run_dir = run_sweep(sweep, tmp_path / "runs", workers=2, object_store_mb=100)
    table = read_results(tmp_path / "runs")
    rows = table.to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    na = [r for r in rows if r["status"] == "not-applicable"]
    assert len(ok) == 12 * 5 and len(na) == 4                 # shared with a 48-bit P2M: not applicable
    assert all(r["mismatches"] == 0 for r in ok)
    assert len({r["cell"] for r in rows}) == 16
    # 8 tasks, 2 parts: the first landed task's rows at once, the rest when the sweep ends
    assert len({p.name for p in run_dir.rglob("*.parquet")}) == 2
    manifest = json.loads((run_dir / MANIFEST_NAME).read_text())
    assert manifest["cells_done"] == 16 and manifest["cells_failed"] == 0
    schema = pq.read_schema(next(run_dir.rglob("*.parquet")))
    assert schema.metadata[b"schema_version"].decode() == SCHEMA_VERSION
    prov = json.loads(schema.metadata[b"provenance"])
    assert {"package_version", "git_commit", "host", "ray_cpus", "workers", "sweep_file", "sweep_sha256",
            "seed_count", "start"} <= set(prov)
    assert prov["seed_count"] == 2 and "seeds" not in prov              # the seed list is not repeated per file
    assert manifest["sweep_definition"]["toml"] == SMALL and manifest["sweep_definition"]["sha256"] == sweep.sha256
    slow = read_results(run_dir, costs="slow", policy="eager").to_pylist()
    fast = read_results(run_dir, costs="default", policy="eager").to_pylist()
    assert max(r["boot_ns"] for r in slow if r["status"] == "ok") > max(r["boot_ns"] for r in fast
                                                                       if r["status"] == "ok")
    assert not list(run_dir.rglob("*.tmp"))


@pytest.mark.parametrize("text, fragment", [
    ("[sweep]\nscenarios = ['moon']\n", "sweep.scenarios: cannot load"),
    ("[sweep]\nscenarios = ['h3']\npolicies = ['always']\n", "unknown value 'always'"),
    ("[sweep]\nscenarios = ['h3']\nspeed = 3\n", "sweep.speed: unknown key"),
    ("[sweep]\nscenarios = ['h3']\n[costs.x]\nwarp_ns = 1\n", "costs.x"),
    ("[sweep]\nscenarios = ['h3']\nseeds = [-1]\n", "sweep.seeds"),
    ("[sweep]\nscenarios = ['h3']\n[[extra]]\nformats = ['ipmmu-s1-16']\n", "extra\\[0\\].formats: unknown value"),
    ("[sweep]\nscenarios = ['h3']\n[[extra]]\ncheck = true\n", "extra\\[0\\].check: unknown key"),
    ("[sweep]\nscenarios = ['h3']\nextra = 1\n", "sweep.extra: unknown key"),
])
def test_bad_sweep_files_are_refused(tmp_path, text, fragment):
    (tmp_path / "bad.toml").write_text(text)
    with pytest.raises(SweepError, match=fragment) as e:
        load_sweep(tmp_path / "bad.toml")
    assert "bad.toml" in str(e.value)


def test_an_unreachable_cluster_is_refused_within_seconds():
    t = time.perf_counter()
    with pytest.raises(ConnectionError, match="does not answer"):
        _check_address("127.0.0.1:1", timeout=2)
    assert time.perf_counter() - t < 5


def test_reading_refuses_missing_or_foreign_results(tmp_path):
    with pytest.raises(ResultsError, match="no results"):
        read_results(tmp_path / "nothing")
    (tmp_path / "run" / "scenario=x" / "policy=y" / "api=z").mkdir(parents=True)
    pq.write_table(pa.table({"a": [1]}), tmp_path / "run" / "scenario=x" / "policy=y" / "api=z" / "p.parquet")
    with pytest.raises(ResultsError, match="schema version"):
        read_results(tmp_path / "run")


def test_the_default_sweep_answers_on_h3_and_the_server():
    sweep = load_sweep()
    assert {c.scenario for c in sweep.cells} == {"h3", "server", "h3-fleet"}
    per_format = {f: {c.scenario for c in sweep.cells if c.format == f} for f in ("ipmmu-s1-39", "ipmmu-s1-32")}
    assert per_format == {"ipmmu-s1-39": {"h3", "server", "h3-fleet"}, "ipmmu-s1-32": {"h3"}}
    assert {c.api for c in sweep.cells if c.scenario == "h3-fleet"} == {"batched"}
    assert len(sweep.cells) == 3 * 4 * 3 * 3 * 2 + 4 * 3 * 2


def test_extra_grids_replace_some_axes_and_never_repeat_a_cell(tmp_path):
    (tmp_path / "s.toml").write_text("[sweep]\nscenarios = ['h3', 'm3w']\npolicies = ['eager', 'lazy']\n"
                                     "apis = ['blocks']\n[[extra]]\nscenarios = ['m3w']\nseeds = [0, 1]\n"
                                     "[[extra]]\npolicies = ['lazy']\n")
    cells = [(c.scenario, c.policy, c.seed) for c in load_sweep(tmp_path / "s.toml").cells]
    assert cells == [("h3", "eager", 0), ("h3", "lazy", 0), ("m3w", "eager", 0), ("m3w", "lazy", 0),
                     ("m3w", "eager", 1), ("m3w", "lazy", 1)]


def test_resume_runs_only_the_missing_cells_and_never_duplicates(tmp_path):
    (tmp_path / "s.toml").write_text(SMALL)
    sweep = load_sweep(tmp_path / "s.toml")
    # An interrupted run: only the first half of the cells got results.
    half = type(sweep)(sweep.name, sweep.file, sweep.cells[:8], sweep.costs)
    run_dir = run_sweep(half, tmp_path / "runs", workers=2)
    run_sweep(sweep, tmp_path / "runs", workers=2, resume=run_dir.name)
    rows = read_results(run_dir).to_pylist()
    per_cell = {}
    for r in rows:
        per_cell.setdefault(r["cell"], set()).add(r["domain"])
    assert len(per_cell) == 16
    assert len(rows) == 12 * 5 + 4                          # no row twice
    with pytest.raises(ValueError, match="no such run"):
        run_sweep(sweep, tmp_path / "runs", resume="nope")


def test_the_committed_reference_run_reads_on_a_fresh_clone():
    from pathlib import Path
    runs = Path(__file__).parent.parent / "results" / "runs"
    table = read_results(runs, run="reference")
    assert len(set(table.column("cell").to_pylist())) == len(load_sweep().cells)
    assert set(table.column("status").to_pylist()) == {"ok"}
    lazy = read_results(runs, run="reference", policy="lazy", scenario="h3")
    assert set(lazy.column("policy").to_pylist()) == {"lazy"} and lazy.num_rows > 0


def test_a_failing_cell_is_recorded_with_its_error():
    from iommu_core.sweep.grid import Cell
    from iommu_core.sweep.runner import run_cells
    good = Cell("small-h3", "eager", "blocks", "ipmmu-s1-39", "p2m-s2-40", "default", 0, True)
    bad = Cell("no-such-scenario", "eager", "blocks", "ipmmu-s1-39", "p2m-s2-40", "default", 0, True)
    rows = run_cells([bad, good], {"default": {}}, "test-run")
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 1 and "no such scenario file" in failed[0]["error"]
    assert failed[0]["cell"] == bad.key
    assert sum(r["status"] == "ok" for r in rows) == 5          # the cell after it still ran


def test_ctrl_c_stops_cleanly_and_resume_finishes_the_run(tmp_path):
    (tmp_path / "s.toml").write_text(SMALL)
    sweep = load_sweep(tmp_path / "s.toml")

    class InterruptAfterFirstResult(Quiet):
        def update(self, done, failed, eta_s):      # called after each task's rows are on disk
            raise KeyboardInterrupt

    with pytest.raises(SweepStopped) as stopped:
        run_sweep(sweep, tmp_path / "runs", workers=2, progress=InterruptAfterFirstResult)
    assert stopped.value.exit_code == 130
    run_dir = stopped.value.run_dir
    manifest = json.loads((run_dir / MANIFEST_NAME).read_text())
    assert manifest["status"] == "interrupted" and 0 < manifest["cells_done"] < 16
    assert not list(run_dir.rglob("*.tmp"))
    partial = read_results(run_dir).num_rows
    assert partial > 0
    run_sweep(sweep, tmp_path / "runs", workers=2, resume=run_dir.name)
    rows = read_results(run_dir).to_pylist()
    assert len({r["cell"] for r in rows}) == 16 and len(rows) == 12 * 5 + 4


def test_batches_hold_every_cell_once_and_start_with_each_scenario():
    from iommu_core.sweep.runner import _batches
    cells = load_sweep().cells
    batches = _batches(cells)
    assert sorted(c.key for b in batches for c in b) == sorted(c.key for c in cells)
    scenarios = {c.scenario for c in cells}
    assert {b[0].scenario for b in batches[:len(scenarios)]} == scenarios


def test_cells_are_weighted_by_their_hosts_size_not_their_name(tmp_path):
    # A host of many domains (here a copy of the server, renamed) is a task of its own; small ones pair up.
    from iommu_core.scenarios.files import shipped
    from iommu_core.sweep.runner import BIG_HOST_DOMAINS, _batches
    big = tmp_path / "big-box.toml"
    big.write_text(shipped()["server"].read_text().replace('name = "server"', 'name = "big-box"'))
    cells = sweep_from_text(f'''[sweep]
name = "w"
scenarios = ["{big}", "small-h3"]
policies = ["eager"]
apis = ["batched"]
seeds = [0, 1, 2, 3]
''', tmp_path / "w.toml").cells
    sizes = {(Path(b[0].scenario).stem, len(b)) for b in _batches(cells)}
    assert sizes == {("big-box", 1), ("small-h3", 2)} and BIG_HOST_DOMAINS <= 101


def test_the_eta_counts_each_scenario_at_its_own_mean():
    from iommu_core.sweep.grid import Cell
    from iommu_core.sweep.progress import Eta
    cells = [Cell(s, "eager", "blocks", "ipmmu-s1-39", "p2m-s2-40", "default", seed, False)
             for s in ("big", "small") for seed in range(4)]
    eta = Eta(cells, parallel=2)
    done = [{"cell": cells[0].key, "cell_wall_s": 10.0}, {"cell": cells[0].key, "cell_wall_s": 10.0}]
    assert eta.after(done) == pytest.approx((3 * 10 + 4 * 10) / 2)       # small not seen: the mean of all
    assert eta.after([{"cell": cells[4].key, "cell_wall_s": 1.0}]) == pytest.approx((3 * 10 + 3 * 1) / 2)


def test_provenance_is_small_and_the_same_size_whatever_the_seed_count(tmp_path):
    from iommu_core.sweep.runner import provenance
    sizes = []
    for n in (2, 10_000):
        (tmp_path / "s.toml").write_text(f"[sweep]\nname = 'many'\nscenarios = ['small-h3']\npolicies = ['eager']\n"
                                         f"apis = ['batched']\nseeds = {list(range(n))}\n")
        sweep = load_sweep(tmp_path / "s.toml")
        prov = provenance(sweep, "run", "attempt", "2026-01-01T00:00:00+00:00", 1, 2, 2)
        assert prov["seed_count"] == n and len(prov["sweep_sha256"]) == 64
        sizes.append(len(json.dumps(prov)))
    assert sizes[1] - sizes[0] <= 4 and sizes[1] < 1024       # 2 -> 10000: four more digits, no list


def test_a_run_folder_lives_through_create_begin_parts_and_finish_without_ray(tmp_path):
    from iommu_core.store.results import placeholder
    from iommu_core.sweep.runner import Run
    sweep = load_sweep()
    run = Run.create(tmp_path)
    with run:
        assert run.lock is not None and run.cells_done() == {}
        manifest, this = run.begin(sweep, {})
        assert run.manifest["status"] == "running" and run.manifest["attempts"][-1]["attempt"] == this["attempt"]
        c = sweep.cells[0]
        row = placeholder({"run_id": run.id, "cell": c.key, "scenario": "h3", "policy": c.policy, "api": c.api,
                           "format": c.format, "p2m_format": c.p2m_format, "costs": c.costs, "seed": c.seed},
                          "failed", "x")
        run.write_part([row], f"part-{this['attempt']}-00000", {})
        run.finish(manifest, this, "interrupted", None, 1, 1, 0.5, 2)
    assert run.cells_done() == {c.key: "failed"}
    m = run.manifest
    assert (m["status"], m["cells_done"], m["cells_failed"], m["attempts"][-1]["wall_s"]) == ("interrupted", 1, 1, 0.5)
    assert not list(run.dir.rglob("*.tmp"))
    with pytest.raises(ValueError, match="no such run"):
        Run.resume(tmp_path, "nope")
    assert Run.resume(tmp_path, run.id).dir == run.dir

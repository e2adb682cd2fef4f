"""Traces: recording a scenario's P2M operations and replaying them."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from iommu_core.scenarios.files import load_scenario
from iommu_core.store.traces import TraceError, read_trace, write_trace
from iommu_core.xen.host import WALL_FIELDS, Host
from iommu_core.xen.trace import Recorder, steps_from_rows


def record(tmp_path, scenario="small-h3", policy="eager", api="batched", seed=0):
    s = load_scenario(scenario, seed=seed)
    config = s.host_config(policy=policy, api=api, seed=seed)
    host = Host(s.board, config)
    host.recorder = Recorder()
    records = host.run(list(s.specs))
    path = write_trace(tmp_path / "t.parquet", host.recorder.rows, s.board, list(s.specs),
                       {"dom0_mem": config.dom0_mem, "seed": seed, "arrival_spread_ns": config.arrival_spread_ns})
    return path, records, config


def replay(path, config):
    cols, board, specs, _ = read_trace(path)
    return Host(board, config).replay(specs, steps_from_rows(cols, len(specs)))


def strip(records):
    return [{k: v for k, v in r.items() if k not in WALL_FIELDS} for r in records]


@pytest.mark.parametrize("policy", ["eager", "lazy", "declared", "shared"])
@pytest.mark.parametrize("api", ["per-page", "blocks"])
def test_replaying_a_recorded_scenario_gives_its_metrics(tmp_path, policy, api):
    path, records, config = record(tmp_path, policy=policy, api=api)
    assert strip(replay(path, config)) == strip(records)


def test_replay_of_a_fleet_scenario_with_fragmentation(tmp_path):
    path, records, config = record(tmp_path, scenario="h3", policy="lazy", api="batched", seed=2)
    assert strip(replay(path, config)) == strip(records)


def test_a_trace_replays_under_another_policy(tmp_path):
    path, _, config = record(tmp_path, policy="eager")
    from dataclasses import replace
    out = replay(path, replace(config, policy="declared", api="blocks"))
    assert all(r["mismatches"] == 0 for r in out)
    assert sum(r["assign_refused_undeclared"] for r in out) == 2


def corrupt(path, column, row, value, dest):
    table = pq.read_table(path)
    col = table.column(column).to_pylist()
    col[row] = value
    table = table.set_column(table.column_names.index(column), table.schema.field(column),
                             pa.array(col, type=table.schema.field(column).type))
    pq.write_table(table, dest)
    return dest


@pytest.mark.parametrize("column, value, fragment", [
    ("op", "fly", "unknown op"),
    ("type", "ram_rx", "unknown P2M type"),
    ("count", 0, "count > 0"),
    ("domid", 99, "domid outside"),
    ("device", "warp-drive", "device not on board"),
])
def test_a_bad_trace_is_refused_with_the_row_and_the_reason(tmp_path, column, value, fragment):
    path, _, _ = record(tmp_path)
    table = pq.read_table(path)
    ops = table.column("op").to_pylist()
    want = {"type": "update", "count": "update", "device": "assign"}.get(column, "create")
    row = ops.index(want)
    bad = corrupt(path, column, row, value, tmp_path / "bad.parquet")
    with pytest.raises(TraceError, match=rf"bad.parquet: row {row}: .*{fragment}"):
        read_trace(bad)


def test_steps_out_of_order_and_unknown_versions_are_refused(tmp_path):
    path, _, _ = record(tmp_path)
    table = pq.read_table(path)
    step_rows = [i for i, op in enumerate(table.column("op").to_pylist()) if op == "step"]
    bad = corrupt(path, "step", step_rows[1], 7, tmp_path / "order.parquet")
    with pytest.raises(TraceError, match="out of order"):
        read_trace(bad)
    meta = dict(table.schema.metadata)
    meta[b"schema_version"] = b"99"
    pq.write_table(table.replace_schema_metadata(meta), tmp_path / "v99.parquet")
    with pytest.raises(TraceError, match="unknown trace schema version '99'"):
        read_trace(tmp_path / "v99.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(TraceError, match="not a readable Parquet trace"):
        read_trace(tmp_path / "junk.parquet")

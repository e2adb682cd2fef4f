"""A run read as a stream: aggregates over a window of files equal those over all rows at once, and a
sweep writes its rows as a few parts, not one per task."""

import math
import random

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import iommu_core.store.results as results
from iommu_core.report import figures
from iommu_core.report.figures import assignments_by_size, hosts
from iommu_core.store.results import as_table, placeholder, read_results, scan_results, write_part
from iommu_core.sweep.runner import PendingRows
from runs import REFERENCE

ROWS = read_results(REFERENCE).to_pylist()
_PICKED = set(sorted({r["cell"] for r in ROWS})[::6])          # every scenario, a few cells of each
SOME = [r for r in ROWS if r["cell"] in _PICKED] + [placeholder({**ROWS[0], "cell": "broken"}, "failed", "E: x")]


def same(a: list[dict], b: list[dict]) -> bool:
    """Equal rows; floats to 1e-12, or 1e-6 absolute (a sum over chunks may round in another order than one
    over all, and a pooled std of 0 is the difference of two such sums)."""
    def close(x, y):
        return x == y or (isinstance(x, float) and isinstance(y, float)
                          and math.isclose(x, y, rel_tol=1e-12, abs_tol=1e-6))
    return len(a) == len(b) and all(x.keys() == y.keys() and all(close(x[k], y[k]) for k in x) for x, y in zip(a, b))


def by_cell(table: pa.Table) -> list[dict]:
    return sorted(table.to_pylist(), key=lambda h: h["cell"])


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_run_scanned_a_window_at_a_time_aggregates_as_all_its_rows(tmp_path_factory, monkeypatch, data):
    """The reference run's rows, shuffled and cut into parts at random (a cell's rows may land in several
    files, windows and batches), read FILES_PER_SCAN files and ROWS_PER_BATCH rows at a time, the partial
    sums combined every FOLD_EVERY chunks."""
    run_dir = tmp_path_factory.mktemp("stream")
    rows = list(SOME)
    random.Random(data.draw(st.integers(0, 2**32))).shuffle(rows)
    cuts = sorted(data.draw(st.sets(st.integers(1, len(rows) - 1), max_size=12)))
    for k, (a, b) in enumerate(zip([0, *cuts], [*cuts, len(rows)])):
        write_part(run_dir, rows[a:b], f"part-{k:03d}", {})
    monkeypatch.setattr(results, "FILES_PER_SCAN", data.draw(st.integers(1, 5)))
    monkeypatch.setattr(results, "ROWS_PER_BATCH", data.draw(st.sampled_from([50, 1000, 8192])))
    monkeypatch.setattr(figures, "FOLD_EVERY", data.draw(st.integers(1, 4)))    # partials combined as they come
    whole = read_results(run_dir)
    assert same(by_cell(hosts(run_dir)), by_cell(hosts(whole)))
    assert same(assignments_by_size(run_dir, "default"), assignments_by_size(whole, "default"))
    assert hosts(run_dir).num_rows == len({r["cell"] for r in SOME if r["status"] == "ok"})


def test_scan_results_reads_a_window_of_files_a_batch_at_a_time_with_columns_and_filters(tmp_path, monkeypatch):
    for k in range(5):
        write_part(tmp_path, ROWS[k::5], f"part-{k}", {})
    monkeypatch.setattr(results, "FILES_PER_SCAN", 4)
    monkeypatch.setattr(results, "ROWS_PER_BATCH", 100)
    tables = list(scan_results(tmp_path, columns=["cell", "seed"], seed=1))
    assert all(t.column_names == ["cell", "seed"] and t.num_rows <= 100 for t in tables)
    assert sorted(c for t in tables for c in t["cell"].to_pylist()) == sorted(r["cell"] for r in ROWS
                                                                             if r["seed"] == 1)


@given(batches=st.lists(st.integers(1, 40), min_size=1, max_size=30), max_rows=st.integers(1, 100))
def test_pending_rows_writes_every_landed_row_once_in_order_and_the_first_at_once(batches, max_rows):
    written = []
    pending = PendingRows(lambda table, k: written.append((k, table)), age_s=3600.0, max_rows=max_rows)
    landed = []
    for i, n in enumerate(batches):
        rows = [{**ROWS[0], "cell": f"c{i}-{j}"} for j in range(n)]
        pending.add(rows)
        landed += rows
        if i == 0:
            assert len(written) == 1                  # the first landed rows are on disk at once
    assert all(t.num_rows >= max_rows for _, t in written[1:])      # later parts wait for max_rows (or age)
    pending.flush()
    pending.flush()                                   # a second flush writes nothing
    assert [k for k, _ in written] == list(range(len(written)))
    assert pa.concat_tables([t for _, t in written]).to_pylist() == as_table(landed).to_pylist()


def test_pending_rows_writes_rows_older_than_its_age():
    written = []
    pending = PendingRows(lambda table, k: written.append(table.num_rows), age_s=0.0, max_rows=10**9)
    for _ in range(3):
        pending.add(ROWS[:2])
    assert written == [2, 2, 2]

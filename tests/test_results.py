"""A run folder as analysts read it: pyarrow.dataset, polars and duckdb as they are, and read_results."""

import json

import numpy as np
import pyarrow.dataset as ds
import pytest

from iommu_core.store.results import MANIFEST_NAME, ResultsError, latest_run, read_manifest, read_results
from runs import REFERENCE, make_run

TINY = """
[sweep]
name = "readers"
scenarios = ["small-h3"]
policies = ["eager", "shared"]
apis = ["batched"]
seeds = [0, 1]
"""


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("readers"), TINY, "fresh")


def summary(rows):
    """Rows per (scenario, policy, api, seed) and their IOMMU bytes: what every reader must agree on."""
    out = {}
    for r in rows:
        key = (r["scenario"], r["policy"], r["api"], int(r["seed"]))
        n, b = out.get(key, (0, 0))
        out[key] = (n + 1, b + (r["iommu_table_bytes"] or 0))
    return out


@pytest.mark.parametrize("which", ["fresh", "reference"])
def test_pyarrow_polars_and_duckdb_read_a_run_folder_as_it_is(which, fresh):
    import duckdb
    import polars as pl

    run_dir = fresh if which == "fresh" else REFERENCE
    assert (run_dir / MANIFEST_NAME).exists() and MANIFEST_NAME.startswith("_")
    ours = summary(read_results(run_dir).to_pylist())
    assert ours and sum(n for n, _ in ours.values()) > len(ours)

    arrow = ds.dataset(run_dir, format="parquet", partitioning="hive").to_table()
    assert summary(arrow.to_pylist()) == ours

    lazy = pl.scan_parquet(f"{run_dir}/**/*.parquet", hive_partitioning=True)
    assert summary(lazy.select("scenario", "policy", "api", "seed", "iommu_table_bytes").collect().to_dicts()) == ours

    rel = duckdb.sql(f"SELECT scenario, policy, api, seed, iommu_table_bytes FROM "
                     f"read_parquet('{run_dir}/**/*.parquet', hive_partitioning=true)")
    assert summary(dict(zip(rel.columns, r)) for r in rel.fetchall()) == ours


@pytest.mark.parametrize("filters, fragment", [
    ({"seed": "0"}, "filter seed='0': column 'seed' holds int64 values, so the value must be an integer (got str '0')"),
    ({"seed": True}, "must be an integer (got bool True)"),
    ({"policy": 3}, "filter policy=3: column 'policy' holds string values, so the value must be a string"),
    ({"boot_ns": "fast"}, "column 'boot_ns' holds double values, so the value must be a number"),
    ({"colour": "red"}, "unknown column 'colour' to filter on"),
])
def test_read_results_refuses_a_bad_filter_naming_column_value_and_type(fresh, filters, fragment):
    with pytest.raises(ResultsError) as err:
        read_results(fresh, **filters)
    assert fragment in str(err.value)


def test_read_results_filters_with_python_and_numpy_values(fresh):
    assert {r["seed"] for r in read_results(fresh, seed=1).to_pylist()} == {1}
    assert read_results(fresh, seed=np.int64(0)).num_rows == read_results(fresh, seed=0).num_rows > 0
    assert {r["policy"] for r in read_results(fresh, policy="shared", passthrough_flag=True).to_pylist()} <= {"shared"}


def test_an_older_run_with_run_json_still_has_its_manifest(tmp_path, fresh):
    old = tmp_path / "runs" / "old"
    old.mkdir(parents=True)
    for f in fresh.rglob("*.parquet"):
        dest = old / f.relative_to(fresh)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(f.read_bytes())
    (old / "run.json").write_text(json.dumps({"start": "2999-01-01", "sweep": "old"}))
    assert read_manifest(old)["sweep"] == "old"
    new = tmp_path / "runs" / "new"
    new.mkdir()
    (new / "scenario=x").mkdir()
    (new / MANIFEST_NAME).write_text(json.dumps({"start": "2000-01-01"}))
    assert latest_run(tmp_path / "runs") == old
    (old / "run.json").write_text("{not json")
    with pytest.raises(ResultsError, match="run.json: not a readable run manifest"):
        read_manifest(old)

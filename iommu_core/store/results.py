"""Sweep results on disk: one Arrow schema, Parquet files in a hive-partitioned dataset.

One row per domain per cell. The schema is defined once here, with units in
field metadata and a version in schema metadata; readers refuse a version
they do not know. Files are written under a temporary name and renamed into
place, so a reader never sees half a file.
"""

from __future__ import annotations

import functools
import json
import numbers
import operator
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from ..xen.record import columns as record_columns
from .common import atomic_write, check_version, field

# 2: map_calls, unmap_calls (to pool latencies over domains); 3: Xen's own P2M counters and the
# table's true leaves per level, and the leaves relinquish_p2m_mapping removed; 4: p2m_cache_lines_cleaned,
# create_refused_context, and invalidations / tlb_flushes / cache_lines_cleaned under Xen's own rules (rules.py).
SCHEMA_VERSION = "4"
READABLE_VERSIONS = ("2", "3", "4")     # older rows read with the newer columns null
PARTITIONS = ("scenario", "policy", "api")


_f = field

I64, F64, STR, BOOL = pa.int64(), pa.float64(), pa.string(), pa.bool_()
_TYPES = {"str": STR, "int": I64, "float": F64, "bool": BOOL}
_CELL_KEYS = ("policy", "api", "format", "p2m_format", "seed")       # a record's fields the head already has
FIELDS = [
    _f("run_id", STR), _f("cell", STR, doc="the cell's key: scenario/policy/api/format/p2m_format/costs/seed"),
    _f("scenario", STR), _f("policy", STR), _f("api", STR), _f("format", STR), _f("p2m_format", STR),
    _f("costs", STR, doc="the cost-model variant's name"), _f("seed", I64),
    _f("status", STR, doc="ok | failed | not-applicable"), _f("error", STR),
    # one domain's record (xen/record.py: every field's unit and meaning is written there)
    *[_f(name, _TYPES[kind], unit, doc) for name, kind, unit, doc in record_columns() if name not in _CELL_KEYS],
    _f("cell_wall_s", F64, "s", "wall clock of the whole cell"), _f("worker", STR, doc="node and process of the cell"),
]
SCHEMA = pa.schema(FIELDS, metadata={"schema_version": SCHEMA_VERSION})
NAMES = [f.name for f in FIELDS]


class ResultsError(ValueError):
    pass


def row(record: dict, cell: dict) -> dict:
    """A schema row from a host record and its cell's keys."""
    r = {k: record.get(k) for k in NAMES}
    for lvl in range(4):
        r[f"iommu_tables_l{lvl}"] = int(record.get("iommu_tables_by_level", {}).get(str(lvl), 0))
        r[f"p2m_tables_l{lvl}"] = int(record.get("p2m_tables_by_level", {}).get(str(lvl), 0))
    r.update({k: cell[k] for k in cell if k in NAMES})
    return r


def placeholder(cell: dict, status: str, error: str) -> dict:
    """The one row a cell gets when it has no domain records (failed, not applicable)."""
    r = dict.fromkeys(NAMES)
    r.update({k: cell[k] for k in cell if k in NAMES})
    r.update(status=status, error=error)
    return r


def as_table(rows: list[dict]) -> pa.Table:
    """Schema rows as an Arrow table (a tenth of their size as dicts: what a sweep keeps until it writes)."""
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def write_part(run_dir: Path, rows: list[dict] | pa.Table, name: str, provenance: dict) -> None:
    """Write rows (dicts or a table of the schema) into the run's dataset (hive partitions), atomically
    per file."""
    table = rows if isinstance(rows, pa.Table) else as_table(rows)
    table = table.replace_schema_metadata({**SCHEMA.metadata, b"provenance": json.dumps(provenance).encode()})
    keys = table.select(list(PARTITIONS))
    for key in keys.group_by(list(PARTITIONS), use_threads=False).aggregate([]).to_pylist():
        mask = functools.reduce(pc.and_, [pc.equal(table[k], v) for k, v in key.items()])
        part = table.filter(mask)
        sub = run_dir.joinpath(*[f"{p}={v}" for p, v in key.items()])
        sub.mkdir(parents=True, exist_ok=True)
        data = part.drop_columns(list(PARTITIONS))
        atomic_write(sub / f"{name}.parquet", lambda tmp, data=data: pq.write_table(data, tmp))


# The run's manifest (provenance, status, cell counts), written last; one name for every reader.
# A leading "_" makes Arrow tools (pyarrow.dataset, polars, duckdb, Spark) skip it as they skip _SUCCESS.
MANIFEST_NAME = "_run.json"
OLD_MANIFEST_NAMES = ("run.json",)           # runs written before the rename


def read_manifest(run_dir) -> dict:
    """A run's manifest ({} when it has none, e.g. a run that is still going or was killed); a
    manifest that is not a JSON object is refused. Runs from before the rename have a run.json."""
    path = next((Path(run_dir) / n for n in (MANIFEST_NAME, *OLD_MANIFEST_NAMES) if (Path(run_dir) / n).exists()),
                Path(run_dir) / MANIFEST_NAME)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ResultsError(f"{path}: not a readable run manifest (expected JSON): {e}") from None
    if not isinstance(data, dict):
        raise ResultsError(f"{path}: not a run manifest (expected a JSON object, got {type(data).__name__})")
    return data


def write_manifest(run_dir, manifest: dict) -> None:
    """Write the manifest atomically (a temporary file renamed into place)."""
    text = json.dumps(manifest, indent=2) + "\n"
    atomic_write(Path(run_dir) / MANIFEST_NAME, lambda tmp: tmp.write_text(text))


def latest_run(results) -> Path:
    """The run that started last (by its manifest), e.g. the committed reference run on a fresh clone."""
    runs = [p for p in Path(results).iterdir() if p.is_dir() and any(p.glob("*=*"))]
    if not runs:
        raise ResultsError(f"{results}: no runs")

    def started(p: Path) -> str:
        try:
            return str(read_manifest(p).get("start", ""))
        except ResultsError:
            return ""
    return max(runs, key=lambda p: (started(p), p.name))


def run_directory(path, run: str | None = None) -> Path:
    """A run's directory: `path` itself if it is one, else `run` under it, else the latest run there."""
    root = Path(path)
    if not root.exists():
        raise ResultsError(f"no results at {root}")
    if not root.is_dir():
        raise ResultsError(f"{root}: a file, not a results folder (expected a folder of runs or a run)")
    if run is not None:
        if not run or run in (".", "..") or "/" in run or "\\" in run:
            raise ResultsError(f"run {run!r}: not a run id (expected the name of a run folder under {root})")
        if not (root / run).is_dir():
            known = sorted(p.name for p in root.iterdir() if p.is_dir())
            raise ResultsError(f"no run {run!r} under {root} (runs there: {', '.join(known) or 'none'})")
        return root / run
    return root if any(root.glob("*=*")) else latest_run(root)


def _result_files(root: Path) -> list[Path]:
    """A run's Parquet files, each refused unless readable and of a schema version this reader knows."""
    files = sorted(p for p in root.rglob("*.parquet") if not p.name.startswith("."))
    if not files:
        raise ResultsError(f"{root}: no result files")
    for f in files:
        try:
            schema = pq.read_schema(f)
        except (OSError, pa.ArrowException) as e:
            raise ResultsError(f"{f}: not a readable Parquet file: {e}") from None
        check_version(str(f), "results", (schema.metadata or {}).get(b"schema_version", b"").decode(),
                      READABLE_VERSIONS, ResultsError)
    return files


def _dataset(root: Path, files: list[Path]) -> ds.Dataset:
    part = ds.partitioning(pa.schema([SCHEMA.field(p) for p in PARTITIONS]), flavor="hive")
    # The whole schema: columns an older version lacks read as nulls.
    return ds.dataset([str(f) for f in files], format="parquet", partitioning=part, schema=SCHEMA,
                      partition_base_dir=str(root))


def _where(filters: dict) -> pc.Expression | None:
    for column, value in filters.items():
        check_filter(column, value)
    return functools.reduce(operator.and_, [pc.field(c) == v for c, v in filters.items()]) if filters else None


def read_results(path, run: str | None = None, **filters) -> pa.Table:
    """One run's rows as a table (the run's directory, or `run` under a results directory,
    or the latest run there), filtered by column values (policy=..., scenario=...).
    All rows at once: to aggregate a large run, use scan_results."""
    root = run_directory(path, run)
    return _dataset(root, _result_files(root)).to_table(filter=_where(filters))


# Files one scan opens at a time: a dataset keeps every opened file's footer (about 0.3 MB each for this
# schema), so a run of thousands of parts is read through a window of them.
FILES_PER_SCAN = 32
ROWS_PER_BATCH = 8192              # and yields them a batch at a time, reading ahead one batch and one file


def scan_results(path, run: str | None = None, columns: list[str] | None = None,
                 **filters) -> Iterator[pa.Table]:
    """A run's rows (`columns` only, filtered as read_results filters) as a stream of tables of at most
    ROWS_PER_BATCH rows, from FILES_PER_SCAN files at a time: memory is bounded by the window, not by the run."""
    root = run_directory(path, run)
    files, where = _result_files(root), _where(filters)
    for i in range(0, len(files), FILES_PER_SCAN):
        batches = _dataset(root, files[i:i + FILES_PER_SCAN]).to_batches(
            columns=columns, filter=where, batch_size=ROWS_PER_BATCH, batch_readahead=1, fragment_readahead=1)
        for batch in batches:
            yield pa.Table.from_batches([batch])


# Python types a filter value may have, per Arrow type of the column (numpy's numbers included; a bool is
# an int in Python, so it is refused where an int is wanted).
_FILTER_TYPES = {I64: ("an integer", numbers.Integral), F64: ("a number", numbers.Real), STR: ("a string", str),
                 BOOL: ("True or False", bool)}


def check_filter(column: str, value) -> None:
    """Refuse a filter on an unknown column, or with a value the column's type cannot equal."""
    if column not in NAMES:
        raise ResultsError(f"unknown column {column!r} to filter on (columns: {', '.join(NAMES)})")
    typ = SCHEMA.field(column).type
    wanted, allowed = _FILTER_TYPES[typ]
    if not isinstance(value, allowed) or (isinstance(value, bool) and typ != BOOL):
        raise ResultsError(f"filter {column}={value!r}: column {column!r} holds {typ} values, so the value "
                           f"must be {wanted} (got {type(value).__name__} {value!r})")

"""Traces on disk: the Arrow schema of a host's P2M operation stream, in Parquet.

One row per action (see iommu_core/xen/trace.py). The schema metadata carries
what replay needs besides the rows: the schema version, the board, the domain
specs and the host settings of the run that recorded it. A user can fill the
same schema from a real hypervisor (for example from instrumented
p2m_set_entry calls: one "update" row per call and extent) and replay it.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..xen.board import Board
from ..xen.domain import DomainSpec
from ..xen.trace import COLUMNS, OPS, VALID_TYPES
from .common import atomic_write, check_version, field

SCHEMA_VERSION = "3"
READABLE_VERSIONS = ("1", "2", "3")     # version 1 lacks seq, caller and hypercall; 3 adds grant_map / grant_unmap


def _field(name, typ, doc):
    return field(name, typ, doc=doc, nullable=False)


TRACE_SCHEMA = pa.schema([
    _field("time_ns", pa.float64(), "modelled time the step began, ns (informational)"),
    _field("domid", pa.int32(), "the domain whose life-cycle step this is (0: dom0)"),
    _field("step", pa.int32(), "index of the step in that domain's life cycle"),
    _field("label", pa.string(), "what the step is: create, populate, xen-pages, assign, backend, ..."),
    _field("call", pa.int32(), "index of the P2M update call within the step"),
    _field("op", pa.string(), "step | create | update | assign | deassign | teardown"),
    _field("target", pa.int32(), "update: the domain whose P2M changes (dom0 for backends); else -1"),
    _field("gfn", pa.int64(), "update: first guest frame (4 KiB pages)"),
    _field("mfn", pa.int64(), "update: first machine frame (4 KiB pages)"),
    _field("count", pa.int64(), "update: number of 4 KiB pages"),
    _field("type", pa.string(), "update: the Xen P2M type (invalid removes)"),
    _field("device", pa.string(), "assign / deassign: the board device"),
    _field("seq", pa.int64(), "update imported from a real Xen: the call's place in its log; else -1"),
    _field("caller", pa.string(), "update imported from a real Xen: the function that called p2m_set_entry"),
    _field("hypercall", pa.string(), "update imported from a real Xen: the hypercall it served, if known"),
], metadata={"schema_version": SCHEMA_VERSION})
assert tuple(TRACE_SCHEMA.names) == COLUMNS


class TraceError(ValueError):
    """A trace that cannot be replayed: names the file, the row and the reason."""


def write_trace(path, rows: list[tuple], board: Board, specs: list[DomainSpec], host: dict) -> Path:
    """Write rows (tuples in COLUMNS order) atomically: a temporary file renamed into place."""
    path = Path(path)
    cols = list(zip(*rows)) if rows else [[] for _ in COLUMNS]
    table = pa.table({name: pa.array(col, type=TRACE_SCHEMA.field(name).type) for name, col in zip(COLUMNS, cols)},
                     schema=TRACE_SCHEMA)
    meta = {b"schema_version": SCHEMA_VERSION.encode(),
            b"board": json.dumps(board.to_dict()).encode(),
            b"domains": json.dumps([asdict(s) for s in specs]).encode(),
            b"host": json.dumps(host).encode()}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp), tmp_name=path.name + ".tmp")


def read_trace(path) -> tuple[dict, Board, list[DomainSpec], dict]:
    """Read and validate a trace: (columns as numpy arrays / lists, board, domain specs, host settings)."""
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"{path}: no such trace file (expected a Parquet trace)")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise TraceError(f"{path}: not a readable Parquet trace: {e}") from None
    meta = table.schema.metadata or {}
    version = check_version(str(path), "trace", meta.get(b"schema_version", b"").decode(), READABLE_VERSIONS,
                            TraceError)
    if version == "1":
        n = table.num_rows
        table = table.append_column("seq", pa.array([-1] * n, pa.int64()))
        table = table.append_column("caller", pa.array([""] * n, pa.string()))
        table = table.append_column("hypercall", pa.array([""] * n, pa.string()))
    for field in TRACE_SCHEMA:
        if field.name not in table.column_names:
            raise TraceError(f"{path}: missing column {field.name!r}")
        if not table.schema.field(field.name).type.equals(field.type):
            raise TraceError(f"{path}: column {field.name!r} is {table.schema.field(field.name).type}, "
                             f"not {field.type}")
    try:
        board = Board.from_dict(json.loads(meta[b"board"]))
        specs = [DomainSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in s.items()})
                 for s in json.loads(meta[b"domains"])]
        host = json.loads(meta[b"host"])
    except (KeyError, ValueError, TypeError) as e:
        raise TraceError(f"{path}: bad or missing metadata (board, domains, host): {e}") from None
    cols = {name: table.column(name).to_numpy(zero_copy_only=False) for name in COLUMNS}
    for name in ("label", "op", "type", "device", "caller", "hypercall"):
        cols[name] = cols[name].tolist()
    _validate(path, cols, board, len(specs))
    return cols, board, specs, host


def _validate(path: Path, cols: dict, board: Board, ndomains: int) -> None:
    def fail(row: int, why: str, value):
        raise TraceError(f"{path}: row {row}: {why} (got {value!r})")

    devices = {m.name for m in board.masters}
    op, dom, step = cols["op"], cols["domid"], cols["step"]
    if ndomains == 0:
        raise TraceError(f"{path}: the metadata lists no domain (expected dom0 at least)")
    next_step = np.zeros(ndomains, np.int64)
    opened = np.zeros(ndomains, bool)
    for r in range(len(op)):
        if op[r] not in OPS:
            fail(r, f"unknown op; ops are {list(OPS)}", op[r])
        d = int(dom[r])
        if not 0 <= d < ndomains:
            fail(r, f"domid outside the trace's {ndomains} domains", d)
        s = int(step[r])
        if op[r] == "step":
            if s != next_step[d]:
                fail(r, f"steps of domain {d} out of order: expected step {next_step[d]}", s)
            next_step[d] += 1
            opened[d] = True
            if not cols["label"][r]:
                fail(r, "a step row needs a label", cols["label"][r])
            continue
        if not opened[d] or s != next_step[d] - 1:
            fail(r, f"an action outside the open step of domain {d}", s)
        if op[r] == "update":
            t = int(cols["target"][r])
            if not 0 <= t < ndomains:
                fail(r, "update target outside the trace's domains", t)
            if cols["type"][r] not in VALID_TYPES:
                fail(r, "unknown P2M type", cols["type"][r])
            if cols["count"][r] <= 0 or cols["gfn"][r] < 0 or cols["mfn"][r] < 0:
                fail(r, "gfn and mfn must be >= 0 and count > 0",
                     (int(cols["gfn"][r]), int(cols["mfn"][r]), int(cols["count"][r])))
            if cols["gfn"][r] + cols["count"][r] > 1 << 36 or cols["mfn"][r] + cols["count"][r] > 1 << 36:
                fail(r, "frames beyond a 48-bit address space", (int(cols["gfn"][r]), int(cols["count"][r])))
        elif op[r] in ("assign", "deassign") and cols["device"][r] not in devices:
            fail(r, f"device not on board {board.name}", cols["device"][r])
    silent = np.flatnonzero(next_step == 0)
    if len(silent):                            # a domain without a step never boots: nothing to replay
        raise TraceError(f"{path}: domain {int(silent[0])} has no step row (got {len(op)} rows for "
                         f"{ndomains} domains; expected at least one step per domain)")

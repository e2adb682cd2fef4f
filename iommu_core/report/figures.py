"""The report's figures, computed from a run's rows (one row per domain per cell).

Two steps: each cell (one simulated host) is summed over its domains, then the
cells that differ only by seed are reduced to a mean and a standard deviation,
so every figure carries the spread the seeds give. Everything here is plain
arithmetic on the dataset; nothing is typed in.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from ..store.results import F64, scan_results
from ..units import MIB, PAGE
from ..xen.rules import APIS, POLICIES

HOST_KEYS = ("scenario", "format", "p2m_format", "costs", "policy", "api")
POLICY_ORDER = POLICIES             # the rules table's order: the thread's
API_ORDER = APIS

# Per-cell sums over domains, by column.
_SUMS = ("ram_bytes", "iommu_table_bytes", "iommu_min_table_bytes", "toolstack_reserved_bytes", "calls",
         "descriptors_written", "invalidations", "cache_lines_cleaned", "populate_pages", "unreachable_pages",
         "assign_refused_context", "assign_refused_undeclared", "create_refused_context", "map_calls",
         "unmap_calls")


class ReportError(ValueError):
    pass


def order(key: tuple) -> tuple:
    """Sort key for host keys: policies and APIs in the thread's order, the rest by name."""
    k = dict(zip(HOST_KEYS, key))
    return (k["scenario"], k["format"], k["p2m_format"], k["costs"], POLICY_ORDER.index(k["policy"])
            if k["policy"] in POLICY_ORDER else 9, API_ORDER.index(k["api"]) if k["api"] in API_ORDER else 9)


# Per-cell values, the same on each of its rows; and the keys of a cell.
_PER_CELL = ("sim_pages_per_s_wall", "engine_wall_s", "cell_wall_s")
_CELL = ["cell", *HOST_KEYS, "seed", "worker"]
_LATENCY = [f"{op}_{x}" for op in ("map", "unmap") for x in ("lat_mean_us", "lat_std_us")]
_READ = [*_CELL, "status", *_SUMS, *_PER_CELL, *_LATENCY, "boot_ns", "assign_ns"]


def _chunks(source, columns: list[str], **filters):
    """A run's rows as a stream of tables: `source` is a table of rows or a run's folder (scanned a window
    of files at a time, so a run of any size is never all in memory)."""
    if isinstance(source, pa.Table):
        table = source.select(columns)
        for column, value in filters.items():
            table = table.filter(pc.equal(table[column], value))
        yield table
    else:
        yield from scan_results(source, columns=columns, **filters)


def _partial(ok: pa.Table) -> pa.Table:
    """One chunk's rows summed per cell; partial sums of chunks sum again to the cell's (_combine)."""
    extra = {}
    for op in ("map", "unmap"):
        n, mean, std = ok[f"{op}_calls"], ok[f"{op}_lat_mean_us"], ok[f"{op}_lat_std_us"]
        extra[f"{op}_s1"] = pc.multiply(n, mean)
        extra[f"{op}_s2"] = pc.multiply(n, pc.add(pc.multiply(std, std), pc.multiply(mean, mean)))
    # A domain whose creation was refused never boots: boot means are over the domains that did.
    refused = pc.fill_null(ok["create_refused_context"], 0)
    ok = ok.set_column(ok.schema.get_field_index("create_refused_context"), "create_refused_context", refused)
    extra["booted"] = pc.subtract(1, refused)
    extra["booted_ns"] = pc.if_else(pc.equal(refused, 0), ok["boot_ns"], 0)
    for name, column in extra.items():
        ok = ok.append_column(name, column)
    return ok.group_by(_CELL, use_threads=False).aggregate(
        [(c, "sum") for c in (*_SUMS, *extra)] + [(c, "max") for c in (*_PER_CELL, "boot_ns", "assign_ns")]
        + [("cell", "count")])


def _combine(partials: list[pa.Table], keys: list[str]) -> pa.Table:
    """Partial aggregates per key combined, names unchanged: *_max by max, *_min by min, the rest summed."""
    table = pa.concat_tables(partials)
    figures = [c for c in table.column_names if c not in keys]
    grouped = table.group_by(keys, use_threads=False).aggregate(
        [(c, "max" if c.endswith("_max") else "min" if c.endswith("_min") else "sum") for c in figures])
    return grouped.rename_columns([c if c in keys else c.rsplit("_", 1)[0] for c in grouped.column_names])


FOLD_EVERY = 64          # partial aggregates kept before they are combined: a run of thousands of small
                         # files yields thousands of tiny chunks, each a table with its own overhead


def _folded(partials: list[pa.Table], keys: list[str]) -> list[pa.Table]:
    return [_combine(partials, keys)] if len(partials) >= FOLD_EVERY else partials


def _ratio(a, b, scale: float = 1.0):
    """a / b / scale, and 0 where b is 0."""
    b = pc.cast(b, F64)                         # a float division: x / 0 is inf, then replaced
    return pc.if_else(pc.equal(b, 0), 0.0, pc.divide(pc.divide(a, b), scale))


def hosts(source) -> pa.Table:
    """One row per cell (one simulated host): its keys, seed and its figures summed (or taken at the max)
    over its domains. `source`: a table of a run's rows, or a run's folder, aggregated as it is scanned.

    Map and unmap latencies are pooled over domains from each domain's call count, mean and
    (population) standard deviation: the sums of n*mean and n*(std^2 + mean^2) give the host's."""
    partials, rows, statuses = [], 0, set()
    for chunk in _chunks(source, _READ):
        rows += chunk.num_rows
        statuses.update(pc.unique(chunk["status"]).to_pylist())
        ok = chunk.filter(pc.equal(chunk["status"], "ok"))
        if ok.num_rows:
            partials = _folded([*partials, _partial(ok)], _CELL)
    if rows == 0:
        raise ReportError("the run has no rows")
    if not partials:
        raise ReportError(f"the run has no successful cells ({rows} rows, statuses: {sorted(statuses, key=str)})")
    g = _combine(partials, _CELL)
    h = {c: g[c] for c in _CELL}
    h.update({c: g[f"{c}_sum"] for c in _SUMS}, **{c: g[f"{c}_max"] for c in _PER_CELL})
    h["domains"] = g["cell_count"]
    h["iommu_mib"] = pc.divide(pc.cast(h["iommu_table_bytes"], F64), MIB)
    h["min_mib"] = pc.divide(pc.cast(h["iommu_min_table_bytes"], F64), MIB)
    h["reserved_mib"] = pc.divide(pc.cast(h["toolstack_reserved_bytes"], F64), MIB)
    h["iommu_pct_ram"] = pc.divide(pc.multiply(100, pc.cast(h["iommu_table_bytes"], F64)), h["ram_bytes"])
    h["boot_mean_ms"] = _ratio(g["booted_ns_sum"], g["booted_sum"], 1e6)
    h["boot_max_ms"] = pc.divide(pc.cast(g["boot_ns_max"], F64), 1e6)
    h["assign_max_ms"] = pc.divide(pc.cast(g["assign_ns_max"], F64), 1e6)      # 0 on a host without devices
    h["unreachable_mib"] = pc.divide(pc.multiply(pc.cast(h["unreachable_pages"], F64), PAGE), MIB)
    h["refused"] = pc.add(pc.add(h["assign_refused_context"], h["assign_refused_undeclared"]),
                          h["create_refused_context"])
    for op in ("map", "unmap"):
        n = h[f"{op}_calls"]
        mean = _ratio(g[f"{op}_s1_sum"], n)
        h[f"{op}_lat_mean_us"] = mean
        h[f"{op}_lat_std_us"] = pc.sqrt(pc.max_element_wise(pc.subtract(_ratio(g[f"{op}_s2_sum"], n),
                                                                        pc.multiply(mean, mean)), 0.0))
    return pa.table(h)


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float          # sample standard deviation over seeds (0 with one seed)
    n: int


def stat(values) -> Stat:
    values = list(values)
    return Stat(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values))


def by_host_key(cells: pa.Table, figures, costs: str | None = None) -> dict[tuple, dict[str, Stat]]:
    """Mean and spread over seeds of each figure, per host key (optionally one cost variant only);
    `cells`: the table hosts() gives."""
    if costs is not None:
        cells = cells.filter(pc.equal(cells["costs"], costs))
    figures = list(dict.fromkeys(figures))
    grouped = cells.group_by(list(HOST_KEYS), use_threads=False).aggregate([(f, "list") for f in figures])
    keys = list(zip(*(grouped[k].to_pylist() for k in HOST_KEYS)))
    values = {f: grouped[f"{f}_list"].to_pylist() for f in figures}
    groups = {key: {f: stat(values[f][i]) for f in figures} for i, key in enumerate(keys)}
    return dict(sorted(groups.items(), key=lambda kv: order(kv[0])))


def first_costs(cells: pa.Table) -> str:
    """The cost variant that count- and memory-figures are shown under ('default' if the run has it)."""
    names = sorted(pc.unique(cells["costs"]).to_pylist())
    return "default" if "default" in names else names[0]


_SPIKE_KEYS = ["scenario", "format", "policy", "api", "ram_bytes"]


def assignments_by_size(source, costs: str) -> list[dict]:
    """The slowest device assignment of the domains that were assigned a device, lazy and declared, under
    one cost variant: per scenario, format, policy, API and domain RAM, their count, mean, least and
    most assign_ns and their mean populate_pages (aggregated as the run is scanned)."""
    partials = []
    for chunk in _chunks(source, [*_SPIKE_KEYS, "status", "costs", "devices", "assign_ns", "populate_pages"],
                         status="ok", costs=costs):
        d = chunk.filter(pc.and_(pc.greater(chunk["devices"], 0),
                                 pc.is_in(chunk["policy"], pa.array(["lazy", "declared"]))))
        partials = _folded([*partials, d.group_by(_SPIKE_KEYS, use_threads=False).aggregate(
            [("assign_ns", "sum"), ("populate_pages", "sum"), ("assign_ns", "min"), ("assign_ns", "max"),
             ("assign_ns", "count")])], _SPIKE_KEYS)
    if not partials:
        return []
    g = _combine(partials, _SPIKE_KEYS)
    return [{**{k: r[k] for k in _SPIKE_KEYS}, "domains": r["assign_ns_count"],
             "assign_ns": r["assign_ns_sum"] / r["assign_ns_count"], "assign_ns_min": r["assign_ns_min"],
             "assign_ns_max": r["assign_ns_max"], "populate_pages": r["populate_pages_sum"] / r["assign_ns_count"]}
            for r in sorted(g.to_pylist(), key=lambda r: tuple(r[k] for k in _SPIKE_KEYS))]


def workers(cells: pa.Table) -> list[dict]:
    """Per worker: cells run, busy time, and the simulated pages per second of engine time it achieved."""
    t = cells.append_column("pages", pc.multiply(cells["sim_pages_per_s_wall"], cells["engine_wall_s"]))
    g = t.group_by("worker", use_threads=False).aggregate([("cell", "count"), ("cell_wall_s", "sum"),
                                                           ("pages", "sum"), ("engine_wall_s", "sum")])
    out = [{"worker": r["worker"], "cells": r["cell_count"], "busy_s": r["cell_wall_s_sum"],
            "pages": r["pages_sum"], "engine_s": r["engine_wall_s_sum"],
            "pages_per_s": r["pages_sum"] / r["engine_wall_s_sum"] if r["engine_wall_s_sum"] else 0.0}
           for r in g.to_pylist()]
    return sorted(out, key=lambda w: w["worker"])

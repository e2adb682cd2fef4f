"""The report's figures, computed from a run's rows (one row per domain per cell).

Two steps: each cell (one simulated host) is summed over its domains, then the
cells that differ only by seed are reduced to a mean and a standard deviation,
so every figure carries the spread the seeds give. Everything here is plain
arithmetic on the dataset; nothing is typed in.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

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


def ok_rows(table: pa.Table) -> pa.Table:
    if table.num_rows == 0:
        raise ReportError("the run has no rows")
    ok = table.filter(pc.equal(table["status"], "ok"))
    if ok.num_rows == 0:
        raise ReportError(f"the run has no successful cells ({table.num_rows} rows, statuses: "
                          f"{sorted(set(table.column('status').to_pylist()))})")
    return ok


def hosts(table: pa.Table) -> list[dict]:
    """One dict per cell: its keys, seed and its figures summed (or taken at the max) over its domains.

    Map and unmap latencies are pooled over domains from each domain's call count, mean and
    (population) standard deviation: the sums of n*mean and n*(std^2 + mean^2) give the host's."""
    ok = ok_rows(table)
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
    per_cell = ("sim_pages_per_s_wall", "engine_wall_s", "cell_wall_s")      # one value per cell
    grouped = ok.group_by(["cell", *HOST_KEYS, "seed", "worker"], use_threads=False).aggregate(
        [(c, "sum") for c in (*_SUMS, *extra)] + [(c, "max") for c in (*per_cell, "boot_ns", "assign_ns")]
        + [("boot_ns", "mean"), ("cell", "count")])
    out = []
    for g in grouped.to_pylist():
        h = {k: g[k] for k in ("cell", *HOST_KEYS, "seed", "worker")}
        h.update({c: g[f"{c}_sum"] for c in _SUMS}, **{c: g[f"{c}_max"] for c in per_cell})
        h["domains"] = g["cell_count"]
        h["iommu_mib"] = h["iommu_table_bytes"] / MIB
        h["min_mib"] = h["iommu_min_table_bytes"] / MIB
        h["reserved_mib"] = h["toolstack_reserved_bytes"] / MIB
        h["iommu_pct_ram"] = 100 * h["iommu_table_bytes"] / h["ram_bytes"]
        h["boot_mean_ms"] = g["booted_ns_sum"] / g["booted_sum"] / 1e6 if g["booted_sum"] else 0.0
        h["boot_max_ms"] = g["boot_ns_max"] / 1e6
        h["assign_max_ms"] = g["assign_ns_max"] / 1e6          # 0 on a host without devices
        h["unreachable_mib"] = h["unreachable_pages"] * PAGE / MIB
        h["refused"] = h["assign_refused_context"] + h["assign_refused_undeclared"] + h["create_refused_context"]
        for op in ("map", "unmap"):
            n = h[f"{op}_calls"]
            mean = g[f"{op}_s1_sum"] / n if n else 0.0
            h[f"{op}_lat_mean_us"] = mean
            h[f"{op}_lat_std_us"] = math.sqrt(max(g[f"{op}_s2_sum"] / n - mean * mean, 0.0)) if n else 0.0
        out.append(h)
    return out


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float          # sample standard deviation over seeds (0 with one seed)
    n: int


def stat(values) -> Stat:
    values = list(values)
    return Stat(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values))


def by_host_key(host_rows: list[dict], figures, costs: str | None = None) -> dict[tuple, dict[str, Stat]]:
    """Mean and spread over seeds of each figure, per host key (optionally one cost variant only)."""
    groups: dict[tuple, list[dict]] = {}
    for h in host_rows:
        if costs is None or h["costs"] == costs:
            groups.setdefault(tuple(h[k] for k in HOST_KEYS), []).append(h)
    return {key: {f: stat(h[f] for h in rows) for f in figures} for key, rows in sorted(groups.items(),
                                                                                         key=lambda kv: order(kv[0]))}


def first_costs(host_rows: list[dict]) -> str:
    """The cost variant that count- and memory-figures are shown under ('default' if the run has it)."""
    names = sorted({h["costs"] for h in host_rows})
    return "default" if "default" in names else names[0]


def domains_with_devices(table: pa.Table, costs: str) -> list[dict]:
    """Per-domain rows of the domains that were assigned a device, under one cost variant."""
    ok = ok_rows(table)
    ok = ok.filter(pc.and_(pc.greater(ok["devices"], 0), pc.equal(ok["costs"], costs)))
    return ok.select(["scenario", "format", "policy", "api", "seed", "domain", "ram_bytes", "assign_ns",
                      "populate_pages"]).to_pylist()


def workers(host_rows: list[dict]) -> list[dict]:
    """Per worker: cells run, busy time, and the simulated pages per second of engine time it achieved."""
    per: dict[str, dict] = {}
    for h in host_rows:
        w = per.setdefault(h["worker"], {"worker": h["worker"], "cells": 0, "busy_s": 0.0, "pages": 0.0,
                                         "engine_s": 0.0})
        w["cells"] += 1
        w["busy_s"] += h["cell_wall_s"]
        w["pages"] += h["sim_pages_per_s_wall"] * h["engine_wall_s"]
        w["engine_s"] += h["engine_wall_s"]
    for w in per.values():
        w["pages_per_s"] = w["pages"] / w["engine_s"] if w["engine_s"] else 0.0
    return sorted(per.values(), key=lambda w: w["worker"])

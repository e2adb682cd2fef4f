"""The report folder of one run: report.md, report.html, the PNG plots, and the headline for the terminal.

The page opens with the verdict (verdict.py), then the findings as one short
table per scenario, then the tables and plots. Every number on it is computed
from the run's dataset (see figures.py); each table says which cost variant it
is under and over how many seeds its means are taken. `build(..., sections=)`
appends more sections (e.g. the model against a real Xen) after the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from ..store.results import read_manifest, run_directory
from . import html, plots
from .figures import HOST_KEYS, ReportError, assignments_by_size, by_host_key, first_costs, hosts, workers
from .findings import findings, tables
from .verdict import markdown as verdict_markdown
from .verdict import verdict

HEADLINE = [("iommu_mib", "IOMMU MiB", ".2f"), ("iommu_pct_ram", "% of guest RAM", ".3f"),
            ("boot_mean_ms", "boot ms (mean)", ".3f"), ("assign_max_ms", "slowest assign ms", ".3f"),
            ("invalidations", "invalidations", ",.0f")]
MEMORY = [("iommu_mib", "IOMMU MiB", ".2f"), ("iommu_mib", "± std", ".2f"),
          ("iommu_pct_ram", "% of guest RAM", ".3f"), ("min_mib", "analytic min MiB", ".2f"),
          ("reserved_mib", "toolstack reservation MiB", ".2f")]
COST = [("calls", "calls", ",.0f"), ("descriptors_written", "descriptors", ",.0f"),
        ("invalidations", "invalidations", ",.0f"), ("cache_lines_cleaned", "cache lines cleaned", ",.0f"),
        ("boot_mean_ms", "boot ms (mean)", ".3f"), ("map_lat_mean_us", "map us (mean)", ".3f"),
        ("map_lat_std_us", "map us (std)", ".3f"), ("unmap_lat_mean_us", "unmap us (mean)", ".3f"),
        ("unmap_lat_std_us", "unmap us (std)", ".3f")]
FLEET = [("create_refused_context", "creations refused: no context", ".2f"),
         ("assign_refused_context", "refused: no context", ".2f"),
         ("assign_refused_undeclared", "refused: undeclared", ".2f"), ("unreachable_mib", "unreachable MiB", ".2f"),
         ("populate_pages", "populate pages", ",.0f")]
ALL_FIGURES = sorted({f for cols in (HEADLINE, MEMORY, COST, FLEET) for f, _, _ in cols} | {"reserved_mib",
                                                                                             "refused"})


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return "(none)\n"
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(str(r[h]) for h in head) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def figure_rows(groups, columns, keys=("scenario", "format", "policy", "api")) -> list[dict]:
    """A printed table: the keys, then each figure's mean over seeds (a '± std' title: its std)."""
    rows = []
    for key, figs in groups.items():
        k = dict(zip(HOST_KEYS, key))
        r = {name: k[name] for name in keys}
        for fig, title, spec in columns:
            r[title] = format(figs[fig].std if title.startswith("±") else figs[fig].mean, spec)
        rows.append(r)
    return rows


def headline(cells: pa.Table) -> tuple[str, list[dict]]:
    """The cost variant the headline is under, and its rows: per host, mean over seeds (`cells`: what
    figures.hosts gives)."""
    costs = first_costs(cells)
    return costs, figure_rows(by_host_key(cells, [f for f, _, _ in HEADLINE], costs=costs), HEADLINE)


def spike_rows(groups: list[dict]) -> list[dict]:
    """Mean slowest assignment per domain size, lazy beside declared, per scenario, format and API;
    `groups`: what figures.assignments_by_size gives."""
    by = {(g["scenario"], g["format"], g["api"], g["ram_bytes"], g["policy"]): g for g in groups}
    rows = []
    for scenario, fmt, api, ram in sorted({k[:4] for k in by}):
        lazy, declared = by.get((scenario, fmt, api, ram, "lazy")), by.get((scenario, fmt, api, ram, "declared"))
        lazy_ms = lazy["assign_ns"] / 1e6 if lazy else None
        decl_ms = declared["assign_ns"] / 1e6 if declared else None
        rows.append({"scenario": scenario, "format": fmt, "api": api, "domain RAM MiB": f"{ram / 2**20:.0f}",
                     "domains": str(lazy["domains"] if lazy else 0),
                     "lazy assign ms": "-" if lazy_ms is None else f"{lazy_ms:.3f}",
                     "declared assign ms": "-" if decl_ms is None else f"{decl_ms:.3f}",
                     "lazy / declared": f"{lazy_ms / decl_ms:.1f}x" if lazy_ms and decl_ms else "-",
                     "populate pages (mean)": "-" if not lazy else f"{lazy['populate_pages']:,.0f}"})
    return rows


@dataclass(frozen=True)
class Section:
    """One section of the page: an element id (for the HTML), a heading and its Markdown body."""
    id: str
    title: str
    body: str

    def markdown(self) -> str:
        return f"## {self.title}\n\n{self.body}"


def shown_path(path, results_root: Path) -> str:
    """A path as the report prints it, never an absolute path of the machine: a file of this package from
    the package's folder (iommu_core/...), one under the results folder relative to it, else its name."""
    if not path:
        return "?"
    p = Path(path)
    if "iommu_core" in p.parts:
        return "/".join(p.parts[p.parts.index("iommu_core"):])
    try:
        return p.resolve().relative_to(results_root.resolve()).as_posix()
    except ValueError:
        return p.name


def findings_section(finds: list[dict], costs: str) -> Section:
    body = ["Each policy at its best driver API for the figure (in brackets; \"any API\" when all give the same), "
            "mean over seeds; the lowest of each row in bold. `shared` needs an IOMMU that walks the P2M, so the "
            "last column names the lowest unshared policy, the answer for the IPMMU in stage-1 mode. † marks a "
            "policy under which domain creations were refused for want of an IPMMU context (XT takes one at every "
            "creation): it has not run the whole workload, so its figures do not rank.\n"]
    for scenario, rows in tables(finds).items():
        body += [f"### {scenario}\n", markdown_table(rows)]
    return Section("findings", f"Findings per scenario (costs `{costs}`)",
                   "\n".join(body) if finds else "(not enough policies to compare)\n")


def build(results, run: str | None = None, out: Path | None = None, sections: list[Section] | None = None) -> dict:
    """Write the report of a run; returns its folder, files, verdict, headline rows and findings.
    `sections`: more sections for the end of the page (e.g. the model against a real Xen)."""
    run_dir = run_directory(results, run)
    manifest = read_manifest(run_dir)
    cells = hosts(run_dir)                      # aggregated as the run is scanned: one row per cell
    costs = first_costs(cells)
    everything = by_host_key(cells, ALL_FIGURES)
    counted = by_host_key(cells, ALL_FIGURES, costs=costs)
    seeds = sorted(pc.unique(cells["seed"]).to_pylist())
    out = Path(out) if out else run_dir.parent.parent / "reports" / run_dir.name
    out.mkdir(parents=True, exist_ok=True)

    _, top = headline(cells)
    answer = verdict(cells)
    finds = findings(counted)
    per_worker = workers(cells)
    cells_s = pc.sum(cells["cell_wall_s"]).as_py()
    wall = manifest.get("wall_s")
    boots = pc.sum(cells["domains"]).as_py()
    run_rows = [{"cells": str(cells.num_rows), "domain boots": f"{boots:,}", "workers": str(len(per_worker)),
                 "wall s": "-" if wall is None else f"{wall:.1f}", "cells' own s": f"{cells_s:.1f}",
                 "speed-up over one worker": "-" if not wall else f"{cells_s / wall:.2f}x",
                 "domain boots/s": "-" if not wall else f"{boots / wall:.1f}",
                 "Ray start s": "-" if "ray_start_s" not in manifest else f"{manifest['ray_start_s']:.1f}"}]
    worker_rows = [{"worker": w["worker"], "cells": str(w["cells"]), "busy s": f"{w['busy_s']:.1f}",
                    "simulated Mpages/s": f"{w['pages_per_s'] / 1e6:.2f}"} for w in per_worker]
    spikes = assignments_by_size(run_dir, costs)
    pngs = [plots.memory(counted, out / "memory.png"), plots.lazy_spike(spikes, out / "lazy_spike.png"),
            plots.mapping_cost(counted, out / "mapping_cost.png"), plots.fleet(counted, out / "fleet.png"),
            plots.scaling(per_worker, wall, out / "scaling.png")]

    n_seeds = f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''} ({', '.join(map(str, seeds))})"
    results_root = run_dir.parent.parent
    about = (f"Sweep `{manifest.get('sweep', '?')}` ({shown_path(manifest.get('sweep_file'), results_root)}), "
             f"{cells.num_rows} successful cells, commit {manifest.get('git_commit', '?')}, host "
             f"{manifest.get('host', '?')}, started {manifest.get('start', '?')}. Every figure is a mean over "
             f"{n_seeds} of per-host sums over domains; tables of counts and memory are under cost variant "
             f"`{costs}` (cost variants change modelled time only).\n")
    page = [
        Section("verdict", "The answer", verdict_markdown(answer)),
        Section("run", "The run", about),
        findings_section(finds, costs),
        Section("headline", f"Headline (costs `{costs}`)", markdown_table(top)),
        Section("memory", f"IOMMU table memory per host (costs `{costs}`)",
                "The sum over domains of each domain's peak IOMMU table, beside the analytic minimum for the same "
                "mappings and what Xen's toolstack reserves for them.\n\n" + markdown_table(figure_rows(counted, MEMORY))
                + "\n![memory](memory.png)\n"),
        Section("lazy-spike", f"The lazy populate spike (costs `{costs}`)",
                "Slowest device assignment of each domain that gets a device, mean per domain size.\n\n"
                + markdown_table(spike_rows(spikes)) + "\n![lazy spike](lazy_spike.png)\n"),
        Section("mapping-cost", "Mapping cost per driver API",
                "Per host. Latency is per map or unmap call, pooled over the host's domains, as Linux's "
                "`dma_map_benchmark` reports it (mean and standard deviation).\n\n"
                + markdown_table(figure_rows(everything, COST, keys=("scenario", "format", "costs", "policy", "api")))
                + "\n![mapping cost](mapping_cost.png)\n"),
        Section("fleet", f"Fleet limits: IPMMU contexts and the IOVA space (costs `{costs}`)",
                markdown_table(figure_rows(counted, FLEET)) + "\n![fleet](fleet.png)\n"),
        Section("sweep", "The sweep and the engine",
                markdown_table(run_rows) + "\n" + markdown_table(worker_rows) + "\n![scaling](scaling.png)\n"),
        *(sections or []),
    ]
    title = f"iommu-bench report: run {run_dir.name}"
    text = "\n".join([f"# {title}\n", *(s.markdown() for s in page)])
    (out / "report.md").write_text(text)
    (out / "report.html").write_text(html.render(title, [("title", f"# {title}\n"),
                                                         *((s.id, s.markdown()) for s in page)], out))
    return {"dir": out, "files": [out / "report.md", out / "report.html", *pngs], "headline": top,
            "costs": costs, "verdict": answer, "findings": finds, "run": run_dir.name}


__all__ = ["build", "ReportError", "Section"]

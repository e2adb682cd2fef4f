"""The `iommu-bench` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# The driver's Arrow work comes in bursts (a sweep's parts, its summary, a report): mimalloc, pyarrow's
# default pool, keeps what a burst freed, the system allocator returns it. Measured on a 10,008-cell
# run's summary: 220 MiB peak with mimalloc, 201 with the pool set in code, 156 with this variable,
# which pyarrow reads when it first makes its pool (so before it is imported); a user's own choice stays.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

from . import __version__
from .pgtable import PRESETS, ExtentError, Format
from .scenarios.files import P2M_FORMAT_CHOICES, XEN_CAPTURE, resolve_p2m_format
from .sweep.grid import MAX_CELLS
from .units import MIB
from .xen.rules import APIS, POLICIES, UNSHARED_FORMATS



def _shipped() -> list[str]:
    from .scenarios.files import shipped
    return sorted(shipped())


# "all": the IPMMU's two formats and the P2M at the size the IPMMU shares and at 48 bits (the other
# P2M sizes are Xen's per-CPU geometry, whose small outputs cannot hold every host's frames).
ALL_TABLE_FORMATS = ["ipmmu-s1-32", "ipmmu-s1-39", "p2m-s2-40", "p2m-s2-48"]


def _formats(value: str) -> list[Format]:
    names = ALL_TABLE_FORMATS if value == "all" else [v.strip() for v in value.split(",") if v.strip()]
    try:
        return [Format.preset(n) for n in names]
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def positive_int(value: str) -> int:
    """argparse type: a positive decimal integer, refused with the value named."""
    # base 10: "010" is ten (base 0 refuses a leading zero)
    try:
        n = int(value, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive decimal integer, got {value!r}") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return n


def _output_file(path: str | None, option: str) -> None:
    """Refuse, before any work, an output file that cannot be written: a folder, or in a missing folder."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{option} {path!r}: a folder, not a file (expected a file name to write)")
    if not p.parent.is_dir():
        raise ValueError(f"{option} {path!r}: no folder {str(p.parent)!r} to write it in (expected an "
                         f"existing folder)")


def _print_rows(rows: list[dict], columns: list[tuple[str, str]] | None = None) -> None:
    """An aligned table; columns are (key, title) pairs, by default every key of the first row."""
    columns = columns or [(k, k) for k in rows[0] if not k.startswith("_")]
    cells = [[title for _, title in columns]]
    for row in rows:
        cells.append([_fmt(row.get(key)) for key, _ in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    for i, r in enumerate(cells):
        print("  ".join(c.rjust(w) if i and j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths))))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.3g}" if v < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, dict):
        return "/".join(str(x) for x in v.values())
    return "" if v is None else str(v)


def cmd_tables(args: argparse.Namespace) -> int:
    from .xen.guestmap import guest_layout, map_guest

    _output_file(args.json, "--json")
    if args.export and Path(args.export).exists() and not Path(args.export).is_dir():
        raise ValueError(f"--export {args.export!r}: a file, not a folder (expected a folder for the images)")
    layout = guest_layout(args.guest_mib * MIB, args.chunk_kib * 1024, seed=args.seed)
    leaves = ["auto", "4k"] if args.leaf == "both" else [args.leaf]
    rows = []
    for fmt in args.formats:
        for leaf in leaves:
            pt, row = map_guest(fmt, layout, leaf=leaf, verify=not args.no_verify, seed=args.seed)
            row["table_bytes_per_gib"] = row["table_bytes"] / (row["mapped_pages"] * 4096 / (1 << 30)) \
                if row["mapped_pages"] else 0.0
            rows.append(row)
            if args.export:
                bin_path, _ = pt.export(Path(args.export) / f"{fmt.name}-{leaf}")
                row["image"] = str(bin_path)
    print(f"guest: {args.guest_mib} MiB in {len(layout.iova)} host chunks of {args.chunk_kib} KiB "
          f"(seed {args.seed}); every table decoded and sampled against the request"
          if not args.no_verify else f"guest: {args.guest_mib} MiB (not verified)")
    _print_rows(rows, [("format", "format"), ("leaf", "leaf"), ("mapped_pages", "mapped pages"),
                       ("unreachable_pages", "unreachable"), ("tables_by_level", "tables by level"),
                       ("table_bytes", "table bytes"), ("table_bytes_per_gib", "bytes/GiB"),
                       ("descriptors_written", "descriptors"), ("cache_lines_written", "cache lines"),
                       ("map_wall_s", "map s"), ("pages_per_s", "pages/s")])
    if args.json:
        with open(args.json, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    return 0


def cmd_image(args: argparse.Namespace) -> int:
    from .pgtable import PageTable

    try:
        pt = PageTable.load(args.path)
    except FileNotFoundError as e:
        raise ValueError(f"no such image: {e.filename}") from None
    fmt, ext = pt.fmt, pt.mappings()
    print(f"{args.path}: {fmt.name}, stage {fmt.stage}, {fmt.ia_bits}-bit input, {fmt.oa_bits}-bit output, "
          f"root {pt.root:#x} at level {fmt.start_level}; {len(ext)} extents, {ext.total_pages:,} pages, "
          f"{pt.table_bytes:,} table bytes")
    rows = [{"iova": f"{v:#x}", "pa": f"{p:#x}", "pages": n, "perm": perm, "memtype": mem, "sw": sw}
            for v, p, n, perm, mem, sw in ext.to_records()[: args.limit]]
    _print_rows(rows, [(k, k) for k in ("iova", "pa", "pages", "perm", "memtype", "sw")])
    if len(ext) > args.limit:
        print(f"... {len(ext) - args.limit} more (--limit)")
    return 0


DOMAIN_COLUMNS = [("domain", "domain"), ("kind", "kind"), ("ram_mib", "RAM MiB"), ("devices", "devices"),
                  ("iommu_table_bytes", "IOMMU bytes"), ("p2m_table_bytes", "P2M bytes"),
                  ("iommu_min_table_bytes", "min IOMMU"), ("toolstack_reserved_bytes", "reserved"),
                  ("calls", "calls"), ("invalidations", "invalid."), ("cache_lines_cleaned", "cleans"),
                  ("populate_pages", "populated"), ("refused", "refused"), ("unreachable_pages", "unreach."),
                  ("boot_ms", "boot ms"), ("assign_ms", "assign ms"), ("map_lat", "map us (sd)"),
                  ("mismatches", "mismatch")]
HOST_COLUMNS = [("policy", "policy"), ("api", "api"), ("iommu_table_bytes", "IOMMU bytes"),
                ("invalidations", "invalid."), ("cache_lines_cleaned", "cleans"),
                ("p2m_cache_lines_cleaned", "P2M cleans"), ("tlb_flushes", "TLB flushes"), ("populate_pages", "populated"),
                ("refused", "refused"), ("boot_ms", "max boot ms"), ("assign_ms", "max assign ms"),
                ("mismatches", "mismatch"), ("wall_s", "wall s")]


def _domain_row(r: dict) -> dict:
    return {**r, "ram_mib": r["ram_bytes"] >> 20,
            "refused": r["assign_refused_context"] + r["assign_refused_undeclared"] + r["create_refused_context"],
            "boot_ms": r["boot_ns"] / 1e6, "assign_ms": r["assign_ns"] / 1e6,
            "map_lat": f"{r['map_lat_mean_us']:.3f} ({r['map_lat_std_us']:.3f})"}


def _host_row(policy: str, api: str, records: list[dict]) -> dict:
    rows = [_domain_row(r) for r in records]
    total = {k: sum(r[k] for r in rows) for k in ("iommu_table_bytes", "invalidations", "cache_lines_cleaned",
                                                 "p2m_cache_lines_cleaned", "tlb_flushes", "populate_pages",
                                                 "refused", "mismatches")}
    return {"policy": policy, "api": api, **total, "boot_ms": max(r["boot_ms"] for r in rows),
            "assign_ms": max(r["assign_ms"] for r in rows), "wall_s": records[0]["engine_wall_s"]}


def cmd_boot(args: argparse.Namespace) -> int:
    from .scenarios.files import load_scenario
    from .xen.host import Host
    from .xen.iommu import NotApplicable

    _output_file(args.json, "--json")
    policies = list(POLICIES) if args.policy == "all" else [args.policy]
    apis = list(APIS) if args.api == "all" else [args.api]
    all_records: list[dict] = []
    host_rows = []
    for policy in policies:
        for api in apis:
            scenario = load_scenario(args.scenario, seed=args.seed)
            board, specs = scenario.board, list(scenario.specs)
            try:
                config = scenario.host_config(policy=policy, api=api, iommu_format=args.format,
                                              p2m_format=args.p2m_format, seed=args.seed,
                                              check=not args.no_check, fragmentation=args.fragmentation)
                records = Host(board, config).run(specs)
            except NotApplicable as e:
                print(f"{policy} / {api}: not applicable: {e}")
                continue
            all_records += records
            if len(policies) * len(apis) == 1:
                print(f"{scenario.name} on {board.name}: policy {policy}, API {api}, IOMMU format "
                      f"{args.format}, P2M {config.p2m_format}, seed {args.seed}")
                _print_rows([_domain_row(r) for r in records], DOMAIN_COLUMNS)
            host_rows.append(_host_row(policy, api, records))
    if args.json:
        _write_records(args.json, all_records)
    if len(host_rows) > 1:
        print(f"{args.scenario}: every domain of the host, summed (boot and assign: the slowest domain)")
        _print_rows(host_rows, HOST_COLUMNS)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    import pyarrow.compute as pc

    from .report.figures import hosts
    from .report.page import headline
    from .store.results import scan_results
    from .sweep.grid import load_sweep
    from .sweep.progress import Bar, Quiet
    from .sweep.runner import SweepStopped, run_sweep

    # --resume takes the run's own sweep (from its manifest); a sweep file given with it must be that one
    sweep = load_sweep(args.sweep, max_cells=args.max_cells) if args.sweep or not args.resume else None
    if sweep is not None:
        print(f"sweep {sweep.name}: {len(sweep.cells)} cells ({sweep.file})", flush=True)
    try:
        run_dir = run_sweep(sweep, Path(args.results), address=args.address, workers=args.workers,
                            object_store_mb=args.object_store_mb, resume=args.resume,
                            progress=Quiet if args.quiet else Bar, max_cells=args.max_cells)
    except SweepStopped as e:
        print(f"iommu-bench: {e}", file=sys.stderr)
        return e.exit_code
    n, ok, failed = 0, 0, set()               # counted as the run is scanned, never all rows at once
    for part in scan_results(run_dir, columns=["cell", "status"]):
        n += part.num_rows
        ok += pc.sum(pc.equal(part["status"], "ok")).as_py() or 0
        failed.update(part.filter(pc.equal(part["status"], "failed"))["cell"].to_pylist())
    print(f"results: {run_dir} ({n:,} rows)")
    if failed:
        print(f"{len(failed)} cells failed: see the 'error' column of {run_dir}")
    if ok:
        costs, rows = headline(hosts(run_dir))
        print(f"per host, mean over seeds, costs {costs} (the report has the spread and the rest):")
        _print_rows(rows)
        print(f"the full report: iommu-bench report {run_dir.name}" +
              (f" --results {args.results}" if args.results != "results/runs" else ""))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report.page import build
    from .report.verdict import markdown as verdict_markdown

    from .report.realxen import real_xen_section

    report = build(args.results, args.run, Path(args.output) if args.output else None,
                   sections=[real_xen_section()])
    print(f"run {report['run']}: the verdict (Markdown, as the report opens with it)")
    print(verdict_markdown(report["verdict"]))
    print(f"headline (costs {report['costs']}; mean over seeds, per host)")
    _print_rows(report["headline"])
    print(f"\nreport: {report['dir'] / 'report.md'} (and report.html, {len(report['files']) - 2} plots; "
          f"the findings per scenario are in it)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .report.compare import compare
    from .store.results import run_directory

    def where(run):
        return run_directory(run) if run and Path(run).is_dir() else run_directory(args.results, run)

    a, b = where(args.run_a), where(args.run_b)
    result = compare(a, b)
    rows = [r for r in result["rows"] if args.all or r["_changed"]]
    print(f"A = {a.name}, B = {b.name}: {len(result['rows'])} figures in both runs, "
          f"{sum(r['_changed'] for r in result['rows'])} changed, "
          f"{sum(r['beyond noise'] == 'yes' for r in result['rows'])} beyond the noise of the seeds")
    for side, keys in result["only"].items():
        if keys:
            print(f"only in {side.upper()}: {len(keys)} host settings, e.g. {'/'.join(keys[0])}")
    if rows:
        _print_rows(rows)
    return 0


def _host_settings(scenario, config) -> dict:
    return {"scenario": scenario.name, "dom0_mem": config.dom0_mem, "seed": config.seed,
            "arrival_spread_ns": config.arrival_spread_ns, "policy": config.policy, "api": config.api,
            "iommu_format": config.iommu_format, "p2m_format": config.p2m_format,
            "fragmentation": config.fragmentation}


def cmd_trace_record(args: argparse.Namespace) -> int:
    from .scenarios.files import load_scenario
    from .store.traces import write_trace
    from .xen.host import Host
    from .xen.trace import Recorder

    if Path(args.output).is_dir():
        raise ValueError(f"-o {args.output!r}: a folder, not a file (expected a trace file name, .parquet)")
    scenario = load_scenario(args.scenario, seed=args.seed)
    config = scenario.host_config(policy=args.policy, api=args.api, iommu_format=args.format,
                                  p2m_format=args.p2m_format, seed=args.seed, fragmentation=args.fragmentation)
    host = Host(scenario.board, config)
    host.recorder = Recorder()
    host.run(list(scenario.specs))
    path = write_trace(args.output, host.recorder.rows, scenario.board, list(scenario.specs),
                       _host_settings(scenario, config))
    print(f"{path}: {len(host.recorder.rows):,} rows of {len(scenario.specs)} domains "
          f"(scenario {scenario.name}, recorded under {args.policy} / {args.api}, seed {args.seed})")
    return 0


def cmd_trace_import(args: argparse.Namespace) -> int:
    from .scenarios.devicetree import board_from_devicetree
    from .scenarios.files import DATA
    from .store.traces import write_trace
    from .xenlog import domain_specs, read_call_log, to_trace_rows

    log = read_call_log(args.log)
    board = board_from_devicetree(args.board or DATA / "qemu-virt.dtb", name=args.board_name)
    specs = domain_specs(log)
    settings = {"scenario": f"imported:{Path(args.log).name}", "dom0_mem": specs[0].ram_bytes, "seed": 0,
                "arrival_spread_ns": 0.0, "policy": "", "api": "", "iommu_format": "",
                "p2m_format": resolve_p2m_format("auto", board.pa_bits, "eager"), "fragmentation": 0.0}
    rows = to_trace_rows(log)
    path = write_trace(args.output, rows, board, specs, settings)
    print(f"{path}: {len(log):,} calls of {len(specs)} domains ({', '.join(s.name for s in specs)}) "
          f"from {args.log}, board {board.name}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from .xenlog import read_capture, read_counters, replay_counters

    capture = Path(args.capture)
    log = read_capture(capture)
    dumps = replay_counters(log, read_counters(capture / "p2m_counters.csv"), args.p2m_format)
    rows, differ = [], 0
    for d in dumps:
        for key in ("mappings_1g", "shattered_1g", "mappings_2m", "shattered_2m", "mappings_4k"):
            model = d["model"][key] if d["model"] else None
            differ += model != d[key]
            rows.append({"seq": d["seq"], "domain": d["domid"], "moment": d["moment"], "counter": key,
                         "xen": d[key], "model": model, "same": "yes" if model == d[key] else "NO"})
    print(f"{capture}: {len(log):,} p2m_set_entry calls replayed one by one on {args.p2m_format}; "
          f"Xen's q dumps against the model's counters")
    _print_rows(rows)
    print(f"{len(rows) - differ} of {len(rows)} counters the same")
    return 1 if differ else 0


def cmd_trace_replay(args: argparse.Namespace) -> int:
    from .store.traces import read_trace
    from .xen.host import Host, HostConfig
    from .xen.iommu import NotApplicable
    from .xen.trace import steps_from_rows

    _output_file(args.json, "--json")
    cols, board, specs, settings = read_trace(args.trace)
    steps = steps_from_rows(cols, len(specs))
    try:
        config = HostConfig(policy=args.policy, api=args.api, iommu_format=args.format,
                            p2m_format=resolve_p2m_format(args.p2m_format, board.pa_bits, args.policy),
                            dom0_mem=settings["dom0_mem"], seed=settings["seed"],
                            arrival_spread_ns=settings["arrival_spread_ns"], check=not args.no_check)
    except NotApplicable as e:
        print(f"{args.policy} / {args.api}: not applicable: {e}")
        return 0
    records = Host(board, config).replay(specs, steps)
    print(f"{args.trace}: {len(cols['op']):,} rows replayed under {args.policy} / {args.api}")
    _print_rows([_domain_row(r) for r in records], DOMAIN_COLUMNS)
    if args.json:
        _write_records(args.json, records)
    return 0


POLICY_CHOICES = list(POLICIES)
API_CHOICES = list(APIS)


def _model_options(p: argparse.ArgumentParser, policy_default: str | None, allow_all: bool = False,
                   run_options: bool = True) -> None:
    """Options of a host run: policy, driver API, formats, and (when it allocates) seed and fragmentation."""
    extra = ["all"] if allow_all else []
    p.add_argument("--policy", default=policy_default, required=policy_default is None,
                   choices=POLICY_CHOICES + extra, help="the sync policy" + (" (or all)" if allow_all else ""))
    p.add_argument("--api", default="batched" if policy_default else None, required=policy_default is None,
                   choices=API_CHOICES + extra, help="the IOMMU driver API" + (" (or all)" if allow_all else ""))
    p.add_argument("--format", default="ipmmu-s1-39", choices=list(UNSHARED_FORMATS),
                   help="the unshared IOMMU's table format (default ipmmu-s1-39)")
    p.add_argument("--p2m-format", default="auto", choices=list(P2M_FORMAT_CHOICES),
                   help="the P2M's format (default auto: what Xen 4.17 builds for the scenario's CPU, capped at "
                        "40 bits when the IPMMU shares it; p2m-s2-40 when the CPU is unknown)")
    if run_options:
        p.add_argument("--seed", type=int, default=0, help="seed of the schedule and the allocator (default 0)")
        p.add_argument("--fragmentation", type=float, default=0.0,
                       help="share of the host's 2 MiB chunks handed out page by page (default 0)")


def _write_records(path: str, records: list[dict]) -> None:
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


class _Parser(argparse.ArgumentParser):
    """argparse, but a refused argument is one line on stderr (exit code 2), like every other refusal."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="iommu-bench",
        description="Measure what keeping an unshared IOMMU page table in sync with the P2M costs.")
    p.add_argument("--version", action="version", version=f"iommu-bench {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser(
        "tables", help="map one guest's RAM into each table format and compare the tables",
        description="Lay out a guest's RAM as Xen on ARM does (RAM0 at 1 GiB, RAM1 at 8 GiB), back it "
                    "with R-Car H3 memory handed out in chunks, map it into each format, check that "
                    "every table decodes to exactly the request, and print table memory and mapping "
                    "work per format. Formats whose input size cannot reach part of the guest report "
                    "those pages as unreachable.")
    t.add_argument("--guest-mib", type=positive_int, default=2048, help="guest RAM in MiB (default 2048)")
    t.add_argument("--chunk-kib", type=positive_int, default=2048,
                   help="host allocation unit in KiB: 4 for a fragmented host, 2048 for 2 MiB superpages, "
                        "1048576 for 1 GiB (default 2048)")
    t.add_argument("--formats", type=_formats, default=_formats("all"),
                   help=f"comma-separated presets ({', '.join(sorted(PRESETS))}) or 'all' (default): "
                        f"{', '.join(ALL_TABLE_FORMATS)}")
    t.add_argument("--leaf", choices=["auto", "4k", "both"], default="both",
                   help="auto: largest aligned leaf; 4k: pages only; both (default)")
    t.add_argument("--seed", type=int, default=0, help="seed of the host chunk order (default 0)")
    t.add_argument("--export", metavar="DIR", help="also write each table as DIR/<format>-<leaf>.bin + .json")
    t.add_argument("--json", metavar="FILE", help="also write one JSON object per table to FILE")
    t.add_argument("--no-verify", action="store_true", help="skip decoding and sampled translation")
    t.set_defaults(func=cmd_tables)

    b = sub.add_parser(
        "boot", help="boot a host of domains under a sync policy and driver API; print per-domain metrics",
        description="Boot dom0 and the scenario's domains at once on one host, mirror every P2M update "
                    "into the IOMMU as the policy says, check after every step that the IOMMU translates "
                    "exactly the P2M's DMA view, and print one row of metrics per domain. With --policy "
                    "all and/or --api all, every combination runs and a summary per host is printed.")
    b.add_argument("--scenario", default="small-h3",
                   help=f"a shipped scenario ({', '.join(_shipped())}; default small-h3) or a path to a "
                        f"scenario file (.toml) of your own: copy a shipped one to start")
    _model_options(b, None, allow_all=True)
    b.add_argument("--json", metavar="FILE", help="also write one JSON object per domain to FILE")
    b.add_argument("--no-check", action="store_true", help="skip the invariant checks (speed runs)")
    b.set_defaults(func=cmd_boot)

    sw = sub.add_parser(
        "sweep", help="run a grid of hosts (scenarios x policies x APIs x formats x costs x seeds) on Ray",
        description="Expand a sweep file into cells and run them as Ray tasks (a local Ray by default, a "
                    "cluster with --address or RAY_ADDRESS), streaming one Parquet row per domain per cell "
                    "to results/runs/<run-id>/, then print a summary per policy and API.")
    sw.add_argument("sweep", nargs="?", help="a sweep file (TOML); default: the project's default sweep")
    sw.add_argument("--results", default="results/runs", help="where runs go (default results/runs)")
    sw.add_argument("--address", help="a Ray cluster to use (default: RAY_ADDRESS, else a local Ray)")
    sw.add_argument("--workers", type=positive_int, help="at most N cells' tasks at once: a local Ray gets min(N, CPUs) CPUs (default: every CPU)")
    sw.add_argument("--object-store-mb", type=positive_int, help="object store of a local Ray, in MiB")
    sw.add_argument("--resume", metavar="RUN-ID",
                    help="finish an interrupted run with its own sweep (from its manifest): only cells without "
                         "rows run")
    sw.add_argument("--max-cells", type=positive_int, default=MAX_CELLS,
                    help=f"refuse a sweep of more cells than this (default {MAX_CELLS:,})")
    sw.add_argument("--quiet", action="store_true", help="no progress bar")
    sw.set_defaults(func=cmd_sweep)

    r = sub.add_parser(
        "report", help="write a run's report (Markdown, HTML, PNG plots) and print its verdict and headline",
        description="Read a run's Arrow dataset and write a report folder: report.md, a self-contained "
                    "report.html and PNG plots. The report opens with a verdict generated from the numbers "
                    "(which policy to pick for an unshared IOMMU and what it costs), then the findings per "
                    "scenario, IOMMU table memory per policy and driver API, the lazy populate spike against "
                    "domain size, mapping cost per API, IPMMU context and IOVA limits, and the sweep's own "
                    "speed; then print the verdict and the headline table. Every figure is a mean over the "
                    "run's seeds of per-host sums over domains.")
    r.add_argument("run", nargs="?", metavar="RUN-ID", help="a run under --results (default: the latest run)")
    r.add_argument("--results", default="results/runs", help="where runs are (default results/runs)")
    r.add_argument("-o", "--output", metavar="DIR",
                   help="the report folder (default: results/reports/<run-id> beside the runs)")
    r.set_defaults(func=cmd_report)

    c = sub.add_parser(
        "compare", help="put two runs side by side: each figure's change and whether it is beyond noise",
        description="Compare every figure of the host settings two runs share. A change is beyond the "
                    "noise when it exceeds twice the standard error the runs' seeds give; figures that do "
                    "not vary with the seed count any change. Prints the changed figures (--all: every one).")
    c.add_argument("run_a", metavar="RUN-A", help="a run id under --results, or a run's directory")
    c.add_argument("run_b", metavar="RUN-B", help="a run id under --results, or a run's directory")
    c.add_argument("--results", default="results/runs", help="where runs are (default results/runs)")
    c.add_argument("--all", action="store_true", help="print unchanged figures too")
    c.set_defaults(func=cmd_compare)

    t = sub.add_parser("trace", help="record a scenario's P2M operations, import a real Xen's, or replay a trace",
                       description="Traces: the stream of a host's P2M operations (Parquet).")
    tsub = t.add_subparsers(dest="trace_command", required=True, metavar="ACTION")
    rec = tsub.add_parser("record", help="run a scenario and write its P2M operations to a trace",
                          description="Run a scenario (as boot does) and write every life-cycle step's "
                                      "P2M operations, assignments and teardowns to a Parquet trace. Machine "
                                      "frames come from this run's allocation order, which depends on the "
                                      "policy and API it runs with.")
    rec.add_argument("scenario", help="a shipped scenario or a scenario file")
    rec.add_argument("-o", "--output", required=True, help="the trace file to write (.parquet)")
    rep = tsub.add_parser("replay", help="replay a trace under a policy and driver API",
                          description="Replay a trace (recorded here or filled from a real hypervisor) "
                                      "through a policy and driver API, with the same checks and metrics "
                                      "as boot. The trace is validated first: a bad row is refused with "
                                      "its number and the reason.")
    rep.add_argument("trace", help="a trace file (.parquet)")
    rep.add_argument("--json", metavar="FILE", help="also write one JSON object per domain to FILE")
    rep.add_argument("--no-check", action="store_true", help="skip the invariant checks (speed runs)")
    _model_options(rec, "eager")
    _model_options(rep, None, run_options=False)
    rec.set_defaults(func=cmd_trace_record)
    rep.set_defaults(func=cmd_trace_replay)
    imp = tsub.add_parser("import", help="turn a real Xen's p2m_set_entry call log into a trace",
                          description="Read a call log of a real Xen (CSV or CSV.gz, the columns of "
                                      "shared/xen-real/p2m_set_entry.csv.gz: seq, domid, gfn, nr, mfn, type, "
                                      "type_name, access, caller, hypercall, phase, rc) and write a trace that "
                                      "`trace replay` runs under any policy and API. Each call stays one P2M "
                                      "update with its domid, type, caller and hypercall; a domain's calls of "
                                      "one phase make one step. A bad row is refused with its number and why.")
    imp.add_argument("log", help="the call log (.csv or .csv.gz)")
    imp.add_argument("-o", "--output", required=True, help="the trace file to write (.parquet)")
    imp.add_argument("--board", help="the board's device tree (.dts / .dtb; default: the QEMU virt machine "
                                     "of the capture)")
    imp.add_argument("--board-name", help="the board's name (default: the file's stem)")
    imp.set_defaults(func=cmd_trace_import)

    v = sub.add_parser("validate", help="replay a real Xen's call log and compare Xen's own counters",
                       description="Replay a capture's p2m_set_entry calls one by one (p2m_set_entry.csv[.gz]) "
                                   "and print, at every debug-key-q dump of its p2m_counters.csv, Xen's "
                                   "mappings and shattered counts beside the model's. Exit status 1 when "
                                   "any differs.")
    v.add_argument("capture", nargs="?", default=str(XEN_CAPTURE),
                   help="the capture folder (default: the package's copy of shared/xen-real, "
                        "iommu_core/scenarios/data/xen-real)")
    v.add_argument("--p2m-format", default="p2m-s2-44", choices=list(P2M_FORMAT_CHOICES[1:]),
                   help="the P2M Xen built (default p2m-s2-44: the capture's 44-bit IPA, 4 levels)")
    v.set_defaults(func=cmd_validate)

    i = sub.add_parser(
        "image", help="list the mappings of an exported table image",
        description="Load a raw table image (PATH.bin with its PATH.json manifest, as `tables --export` "
                    "or PageTable.export writes them), check every table pointer, and list the "
                    "mappings it holds as the fewest extents.")
    i.add_argument("path", help="the image: PATH, PATH.bin or PATH.json")
    i.add_argument("--limit", type=positive_int, default=50, help="extents to print (default 50)")
    i.set_defaults(func=cmd_image)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ExtentError, ValueError, ConnectionError) as e:
        print(f"iommu-bench: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:                         # a file the checks could not foresee (permissions, a full disk)
        where = f"{e.filename}: " if e.filename else ""
        print(f"iommu-bench: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split("\n"))


if __name__ == "__main__":
    sys.exit(main())

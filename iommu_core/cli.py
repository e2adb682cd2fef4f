"""The `iommu-bench` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__
from .pgtable import PRESETS, ExtentError, Format

MIB = 1 << 20


def _formats(value: str) -> list[Format]:
    names = sorted(PRESETS) if value == "all" else [v.strip() for v in value.split(",") if v.strip()]
    try:
        return [Format.preset(n) for n in names]
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive_int(value: str) -> int:
    try:
        n = int(value, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {n}")
    return n


def _print_rows(rows: list[dict], columns: list[tuple[str, str]]) -> None:
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
    from .guestmap import guest_layout, map_guest

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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
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
    t.add_argument("--guest-mib", type=_positive_int, default=2048, help="guest RAM in MiB (default 2048)")
    t.add_argument("--chunk-kib", type=_positive_int, default=2048,
                   help="host allocation unit in KiB: 4 for a fragmented host, 2048 for 2 MiB superpages, "
                        "1048576 for 1 GiB (default 2048)")
    t.add_argument("--formats", type=_formats, default=_formats("all"),
                   help=f"comma-separated presets or 'all' (default): {', '.join(sorted(PRESETS))}")
    t.add_argument("--leaf", choices=["auto", "4k", "both"], default="both",
                   help="auto: largest aligned leaf; 4k: pages only; both (default)")
    t.add_argument("--seed", type=int, default=0, help="seed of the host chunk order (default 0)")
    t.add_argument("--export", metavar="DIR", help="also write each table as DIR/<format>-<leaf>.bin + .json")
    t.add_argument("--json", metavar="FILE", help="also write one JSON object per table to FILE")
    t.add_argument("--no-verify", action="store_true", help="skip decoding and sampled translation")
    t.set_defaults(func=cmd_tables)

    i = sub.add_parser(
        "image", help="list the mappings of an exported table image",
        description="Load a raw table image (PATH.bin with its PATH.json manifest, as `tables --export` "
                    "or PageTable.export writes them), check every table pointer, and list the "
                    "mappings it holds as the fewest extents.")
    i.add_argument("path", help="the image: PATH, PATH.bin or PATH.json")
    i.add_argument("--limit", type=_positive_int, default=50, help="extents to print (default 50)")
    i.set_defaults(func=cmd_image)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ExtentError, ValueError) as e:
        print(f"iommu-bench: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""Raw memory images of a table: `<path>.bin` plus a JSON manifest a walker can use.

The image is the pool as the hardware would see it: little-endian 64-bit
descriptors from physical address `base`, the root first.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np

from . import descriptors as d
from .format import ENTRIES, LAST_LEVEL, PRESETS, Format
from .pool import FREE

MANIFEST_VERSION = 1


def _paths(path) -> tuple[Path, Path]:
    p = Path(path)
    if p.suffix in (".bin", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".bin"), p.with_name(p.name + ".json")


def export_image(table, path) -> tuple[Path, Path]:
    """Write the table's memory image and manifest; return both paths."""
    bin_path, json_path = _paths(path)
    bin_path.parent.mkdir(parents=True, exist_ok=True)
    pool = table.pool
    image = pool.mem[: pool.top].astype("<u8", copy=False)
    image.tofile(bin_path)
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "base": pool.base,
        "root": table.root,
        "size": int(image.nbytes),
        **d.walker_params(table.fmt),
        "reclaim": table.reclaim,
    }
    json_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return bin_path, json_path


def _format_from(manifest: dict, where: Path) -> Format:
    try:
        fmt = Format(manifest["format"], int(manifest["stage"]), int(manifest["ia_bits"]),
                     int(manifest["oa_bits"]), tuple(manifest.get("leaf_sizes", ("4K", "2M", "1G"))),
                     bool(manifest.get("coherent_walk", True)), bool(manifest.get("ns_quirk", False)))
    except KeyError as e:
        raise ValueError(f"{where}: manifest lacks the key {e.args[0]!r}") from None
    for key in ("t0sz", "start_level", "root_tables"):
        if key in manifest and manifest[key] != getattr(fmt, key):
            raise ValueError(f"{where}: {key} is {manifest[key]!r} but a {fmt.ia_bits}-bit stage-{fmt.stage} "
                             f"table has {getattr(fmt, key)!r}")
    preset = PRESETS.get(fmt.name)
    return preset if preset == fmt else fmt


def load_image(cls, path):
    """Rebuild a PageTable from an exported image, checking every table pointer."""
    bin_path, json_path = _paths(path)
    try:
        manifest = json.loads(json_path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{json_path}: not a readable image manifest (expected JSON): {e}") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{json_path}: not an image manifest (expected a JSON object, got "
                         f"{type(manifest).__name__})")
    if "base" not in manifest:
        raise ValueError(f"{json_path}: manifest lacks the key 'base'")
    try:
        fmt = _format_from(manifest, json_path)
        base = int(manifest["base"])
    except (TypeError, ValueError) as e:
        if str(e).startswith(str(json_path)):
            raise
        raise ValueError(f"{json_path}: a bad value in the manifest: {e}") from None
    if manifest.get("root", manifest["base"]) != manifest["base"]:
        raise ValueError(f"{json_path}: the root must sit at the image base")
    if not bin_path.is_file():
        raise FileNotFoundError(errno.ENOENT, "no such image file", str(bin_path))
    raw = np.fromfile(bin_path, dtype="<u8")
    if bin_path.stat().st_size != raw.nbytes or len(raw) % ENTRIES or len(raw) < fmt.root_tables * ENTRIES:
        raise ValueError(f"{bin_path}: {bin_path.stat().st_size} bytes is not a whole number of tables holding "
                         f"the root")
    table = cls(fmt, base=base, reclaim=bool(manifest.get("reclaim", False)))
    pool = table.pool
    npages = len(raw) // ENTRIES
    levels = np.full(npages, FREE, np.int8)             # of each page: FREE until a table is found
    levels[: fmt.root_tables] = fmt.start_level
    prefixes = np.zeros(npages, np.int64)

    # Walk down from the root: each table must be inside the image and reached once.
    rows = np.arange(fmt.root_entries, dtype=np.int64)    # flat indexes of the current level's entries
    first_g = np.zeros(1, np.int64)
    for level in fmt.levels:
        desc = raw[rows]
        kind = desc & np.uint64(d.DESC_TYPE_MASK)
        if level == LAST_LEVEL:
            bad = kind == np.uint64(d.DESC_BLOCK)
            if bad.any():
                raise ValueError(f"{bin_path}: reserved descriptor {int(desc[bad][0]):#x} at level 3")
            break
        if level == 0 and (kind == np.uint64(d.DESC_BLOCK)).any():
            raise ValueError(f"{bin_path}: a block descriptor at level 0 is not valid with a 4 KiB granule")
        tbl = np.flatnonzero(kind == np.uint64(d.DESC_TABLE))
        pages = pool.page_of(desc[tbl] & np.uint64(d.OA_MASK_48))
        addr = desc[tbl] & np.uint64(d.OA_MASK_48)
        outside = (addr < np.uint64(pool.base)) | (pages >= npages) | (pages < fmt.root_tables)
        if outside.any():
            raise ValueError(f"{bin_path}: a level-{level} table descriptor points to "
                             f"{int(addr[outside][0]):#x}, outside the image's tables")
        if len(np.unique(pages)) != len(pages) or (levels[pages] != FREE).any():
            raise ValueError(f"{bin_path}: a table is reached twice (level {level + 1})")
        g = (rows[tbl] - rows[0]) + first_g[0] if level == fmt.start_level else \
            prefixes[rows[tbl] // ENTRIES] * ENTRIES + rows[tbl] % ENTRIES
        levels[pages] = level + 1
        prefixes[pages] = g
        rows = (pages[:, None] * ENTRIES + np.arange(ENTRIES)).reshape(-1)
    mem = raw.reshape(npages, ENTRIES)
    if (mem[levels == FREE] != 0).any():
        raise ValueError(f"{bin_path}: a page no table points to holds data")
    pool.restore(mem, levels, prefixes)
    return table

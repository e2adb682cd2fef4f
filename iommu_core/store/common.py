"""What every stored file shares: described fields, atomic writes, schema-version checks."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa


def field(name: str, typ, unit: str = "", doc: str = "", nullable: bool = True) -> pa.Field:
    """A schema field with its unit and meaning as metadata (only the ones given)."""
    meta = {k: v for k, v in (("unit", unit), ("doc", doc)) if v}
    return pa.field(name, typ, nullable=nullable, metadata=meta or None)


def atomic_write(path: Path, write: Callable[[Path], None], tmp_name: str | None = None) -> Path:
    """Write through `write(tmp)` to a temporary file beside `path`, then rename it into place; a
    signal or a full disk leaves no half file behind."""
    path = Path(path)
    tmp = path.with_name(tmp_name or f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def check_version(what: str, kind: str, version: str, readable: tuple[str, ...], error: type[Exception]) -> str:
    """Refuse a schema version this reader does not know, naming the ones it does."""
    if version not in readable:
        raise error(f"{what}: unknown {kind} schema version {version!r}; this reader knows {', '.join(readable)}")
    return version

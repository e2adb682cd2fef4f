"""numba for the package: compiled functions, cached per version of the package's sources.

numba's own cache is keyed by the source file of each function alone, so a
compiled caller would keep the machine code of a callee from another file after
that file changed. Here every function is cached in a folder named by a digest
of all the package's sources: any edit compiles afresh (about 45 s, once), and
an unchanged package loads in well under a second.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import types
from contextlib import contextmanager
from pathlib import Path

import numba
from numba import njit

_PACKAGE = Path(__file__).resolve().parent


def _digest() -> str:
    h = hashlib.sha256(numba.__version__.encode())
    for path in sorted(_PACKAGE.rglob("*.py")):
        h.update(path.relative_to(_PACKAGE).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _cache_dir() -> str | None:
    """A writable folder for this version's compiled code, or None (then nothing is cached)."""
    roots = [os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", tempfile.gettempdir()]
    for root in roots:
        folder = Path(root) / "iommu-bench" / "numba" / _digest()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=folder).close()
            return str(folder)
        except OSError:
            continue
    return None


_CACHE = _cache_dir()


@contextmanager
def _cache_scope():
    """numba's cache folder set to ours while a function is decorated (it is read then), and
    given back after, so that other numba users in the process keep their own."""
    before = numba.config.CACHE_DIR
    numba.config.CACHE_DIR = _CACHE
    try:
        yield
    finally:
        numba.config.CACHE_DIR = before


def jit(fn=None, *, inline: bool = False):
    """fn compiled in nopython mode and cached with this version of the package. With
    `inline`, every compiled caller takes fn's code into its own (numba's inline="always"):
    a call between compiled functions costs an atomic reference count per array it passes, more
    than a small hot helper's own work, and inlined code lets numba drop those counts. Inlining
    costs compile time, so it is for the helpers of the hot path, not the rare branches."""
    if fn is None:
        return lambda f: jit(f, inline=inline)
    options = {"inline": "always"} if inline else {}
    if _CACHE is None:
        return njit(**options)(fn)
    with _cache_scope():
        return njit(cache=True, **options)(fn)


def compiled(fn):
    """A plain function of the package compiled as it is, with every function of the package it
    calls compiled the same way: compiled code then follows the very rule the Python code does,
    not a copy of it."""
    done = _COMPILED.get(fn)
    if done is None:
        scope = dict(fn.__globals__)
        for name in fn.__code__.co_names:
            dep = scope.get(name)
            if isinstance(dep, types.FunctionType) and dep.__module__.startswith("iommu_core."):
                scope[name] = compiled(dep)
        done = _COMPILED[fn] = njit(types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__))
    return done


_COMPILED: dict = {}

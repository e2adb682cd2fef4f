"""A sweep file (TOML) expanded into cells: scenarios x policies x APIs x formats x costs x seeds.

`[sweep]` gives the grid; each `[[extra]]` table is a further grid made of the
`[sweep]` axes with some of them replaced (e.g. one scenario under a second
format), so a sweep need not run the full product to cover a side question.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ..xen.costs import CostModel
from ..xen.rules import APIS, POLICIES, UNSHARED_FORMATS

AXES = ("scenarios", "policies", "apis", "formats", "p2m_formats", "seeds")
SWEEP_KEYS = {"name", "check", *AXES}
DEFAULT = Path(__file__).parent / "default.toml"
MAX_CELLS = 20_000          # a bigger grid is refused unless the caller raises the limit (--max-cells)


class SweepError(ValueError):
    pass


@dataclass(frozen=True)
class Cell:
    scenario: str
    policy: str
    api: str
    format: str
    p2m_format: str
    costs: str
    seed: int
    check: bool

    @property
    def key(self) -> str:
        return "/".join(str(x) for x in (self.scenario, self.policy, self.api, self.format, self.p2m_format,
                                          self.costs, self.seed))


@dataclass(frozen=True)
class Sweep:
    name: str
    file: str
    cells: tuple[Cell, ...]
    costs: dict            # variant name -> overrides
    sha256: str = ""       # of the sweep file's text ("" for a sweep made in code)
    text: str = ""         # the sweep file's text: the whole definition, stored in the run's manifest


def sweep_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def load_sweep(path=None, max_cells: int | None = MAX_CELLS) -> Sweep:
    """The sweep in a file (default: the project's default sweep); more than `max_cells` cells
    (None: no limit) is refused."""
    path = Path(path) if path else DEFAULT
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SweepError(f"{path}: no such sweep file") from None
    except IsADirectoryError:
        raise SweepError(f"{path}: a directory, not a sweep file (expected a .toml file)") from None
    except OSError as e:
        raise SweepError(f"{path}: cannot read the sweep file: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SweepError(f"{path}: not a text file (byte {e.start} is {raw[e.start]:#04x}; expected UTF-8 "
                         f"TOML)") from None
    return sweep_from_text(text, path, max_cells)


def sweep_from_text(text: str, path, max_cells: int | None = MAX_CELLS) -> Sweep:
    """The sweep a file's text defines; `path` names it in errors and anchors relative scenario files
    (a run's manifest keeps both, so --resume rebuilds the very sweep it started with)."""
    path = Path(path)

    def fail(key, what, value):
        return SweepError(f"{path}: {key}: {what} (got {value!r})")

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SweepError(f"{path}: not valid TOML: {e}") from None
    unknown = sorted(set(data) - {"sweep", "costs", "extra"})
    if unknown:
        raise fail(unknown[0], "unknown table; known: sweep, costs, extra", data[unknown[0]])
    sw = data.get("sweep")
    if not isinstance(sw, dict):
        raise fail("sweep", "missing table", sw)
    unknown = sorted(set(sw) - SWEEP_KEYS)
    if unknown:
        raise fail(f"sweep.{unknown[0]}", f"unknown key; known: {', '.join(sorted(SWEEP_KEYS))}", sw[unknown[0]])
    name = sw.get("name", path.stem)
    if not isinstance(name, str) or not name.strip():
        raise fail("sweep.name", "must be a non-empty string", name)
    check = sw.get("check", False)
    if not isinstance(check, bool):
        raise fail("sweep.check", "must be true or false", check)
    costs = data.get("costs", {"default": {}})
    if not isinstance(costs, dict) or not costs:
        raise fail("costs", "must be a table of named variants", costs)
    for variant, overrides in costs.items():
        if not isinstance(overrides, dict):
            raise fail(f"costs.{variant}", "must be a table of constants", overrides)
        try:
            CostModel.with_overrides(**overrides)
        except (ValueError, TypeError) as e:
            raise fail(f"costs.{variant}", str(e), overrides) from None
    base = _axes(sw, "sweep", path, fail)
    extras = data.get("extra", [])
    if not isinstance(extras, list) or not all(isinstance(e, dict) for e in extras):
        raise fail("extra", "must be an array of tables ([[extra]])", extras)
    grids = [base]
    for i, extra in enumerate(extras):
        unknown = sorted(set(extra) - set(AXES))
        if unknown:
            raise fail(f"extra[{i}].{unknown[0]}", f"unknown key; known: {', '.join(AXES)}", extra[unknown[0]])
        grids.append({**base, **_axes(extra, f"extra[{i}]", path, fail, defaults=False)})
    # Count before expanding: a grid of millions of cells is refused, not built.
    bound = len(costs) * sum(math.prod(len(g[a]) for a in AXES) for g in grids)
    if max_cells is not None and bound > 4 * max_cells:
        raise _too_many(path, bound, max_cells, "up to ")
    cells = dict.fromkeys(Cell(s, p, a, f, pf, c, seed, check)     # in order, each cell once
                          for g in grids
                          for s, p, a, f, pf, c, seed in itertools.product(
                              g["scenarios"], g["policies"], g["apis"], g["formats"], g["p2m_formats"],
                              list(costs), g["seeds"]))
    if max_cells is not None and len(cells) > max_cells:
        raise _too_many(path, len(cells), max_cells)
    return Sweep(name=name, file=str(path), cells=tuple(cells), costs=costs, sha256=sweep_hash(text), text=text)


def _too_many(path: Path, n: int, max_cells: int, bound: str = "") -> SweepError:
    return SweepError(f"{path}: a grid of {bound}{n:,} cells, more than the limit of {max_cells:,}; raise the limit "
                      f"with --max-cells {n} if you mean it")


def _axes(table: dict, where: str, path: Path, fail, defaults: bool = True) -> dict:
    """The grid axes a table gives (with defaults, or only those present), each checked."""
    def names(key, allowed=None, default=None, kind=str):
        value = table.get(key, default)
        if not isinstance(value, list) or not value or not all(isinstance(v, kind) and not isinstance(v, bool)
                                                              for v in value):
            raise fail(f"{where}.{key}", f"must be a non-empty list of {kind.__name__}", value)
        for v in value:
            if allowed is not None and v not in allowed:
                raise fail(f"{where}.{key}", f"unknown value {v!r}; choose from {list(allowed)}", value)
        return value

    from ..scenarios.files import P2M_FORMAT_CHOICES, ScenarioError, load_scenario
    axes = {}
    for key, allowed, default, kind in (
            ("scenarios", None, None, str), ("policies", POLICIES, list(POLICIES), str),
            ("apis", APIS, list(APIS), str), ("formats", UNSHARED_FORMATS, ["ipmmu-s1-39"], str),
            ("p2m_formats", P2M_FORMAT_CHOICES, ["p2m-s2-40"], str), ("seeds", None, [0], int)):
        if defaults or key in table:
            axes[key] = names(key, allowed, default, kind)
    if "scenarios" in axes:                 # a file name is relative to the sweep file
        axes["scenarios"] = [s if not s.endswith(".toml") else str(path.parent / s) for s in axes["scenarios"]]
    for s in axes.get("scenarios", ()):
        try:
            load_scenario(s)
        except ScenarioError as e:
            # the scenario's own message names the value already
            raise SweepError(f"{path}: {where}.scenarios: cannot load: {e}") from None
    if any(s < 0 for s in axes.get("seeds", ())):
        raise fail(f"{where}.seeds", "seeds must be >= 0", axes["seeds"])
    return axes

"""A sweep file (TOML) expanded into cells: scenarios x policies x APIs x formats x costs x seeds."""

from __future__ import annotations

import itertools
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ..xen.costs import CostModel
from ..xen.domain import POLICIES
from ..xen.iommu import APIS

SWEEP_KEYS = {"name", "scenarios", "policies", "apis", "formats", "p2m_formats", "seeds", "check"}
DEFAULT = Path(__file__).parent / "default.toml"


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


def load_sweep(path=None) -> Sweep:
    path = Path(path) if path else DEFAULT

    def fail(key, what, value):
        return SweepError(f"{path}: {key}: {what} (got {value!r})")

    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SweepError(f"{path}: no such sweep file") from None
    except tomllib.TOMLDecodeError as e:
        raise SweepError(f"{path}: not valid TOML: {e}") from None
    unknown = sorted(set(data) - {"sweep", "costs"})
    if unknown:
        raise fail(unknown[0], "unknown table; known: sweep, costs", data[unknown[0]])
    sw = data.get("sweep")
    if not isinstance(sw, dict):
        raise fail("sweep", "missing table", sw)
    unknown = sorted(set(sw) - SWEEP_KEYS)
    if unknown:
        raise fail(f"sweep.{unknown[0]}", f"unknown key; known: {', '.join(sorted(SWEEP_KEYS))}", sw[unknown[0]])

    def names(key, allowed=None, default=None, kind=str):
        value = sw.get(key, default)
        if not isinstance(value, list) or not value or not all(isinstance(v, kind) and not isinstance(v, bool)
                                                              for v in value):
            raise fail(f"sweep.{key}", f"must be a non-empty list of {kind.__name__}", value)
        for v in value:
            if allowed is not None and v not in allowed:
                raise fail(f"sweep.{key}", f"unknown value {v!r}; choose from {list(allowed)}", value)
        return value

    from ..scenarios.files import ScenarioError, load_scenario
    scenarios = names("scenarios")
    for s in scenarios:
        try:
            load_scenario(s if not s.endswith(".toml") else str(path.parent / s))
        except ScenarioError as e:
            raise fail("sweep.scenarios", f"cannot load: {e}", s) from None
    policies = names("policies", POLICIES, list(POLICIES))
    apis = names("apis", APIS, list(APIS))
    formats = names("formats", ("ipmmu-s1-32", "ipmmu-s1-39"), ["ipmmu-s1-39"])
    p2m_formats = names("p2m_formats", ("p2m-s2-40", "p2m-s2-48"), ["p2m-s2-40"])
    seeds = names("seeds", default=[0], kind=int)
    if any(s < 0 for s in seeds):
        raise fail("sweep.seeds", "seeds must be >= 0", seeds)
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
    name = sw.get("name", path.stem)
    scen = [s if not s.endswith(".toml") else str(path.parent / s) for s in scenarios]
    cells = tuple(Cell(s, p, a, f, pf, c, seed, check)
                  for s, p, a, f, pf, c, seed in itertools.product(scen, policies, apis, formats, p2m_formats,
                                                                   list(costs), seeds))
    return Sweep(name=name, file=str(path), cells=cells, costs=costs)

"""Scenario files: a board and a domain mix in TOML, loaded strictly.

A scenario file names a built-in board and lists the domains that boot on it
(dom0 is implicit and always first). `load_scenario` takes a path to a
``.toml`` file or the name of a scenario the project ships (`shipped()`:
h3, m3w, server, small-h3, in ``iommu_core/scenarios/data``).

Format (every table and key below; anything else is an error)::

    [scenario]                   # required
    name = "h3"                  # required
    description = "..."          # default ""
    board = "h3"                 # required: a built-in board (h3, m3w, server), or a device
                                 # tree (.dts / .dtb) path, relative to this file
    dom0_mem_mib = 1024          # default 1024
    pa_bits = 44                 # default: the board's CPU (a device tree's cpu compatible),
                                 # else none; the P2M's geometry then follows Xen 4.17's
                                 # choice for that PA size (p2m format "auto")
    dom0_unpopulated_alloc = false  # dom0's kernel has XEN_UNPOPULATED_ALLOC: the toolstack's
                                 # foreign mappings need no ballooned page (default false,
                                 # as the captured Debian kernel)
    arrival_spread_ms = 1.0      # default 1.0: domUs start at seeded times in [0, this)
    per_page_flush = "4.12"      # variant rule (rules.py): "4.12" (default) or "pre-4.12"
    invalidation_queue = "per-context"  # "per-context" (default, real) or "host" (design assumption)

    [board_options]              # optional: keyword arguments of the board profile
    ram_gib = 512                #   (server: ram_gib, functions; h3 and m3w take none)

    [[domain]]                   # explicit domains, after dom0, in file order
    name = "driver"              # required
    kind = "driver"              # required: driver, guest, infotainment, small, large
    ram_mib = 512                # required, > 0
    passthrough = false          # the passthrough flag (XEN_DOMCTL_CDF_iommu)
    devices = []                 # board devices assigned at creation
    hotplug = []                 # board devices assigned once booted
    unplug = []                  # of those, taken away again after that
    grant_pages = 0              # pages dom0's backends map from it
    balloon_mib = 0              # ballooned out, then back in (<= ram_mib)
    destroy = false              # destroyed after boot
    kernel_kib = 32183           # the kernel and ramdisk the toolstack loads through dom0,
    ramdisk_kib = 964            #   a foreign mapping per page (default: the capture's)
    count = 1                    # > 1: domains <name>-1 .. <name>-N, alike; then
                                 # devices and hotplug must be empty

    [[mix]]                      # a fleet drawn with the seed, after the explicit domains
    name = "fleet"               # required: domains fleet-1 .. fleet-N
    count = 20                   # required, >= 1
    kind = "guest"               # default "guest"
    ram_mib = [128, 256, 512]    # required: an int, or a list drawn from uniformly
    grant_pages = [0, 256]       # default 0: an int, or a list drawn from uniformly
    device_share = 0.2           # default 0: share given a device at creation (passthrough = true)
    hotplug_share = 0.1          # default 0: share given a device hot-plugged once booted
    declared_share = 0.5         # default 0: of the hot-plugged ones, share created with passthrough
    balloon_share = 0.3          # default 0: share that balloons out and in a quarter of its RAM
    destroy_share = 0.2          # default 0: share destroyed after boot
    devices = ["sdhi0", "sdhi1"] # default: every board device no explicit domain and no other
                                 # mix lists, in board order. A list reserves those devices
                                 # for this mix.

Draws (numpy ``default_rng(seed)``, mixes in file order, each mix drawing all
its arrays whatever its shares, so a mix's draws never depend on another's
values): RAM sizes, one uniform u per domain (u < device_share: a device at
creation; device_share <= u < device_share + hotplug_share: a hot-plugged
device; so the two shares must sum to at most 1), the declared draw, grant
pages, the balloon draw, the destroy draw. The balloon is a quarter of the RAM
rounded down to 4 KiB.

Devices: a device must be on the board (``Board.master``) and is given to one
domain only (explicit domains' devices and hotplug, and mix pools, are all
disjoint). A mix hands out its pool in order, to its domains in order; when
the pool runs out, the remaining domains that drew a device get none (their
passthrough flag still follows the draw). Whether the IPMMU has a context for
each is decided when the host runs (a refused assignment is counted, not an
error).

Memory: dom0, every domU's RAM and each domU's grant-table and magic pages
must fit in the board's RAM at once (destroyed domains count too: they may
still be alive while others boot).

Errors are `ScenarioError` (a ValueError): ``<file>: <key path>: <what is
wrong> (got <value>)``, key paths like ``domain[2].ram_mib`` (array indices
from 0, in file order). Nothing is returned from a file with any error: the
whole scenario is built and checked first.
"""

from __future__ import annotations

import inspect
import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..pgtable.format import GRANULE
from ..units import MIB
from ..xen.board import BOARDS, Board, checked_int
from ..xen.board import board as make_board
from ..xen.domain import MAGIC_PAGES, DomainSpec
from ..xen.geometry import p2m_format_for
from ..xen.host import INVALIDATION_QUEUES, HostConfig
from ..xen.iommu import SHARED_MAX_IPA_BITS
from ..xen.rules import PER_PAGE_FLUSH_VARIANTS
from ..xen.toolstack import KERNEL_KIB, RAMDISK_KIB

DATA = Path(__file__).parent / "data"
XEN_CAPTURE = DATA / "xen-real"          # a copy of shared/xen-real's call log, counters and events
KINDS = ("driver", "guest", "infotainment", "small", "large")

SCENARIO_KEYS = {"name", "description", "board", "dom0_mem_mib", "arrival_spread_ms", "pa_bits",
                 "dom0_unpopulated_alloc", "per_page_flush", "invalidation_queue"}
# P2M formats a run can ask for; "auto" is the one Xen 4.17 builds on the scenario's CPU.
P2M_FORMAT_CHOICES = ("auto", "p2m-s2-32", "p2m-s2-36", "p2m-s2-40", "p2m-s2-42", "p2m-s2-44", "p2m-s2-48")
DEFAULT_P2M_FORMAT = "p2m-s2-40"          # when nothing says the CPU's PA size
DOMAIN_KEYS = {"name", "kind", "ram_mib", "passthrough", "devices", "hotplug", "unplug", "grant_pages",
               "balloon_mib", "destroy", "count", "kernel_kib", "ramdisk_kib"}
MIX_KEYS = {"name", "count", "kind", "ram_mib", "grant_pages", "device_share", "hotplug_share",
            "declared_share", "balloon_share", "destroy_share", "devices"}
TABLES = {"scenario", "board_options", "domain", "mix"}


class ScenarioError(ValueError):
    """A scenario file that cannot be loaded: `<file>: <key path>: <what is wrong> (got <value>)`."""


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    board: Board
    specs: tuple[DomainSpec, ...]        # dom0 first
    dom0_mem: int                        # bytes
    arrival_spread_ns: float
    pa_bits: int | None = None           # the CPU's PA size (None: unknown)
    dom0_unpopulated_alloc: bool = False
    per_page_flush: str = "4.12"             # rules.PER_PAGE_FLUSH_VARIANTS
    invalidation_queue: str = "per-context"  # host.INVALIDATION_QUEUES

    def host_config(self, **overrides) -> HostConfig:
        """A HostConfig with this scenario's dom0 memory and arrival spread (and `overrides`)."""
        overrides["p2m_format"] = resolve_p2m_format(overrides.get("p2m_format", "auto"), self.pa_bits,
                                                     overrides.get("policy", "eager"))
        overrides.setdefault("dom0_unpopulated_alloc", self.dom0_unpopulated_alloc)
        overrides.setdefault("per_page_flush", self.per_page_flush)
        overrides.setdefault("invalidation_queue", self.invalidation_queue)
        return HostConfig(dom0_mem=self.dom0_mem, arrival_spread_ns=self.arrival_spread_ns, **overrides)


def resolve_p2m_format(requested: str, pa_bits: int | None, policy: str) -> str:
    """A P2M format by name, or for "auto" the one Xen 4.17 builds: from the CPU's PA size,
    capped at 40 bits when the IPMMU shares the P2M (p2m_restrict_ipa_bits); p2m-s2-40 when
    the PA size is unknown."""
    if requested != "auto":
        return requested
    if pa_bits is None:
        return DEFAULT_P2M_FORMAT
    return p2m_format_for(pa_bits, SHARED_MAX_IPA_BITS if policy == "shared" else None)


def shipped() -> dict[str, Path]:
    """Every scenario the project ships: name -> file."""
    return {p.stem: p for p in sorted(DATA.glob("*.toml"))}


def load_scenario(path_or_name: str, seed: int = 0) -> Scenario:
    """The scenario in a .toml file, or the shipped scenario of that name; mixes drawn with `seed`."""
    if not isinstance(path_or_name, (str, Path)):
        raise ScenarioError(f"scenario: must be a path or a shipped name (got {path_or_name!r})")
    try:
        seed = checked_int("seed", seed, 0)
    except ValueError as e:
        raise ScenarioError(f"{path_or_name}: {e}") from None
    text = str(path_or_name)
    ships = shipped()
    if text in ships:
        path = ships[text]
    else:
        path = Path(text)
        if path.is_dir():
            raise ScenarioError(f"{text}: a directory, not a scenario file (expected a .toml file or a "
                                f"shipped scenario: {', '.join(ships)})")
        if not path.is_file():                  # the value once: it is the file name too
            raise ScenarioError(f"{text}: no such scenario file, nor a shipped scenario ({', '.join(ships)})")
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{path}: TOML: {e} (got a file that is not TOML)") from None
    except UnicodeDecodeError:
        raise ScenarioError(f"{path}: not a text file (expected UTF-8 TOML)") from None
    except OSError as e:
        raise ScenarioError(f"{path}: cannot read the scenario file: {e.strerror}") from None
    return _Reader(str(path), seed).read(data)


# -- reading ------------------------------------------------------------------------------------

class _Reader:
    def __init__(self, file: str, seed: int):
        self.file, self.seed = file, seed

    def fail(self, key: str, what: str, value) -> ScenarioError:
        return ScenarioError(f"{self.file}: {key}: {what} (got {value!r})")

    # typed getters: each names the key path and the value it refuses
    def _keys(self, table, key: str, allowed: set[str], required: tuple[str, ...] = ()):
        if not isinstance(table, dict):
            raise self.fail(key, "must be a table", table)
        unknown = sorted(set(table) - allowed)
        if unknown:
            raise self.fail(f"{key}.{unknown[0]}", f"unknown key; known: {', '.join(sorted(allowed))}",
                            table[unknown[0]])
        for r in required:
            if r not in table:
                raise self.fail(f"{key}.{r}", "missing key", table)

    def int_(self, table, key, path, default=None, minimum=0):
        v = table.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.fail(path, "must be an integer", v)
        if v < minimum:
            raise self.fail(path, f"must be at least {minimum}", v)
        return v

    def num(self, table, key, path, default, lo=0.0, hi=None):
        v = table.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise self.fail(path, "must be a finite number", v)
        if v < lo or (hi is not None and v > hi):
            raise self.fail(path, f"must be within [{lo}, {hi}]" if hi is not None else f"must be at least {lo}", v)
        return float(v)

    def bool_(self, table, key, path, default=False):
        v = table.get(key, default)
        if not isinstance(v, bool):
            raise self.fail(path, "must be true or false", v)
        return v

    def str_(self, table, key, path, default=None, choices=None):
        v = table.get(key, default)
        if not isinstance(v, str) or not v and default != "":
            raise self.fail(path, "must be a non-empty string", v)
        if choices is not None and v not in choices:
            raise self.fail(path, f"must be one of {', '.join(choices)}", v)
        return v

    def strs(self, table, key, path):
        v = table.get(key, [])
        if not isinstance(v, list):
            raise self.fail(path, "must be a list of strings", v)
        for i, x in enumerate(v):
            if not isinstance(x, str) or not x:
                raise self.fail(f"{path}[{i}]", "must be a non-empty string", x)
        return v

    def ints(self, table, key, path, default, minimum):
        """An int or a non-empty list of ints (the values a mix draws from)."""
        v = table.get(key, default)
        if isinstance(v, list):
            if not v:
                raise self.fail(path, "must not be an empty list", v)
            for i, x in enumerate(v):
                self.int_({"x": x}, "x", f"{path}[{i}]", minimum=minimum)
            return list(v)
        return [self.int_(table, key, path, default, minimum)]

    # the file
    def read(self, data: dict) -> Scenario:
        unknown = sorted(set(data) - TABLES)
        if unknown:
            raise self.fail(unknown[0], f"unknown table or key; known: {', '.join(sorted(TABLES))}",
                            data[unknown[0]])
        if "scenario" not in data:
            raise self.fail("scenario", "missing table", sorted(data))
        sc = data["scenario"]
        self._keys(sc, "scenario", SCENARIO_KEYS, ("name", "board"))
        name = self.str_(sc, "name", "scenario.name")
        description = self.str_(sc, "description", "scenario.description", default="")
        board_name = self.str_(sc, "board", "scenario.board")
        tree = board_name.endswith((".dts", ".dtb"))
        if not tree and board_name not in BOARDS:
            raise self.fail("scenario.board", f"unknown board; known: {', '.join(BOARDS)}, or a .dts / .dtb "
                            f"file", board_name)
        dom0_mib = self.int_(sc, "dom0_mem_mib", "scenario.dom0_mem_mib", default=1024, minimum=1)
        spread_ms = self.num(sc, "arrival_spread_ms", "scenario.arrival_spread_ms", default=1.0)
        b = self.tree(board_name) if tree else self.board(board_name, data.get("board_options", {}))
        pa_bits = self.int_(sc, "pa_bits", "scenario.pa_bits", default=b.pa_bits or 0, minimum=0) or None
        if pa_bits is not None and pa_bits < 32:
            raise self.fail("scenario.pa_bits", "must be at least 32 (Xen 4.17 knows 32 to 48)", pa_bits)

        specs = [DomainSpec("dom0", "dom0", dom0_mib * MIB, passthrough=True)]
        where = ["scenario"]                             # the table each spec comes from
        owner: dict[str, str] = {}                       # device -> the domain or mix that has it
        domains = data.get("domain", [])
        if not isinstance(domains, list):
            raise self.fail("domain", "must be an array of tables ([[domain]])", domains)
        for i, t in enumerate(domains):
            new = self.domain(t, f"domain[{i}]", b, owner)
            specs += new
            where += [f"domain[{i}].name"] * len(new)
        mixes = data.get("mix", [])
        if not isinstance(mixes, list):
            raise self.fail("mix", "must be an array of tables ([[mix]])", mixes)
        pools = []
        for i, t in enumerate(mixes):                    # mixes' own pools first: they reserve devices
            self._keys(t, f"mix[{i}]", MIX_KEYS, ("name", "count", "ram_mib"))
            pools.append(self.devices(t, "devices", f"mix[{i}].devices", b, owner, f"mix[{i}]")
                         if "devices" in t else None)
        free = [m.name for m in b.masters if m.name not in owner]
        rng = np.random.default_rng(self.seed)
        for i, (t, pool) in enumerate(zip(mixes, pools)):
            if pool is None:
                pool = free
            new = self.mix(t, f"mix[{i}]", pool, rng)
            specs += new
            where += [f"mix[{i}].name"] * len(new)
            used = {d for s in new for d in (*s.devices, *s.hotplug)}
            free = [d for d in free if d not in used]

        seen: dict[str, str] = {}
        for s, w in zip(specs, where):
            if s.name in seen:
                raise self.fail(w, f"domain name already used by {seen[s.name]}", s.name)
            seen[s.name] = w.removesuffix(".name")
        self.fits(b, specs)
        return Scenario(name=name, description=description, board=b, specs=tuple(specs),
                        dom0_mem=dom0_mib * MIB, arrival_spread_ns=spread_ms * 1e6, pa_bits=pa_bits,
                        dom0_unpopulated_alloc=self.bool_(sc, "dom0_unpopulated_alloc",
                                                          "scenario.dom0_unpopulated_alloc"),
                        per_page_flush=self.str_(sc, "per_page_flush", "scenario.per_page_flush", "4.12",
                                                 PER_PAGE_FLUSH_VARIANTS),
                        invalidation_queue=self.str_(sc, "invalidation_queue", "scenario.invalidation_queue",
                                                     "per-context", INVALIDATION_QUEUES))

    def tree(self, name: str) -> Board:
        """A board read from a device tree, its path relative to the scenario file."""
        from .devicetree import board_from_devicetree

        path = Path(name) if Path(name).is_absolute() else Path(self.file).parent / name
        try:
            return board_from_devicetree(path)
        except ValueError as e:
            raise self.fail("scenario.board", f"cannot read the device tree: {e}", name) from None

    def board(self, name: str, options) -> Board:
        if not isinstance(options, dict):
            raise self.fail("board_options", "must be a table", options)
        params = inspect.signature(BOARDS[name]).parameters
        for k, v in options.items():
            if k not in params:
                known = ", ".join(params) or "none"
                raise self.fail(f"board_options.{k}", f"board {name} takes no such option; known: {known}", v)
        try:
            return make_board(name, **options)
        except (ValueError, TypeError) as e:
            key = next((k for k in options if k in str(e)), None)
            what = re.sub(r", got [^,]*$", "", str(e))          # the value goes in "(got ...)"
            raise self.fail(f"board_options.{key}" if key else "board_options", what,
                            options[key] if key else options) from None

    def devices(self, t, key, path, b: Board, owner: dict, who: str) -> list[str]:
        names = self.strs(t, key, path)
        for j, d in enumerate(names):
            try:
                b.master(d)
            except ValueError as e:
                raise self.fail(f"{path}[{j}]", str(e), d) from None
            if d in owner:
                raise self.fail(f"{path}[{j}]", f"device already given to {owner[d]}", d)
            owner[d] = who
        return names

    def domain(self, t, path, b: Board, owner: dict) -> list[DomainSpec]:
        self._keys(t, path, DOMAIN_KEYS, ("name", "kind", "ram_mib"))
        name = self.str_(t, "name", f"{path}.name")
        if name == "dom0":
            raise self.fail(f"{path}.name", "dom0 is implicit; give its memory as scenario.dom0_mem_mib", name)
        kind = self.str_(t, "kind", f"{path}.kind", choices=KINDS)
        ram = self.int_(t, "ram_mib", f"{path}.ram_mib", minimum=1)
        count = self.int_(t, "count", f"{path}.count", default=1, minimum=1)
        who = f"{path} ({name!r})"
        for key in ("devices", "hotplug"):
            if count > 1 and t.get(key):
                raise self.fail(f"{path}.{key}", f"a device goes to one domain only: give {key} only with "
                                f"count = 1", t[key])
        devices = self.devices(t, "devices", f"{path}.devices", b, owner, who)
        hotplug = self.devices(t, "hotplug", f"{path}.hotplug", b, owner, who)
        unplug = self.strs(t, "unplug", f"{path}.unplug")
        for j, d in enumerate(unplug):
            if d not in devices and d not in hotplug:
                raise self.fail(f"{path}.unplug[{j}]", "the domain is never given this device", d)
            if d in unplug[:j]:
                raise self.fail(f"{path}.unplug[{j}]", "unplugged twice", d)
        balloon = self.int_(t, "balloon_mib", f"{path}.balloon_mib", default=0)
        if balloon > ram:
            raise self.fail(f"{path}.balloon_mib", f"must be at most ram_mib ({ram})", balloon)
        kw = {"kind": kind, "ram_bytes": ram * MIB,
              "passthrough": self.bool_(t, "passthrough", f"{path}.passthrough"),
              "devices": tuple(devices), "hotplug": tuple(hotplug), "unplug": tuple(unplug),
              "grant_pages": self.int_(t, "grant_pages", f"{path}.grant_pages", default=0),
              "balloon_bytes": balloon * MIB,
              "destroy": self.bool_(t, "destroy", f"{path}.destroy"),
              "kernel_kib": self.int_(t, "kernel_kib", f"{path}.kernel_kib", default=KERNEL_KIB),
              "ramdisk_kib": self.int_(t, "ramdisk_kib", f"{path}.ramdisk_kib", default=RAMDISK_KIB)}
        if (kw["kernel_kib"] + kw["ramdisk_kib"]) * 1024 + GRANULE > ram * MIB:
            raise self.fail(f"{path}.kernel_kib", f"the kernel and ramdisk ({kw['ramdisk_kib']} KiB) and a "
                            f"device tree page must fit in ram_mib ({ram})", kw["kernel_kib"])
        if kw["grant_pages"] > ram * MIB // GRANULE:
            raise self.fail(f"{path}.grant_pages", f"must be at most the domain's RAM pages "
                            f"({ram * MIB // GRANULE})", kw["grant_pages"])
        if count == 1:
            return [DomainSpec(name, **kw)]
        return [DomainSpec(f"{name}-{k + 1}", **kw) for k in range(count)]

    def mix(self, t, path, pool: list[str], rng) -> list[DomainSpec]:
        name = self.str_(t, "name", f"{path}.name")
        count = self.int_(t, "count", f"{path}.count", minimum=1)
        kind = self.str_(t, "kind", f"{path}.kind", default="guest", choices=KINDS)
        ram = self.ints(t, "ram_mib", f"{path}.ram_mib", None, 1)
        grants = self.ints(t, "grant_pages", f"{path}.grant_pages", 0, 0)
        if max(grants) > min(ram) * MIB // GRANULE:
            raise self.fail(f"{path}.grant_pages", f"must be at most the smallest RAM's pages "
                            f"({min(ram) * MIB // GRANULE})", t["grant_pages"])
        share = {k: self.num(t, k, f"{path}.{k}", 0.0, 0.0, 1.0)
                 for k in ("device_share", "hotplug_share", "declared_share", "balloon_share", "destroy_share")}
        if share["device_share"] + share["hotplug_share"] > 1:
            raise self.fail(f"{path}.hotplug_share", f"device_share + hotplug_share must be at most 1 "
                            f"(device_share {share['device_share']})", share["hotplug_share"])
        sizes = rng.choice(np.array(ram, np.int64), count)
        u = rng.random(count)
        declared = rng.random(count) < share["declared_share"]
        grant = rng.choice(np.array(grants, np.int64), count)
        balloon = rng.random(count) < share["balloon_share"]
        destroy = rng.random(count) < share["destroy_share"]
        at_create = u < share["device_share"]
        hot = ~at_create & (u < share["device_share"] + share["hotplug_share"])
        left = list(pool)
        out = []
        for k in range(count):
            ram_bytes = int(sizes[k]) * MIB
            dev = (left.pop(0),) if (at_create[k] or hot[k]) and left else ()
            out.append(DomainSpec(
                f"{name}-{k + 1}", kind, ram_bytes,
                passthrough=bool(at_create[k] or (hot[k] and declared[k])),
                devices=dev if at_create[k] else (), hotplug=dev if hot[k] else (),
                grant_pages=int(grant[k]),
                balloon_bytes=(ram_bytes // 4) // GRANULE * GRANULE if balloon[k] else 0,
                destroy=bool(destroy[k])))
        return out

    def fits(self, b: Board, specs: list[DomainSpec]) -> None:
        dom0 = specs[0].ram_bytes
        if dom0 > b.ram_bytes:
            raise self.fail("scenario.dom0_mem_mib", f"more than board {b.name}'s {b.ram_bytes // MIB} MiB of RAM",
                            dom0 // MIB)
        domus = sum(s.ram_bytes + (s.grant_frames + MAGIC_PAGES) * GRANULE for s in specs[1:])
        if dom0 + domus > b.ram_bytes:
            raise self.fail("domain + mix", f"dom0 ({dom0 // MIB} MiB) and the domUs (RAM, grant-table and magic "
                            f"pages: {domus / MIB:.2f} MiB, seed {self.seed}) need more than board {b.name}'s "
                            f"{b.ram_bytes // MIB} MiB of RAM", f"{(dom0 + domus) / MIB:.2f} MiB")

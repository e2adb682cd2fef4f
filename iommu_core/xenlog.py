"""Call logs of a real Xen: p2m_set_entry calls as captured (shared/xen-real), read strictly.

Columns (one row per call, in seq order): seq, domid, gfn, nr, mfn, type, type_name,
access, caller, hypercall, phase, rc. Numbers are decimal or 0x-hex; a removal's mfn
may be INVALID. `read_call_log` refuses a bad row with its row number and the reason;
`to_trace_rows` turns the calls into the trace schema (store/traces.py) so that `trace
replay` runs them under every policy and API; `replay_counters` applies them one by
one to per-domain P2Ms and reads Xen's statistics where a counters file says Xen
dumped them (debug key q).
"""

from __future__ import annotations

import csv
import gzip
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .xen.domain import DomainSpec
from .xen.p2m import P2M, Change
from .xen.p2m_types import TYPES

COLUMNS = ("seq", "domid", "gfn", "nr", "mfn", "type", "type_name", "access", "caller", "hypercall", "phase", "rc")
COUNTER_COLUMNS = ("seq", "domid", "moment", "mappings_1g", "shattered_1g", "mappings_2m", "shattered_2m",
                   "mappings_4k")
MAX_FRAME = 1 << 40                    # 52-bit addresses


class CallLogError(ValueError):
    """A call log that cannot be read: names the file, the row and the reason."""


@dataclass
class CallLog:
    path: Path
    seq: np.ndarray
    domid: np.ndarray
    gfn: np.ndarray
    nr: np.ndarray
    mfn: np.ndarray               # 0 for a removal
    type: np.ndarray              # P2M type codes (0 removes)
    caller: list
    hypercall: list
    phase: list

    def __len__(self) -> int:
        return len(self.seq)


def _open_text(path: Path):
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CallLogError(f"{path}: cannot read the call log: {e}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise CallLogError(f"{path}: not a readable gzip file: {e}") from None
    try:
        return io.StringIO(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise CallLogError(f"{path}: not a text CSV file: {e}") from None


def _number(text: str) -> int:
    return int(text, 16) if text.lower().startswith("0x") else int(text)


def read_call_log(path) -> CallLog:
    path = Path(path)
    reader = csv.reader(_open_text(path))
    header = next(reader, None)
    if header is None or tuple(h.strip() for h in header) != COLUMNS:
        raise CallLogError(f"{path}: row 1: the header must be {','.join(COLUMNS)} (got {header!r})")
    cols = {c: [] for c in COLUMNS}
    last_seq = -1
    for n, row in enumerate(reader, start=2):
        def fail(why, value):
            raise CallLogError(f"{path}: row {n}: {why} (got {value!r})")
        if len(row) != len(COLUMNS):
            fail(f"expected {len(COLUMNS)} fields", row)
        r = dict(zip(COLUMNS, (x.strip() for x in row)))
        vals = {}
        for c in ("seq", "domid", "gfn", "nr", "type", "access", "rc"):
            try:
                vals[c] = _number(r[c])
            except ValueError:
                fail(f"{c} must be a number", r[c])
        t = vals["type"]
        if not 0 <= t < len(TYPES):
            fail(f"type must be a Xen 4.17 P2M type code 0..{len(TYPES) - 1}", t)
        if r["type_name"] != TYPES[t]:
            fail(f"type_name must name type {t} ({TYPES[t]})", r["type_name"])
        if r["mfn"].upper() == "INVALID":
            if t != 0:
                fail("an INVALID mfn is a removal: its type must be 0 (invalid)", t)
            vals["mfn"] = 0
        else:
            try:
                vals["mfn"] = _number(r["mfn"])
            except ValueError:
                fail("mfn must be a number or INVALID", r["mfn"])
        if vals["seq"] <= last_seq:
            fail(f"seq must increase (the previous row has {last_seq})", vals["seq"])
        last_seq = vals["seq"]
        if vals["domid"] < 0 or vals["domid"] >= 0x7FF0:
            fail("domid must be a domain id 0..0x7fef", vals["domid"])
        if vals["nr"] <= 0:
            fail("nr must be at least 1", vals["nr"])
        if vals["gfn"] < 0 or vals["gfn"] + vals["nr"] > MAX_FRAME or vals["mfn"] < 0 \
                or vals["mfn"] + vals["nr"] > MAX_FRAME:
            fail("gfn, mfn and nr must stay within 52-bit addresses", (r["gfn"], r["nr"], r["mfn"]))
        if vals["rc"] != 0:
            fail("only calls that succeeded (rc 0) can be replayed", vals["rc"])
        if not r["phase"]:
            fail("phase must not be empty", r["phase"])
        for c in ("seq", "domid", "gfn", "nr", "mfn", "type"):
            cols[c].append(vals[c])
        for c in ("caller", "hypercall", "phase"):
            cols[c].append(r[c])
    if not cols["seq"]:
        raise CallLogError(f"{path}: row 2: the call log has no calls (got an empty file)")
    arr = {c: np.array(cols[c], np.int64) for c in ("seq", "domid", "gfn", "nr", "mfn", "type")}
    return CallLog(path, **arr, caller=cols["caller"], hypercall=cols["hypercall"], phase=cols["phase"])


def read_capture(capture) -> CallLog:
    """The call log of a capture folder (shared/xen-real's layout): p2m_set_entry.csv.gz, else .csv."""
    capture = Path(capture)
    gz = capture / "p2m_set_entry.csv.gz"
    return read_call_log(gz if gz.exists() else capture / "p2m_set_entry.csv")


def read_counters(path) -> list[dict]:
    """Xen's q dumps: one dict per row of a counters file (COUNTER_COLUMNS)."""
    path = Path(path)
    rows = list(csv.DictReader(_open_text(path)))
    if not rows or tuple(rows[0].keys()) != COUNTER_COLUMNS:
        raise CallLogError(f"{path}: row 1: the header must be {','.join(COUNTER_COLUMNS)} "
                           f"(got {list(rows[0].keys()) if rows else None!r})")
    out = []
    for n, r in enumerate(rows, start=2):
        try:
            out.append({k: (r[k] if k == "moment" else int(r[k])) for k in COUNTER_COLUMNS})
        except (TypeError, ValueError):
            raise CallLogError(f"{path}: row {n}: every field but moment must be an integer (got {r!r})") from None
    return out


def domain_specs(log: CallLog) -> list[DomainSpec]:
    """One spec per domid in order of appearance: RAM from its build's ram_rw calls (at least a page)."""
    specs = []
    for d in dict.fromkeys(log.domid.tolist()):
        mine = (log.domid == d) & (log.type == TYPES.index("ram_rw")) \
            & np.array([p.endswith("-build") for p in log.phase])
        pages = max(int(log.nr[mine].sum()), 1)
        # The log holds the toolstack's loads as they happened: no images for the model to load.
        specs.append(DomainSpec("dom0" if d == 0 else f"dom{d}", "dom0" if d == 0 else "guest", pages * 4096,
                                passthrough=d == 0, kernel_kib=0, ramdisk_kib=0))
    return specs


def to_trace_rows(log: CallLog) -> list[tuple]:
    """Trace rows (the trace's COLUMNS order): per domain, a step per run of calls of one phase,
    each call its own update; "booted" after a domain's build; a teardown for a destroyed domU."""
    index = {d: i for i, d in enumerate(dict.fromkeys(log.domid.tolist()))}
    steps: dict[int, list] = {i: [] for i in index.values()}
    for k in range(len(log)):
        i = index[int(log.domid[k])]
        phase = log.phase[k]
        if not steps[i] or steps[i][-1][0] != phase:
            if steps[i] and steps[i][-1][0].endswith("-build") and not phase.endswith("-build"):
                steps[i].append(("booted", []))
            steps[i].append((phase, []))
        steps[i][-1][1].append(k)
    for i, dom in steps.items():
        if dom and dom[-1][0].endswith("-build"):
            dom.append(("booted", []))
    destroyed = {p.split("-")[0] for p in log.phase if p.endswith("-destroy")}
    rows = []
    for d, i in index.items():
        for s, (label, calls) in enumerate(steps[i]):
            rows.append((0.0, i, s, label, 0, "step", -1, 0, 0, 0, "", "", -1, "", ""))
            if s == 0:
                rows.append((0.0, i, s, label, 0, "create", -1, 0, 0, 0, "", "", -1, "", ""))
            for c, k in enumerate(calls):
                rows.append((0.0, i, s, label, c, "update", i, int(log.gfn[k]), int(log.mfn[k]), int(log.nr[k]),
                             TYPES[int(log.type[k])], "", int(log.seq[k]), log.caller[k], log.hypercall[k]))
        if f"domU{d}" in destroyed:
            s = len(steps[i])
            rows.append((0.0, i, s, "destroy", 0, "step", -1, 0, 0, 0, "", "", -1, "", ""))
            rows.append((0.0, i, s, "destroy", 0, "teardown", -1, 0, 0, 0, "", "", -1, "", ""))
    return rows


def apply_call(log: CallLog, k: int, p2ms: dict[int, P2M], p2m_format: str) -> tuple[int, Change]:
    """Call k of the log on its domain's P2M (made on the domain's first call): (domid, change)."""
    d = int(log.domid[k])
    p2m = p2ms.get(d)
    if p2m is None:
        p2m = p2ms[d] = P2M(p2m_format)
    return d, p2m.set_entry(log.gfn[k:k + 1], log.mfn[k:k + 1], log.nr[k:k + 1], TYPES[int(log.type[k])])


def replay_counters(log: CallLog, dumps: list[dict], p2m_format: str) -> list[dict]:
    """Apply the calls one by one to a P2M per domain; at each dump, the model's counters."""
    p2ms: dict[int, P2M] = {}
    out = []
    order = sorted(range(len(dumps)), key=lambda j: dumps[j]["seq"])
    k = 0
    for j in order:
        dump = dumps[j]
        while k < len(log) and log.seq[k] < dump["seq"]:
            apply_call(log, k, p2ms, p2m_format)
            k += 1
        p2m = p2ms.get(dump["domid"])
        out.append({**dump, "model": p2m.xen_counters() if p2m is not None else None})
    return out

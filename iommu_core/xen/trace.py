"""Recording a host's run as a stream of P2M operations, and turning one back into steps.

A trace row is one action of one life-cycle step of one domain: create, one
extent of a P2M update (on that domain or, for a backend, on dom0), assign,
deassign, teardown, and a grant frame mapped or unmapped at dfn == mfn in a
direct-mapped domain's IOMMU (grant_map / grant_unmap, one row per frame); plus one "step" row that opens each step, so steps with no
action (a refused assignment, the "booted" mark) keep their place. Replaying
the steps through the same scheduler gives the same metrics as the run that
recorded them, for the policy and API it ran with (machine frames come from
that run's allocation order).
"""

from __future__ import annotations

import contextlib

import numpy as np

from .p2m_types import TYPES

COLUMNS = ("time_ns", "domid", "step", "label", "call", "op", "target", "gfn", "mfn", "count", "type", "device",
           "seq", "caller", "hypercall")
OPS = ("step", "create", "update", "assign", "deassign", "teardown", "grant_map", "grant_unmap")
GRANT_OPS = ("grant_map", "grant_unmap")


class Recorder:
    def __init__(self) -> None:
        self.rows: list[tuple] = []
        self._step = (0, 0, "", 0.0)
        self._call = 0
        self._muted = 0

    def begin(self, domid: int, step: int, label: str, time_ns: float) -> None:
        self._step = (domid, step, label, float(time_ns))
        self._call = 0
        self._add("step", -1, 0, 0, 0, "", "")

    def _add(self, op, target, gfn, mfn, count, p2m_type, device) -> None:
        domid, step, label, t = self._step
        self.rows.append((t, domid, step, label, self._call, op, target, gfn, mfn, count, p2m_type, device,
                          -1, "", ""))

    def action(self, op: str, device: str = "") -> None:
        if not self._muted:
            self._add(op, -1, 0, 0, 0, "", device)

    def update(self, target: int, gfn, mfn, nr, p2m_type) -> None:
        if self._muted:
            return
        gfn = np.atleast_1d(np.asarray(gfn, np.int64))
        mfn = np.broadcast_to(np.asarray(mfn, np.int64), gfn.shape)
        nr = np.broadcast_to(np.asarray(nr, np.int64), gfn.shape)
        types = np.broadcast_to(np.asarray(p2m_type), gfn.shape)
        for g, m, n, t in zip(gfn.tolist(), mfn.tolist(), nr.tolist(), types.tolist()):
            self._add("update", target, g, m, n, t, "")
        self._call += 1

    def grant_iommu(self, target: int, mfn, mapping: bool) -> None:
        if self._muted:
            return
        for m in np.atleast_1d(np.asarray(mfn, np.int64)).tolist():
            self._add("grant_map" if mapping else "grant_unmap", target, m, m, 1, "", "")
        self._call += 1

    @contextlib.contextmanager
    def muted(self):
        self._muted += 1
        try:
            yield
        finally:
            self._muted -= 1


def steps_from_rows(cols: dict, ndomains: int) -> list[list[tuple[str, list]]]:
    """Per domain, its steps in order as (label, actions), from validated trace columns."""
    order = np.lexsort((np.arange(len(cols["op"])), cols["step"], cols["domid"]))
    steps: list[list] = [[] for _ in range(ndomains)]
    call_key = None
    for r in order.tolist():
        op, d = cols["op"][r], int(cols["domid"][r])
        if op == "step":
            steps[d].append((cols["label"][r], []))
            call_key = None
            continue
        actions = steps[d][-1][1]
        if op == "update":
            key = (d, int(cols["step"][r]), int(cols["call"][r]))
            if key != call_key:
                actions.append(["update", int(cols["target"][r]), [], [], [], []])
                call_key = key
            for i, c in enumerate(("gfn", "mfn", "count", "type")):
                actions[-1][2 + i].append(cols[c][r])
        elif op in GRANT_OPS:
            key = (d, int(cols["step"][r]), int(cols["call"][r]))
            if key != call_key:
                actions.append(["grant_iommu", int(cols["target"][r]), [], op == "grant_map"])
                call_key = key
            actions[-1][2].append(cols["mfn"][r])
        elif op in ("assign", "deassign"):
            actions.append((op, cols["device"][r]))
            call_key = None
        else:
            actions.append((op,))
            call_key = None
    for dom in steps:
        for _, actions in dom:
            for k, a in enumerate(actions):
                if a[0] == "grant_iommu":
                    actions[k] = ("grant_iommu", a[1], np.array(a[2], np.int64), a[3])
                if a[0] == "update":
                    actions[k] = ("update", a[1], np.array(a[2], np.int64), np.array(a[3], np.int64),
                                  np.array(a[4], np.int64), np.array(a[5]))
    return steps


VALID_TYPES = frozenset(TYPES)

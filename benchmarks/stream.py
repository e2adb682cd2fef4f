"""The captured stream (shared/xen-real) replayed call by call, as fast as the model goes.

Three ways, each on a fresh P2M per domain per repetition of the stream:
  p2m            the P2M alone (Xen's counters kept);
  iommu          each change mirrored into an unshared IPMMU table per domain, as `eager` with the
                 per-page API does (every domain has one and holds a context), every counter kept;
  iommu+check    the same with the invariant checked after every call (IOMMU view == P2M DMA view).

Two paths: `compiled` (xen/stream.replay_calls, the default) and `python`, the calls applied one
by one (apply_call, follow, invariant.check), which the compiled path must equal bit for bit.

A small call is one single-page P2M map or unmap outside any stream, mirrored into the IOMMU:
`compiled` through stream.MirroredCalls.call, `python` through P2M.set_entry and follow.
"""

from __future__ import annotations

import time
import timeit
from typing import Callable, NamedTuple

import numpy as np

from iommu_core.scenarios.files import XEN_CAPTURE
from iommu_core.xen import invariant, stream
from iommu_core.xen.iommu import UnsharedIommu
from iommu_core.xen.p2m import P2M
from iommu_core.xenlog import CallLog, apply_call, read_capture

MODES = ("p2m", "iommu", "iommu+check")
PATHS = ("compiled", "python")
P2M_FORMAT = "p2m-s2-40"            # the captured Xen's (40-bit IPA)
IOMMU_FORMAT = "ipmmu-s1-39"


def captured_log() -> CallLog:
    return read_capture(XEN_CAPTURE)


def new_iommu() -> UnsharedIommu:
    return UnsharedIommu(IOMMU_FORMAT, "per-page")


def replay(log: CallLog, mode: str, calls: int | None = None, path: str = "compiled") -> int:
    """Replay the first `calls` calls of the log (all by default); returns how many ran."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose from {list(MODES)}")
    if path not in PATHS:
        raise ValueError(f"unknown path {path!r}; choose from {list(PATHS)}")
    n = len(log) if calls is None else min(calls, len(log))
    if path == "compiled":
        return stream.replay_calls(log, {}, None if mode == "p2m" else {}, new_iommu,
                                   check=mode == "iommu+check", p2m_format=P2M_FORMAT, stop=n)
    p2ms, iommus = {}, {}
    for k in range(n):
        d, change = apply_call(log, k, p2ms, P2M_FORMAT)
        if mode == "p2m":
            continue
        iommu = iommus.get(d)
        if iommu is None:
            iommu = iommus[d] = new_iommu()
        iommu.follow(change)
        if mode == "iommu+check":
            invariant.check(f"dom{d}", iommu, p2ms[d], change.touched)
    return n


def calls_per_second(log: CallLog, mode: str, calls: int, path: str = "compiled") -> float:
    """Wall-clock rate of `calls` calls: the stream replayed whole as often as it takes, each
    repetition on fresh tables, and then the part of it that remains. The compiled path is
    loaded (or compiled) first, outside the clock."""
    if path == "compiled":
        replay(log, mode, 100, path)
    start, done = time.perf_counter(), 0
    while done < calls:
        done += replay(log, mode, calls - done, path)
    return done / (time.perf_counter() - start)


ARGUMENTS = ("int", "array")
SMALL_PAIRS = 5000                  # map-and-unmap pairs per try of small_call_us, compiled


def small_pairs(path: str) -> int:
    """Pairs per try: the Python path is some 10x slower a call, so a tenth as many."""
    return SMALL_PAIRS if path == "compiled" else SMALL_PAIRS // 10


class SmallCall(NamedTuple):
    pair: Callable[[], None]
    p2m: P2M
    iommu: UnsharedIommu


def small_call_pair(arguments: str, path: str = "compiled") -> SmallCall:
    """A function that maps one page at a booted P2M's gfn 0x80001 and removes it again, each
    call mirrored; `arguments` ints or length-1 arrays. Both tables exist and the pair has run
    once, as in a booted guest, so a timed pair allocates nothing."""
    if arguments not in ARGUMENTS:
        raise ValueError(f"unknown arguments {arguments!r}; choose from {list(ARGUMENTS)}")
    if path not in PATHS:
        raise ValueError(f"unknown path {path!r}; choose from {list(PATHS)}")
    p2m, iommu = P2M(P2M_FORMAT), new_iommu()
    iommu.follow(p2m.set_entry(0x80000, 0x90000, 1, "ram_rw"))
    one = (lambda x: x) if arguments == "int" else (lambda x: np.array([x]))
    gfn, mfn, nr = one(0x80001), one(0x90001), one(1)
    if path == "compiled":
        calls = stream.MirroredCalls(p2m, iommu)

        def pair():
            calls.call(gfn, mfn, nr, "ram_rw")
            calls.call(gfn, 0, nr, "invalid")
    else:
        def pair():
            iommu.follow(p2m.set_entry(gfn, mfn, nr, "ram_rw"))
            iommu.follow(p2m.set_entry(gfn, 0, nr, "invalid"))
    pair()
    return SmallCall(pair, p2m, iommu)


def small_call_us(arguments: str, path: str = "compiled", tries: int = 7, pairs: int | None = None) -> float:
    """Best microseconds per call (half a pair) over `tries` runs of `pairs` pairs in a row
    (small_pairs by default): a steady stream of small calls, the best because on a shared
    machine the rest measures the neighbours."""
    pair = small_call_pair(arguments, path).pair
    pairs = small_pairs(path) if pairs is None else pairs
    return min(timeit.repeat(pair, number=pairs, repeat=tries)) / pairs / 2 * 1e6

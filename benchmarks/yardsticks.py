"""What numpy itself achieves on this machine: the floors every engine target is a ratio to.

Machines differ, so an absolute rate says little; the engine's rates are
divided by these, measured in the same run. Both floors work on 128 MiB, the
size of the level-3 tables of a 64 GiB guest, so they run from DRAM as the
engine does.
"""

from __future__ import annotations

import time

import numpy as np

FLOOR_ELEMENTS = 1 << 24        # int64 elements: 128 MiB
GATHER_READS = 1 << 20
SEED = 12345


def best_seconds(run, prepare=lambda: None, repeat: int = 5) -> float:
    """Best wall time of `run(prepare())` over `repeat` tries; `prepare` is not timed."""
    best = float("inf")
    for _ in range(repeat):
        state = prepare()
        start = time.perf_counter()
        run(state)
        best = min(best, time.perf_counter() - start)
        del state
    return best


def write_floor_arrays(n: int = FLOOR_ELEMENTS) -> tuple[np.ndarray, np.ndarray]:
    """(dst, src): dst already touched, so the floor excludes first-touch page faults."""
    dst = np.ones(n, dtype=np.int64)
    src = np.arange(n, dtype=np.int64)
    return dst, src


def gather_floor_arrays(n: int = FLOOR_ELEMENTS, reads: int = GATHER_READS) -> tuple[np.ndarray, np.ndarray]:
    """(table, idx): a 128 MiB table and random indexes into it, seeded."""
    table = np.arange(n, dtype=np.int64)
    idx = np.random.default_rng(SEED).integers(0, n, reads)
    return table, idx


def measure_write_floor(repeat: int = 5, arrays=None) -> float:
    """Descriptors (int64 elements) written per second by one np.add into 128 MiB, best of `repeat`."""
    dst, src = arrays if arrays is not None else write_floor_arrays()
    return len(dst) / best_seconds(lambda _: np.add(dst, src, out=dst), repeat=repeat)


def measure_gather_floor(repeat: int = 5, arrays=None) -> float:
    """Random int64 reads per second from a 128 MiB array (`a[idx]`), best of `repeat`."""
    table, idx = arrays if arrays is not None else gather_floor_arrays()
    return len(idx) / best_seconds(lambda _: table[idx], repeat=repeat)


class WriteFloor:
    """Add a precomputed int64 array into a preallocated 16M-element (128 MiB) one."""

    def setup(self):
        self.dst, self.src = write_floor_arrays()

    def time_add_into_128mib(self):
        np.add(self.dst, self.src, out=self.dst)

    def track_descriptors_per_second(self):
        return measure_write_floor(arrays=(self.dst, self.src))

    track_descriptors_per_second.unit = "descriptors/s"


class GatherFloor:
    """1M random reads from a 128 MiB int64 array."""

    def setup(self):
        self.table, self.idx = gather_floor_arrays()

    def time_gather_1m_from_128mib(self):
        self.table[self.idx]

    def track_reads_per_second(self):
        return measure_gather_floor(arrays=(self.table, self.idx))

    track_reads_per_second.unit = "reads/s"

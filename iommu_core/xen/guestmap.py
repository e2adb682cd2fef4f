"""One guest's RAM, laid out as Xen on ARM lays it out, mapped into each table format.

A first end-to-end job on the engine alone: how big is each format's table for
the same guest, how much of the guest can a format reach, and does every table
decode to exactly the mappings asked for. The board is the model's R-Car H3
Salvator-X profile and the guest layout is a domain's own (xen/domain.py, Xen's).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..pgtable import Extents, Format, PageTable
from ..pgtable.extents import merge_runs
from ..pgtable.format import GRANULE
from ..units import GIB, MIB
from .board import h3
from .domain import guest_ram_gfns, place

H3_RAM_BANKS = h3().ram_banks
DOM0_MEM = GIB                               # taken from the first banks before the guest


@dataclass
class GuestLayout:
    iova: np.ndarray        # guest physical byte addresses of each extent
    pa: np.ndarray          # machine byte addresses
    npages: np.ndarray

    @property
    def pages(self) -> int:
        return int(self.npages.sum())


def guest_layout(ram_bytes: int, chunk_bytes: int = 2 * MIB, seed: int = 0) -> GuestLayout:
    """Guest RAM (RAM0 first, then RAM1) backed by host chunks handed out in a shuffled order.

    chunk_bytes is the host allocator's unit: 4 KiB for a fragmented host, 2 MiB
    or 1 GiB for one that can hand out superpages.
    """
    if ram_bytes <= 0 or ram_bytes % GRANULE:
        raise ValueError(f"guest RAM must be a positive multiple of 4 KiB, got {ram_bytes}")
    if chunk_bytes < GRANULE or chunk_bytes & (chunk_bytes - 1):
        raise ValueError(f"host chunk size must be a power of two of at least 4 KiB, got {chunk_bytes}")
    free = sum(size for _, size in H3_RAM_BANKS) - DOM0_MEM
    if ram_bytes > free:
        raise ValueError(f"guest RAM {ram_bytes // MIB} MiB does not fit the board's {free // MIB} MiB "
                         f"left after dom0")
    # Host chunks, in bank order after dom0's share, aligned to the chunk size.
    starts, skip = [], DOM0_MEM
    for base, size in H3_RAM_BANKS:
        first = base + min(size, skip)
        skip = max(0, skip - size)
        first = -(-first // chunk_bytes) * chunk_bytes
        starts.append(np.arange(first, base + size - chunk_bytes + 1, chunk_bytes, dtype=np.int64))
    chunks = np.concatenate(starts)
    need = -(-ram_bytes // chunk_bytes)
    if need > len(chunks):
        raise ValueError(f"the board has only {len(chunks)} free {chunk_bytes // 1024} KiB chunks, "
                         f"the guest needs {need}")
    rng = np.random.default_rng(seed)
    pa = rng.permutation(chunks)[:need]
    sizes = np.full(need, chunk_bytes, np.int64)
    sizes[-1] = ram_bytes - chunk_bytes * (need - 1)
    # The domain's own layout (RAM0, then RAM1); a chunk that straddles RAM0's end is cut in two.
    gfn, mfn, nr = place(guest_ram_gfns(0, ram_bytes // GRANULE), pa // GRANULE, sizes // GRANULE)
    return GuestLayout(gfn * GRANULE, mfn * GRANULE, nr)


def expected_extents(layout: GuestLayout, fmt: Format) -> tuple[Extents, int]:
    """The mappings a table of `fmt` should hold (merged), and the pages it cannot reach."""
    limit = fmt.ia_pages
    start = layout.iova // GRANULE
    n = np.minimum(layout.npages, np.maximum(limit - start, 0))
    keep = n > 0
    order = np.argsort(start[keep])
    iova = (layout.iova[keep][order]).astype(np.uint64)
    pa = (layout.pa[keep][order]).astype(np.uint64)
    npg = n[keep][order]
    attrs = np.zeros(len(iova), np.uint64)
    runs = merge_runs(iova, pa, npg, attrs)
    z = np.zeros(len(runs), np.uint8)
    ext = Extents(iova[runs], pa[runs], np.add.reduceat(npg, runs) if len(runs) else npg[:0], z + 3, z, z)
    return ext, layout.pages - int(npg.sum())


def map_guest(fmt: Format, layout: GuestLayout, leaf: str = "auto", verify: bool = True,
              samples: int = 100_000, seed: int = 0) -> tuple[PageTable, dict]:
    """Map what of the guest the format can reach; verify by decoding and by walking samples."""
    want, unreachable = expected_extents(layout, fmt)
    pt = PageTable(fmt)
    t0 = time.perf_counter()
    if len(want):
        pt.map(want.iova, want.pa, want.npages, perm="rw", memtype="normal", leaf=leaf)
    wall = time.perf_counter() - t0
    row = {"format": fmt.name, "leaf": leaf, "mapped_pages": want.total_pages,
           "unreachable_pages": unreachable, **pt.stats(), "map_wall_s": wall,
           "pages_per_s": want.total_pages / wall if wall > 0 else float("nan")}
    if verify:
        got = pt.mappings()
        if got != want:
            raise AssertionError(f"{fmt.name}: the table decodes to {len(got)} extents, not the "
                                 f"{len(want)} requested")
        rng = np.random.default_rng(seed)
        pick = rng.integers(0, len(want), samples) if len(want) else np.zeros(0, np.int64)
        off = rng.integers(0, want.npages[pick] * GRANULE) if len(pick) else pick
        t = pt.translate(want.iova[pick] + off.astype(np.uint64))
        if t.fault.any() or not np.array_equal(t.pa, want.pa[pick] + off.astype(np.uint64)):
            raise AssertionError(f"{fmt.name}: a sampled address translates wrongly")
        row["verified_samples"] = int(len(pick))
    return pt, row

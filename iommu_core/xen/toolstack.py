"""Building a domU is dom0's work: the toolstack's loads through foreign mappings in dom0.

What the capture shows (shared/xen-real, seq 184-25312) and the code behind it:
- libxc's domain builder (xen-project/xen:tools/libs/guest/xg_dom_core.c @ RELEASE-4.17.0,
  xc_dom_seg_to_ptr / xc_map_foreign_pages) maps every page of the kernel, the
  ramdisk and the device tree it writes into the guest through privcmd, one 4 KiB
  foreign mapping each (xenmem_add_to_physmap_batch: p2m_map_foreign_rw), and
  unmaps them when done (remove_from_physmap). It clears the guest's magic pages the
  same way, and maps the guest's grant table with XENMEM_acquire_resource.
- A dom0 Linux without XEN_UNPOPULATED_ALLOC (Debian 12's) needs a free guest frame
  per foreign mapping: its balloon driver gives a page of its RAM back to Xen first
  (decrease_reservation: the entry is removed) and takes it back afterwards
  (populate_physmap: for a direct-mapped dom0 the same frame, gfn == mfn), all
  order-0. With unpopulated-alloc the frames come from unused address space instead,
  and neither balloon step happens.
- xenconsoled and xenstored grant-map the guest's console and xenstore rings
  (grant_map_rw), held until the guest is destroyed.

Where Linux's balloon driver finds its pages is Linux's page allocator's business,
not Xen's: the model takes them block by block from BALLOON_START pages into dom0's
first bank, BALLOON_FILL of each 2 MiB block (design assumptions fitted to the
capture: 8,290 pages over 20 blocks from 0x63400000), skipping the block dom0's
shared_info shattered.
"""

from __future__ import annotations

import numpy as np

from ..pgtable.format import ENTRIES, GRANULE
from ..units import KIB, MIB

# The captured configuration's images (shared/xen-real/console.txt).
KERNEL_KIB = 32_183
RAMDISK_KIB = 964
DTB_PAGES = 1
RAMDISK_OFFSET = 128 * MIB        # libxc puts the ramdisk 128 MiB into the guest's RAM when it fits (the capture)
BALLOON_START = 0x3400            # design assumption: pages into dom0's first bank where the balloon starts
BALLOON_FILL = 0.81               # design assumption: share of each 2 MiB block the balloon driver takes
RING_GRANTS = 2                   # the console and xenstore rings


def image_pages(kib: int) -> int:
    return -(-kib * KIB // GRANULE)


class Dom0Slots:
    """Guest frames in dom0 for foreign and grant mappings: ballooned-out RAM pages, or
    (unpopulated-alloc) frames of unused address space."""

    def __init__(self, dom0_ram: tuple[np.ndarray, np.ndarray], avoid_block: int, unpopulated_base: int,
                 unpopulated: bool = False, fill: float = BALLOON_FILL, start: int = BALLOON_START):
        if not 0 < fill <= 1:
            raise ValueError(f"balloon fill must be within (0, 1], got {fill!r}")
        self.unpopulated = unpopulated
        self.next_free = unpopulated_base
        per_block = max(1, round(ENTRIES * fill))
        gfn, n = dom0_ram
        aligned = [b for g, c in zip(gfn.tolist(), n.tolist())
                   for b in range(-(-g // ENTRIES) * ENTRIES, g + c - ENTRIES + 1, ENTRIES)]
        first = int(gfn[0]) + start
        # The 2 MiB blocks from the start on (then those before it), per block its first per_block pages.
        blocks = [b for b in aligned if b >= first] + [b for b in aligned if b < first]
        blocks = np.array([b for b in blocks if b != avoid_block], np.int64)
        self.pages = (blocks[:, None] + np.arange(per_block)).ravel() if len(blocks) else blocks
        self.taken = np.zeros(len(self.pages), bool)
        self.first_free = 0                       # every slot before it is taken
        self._order = np.argsort(self.pages, kind="stable")     # slots by page, to find given-back pages
        self._sorted = self.pages[self._order]

    def take(self, n: int) -> np.ndarray:
        if self.unpopulated:
            out = self.next_free + np.arange(n, dtype=np.int64)
            self.next_free += n
            return out
        # The first n free slots in slot order, looked for from first_free in growing windows (a
        # whole-array scan per call dominated dom0's builds).
        free, at, window = np.zeros(0, np.int64), self.first_free, max(4 * n, 4096)
        while len(free) < n and at < len(self.taken):
            free = np.concatenate((free, at + np.flatnonzero(~self.taken[at:at + window])))
            at, window = at + window, 2 * window
        free = free[:n]
        if len(free) < n:
            raise ValueError(f"dom0's balloon has {len(free)} pages left for {n} foreign mappings: give dom0 "
                             f"more memory, or a kernel with unpopulated-alloc")
        self.taken[free] = True
        if n:
            self.first_free = int(free[-1]) + 1   # every free slot up to there was taken now
        return self.pages[free]

    def give_back(self, gfns: np.ndarray) -> None:
        if self.unpopulated or not len(gfns) or not len(self.pages):
            return
        k = np.minimum(np.searchsorted(self._sorted, gfns), len(self._sorted) - 1)
        slots = self._order[k[self._sorted[k] == gfns]]
        self.taken[slots] = False
        if len(slots):
            self.first_free = min(self.first_free, int(slots.min()))

"""Where Xen 4.17 puts a direct-mapped dom0's RAM: allocate_memory_11.

xen-project/xen:xen/arch/arm/domain_build.c @ RELEASE-4.17.0:
- bank 0 is "the largest thing we can, as low as possible": for each order from
  the largest that fits dom0_mem down to min(dom0_mem, 128 MiB), it tries address
  limits from the block's own size up to 4 GiB, and takes the first block found;
- then, with the largest order that fits what is left each time, blocks below
  4 GiB ("lowmem"), shrinking the order down to 128 MiB, then anywhere, down to
  4 MiB; a block below bank 0 is used only if it ends where bank 0 starts
  (insert_11_bank);
- each block is mapped 1:1 by one guest_physmap_add_page of its order: one
  p2m_set_entry call per block.

The buddy allocator is modelled as the naturally aligned blocks of free RAM
(RAM less what Xen holds at that point: `xen_held`). Which of several
free blocks under a limit it hands out depends on its free lists; the model
takes the highest (alloc_heap_pages walks its zones from high to low), a
design assumption that gives the capture's banks on the QEMU virt board.
"""

from __future__ import annotations

import numpy as np

from .. import intervals as iv
from ..pgtable.format import GRANULE
from ..units import MIB

# Where QEMU's loader puts the kernel it boots (here Xen): 2 MiB into the first RAM bank. The
# capture's dom0 grant-table frame sits there (find_gnttab_region uses Xen's text).
XEN_IMAGE_OFFSET = 2 * MIB
# Where dom0's Linux gave up a page for shared_info, pages into its first bank: the capture's
# place (a design assumption: Linux's page allocator decides it).
DOM0_SHARED_INFO_PAGE = 0x261C
XEN_IMAGE_SIZE = 2 * MIB               # design assumption: Xen's image and its boot data
DOMID_XEN = 0x7FF2                     # the owner of Xen's own pages (xen/include/public/xen.h)
XEN_HEAP_TOP = 2 * MIB                 # design assumption: Xen's boot-time heap, at the top of RAM below 4 GiB
LOWMEM_LIMIT = 1 << 32                 # lowmem_bitsize: 32 bits
MIN_LOW = 128 * MIB
MIN_ANY = 4 * MIB


def _order_for(nbytes: int) -> int:
    """get_allocation_size: the largest page order whose block fits in nbytes."""
    return (nbytes // GRANULE).bit_length() - 1


def _free_block(free: tuple[np.ndarray, np.ndarray], order: int, limit: int | None) -> int | None:
    """First frame of the highest free naturally aligned block of `order` ending below `limit`."""
    size = 1 << order
    s, e = free
    first = -(-s // size) * size
    last = (e // size) * size - size               # the highest aligned start in each free run
    if limit is not None:
        last = np.minimum(last, limit // GRANULE - size)
    ok = last >= first
    if not ok.any():
        return None
    return int(last[ok].max())


def xen_held(ram_banks, boot_modules) -> list[tuple[int, int]]:
    """(base, size) of RAM Xen holds when it builds dom0: the boot modules, its image (where
    QEMU's loader puts it) and its boot-time heap (allocated top-down from below 4 GiB)."""
    held = list(boot_modules)
    first, frames = xen_image(ram_banks)
    held.append((first * GRANULE, frames * GRANULE))
    low = [(b, z) for b, z in ram_banks if b < LOWMEM_LIMIT]
    if low:
        held.append((min(low[-1][0] + low[-1][1], LOWMEM_LIMIT) - XEN_HEAP_TOP, XEN_HEAP_TOP))
    return held


def xen_image(ram_banks) -> tuple[int, int]:
    """(first frame, frames) of Xen's image: never free for a domain (dom0's grant table sits at its
    address in dom0's IPA space)."""
    return (ram_banks[0][0] + XEN_IMAGE_OFFSET) // GRANULE, XEN_IMAGE_SIZE // GRANULE


def allocate_memory_11(ram_banks, reserved, dom0_bytes: int) -> list[tuple[int, int]]:
    """dom0's RAM blocks in the order Xen allocates (and maps) them: (first frame, pages)."""
    free = iv.normalize([b // GRANULE for b, _ in ram_banks], [z // GRANULE for _, z in ram_banks])
    if reserved:
        free = iv.subtract(free, iv.normalize([b // GRANULE for b, _ in reserved],
                                              [-(-(b + z) // GRANULE) - b // GRANULE for b, z in reserved]))
    left = dom0_bytes
    blocks: list[tuple[int, int]] = []
    bank0 = [0, 0]                                     # bank 0 grows by blocks that touch it

    def take(frame: int, order: int) -> None:
        nonlocal free, left
        n = 1 << order
        blocks.append((frame, n))
        free = iv.subtract(free, (np.array([frame]), np.array([frame + n])))
        left -= n * GRANULE
        if len(blocks) == 1 or frame + n == bank0[0]:
            bank0[0] = frame
        if len(blocks) == 1 or frame == bank0[1]:
            bank0[1] = frame + n

    min_low = _order_for(min(dom0_bytes, MIN_LOW))
    order = _order_for(left)
    while order >= min_low and not blocks:            # bank 0: as low as possible
        for bits in range(order + 12, 33):
            frame = _free_block(free, order, 1 << bits)
            if frame is not None:
                take(frame, order)
                break
        else:
            order -= 1
    lowmem = bool(blocks)
    order = _order_for(left)
    while left > 0:
        frame = _free_block(free, order, LOWMEM_LIMIT if lowmem else None)
        if frame is not None and frame + (1 << order) < bank0[0]:     # insert_11_bank refuses it
            if not lowmem:
                frame = None
                order = -1
            else:
                lowmem, order = False, _order_for(left)
                continue
        if frame is None:
            order -= 1
            if lowmem and order < min_low:
                lowmem, order = False, _order_for(left)
                continue
            if order >= _order_for(MIN_ANY):
                continue
            raise ValueError(f"dom0_mem {dom0_bytes // MIB} MiB: Xen could not allocate "
                             f"{left // MIB} MiB of it in blocks of at least {MIN_ANY // MIB} MiB")
        take(frame, order)
        order = _order_for(left)
    return blocks

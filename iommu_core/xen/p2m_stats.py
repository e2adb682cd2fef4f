"""What Xen 4.17's P2M code does per leaf, and the statistics it keeps (debug key `q`).

For a batch of p2m_set_entry calls, `leaf_events` finds every leaf the order
rule makes and what that leaf's slot held before: nothing, a valid leaf (or a
superpage above that is split first), or a table. From that follow Xen's own
counters, with their quirks, exactly as xen-project/xen:xen/arch/arm/p2m.c @
RELEASE-4.17.0 keeps them:

- a new mapping over an empty slot counts +1 at its level (__p2m_set_entry, :1195);
- a valid entry replaced or removed is uncounted by p2m_free_entry (:915) only when
  the new entry's MFN differs from the old one (:1231), where an empty entry's MFN
  is 0; a replacement is never counted up (:1195 tests the old entry). So a valid
  entry replaced by one with another MFN leaves the counter one below the table,
  a table replaced by a block likewise, and removing an entry whose MFN is 0 leaves
  it one above;
- splitting a superpage counts shattered +1 and moves its mapping one level down
  (p2m_split_superpage, :998-1000).

The counters are kept as the table's true leaves minus a per-level `deficit` of
those quirks, so they are exact whatever the table does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..pgtable import order
from ..pgtable.arrays import count_distinct
from ..pgtable.format import GRANULE_SHIFT, LAST_LEVEL, level_shift

LEVEL_NAMES = {1: "1g", 2: "2m", 3: "4k"}


@dataclass
class LeafEvents:
    """Per leaf of a batch (in call order): where, which level, and what its slot held."""

    page: np.ndarray          # first GFN of the leaf
    level: np.ndarray         # int8 level the order rule chose
    call: np.ndarray          # index of the call in the batch
    removing: np.ndarray      # bool: a removal
    old_valid: np.ndarray     # bool: the slot (after any split) held a valid leaf or a table
    old_table: np.ndarray     # bool: the slot held a table
    same_mfn: np.ndarray      # bool: a valid old leaf with the MFN the slot gets (0 for a removal)
    splits: dict = field(default_factory=dict)   # level -> superpages split at that level

    def __len__(self) -> int:
        return len(self.page)


def leaf_events(pt, gfn: np.ndarray, mfn: np.ndarray, nr: np.ndarray, removing: np.ndarray) -> LeafEvents:
    """Classify every leaf of a batch of disjoint calls against the table as it is now."""
    delta = np.where(removing, 0, mfn - gfn)
    page, level, call = order.leaves(gfn, gfn + nr, delta, pt.fmt.leaf_levels)
    stop, is_leaf, pa = pt.probe(page.astype(np.uint64) << np.uint64(GRANULE_SHIFT))
    rem = removing[call]
    new_mfn = np.where(rem, 0, page + delta[call])
    valid_above = is_leaf & (stop <= level)          # a valid leaf here, or a superpage above it
    table = stop > level                              # the walk went on below: a table here
    splits = {}
    for lvl in range(1, LAST_LEVEL):
        # A superpage at or above lvl is split down through lvl once per block per batch.
        hit = valid_above & (stop <= lvl) & (level > lvl)
        if hit.any():
            splits[lvl] = count_distinct(page[hit] >> (level_shift(lvl) - GRANULE_SHIFT))
    same = valid_above & ((pa >> np.uint64(GRANULE_SHIFT)).astype(np.int64) == new_mfn)
    return LeafEvents(page, level, call, rem, valid_above | table, table, same, splits)


@dataclass
class XenStats:
    """Xen's p2m->stats as the table's true leaves minus the quirks' deficit per level."""

    shattered: np.ndarray = field(default_factory=lambda: np.zeros(LAST_LEVEL + 1, np.int64))
    deficit: np.ndarray = field(default_factory=lambda: np.zeros(LAST_LEVEL + 1, np.int64))

    def add(self, ev: LeafEvents) -> None:
        for lvl, n in ev.splits.items():
            self.shattered[lvl] += n
        write = ~ev.removing
        # Replaced without being counted up: a valid leaf with another MFN, or a table.
        uncounted = write & ev.old_valid & ~ev.same_mfn
        # Removed without being counted down: the old MFN was 0, the empty entry's.
        kept = ev.removing & ev.old_valid & ~ev.old_table & ev.same_mfn
        np.add.at(self.deficit, ev.level[uncounted], 1)
        np.add.at(self.deficit, ev.level[kept], -1)

    def counters(self, leaves_by_level: dict[int, int]) -> dict[str, int]:
        out = {}
        for lvl, name in LEVEL_NAMES.items():
            out[f"mappings_{name}"] = int(leaves_by_level.get(lvl, 0) - self.deficit[lvl])
            if lvl < LAST_LEVEL:
                out[f"shattered_{name}"] = int(self.shattered[lvl])
        return out


def leaves_by_level(pt) -> dict[int, int]:
    """Valid leaves per level in a table, counted in it."""
    _, level, _ = pt.leaves()
    counts = np.bincount(level.astype(np.int64), minlength=LAST_LEVEL + 1)
    return {lvl: int(counts[lvl]) for lvl in LEVEL_NAMES}


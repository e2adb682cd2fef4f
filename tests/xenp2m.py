"""A small, obviously correct Xen 4.17 P2M, entry by entry, as the oracle for the model's.

It follows xen-project/xen:xen/arch/arm/p2m.c @ RELEASE-4.17.0 call by call:
p2m_set_entry's order loop (:1244), __p2m_set_entry (:1039), p2m_split_superpage
(:936) and p2m_free_entry (:880), with the statistics debug key `q` prints
(mappings and shattered per level). Tables are dicts of slot -> entry; nothing
is vectorized and nothing is shared with the package.
"""

from __future__ import annotations

SHIFT = {0: 27, 1: 18, 2: 9, 3: 0}           # pages per entry of a level, as a shift


class Table:
    def __init__(self):
        self.slots = {}                       # slot -> ("table", Table) or ("leaf", mfn, type)


class XenP2M:
    def __init__(self, root_level: int):
        self.root_level = root_level
        self.root = Table()                   # concatenated roots: slots beyond 511 are fine
        self.mappings = {1: 0, 2: 0, 3: 0}
        self.shattered = {1: 0, 2: 0}
        self.tables = {root_level: 1}

    @staticmethod
    def slot(gfn: int, level: int, root: bool) -> int:
        s = gfn >> (9 * (3 - level))
        return s if root else s & 511

    def set_entry(self, gfn: int, nr: int, mfn: int | None, p2m_type: int) -> None:
        """mfn None removes (INVALID_MFN)."""
        while nr:
            mask = (mfn if mfn is not None else 0) | gfn | nr
            order = 18 if not mask & ((1 << 18) - 1) else 9 if not mask & 511 else 0
            self._set(gfn, order, mfn, p2m_type)
            gfn += 1 << order
            if mfn is not None:
                mfn += 1 << order
            nr -= 1 << order

    def _set(self, gfn, order, mfn, t):
        target = 3 - order // 9
        table, level = self.root, self.root_level
        while level < target:
            s = self.slot(gfn, level, table is self.root)
            e = table.slots.get(s)
            if e is None:
                if mfn is None:
                    return                    # nothing to remove
                child = Table()
                self.tables[level + 1] = self.tables.get(level + 1, 0) + 1
                table.slots[s] = ("table", child)
                table, level = child, level + 1
            elif e[0] == "table":
                table, level = e[1], level + 1
            else:                             # a superpage: split it down to the target
                while level < target:
                    _, bmfn, bt = table.slots[s]
                    child = Table()
                    step = 1 << SHIFT[level + 1]
                    child.slots = {i: ("leaf", bmfn + i * step, bt) for i in range(512)}
                    self.tables[level + 1] = self.tables.get(level + 1, 0) + 1
                    self.shattered[level] += 1
                    self.mappings[level] -= 1
                    self.mappings[level + 1] += 512
                    table.slots[s] = ("table", child)
                    table, level = child, level + 1
                    s = self.slot(gfn, level, False)
                break
        s = self.slot(gfn, level, table is self.root)
        orig = table.slots.get(s)
        if mfn is None:
            table.slots.pop(s, None)
            new_mfn = 0                       # lpae_get_mfn of an empty entry
        else:
            table.slots[s] = ("leaf", mfn, t)
            new_mfn = mfn
            if orig is None:
                self.mappings[level] += 1
        if orig is not None and (orig[0] == "table" or orig[1] != new_mfn):
            self._free(orig, level)

    def _free(self, entry, level):
        if entry[0] == "leaf":
            self.mappings[level] -= 1
            return
        for e in entry[1].slots.values():
            self._free(e, level + 1)
        self.tables[level + 1] -= 1

    def leaves(self) -> dict[int, int]:
        """Valid leaves per level, counted in the tables."""
        out = {1: 0, 2: 0, 3: 0}

        def walk(table, level):
            for e in table.slots.values():
                if e[0] == "table":
                    walk(e[1], level + 1)
                else:
                    out[level] += 1
        walk(self.root, self.root_level)
        return out

    def extents(self) -> list[tuple[int, int, int, int]]:
        """(gfn, mfn, pages, type) per leaf, sorted by gfn."""
        out = []

        def walk(table, level, base):
            for s, e in table.slots.items():
                g = base + (s << SHIFT[level])
                if e[0] == "table":
                    walk(e[1], level + 1, g)
                else:
                    out.append((g, e[1], 1 << SHIFT[level], e[2]))
        walk(self.root, self.root_level, 0)
        return sorted(out)

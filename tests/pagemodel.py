"""A tiny, obviously correct model of a page table: one dict entry per 4 KiB page."""

from __future__ import annotations

PAGE = 4096


class DictModel:
    def __init__(self) -> None:
        self.pages: dict[int, tuple[int, str, str, int]] = {}     # in page -> (out page, perm, memtype, sw)

    def would_conflict(self, extents) -> bool:
        return any(p in self.pages for iova, _, n, *_ in extents for p in range(iova // PAGE, iova // PAGE + n))

    def map(self, extents) -> None:
        for iova, pa, n, perm, memtype, sw in extents:
            for k in range(n):
                self.pages[iova // PAGE + k] = (pa // PAGE + k, perm, memtype, sw)

    def unmap(self, extents) -> None:
        for iova, n in extents:
            for p in range(iova // PAGE, iova // PAGE + n):
                self.pages.pop(p, None)

    def records(self, ranges=None) -> list[tuple[int, int, int, str, str, int]]:
        """Maximal runs: consecutive pages whose output follows on with the same attributes.

        ranges: optional (iova, npages) pairs; only the pages inside them count."""
        pages = sorted(self.pages)
        if ranges is not None:
            inside = {p for iova, n in ranges for p in range(iova // PAGE, iova // PAGE + n)}
            pages = [p for p in pages if p in inside]
        runs: list[list] = []
        for p in pages:
            out, perm, memtype, sw = self.pages[p]
            last = runs[-1] if runs else None
            if (last and last[0] // PAGE + last[2] == p and last[1] // PAGE + last[2] == out
                    and last[3:] == [perm, memtype, sw]):
                last[2] += 1
            else:
                runs.append([p * PAGE, out * PAGE, 1, perm, memtype, sw])
        return [tuple(r) for r in runs]

    def lookup(self, addr: int):
        hit = self.pages.get(addr // PAGE)
        if hit is None:
            return None
        out, perm, memtype, sw = hit
        return out * PAGE + addr % PAGE, perm, memtype, sw

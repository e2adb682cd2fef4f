"""The bulk path of a PageTable: whole batches of extents, per level, on arrays of entries and
table segments (never per 4 KiB page in Python). table.PageTable mixes it in; the single-call
path is smallcall.py."""

from __future__ import annotations

import functools

import numpy as np

from . import descriptors as d
from .accounting import LINES_PER_TABLE, OpAccount
from .arrays import follow_on, lookup, ragged, unique_sorted
from .extents import Batch, MappingConflict
from .format import (
    ENTRIES,
    ENTRIES_PER_LINE,
    ENTRIES_SHIFT,
    GRANULE,
    GRANULE_SHIFT,
    LAST_LEVEL,
    level_pages,
    level_shift,
)
from .order import leaf_runs

U64 = np.uint64
ROW_CHUNK = 2048                       # table rows written per numpy call: bounds temporaries
TEMPLATE_ROWS = 256                    # 1 MiB: a template that stays in cache while it is copied
ROW_OFFSETS = np.arange(ENTRIES, dtype=U64)


@functools.lru_cache(maxsize=8)
def _template(step: int) -> np.ndarray:
    """TEMPLATE_ROWS rows of consecutive output addresses `step` apart, shared by every table (read-only):
    one per table cost 1 MiB each, 29 MiB on a host of a few dozen domains."""
    t = np.arange(TEMPLATE_ROWS * ENTRIES, dtype=U64) * U64(step)
    t.flags.writeable = False
    return t


class BulkPath:
    """The per-level machinery behind PageTable.map / unmap (it uses the table's own pool and
    format: it is a part of PageTable, not a separate object)."""

    def _table_desc(self, pages: np.ndarray) -> np.ndarray:
        return self.pool.phys(pages) | self.table_bits

    def _entry_flat(self, level: int, g: np.ndarray, table_ids: np.ndarray, table_pages: np.ndarray) -> np.ndarray:
        """Flat pool index of level-`level` entries `g`; -1 where their table does not exist."""
        if level == self.fmt.start_level:
            return g.copy()             # the root sits at page 0; concatenated pages follow on
        page = lookup(table_ids, table_pages, g >> ENTRIES_SHIFT)
        return np.where(page >= 0, page * ENTRIES + (g & (ENTRIES - 1)), -1)

    def _read(self, flat: np.ndarray) -> np.ndarray:
        """Descriptors at flat indexes; 0 where the index is -1 (no table)."""
        out = self.pool.flat[np.maximum(flat, 0)]
        out[flat < 0] = 0
        return out

    @staticmethod
    def _kinds(level: int, desc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(is_table, is_leaf) masks of descriptors read at `level`."""
        t = desc & U64(d.DESC_TYPE_MASK)
        if level == LAST_LEVEL:
            return np.zeros(len(desc), bool), t == U64(d.DESC_PAGE)
        return t == U64(d.DESC_TABLE), t == U64(d.DESC_BLOCK)

    # -- the leaf plan -----------------------------------------------------
    def _plan_leaves(self, b: Batch, levels: tuple[int, ...]) -> dict:
        """Split each extent into per-level runs of leaves, by Xen's order rule (order.py)."""
        delta = b.out_page - b.in_page
        attrs = d.leaf_attrs(self.fmt, b.perm, b.memtype, b.sw)
        plan = {}
        for level, (s, e, keep) in leaf_runs(b.in_page, b.in_page + b.npages, delta, levels).items():
            shift = level_shift(level) - GRANULE_SHIFT
            out0 = (s + delta[keep]).astype(U64) << U64(GRANULE_SHIFT)
            plan[level] = dict(gs=s >> shift, ge=e >> shift, v0=out0 | attrs[keep] | U64(d.leaf_type(level)),
                               index=b.index[keep])
        return plan

    # -- finding tables ----------------------------------------------------
    def _tables(self, level: int, ids: np.ndarray, op: OpAccount | None) -> np.ndarray:
        """Pages of the level-`level` tables with these prefixes (sorted, unique).

        With op=None nothing is written: -1 marks a missing table and -2 one that
        a block above covers. With an op, missing tables are allocated and blocks
        on the way are split (only remap mode gets there).
        """
        start = self.fmt.start_level
        if level == start:
            return np.zeros(len(ids), np.int64)
        if level == LAST_LEVEL and len(ids) > 256:
            # Many level-3 tables: ask the walk cache before walking down to each.
            index = self.pool.level3_index()
            if index is not None:
                pos = ids - index[0]
                if pos[0] >= 0 and pos[-1] < len(index[1]):
                    found = index[1][pos]
                    if (found >= 0).all():
                        return found // ENTRIES
        parent_ids = unique_sorted(ids >> ENTRIES_SHIFT) if level - 1 > start else np.zeros(1, np.int64)
        parent_pages = self._tables(level - 1, parent_ids, op)
        flat = self._entry_flat(level - 1, ids, parent_ids, parent_pages)
        desc = self._read(flat)
        is_table, is_leaf = self._kinds(level - 1, desc)
        pages = np.where(is_table, self.pool.page_of(desc & U64(d.OA_MASK_48)), -1)
        if op is None:
            covered = is_leaf | (lookup(parent_ids, parent_pages, ids >> ENTRIES_SHIFT) == -2
                                 if level - 1 > start else False)
            return np.where(covered, -2, pages)
        if is_leaf.any():
            pages[is_leaf] = self._split(level - 1, ids[is_leaf], flat[is_leaf], desc[is_leaf], op)
        missing = ~is_table & ~is_leaf
        if missing.any():
            new = self.pool.alloc(level, ids[missing])
            op.level_count("tables_allocated", level, len(new))
            flat_m = flat[missing]
            self.pool.flat[flat_m] = self._table_desc(new)
            self.pool.count(flat_m, 1)
            op.entries(flat_m)
            pages[missing] = new
        return pages

    def _split(self, level: int, g: np.ndarray, flat: np.ndarray, desc: np.ndarray, op: OpAccount) -> np.ndarray:
        """Replace blocks at `level` by tables of the next level that map the same; return their pages."""
        child = level + 1
        new = self.pool.alloc(child, g)
        op.level_count("tables_allocated", child, len(new))
        first = (desc & ~U64(d.DESC_TYPE_MASK)) | U64(d.leaf_type(child))
        step = U64(level_pages(child) * GRANULE)
        for i in range(0, len(new), ROW_CHUNK):
            rows = new[i:i + ROW_CHUNK]
            self.pool.mem[rows] = first[i:i + ROW_CHUNK, None] + ROW_OFFSETS * step
        self.pool.used[new] = ENTRIES
        op.rows(new)
        op.counts["descriptors_written"] += len(new) * ENTRIES
        # Break-before-make: invalidate the block, then install the table.
        self.pool.flat[flat] = self._table_desc(new)
        op.entries(flat)
        op.counts["descriptors_written"] += len(flat)
        op.counts["bbm_breaks"] += len(flat)
        op.level_count("block_splits", level, len(flat))
        return new

    def _free_subtrees(self, level: int, pages: np.ndarray, op: OpAccount) -> None:
        """Free tables of `level` and every table below them."""
        while len(pages):
            rows = self.pool.mem[pages]
            children = rows[(rows & U64(d.DESC_TYPE_MASK)) == U64(d.DESC_TABLE)] if level < LAST_LEVEL else rows[:0]
            self.pool.free(level, pages)
            op.level_count("tables_freed", level, len(pages))
            pages = self.pool.page_of(children & U64(d.OA_MASK_48))
            level += 1

    # -- segments of ranges within tables ------------------------------------
    def _segments(self, level: int, gs: np.ndarray, ge: np.ndarray):
        """Cut entry ranges [gs, ge) at table boundaries: (range index, table id, seg start, seg end)."""
        if level == self.fmt.start_level:
            idx = np.arange(len(gs))
            return idx, np.zeros(len(gs), np.int64), gs, ge
        t0 = gs >> ENTRIES_SHIFT
        owner, k = ragged(((ge - 1) >> ENTRIES_SHIFT) - t0 + 1)
        t = t0[owner] + k
        s = np.maximum(gs[owner], t << ENTRIES_SHIFT)
        e = np.minimum(ge[owner], (t + 1) << ENTRIES_SHIFT)
        return owner, t, s, e

    def _segment_flat(self, level: int, t: np.ndarray, s: np.ndarray, ids, pages) -> np.ndarray:
        if level == self.fmt.start_level:
            return s.copy()
        page = lookup(ids, pages, t)
        return np.where(page >= 0, page * ENTRIES + (s & (ENTRIES - 1)), -1)

    @staticmethod
    def _ragged_flat(flat0: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        owner, off = ragged(length)
        return owner, flat0[owner] + off

    @classmethod
    def _cut_lines(cls, flat0: np.ndarray, length: np.ndarray):
        """Cut flat ranges into the whole cache lines inside them and the entries at their edges.

        Returns (segment of each line, line numbers, segment of each edge entry,
        flat index of each edge entry): at most 14 edge entries per range, so
        per-entry index arrays stay an eighth of the range or less.
        """
        end = flat0 + length
        first = -(-flat0 // ENTRIES_PER_LINE)
        stop = np.maximum(end // ENTRIES_PER_LINE, first)
        line_seg, k = ragged(stop - first)
        lines = first[line_seg] + k
        head_end = np.minimum(end, first * ENTRIES_PER_LINE)
        tail_start = np.maximum(np.minimum(stop * ENTRIES_PER_LINE, end), head_end)
        n = len(flat0)
        edge_seg, edge_flat = cls._ragged_flat(np.concatenate((flat0, tail_start)),
                                               np.concatenate((head_end - flat0, end - tail_start)))
        return line_seg, lines, edge_seg % n if n else edge_seg, edge_flat

    # -- map -----------------------------------------------------------------
    def _level_tables(self, level: int, gs: np.ndarray, ge: np.ndarray, op: OpAccount | None):
        """Prefixes and pages of every level-`level` table the entry ranges fall in."""
        if level == self.fmt.start_level:
            return np.zeros(1, np.int64), np.zeros(1, np.int64)
        owner, k = ragged(((ge - 1) >> ENTRIES_SHIFT) - (gs >> ENTRIES_SHIFT) + 1)
        ids = unique_sorted((gs >> ENTRIES_SHIFT)[owner] + k)
        return ids, self._tables(level, ids, op)

    def _check_free(self, level: int, r: dict) -> None:
        """Refuse the batch if any leaf of `level` would land on a live mapping."""
        ids, pages = self._level_tables(level, r["gs"], r["ge"], None)
        owner, t, s, e = self._segments(level, r["gs"], r["ge"])
        r["found"] = ids, pages, (owner, t, s, e)    # the write reuses this walk if it can
        page = lookup(ids, pages, t) if level != self.fmt.start_level else np.zeros(len(t), np.int64)
        covered = page == -2
        if covered.any():
            i = int(np.argmax(covered))
            self._conflict(r, owner[i], s[i], level, "a block above it maps it already")
        live = page >= 0
        owner, t, s, e, page = owner[live], t[live], s[live], e[live], page[live]
        flat0 = page * ENTRIES + (s & (ENTRIES - 1)) if level != self.fmt.start_level else s
        full = ((e - s) == ENTRIES) & (level == LAST_LEVEL)
        used = self.pool.used[page] > 0        # tables with nothing in them need no look
        if (full & used).any():
            seg = int(np.argmax(full & used))
            g = s[seg] + int(np.argmax(self.pool.mem[page[seg]] != 0))
            self._conflict(r, owner[seg], g, level, "it is mapped already")
        part = ~full & used
        if part.any():
            sub, flat = self._ragged_flat(flat0[part], (e - s)[part])
            desc = self.pool.flat[flat]
            busy = desc != 0
            below = np.zeros(len(desc), bool)
            if level < LAST_LEVEL:
                is_table, _ = self._kinds(level, desc)
                tbl = np.flatnonzero(is_table)
                below[tbl] = self._subtree_live(level + 1, self.pool.page_of(desc[tbl] & U64(d.OA_MASK_48)))
                busy &= ~is_table | below      # an empty table may be replaced by a block
            if busy.any():
                i = int(np.argmax(busy))
                seg = np.flatnonzero(part)[sub[i]]
                g = s[seg] + (flat[i] - flat0[seg])
                why = "smaller mappings below it are live" if below[i] else "it is mapped already"
                self._conflict(r, owner[seg], g, level, why)

    def _write_rows(self, rows: np.ndarray, vals: np.ndarray, step) -> None:
        """Fill whole tables: row i gets vals[i], vals[i] + step, ... (512 entries).

        Where consecutive pages continue one arithmetic progression (a contiguous
        mapping), the run is written as a cache-resident template plus a scalar:
        a pure streaming write. Other rows are written by broadcasting.
        """
        mem = self.pool.mem
        run_step = U64(ENTRIES) * step
        cut = np.flatnonzero((np.diff(rows) != 1) | (np.diff(vals) != run_step)) + 1
        if len(cut) > len(rows) // TEMPLATE_ROWS:       # no long runs: broadcast in chunks
            for i in range(0, len(rows), ROW_CHUNK):
                chunk, v = rows[i:i + ROW_CHUNK], vals[i:i + ROW_CHUNK, None]
                if follow_on(chunk):
                    np.add(v, ROW_OFFSETS * step, out=mem[chunk[0]:chunk[-1] + 1])
                else:
                    mem[chunk] = v + ROW_OFFSETS * step
            return
        template = _template(int(step))
        flat = self.pool.flat
        for i, j in zip(np.concatenate(([0], cut)).tolist(), np.concatenate((cut, [len(rows)])).tolist()):
            first = int(rows[i]) * ENTRIES
            whole = (j - i) // TEMPLATE_ROWS * TEMPLATE_ROWS
            for k in range(0, whole, TEMPLATE_ROWS):
                np.add(template, vals[i + k], out=flat[first + k * ENTRIES: first + (k + TEMPLATE_ROWS) * ENTRIES])
            if whole < j - i:
                np.add(vals[i + whole:j, None], ROW_OFFSETS * step,
                       out=mem[rows[i] + whole:rows[i] + (j - i)])

    def _fill_ranges(self, flat0: np.ndarray, length: np.ndarray, v0: np.ndarray, step) -> None:
        """Write v0 + k * step at flat0 + k (k < length) for many ranges inside tables: a
        compiled loop (kernel.fill_ranges), at a C mapper's speed; numpy's fancy indexing was
        a fifth of it on random extents."""
        from .kernel import fill_ranges        # here: numba loads when a map first needs it, not on import
        fill_ranges(self.pool.flat, flat0.astype(np.int64, copy=False), length.astype(np.int64, copy=False),
                    v0.astype(U64, copy=False), U64(step))

    def _subtree_live(self, level: int, pages: np.ndarray) -> np.ndarray:
        """For each table, whether any leaf below it is valid."""
        owner = np.arange(len(pages))
        live = np.zeros(len(pages), bool)
        while len(pages):
            rows = self.pool.mem[pages]
            is_table, is_leaf = self._kinds(level, rows.reshape(-1))
            live[owner[is_leaf.reshape(rows.shape).any(axis=1)]] = True
            tbl = np.flatnonzero(is_table)
            owner = owner[tbl // ENTRIES]
            pages = self.pool.page_of(rows.reshape(-1)[tbl] & U64(d.OA_MASK_48))
            level += 1
        return live

    def _conflict(self, r: dict, owner: int, g: int, level: int, why: str):
        iova = int(g) << level_shift(level)
        ext = int(r["index"][owner])
        raise MappingConflict(f"extent {ext}: iova {iova:#x} cannot be mapped: {why} "
                              f"(pass remap=True to replace live mappings)", ext)

    def _write_leaves(self, level: int, r: dict, op: OpAccount, remap: bool) -> None:
        gs, ge, v0 = r["gs"], r["ge"], r["v0"]
        if "found" in r:
            ids, pages, (owner, t, s, e) = r["found"]
            if (pages < 0).any():               # missing tables, or blocks to split (remap)
                pages = self._tables(level, ids, op)
        else:
            ids, pages = self._level_tables(level, gs, ge, op)
            owner, t, s, e = self._segments(level, gs, ge)
        flat0 = self._segment_flat(level, t, s, ids, pages)
        step = U64(level_pages(level) * GRANULE)
        val0 = v0[owner] + (s - gs[owner]).astype(U64) * step
        length = e - s
        # Whole level-3 tables are written as rows; everything else entry by entry.
        full = (length == ENTRIES) & (level == LAST_LEVEL)
        if full.any():
            rows, vals = flat0[full] // ENTRIES, val0[full]
            if remap:                          # level-3 rows hold pages only: used counts them
                n = int(self.pool.used[rows].sum())
                op.counts["bbm_breaks"] += n
                op.counts["descriptors_written"] += n
            self._write_rows(rows, vals, step)
            self.pool.used[rows] = ENTRIES
            if remap:                          # a split may have written these tables already
                op.rows(rows)
            else:                              # tables no other write of this call touches
                op.disjoint_lines(len(rows) * LINES_PER_TABLE)
        part = ~full
        if part.any():
            f0, ln, v = flat0[part], length[part], val0[part]
            if remap or level < LAST_LEVEL:    # else the check saw only empty slots
                self._replace(level, self._ragged_flat(f0, ln)[1], op)
            self._fill_ranges(f0, ln, v, step)
            self.pool.count_pages(f0 // ENTRIES, ln)
            op.lines(f0 // ENTRIES_PER_LINE, (f0 + ln - 1) // ENTRIES_PER_LINE)
        op.counts["descriptors_written"] += int(length.sum())

    def _replace(self, level: int, where: np.ndarray, op: OpAccount) -> None:
        """Account for live entries a leaf write replaces; free tables a block replaces."""
        desc = self.pool.flat[where]
        valid = (desc & U64(d.DESC_VALID)) != 0
        n = int(np.count_nonzero(valid))
        if not n:
            return
        self.pool.count(where[valid], -1)      # the write below counts every slot again
        op.counts["bbm_breaks"] += n
        op.counts["descriptors_written"] += n
        if level < LAST_LEVEL:
            is_table, _ = self._kinds(level, desc)
            if is_table.any():
                self._free_subtrees(level + 1, self.pool.page_of(desc[is_table] & U64(d.OA_MASK_48)), op)

    # -- unmap -------------------------------------------------------------
    def _unmap(self, s_pg: np.ndarray, e_pg: np.ndarray, op: OpAccount) -> None:
        ids, pages = np.zeros(1, np.int64), np.zeros(1, np.int64)     # tables of the current level
        touched = []
        for level in self.fmt.levels:
            shift = level_shift(level) - GRANULE_SHIFT
            gs, ge = s_pg >> shift, ((e_pg - 1) >> shift) + 1
            owner, t, s, e = self._segments(level, gs, ge)
            flat0 = self._segment_flat(level, t, s, ids, pages)
            keep = flat0 >= 0
            owner, s, e, flat0 = owner[keep], s[keep], e[keep], flat0[keep]
            if level == LAST_LEVEL:
                self._clear_pages(s, e, flat0, op)
                break
            sub, flat = self._ragged_flat(flat0, e - s)
            g = s[sub] + (flat - flat0[sub])
            desc = self.pool.flat[flat]
            is_table, is_leaf = self._kinds(level, desc)
            span_lo, span_hi = g << shift, (g + 1) << shift
            inside = (span_lo >= s_pg[owner[sub]]) & (span_hi <= e_pg[owner[sub]])
            if self.xen_unmap:                 # the order rule: a leaf this size only if the end aligns
                inside &= e_pg[owner[sub]] % level_pages(level) == 0
            # Two ranges may each cover part of one entry (never all of it): keep it once.
            once = np.concatenate(([True], g[1:] != g[:-1]))
            if not once.all():
                g, flat, desc, inside = g[once], flat[once], desc[once], inside[once]
                is_table, is_leaf = is_table[once], is_leaf[once]
            if self.xen_unmap and (gone := is_table & inside).any():
                # p2m_free_entry: the table entry goes, its subtree is freed
                self._free_subtrees(level + 1, self.pool.page_of(desc[gone] & U64(d.OA_MASK_48)), op)
                self.pool.flat[flat[gone]] = 0
                self.pool.count(flat[gone], -1)
                op.entries(flat[gone])
                is_table = is_table & ~gone
            clear = is_leaf & inside
            if clear.any():
                self.pool.flat[flat[clear]] = 0
                self.pool.count(flat[clear], -1)
                op.entries(flat[clear])
                op.counts["pages_unmapped"] += int(clear.sum()) * level_pages(level)
            split = is_leaf & ~inside
            child = np.where(is_table, self.pool.page_of(desc & U64(d.OA_MASK_48)), -1)
            if split.any():
                child[split] = self._split(level, g[split], flat[split], desc[split], op)
            down = is_table | split
            ids, pages = g[down], child[down]
            touched.append((level + 1, ids, pages, flat[down]))
        if self.reclaim:
            self._reclaim(touched, op)

    def _clear_pages(self, s: np.ndarray, e: np.ndarray, flat0: np.ndarray, op: OpAccount) -> None:
        """Clear level-3 slots [s, e) of each segment; used counts say where to look."""
        page = flat0 // ENTRIES
        keep = self.pool.used[page] > 0
        s, e, flat0, page = s[keep], e[keep], flat0[keep], page[keep]
        length = e - s
        whole = (length == ENTRIES) & (self.pool.used[page] == ENTRIES)   # full tables: every line
        if whole.any():
            rows = page[whole]
            for i in range(0, len(rows), ROW_CHUNK):
                chunk = rows[i:i + ROW_CHUNK]
                if follow_on(chunk):
                    self.pool.mem[chunk[0]:chunk[-1] + 1] = 0
                else:
                    self.pool.mem[chunk] = 0
            self.pool.used[rows] = 0
            op.rows(rows)
            op.counts["descriptors_written"] += ENTRIES * len(rows)
            op.counts["pages_unmapped"] += ENTRIES * len(rows)
        rest = ~whole
        if rest.any():
            f0, ln = flat0[rest], length[rest]
            line_seg, lines, edge_seg, edge_flat = self._cut_lines(f0, ln)
            mem_lines = self.pool.flat.view("V64")          # a cache line as one element
            held = mem_lines[lines].view(U64).reshape(-1, ENTRIES_PER_LINE)
            # 8 "non-zero" bytes per line read as one word: its bit count is the live entries.
            live_in_line = np.bitwise_count((held != 0).view(np.uint64)).ravel()
            mem_lines[lines] = np.zeros(1, "V64")
            edge_live = self.pool.flat[edge_flat] != 0
            self.pool.flat[edge_flat] = 0
            cleared = (np.bincount(line_seg, live_in_line, len(f0))
                       + np.bincount(edge_seg, edge_live, len(f0))).astype(np.int64)
            self.pool.count_pages(f0 // ENTRIES, -cleared)
            n = int(cleared.sum())
            op.counts["descriptors_written"] += n
            op.counts["pages_unmapped"] += n
            # Lines that held a live entry: runs of whole lines, and the edge lines.
            hit = lines[live_in_line > 0]
            if len(hit):
                cut = np.flatnonzero(np.diff(hit) != 1)
                op.lines(hit[np.concatenate(([0], cut + 1))], hit[np.concatenate((cut, [len(hit) - 1]))])
            edge_lines = edge_flat[edge_live] // ENTRIES_PER_LINE
            op.lines(edge_lines, edge_lines)

    def _reclaim(self, touched: list, op: OpAccount) -> None:
        """Free tables the unmap left empty, deepest first, and clear their parent entries."""
        for level, ids, pages, parent_flat in reversed(touched):
            alive = self.pool.level[pages] == level
            pages, parent_flat = pages[alive], parent_flat[alive]
            if not len(pages):
                continue
            empty = self.pool.used[pages] == 0
            if empty.any():
                self.pool.free(level, pages[empty])
                op.level_count("tables_freed", level, int(empty.sum()))
                self.pool.flat[parent_flat[empty]] = 0
                self.pool.count(parent_flat[empty], -1)
                op.entries(parent_flat[empty])

    # -- translate and decode ----------------------------------------------------------

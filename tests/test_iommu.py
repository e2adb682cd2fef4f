"""IOMMU drivers: what each API counts, the shared driver's limits, the invariant."""

import numpy as np
import pytest

from iommu_core.xen import invariant
from iommu_core.xen.iommu import Contexts, NotApplicable, SharedIommu, UnsharedIommu
from iommu_core.xen.p2m import P2M

GIB_PAGES = 1 << 18


def mirrored(api, fmt="ipmmu-s1-39"):
    p2m, io = P2M(), UnsharedIommu(fmt, api)
    return p2m, io


def follow(p2m, io, *args):
    change = p2m.set_entry(*args)
    io.follow(change)
    invariant.check("d", io, p2m, change.touched)
    return change


@pytest.mark.parametrize("api", ["per-page", "batched", "blocks"])
def test_the_iommu_follows_every_p2m_change(api):
    p2m, io = mirrored(api)
    follow(p2m, io, [0x40000, 0x50000], [0x80000, 0x90003], [1024, 100], "ram_rw")
    follow(p2m, io, 0x40100, 0xA0000, 16, "grant_map_ro")
    follow(p2m, io, 0x40080, 0, 8, "invalid")
    follow(p2m, io, 0xE6700, 0xE6700, 16, "mmio_direct_dev")
    full = p2m.entries()
    invariant.check("d", io, p2m, (full.iova.astype(np.int64) // 4096, full.iova.astype(np.int64) // 4096 + full.npages))


def test_per_page_makes_a_call_per_page_batched_one_per_call_and_maps_never_invalidate():
    counts = {}
    for api in ("per-page", "batched"):
        p2m, io = mirrored(api)
        follow(p2m, io, [0x40000, 0x50000], [0x80000, 0x90000], [300, 200], "ram_rw")
        counts[api] = io.counts
    # Rule (rules.py, unshared flush): a map never invalidates (io-pgtable-arm's map issues no TLB
    # op and XT's iotlb_flush is empty), so 500 per-page calls and 2 batched calls make 0 syncs.
    assert counts["per-page"].calls == 500 and counts["batched"].calls == 2
    assert counts["per-page"].invalidations == counts["batched"].invalidations == 0
    # One clean per entry written whatever the API (__arm_lpae_set_pte), not per distinct line: 500
    # leaves + 3 table descriptors (an L2 and an L3 table for GFN 0x40000, another L3 for 0x50000 in the
    # same 1 GiB) = 503, plus 3 new tables cleaned whole (3 * 64) = 695 for both.
    assert counts["per-page"].cache_lines_cleaned == counts["batched"].cache_lines_cleaned == 503 + 3 * 64
    assert counts["per-page"].map_latency.n == 500 and counts["batched"].map_latency.n == 2


def test_blocks_reach_the_minimum_table_for_aligned_ram():
    p2m, io = mirrored("blocks")
    follow(p2m, io, 0x40000, 0x80000, GIB_PAGES, "ram_rw")          # 1 GiB, 1 GiB-aligned both sides
    assert io.table_bytes == 4096                                    # the root alone holds a 1 GiB block
    p2m4, io4 = mirrored("batched")
    follow(p2m4, io4, 0x40000, 0x80000, GIB_PAGES, "ram_rw")
    assert io4.table_bytes == 4096 * (1 + 1 + 512)


def test_gfns_beyond_a_32_bit_iommu_are_counted_unreachable():
    p2m, io = mirrored("batched", "ipmmu-s1-32")
    follow(p2m, io, [0xF0000, 0x200000], [0x80000, 0x90000], [0x20000, 64], "ram_rw")
    assert io.counts.unreachable_pages == 0x10000 + 64
    assert io.counts.pages_mapped == 0x10000


def test_non_coherent_walker_cleans_new_tables_whole():
    p2m, io = mirrored("batched")
    follow(p2m, io, 0x40000, 0x80000, 1, "ram_rw")
    # one descriptor line, plus 2 new tables (level 2 and 3) cleaned whole, plus their table descriptors
    assert io.counts.tables_allocated == 2
    assert io.counts.cache_lines_cleaned == 2 * 64 + 3


@pytest.mark.parametrize("api, variant, syncs", [("per-page", "4.12", 1), ("per-page", "pre-4.12", 512),
                                                ("batched", "4.12", 1), ("blocks", "4.12", 1)])
def test_an_unmap_syncs_once_per_call(api, variant, syncs):
    # One 2 MiB P2M leaf (GFN 0x40000 and MFN 0x80000 are 2 MiB-aligned, 512 pages), then removed.
    # per-page since 4.12: the P2M calls iommu_unmap once for its one leaf -> 1 sync; before 4.12
    # one per 4 KiB page -> 512; batched / blocks (design assumption): one unmap call -> 1.
    p2m, io = mirrored(api)
    io.follow(p2m.set_entry(0x40000, 0x80000, 512, "ram_rw"), True, variant)
    assert io.counts.invalidations == 0                              # the map: none
    io.follow(p2m.set_entry(0x40000, 0, 512, "invalid"), True, variant)
    assert io.counts.invalidations == syncs
    # Without a context there is nothing to flush.
    p2m, io = mirrored(api)
    io.follow(p2m.set_entry(0x40000, 0x80000, 512, "ram_rw"), False, variant)
    io.follow(p2m.set_entry(0x40000, 0, 512, "invalid"), False, variant)
    assert io.counts.invalidations == 0


def test_shared_needs_a_40_bit_p2m_and_flushes_after_every_valid_leaf():
    with pytest.raises(NotApplicable, match="at most 40-bit"):
        SharedIommu(P2M("p2m-s2-48"))
    with pytest.raises(NotApplicable, match="stage-2"):
        SharedIommu(P2M(), stage2_capable=False)
    p2m = P2M()
    io = SharedIommu(p2m)
    # Rule (p2m.c @ RELEASE-4.17.0:1204): a flush after every leaf whose old or new entry is valid.
    # 16 pages at GFN 0x40000 are 16 4 KiB leaves: adding them flushes 16 times, replacing them 16 more;
    # without a context (before the first assignment) none.
    io.follow(p2m.set_entry(0x40000, 0x80000, 16, "ram_rw"), False)
    assert io.counts.invalidations == 0
    io.follow(p2m.set_entry(0x40000, 0x90000, 16, "ram_rw"))
    assert io.counts.invalidations == 16
    io.follow(p2m.set_entry(0x40000, 0xA0000, 16, "ram_rw"))
    assert io.counts.invalidations == 32 and io.table_bytes == 0
    io.follow(p2m.set_entry(0x50000, 0, 16, "invalid"))                # removing nothing: no flush
    assert io.counts.invalidations == 32


def test_populate_copies_exactly_the_dma_view():
    p2m = P2M()
    p2m.set_entry([0x40000, 0x50000, 0xE6700], [0x80000, 0x90000, 0xE6700], [700, 20, 16],
                  ["ram_rw", "grant_map_ro", "mmio_direct_dev"])
    io = UnsharedIommu("ipmmu-s1-39", "batched")
    io.populate(p2m)
    assert io.counts.populate_pages == 736
    invariant.check("d", io, p2m, (np.array([0]), np.array([1 << 27])))


def test_a_tampered_iommu_fails_the_invariant_at_the_first_bad_gfn():
    p2m, io = mirrored("batched")
    follow(p2m, io, 0x40000, 0x80000, 64, "ram_rw")
    io.pt.unmap(0x40000 * 4096 + 5 * 4096, 1)             # behind the hypervisor's back
    with pytest.raises(invariant.InvariantError, match=r"GFN 0x40005"):
        invariant.check("d", io, p2m, (np.array([0x40000]), np.array([0x40040])))


def test_contexts_run_out_cleanly():
    c = Contexts(2)
    assert c.acquire(1) and c.acquire(1) and c.acquire(2) and not c.acquire(3)
    c.release(1)
    assert c.acquire(3)


def test_unknown_api_is_named():
    with pytest.raises(ValueError, match="unknown driver API 'pages'"):
        UnsharedIommu(api="pages")

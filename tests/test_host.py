"""Hosts of domains under each policy: who gets a table, what is refused, what leaks."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iommu_core.scenarios.files import load_scenario
from iommu_core.xen.board import board
from iommu_core.xen.dom0 import DOMID_XEN
from iommu_core.xen.domain import DomainSpec
from iommu_core.xen.host import WALL_FIELDS, Host, HostConfig, toolstack_reservation
from iommu_core.xen.iommu import NotApplicable

MIB = 1 << 20


def run(policy, api="batched", specs=None, b=None, **kw):
    small = load_scenario("small-h3")
    host = Host(b or small.board, HostConfig(policy=policy, api=api, **kw))
    records = host.run(specs or list(small.specs))
    return host, {r["domain"]: r for r in records}


def test_eager_gives_every_domain_a_table():
    _, r = run("eager")
    assert r["guest"]["devices"] == 0 and r["guest"]["iommu_table_bytes"] > 0
    assert all(x["mismatches"] == 0 for x in r.values())


def test_declared_gives_tables_only_to_declared_domains_and_refuses_hotplug():
    _, r = run("declared")
    assert r["guest"]["iommu_table_bytes"] == 0 and r["driver"]["iommu_table_bytes"] > 0
    assert r["hotplug"]["assign_refused_undeclared"] == 2 and r["hotplug"]["devices"] == 0


def test_lazy_builds_a_table_at_first_assignment_from_the_whole_p2m():
    _, r = run("lazy")
    assert r["guest"]["iommu_table_bytes"] == 0
    hot = r["hotplug"]
    # populate copied every DMA-visible page the P2M held: its RAM (shared_info over one of its
    # pages), the grant-table frame its Linux maps and the 4 magic pages.
    assert hot["populate_pages"] == (256 * MIB >> 12) + 1 + 4
    assert hot["iommu_table_bytes"] > 0 and hot["assign_ns"] > r["driver"]["assign_ns"] / 10


def test_shared_uses_no_iommu_table_bytes():
    _, r = run("shared")
    assert all(x["iommu_table_bytes"] == 0 for x in r.values())
    with pytest.raises(NotApplicable):
        run("shared", p2m_format="p2m-s2-48")


def test_per_page_calls_per_page_batched_per_call():
    _, pp = run("eager", "per-page")
    _, bt = run("eager", "batched")
    g_pp, g_bt = pp["guest"], bt["guest"]
    # RAM, the grant frame and 4 magic pages, shared_info over a RAM page, balloon out and in.
    pages = (1 << 30 >> 12) + 1 + 4 + 1 + 2 * (64 << 20 >> 12)
    assert g_pp["calls"] == pages
    # batched: one per extent of each batch, but the balloon's order-0 pages are one call each, out and in
    balloon = 2 * (64 << 20 >> 12)
    assert balloon < g_bt["calls"] < balloon + 100
    # One clean per entry written (__arm_lpae_set_pte) whatever the API: both write the same entries.
    assert g_pp["cache_lines_cleaned"] == g_bt["cache_lines_cleaned"]


def tiny(destroy=False, balloon=True, grant_pages=0):
    """dom0 and one 4 MiB domU with SDHI0 (2 pages of MMIO) from creation: counts by hand."""
    from iommu_core.xen.domain import DomainSpec
    return [load_scenario("small-h3").specs[0],
            DomainSpec("g", "guest", 4 * MIB, passthrough=True, devices=("sdhi0",), balloon_bytes=MIB if balloon else 0,
                       kernel_kib=16, ramdisk_kib=0, destroy=destroy, grant_pages=grant_pages)]


@pytest.mark.parametrize("policy, api, invalidations", [
    # unshared (XT): maps never invalidate; shared_info over a RAM page replaces a live entry with
    # another MFN (ipmmu_map's remap unmaps first: 1 sync); the balloon removes the last 1 MiB one
    # 4 KiB page per call (Linux's order-0 extents): 256 unmap calls, whatever the API. 1 + 256 = 257.
    ("eager", "batched", 257), ("eager", "per-page", 257), ("declared", "per-page", 257),
    # shared: a flush per leaf whose old or new entry is valid, once the domain holds a context (its
    # first assignment): SDHI0's 2 MMIO leaves, the grant frame and shared_info (2), the balloon's
    # 256 removals and 256 4 KiB populate extents back in: 2 + 2 + 256 + 256 = 516, whatever the API.
    ("shared", "batched", 516), ("shared", "per-page", 516)])
def test_invalidations_follow_the_drivers_rules(policy, api, invalidations):
    _, r = run(policy, api, specs=tiny())
    assert r["g"]["invalidations"] == invalidations
    # Stage-2 TLB: shared_info splits a 2 MiB block (1) and replaces a valid leaf (1); the balloon's
    # 256 order-0 removals are 256 locked updates with a removal (256 deferred); RAM, magic pages,
    # MMIO, the grant frame and the balloon's return go over empty slots (0). 258 in all.
    assert r["g"]["tlb_flushes"] == 258


def test_pre_4_12_per_page_flushes_each_page():
    # The balloon's 256 leaves are 4 KiB each: the variants agree there; a 2 MiB leaf tells them
    # apart (test_iommu.test_an_unmap_syncs_once_per_call). Here: the variant is accepted and applied.
    _, r = run("eager", "per-page", specs=tiny(), per_page_flush="pre-4.12")
    assert r["g"]["invalidations"] == 257
    with pytest.raises(ValueError, match="per_page_flush"):
        HostConfig(per_page_flush="4.11")


@pytest.mark.parametrize("policy, api, invalidations", [
    # before destroy, shared: 2 MMIO leaves + grant frame + shared_info = 4; unshared: shared_info's remap = 1
    ("shared", "batched", 4 + 520 + 1), ("eager", "per-page", 1 + 520 + 1), ("eager", "batched", 1 + 520 + 1)])
def test_relinquish_removes_and_flushes_leaf_by_leaf(policy, api, invalidations):
    # At destroy the guest's P2M holds 1 2 MiB RAM leaf, 512 4 KiB leaves of the block shared_info
    # split, 4 magic pages, 2 MMIO pages and the grant frame: 520 leaves. relinquish_p2m_mapping
    # removes each: shared flushes after each (520), unshared unmaps each (one call, one sync each:
    # 520), and freeing the context flushes once more (+1). The stage-2 TLB: the split and the
    # replaced leaf (2) and one deferred flush for the whole relinquish, under one lock (1).
    _, r = run(policy, api, specs=tiny(destroy=True, balloon=False))
    g = r["g"]
    assert g["p2m_relinquished_leaves"] == 520
    assert g["invalidations"] == invalidations
    assert g["tlb_flushes"] == 3


def test_blocks_reach_the_minimum_for_aligned_ram():
    _, r = run("eager", "blocks")
    assert r["driver"]["iommu_table_bytes"] <= 2 * r["driver"]["iommu_min_table_bytes"]
    _, r4 = run("eager", "batched")
    assert r4["driver"]["iommu_table_bytes"] > 10 * r["driver"]["iommu_table_bytes"]


def test_context_exhaustion_is_refused_cleanly():
    b = board("h3")
    devices = [m.name for m in b.masters][: b.usable_contexts + 2]
    specs = [DomainSpec("dom0", "dom0", 256 * MIB, passthrough=True)] + [
        DomainSpec(f"d{i}", "driver", 64 * MIB, passthrough=True, devices=(name,)) for i, name in enumerate(devices)]
    # Rule (row 6): eager is built like XT: a context at creation for every domain, 8 usable (context 0
    # not reserved), creation refused when none is left. dom0 takes one, so 7 of the 9 domUs are created
    # and 2 refused; no assignment is refused (the created ones hold their context already).
    host, r = run("eager", specs=specs, b=b)
    assert sum(x["create_refused_context"] for x in r.values()) == 2
    assert sum(x["assign_refused_context"] for x in r.values()) == 0
    assert len(host.contexts.holders) == 8
    refused = [x for x in r.values() if x["create_refused_context"]]
    assert all(x["p2m_calls"] == 0 and x["p2m_table_bytes"] == 0 and x["devices"] == 0 for x in refused)
    # shared (upstream): context 0 reserved, 7 usable, taken at the first assignment: dom0 holds one,
    # 6 domUs get theirs, 3 assignments are refused (the domains are still created).
    host, r = run("shared", specs=specs, b=b)
    assert sum(x["assign_refused_context"] for x in r.values()) == 3
    assert sum(x["create_refused_context"] for x in r.values()) == 0
    assert len(host.contexts.holders) == b.usable_contexts == 7


def test_teardown_returns_every_page_and_context():
    b = board("h3")
    specs = [DomainSpec("dom0", "dom0", 256 * MIB, passthrough=True)] + [
        DomainSpec(f"d{i}", "guest", 64 * MIB, passthrough=True, devices=(f"sdhi{i}",), grant_pages=16,
                   balloon_bytes=8 * MIB, destroy=True) for i in range(3)]
    host, r = run("eager", specs=specs, b=b)
    # dom0 keeps its RAM and the two Xen pages its Linux maps (shared_info, a grant-table frame); Xen
    # keeps its image (2 MiB: 512 pages) for good.
    assert host.memory.owned_pages(DOMID_XEN) == 512
    assert host.memory.free_pages == host.memory.total_pages - (256 * MIB >> 12) - 2 - 512
    assert host.contexts.holders == {0}
    assert all(x["destroyed"] and x["p2m_table_bytes_final"] == 0 for k, x in r.items() if k != "dom0")
    host.memory.check()


def test_toolstack_reservation_formula():
    assert toolstack_reservation(1 << 30) == 515 * 4096


def test_records_carry_the_fixed_fields():
    _, r = run("eager")
    fixed = {"policy", "api", "format", "domain", "kind", "ram_bytes", "host_ram_bytes", "devices",
             "iommu_table_bytes", "p2m_table_bytes", "invalidations", "mismatches"}
    assert all(fixed <= set(x) for x in r.values())
    assert r["dom0"]["kind"] == "dom0" and r["dom0"]["devices"] > 10


H3_DEVICES = ["etheravb", "sdhi0", "sdhi1", "sdhi2", "sata", "audio-dmac0"]


@st.composite
def life_cycles(draw):
    n = draw(st.integers(1, 4))
    specs = [DomainSpec("dom0", "dom0", 128 * MIB, passthrough=True)]
    free = list(H3_DEVICES)
    for i in range(n):
        ram = draw(st.sampled_from([16, 40, 64, 130])) * MIB
        devs = tuple(d for d in free[:draw(st.integers(0, 1))])
        free = free[len(devs):]
        hot = tuple(d for d in free[:draw(st.integers(0, 1))])
        free = free[len(hot):]
        unplug = tuple(x for x in devs + hot if draw(st.booleans()))
        specs.append(DomainSpec(f"d{i}", "guest", ram, passthrough=draw(st.booleans()) or bool(devs),
                                devices=devs, hotplug=hot, unplug=unplug, grant_pages=draw(st.sampled_from([0, 7, 600])),
                                balloon_bytes=draw(st.sampled_from([0, 4 * MIB, 3 * MIB + 8192])),
                                destroy=draw(st.booleans()), kernel_kib=draw(st.sampled_from([0, 1024, 4096])),
                                ramdisk_kib=draw(st.sampled_from([0, 964]))))
    return specs


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=life_cycles(), policy=st.sampled_from(["eager", "lazy", "declared", "shared"]),
       api=st.sampled_from(["per-page", "batched", "blocks"]), frag=st.sampled_from([0.0, 0.3]),
       seed=st.integers(0, 3))
def test_random_life_cycles_keep_the_invariant_and_leak_nothing(specs, policy, api, frag, seed):
    b = board("h3")
    host = Host(b, HostConfig(policy=policy, api=api, fragmentation=frag, seed=seed, dom0_mem=128 * MIB))
    records = host.run(specs)               # the invariant is checked after every step
    assert all(r["mismatches"] == 0 for r in records)
    alive = [d for d in host.domains if d.alive]
    held = sum(host.memory.owned_pages(d.domid) for d in alive) + host.memory.owned_pages(DOMID_XEN)
    assert host.memory.free_pages + held == host.memory.total_pages
    assert all(host.memory.owned_pages(d.domid) == 0 for d in host.domains if not d.alive)
    # Contexts are held from creation (unshared) or the first assignment (shared) until teardown.
    assert host.contexts.holders <= {d.domid for d in alive}
    if policy in ("eager", "declared"):
        assert all(d.domid in host.contexts.holders for d in alive if d.iommu is not None)
    host.memory.check()


def test_contexts_are_per_main_ipmmu():
    b = board("server", ram_gib=8, functions=32)
    on_first = [m.name for m in b.masters if m.main_ipmmu == 0]          # 8 functions behind IPMMU 0
    specs = [DomainSpec("dom0", "dom0", 256 * MIB, passthrough=True)] + [
        DomainSpec(f"d{i}", "driver", 32 * MIB, passthrough=True, devices=(name,), kernel_kib=1024)
        for i, name in enumerate(on_first)]
    host, r = run("eager", specs=specs, b=b)
    # eager (XT): every domain takes a context on the root IPMMU (0) at creation: 8 usable there, dom0
    # holds one, so 1 of the 8 domUs is refused at creation, though the other IPMMUs have room.
    assert sum(x["create_refused_context"] for x in r.values()) == 1
    assert sum(x["assign_refused_context"] for x in r.values()) == 0
    assert len(host.contexts.by_ipmmu[0]) == 8 and 0 in host.contexts.by_ipmmu[0]
    assert all(held == {0} for held in host.contexts.by_ipmmu[1:])      # dom0's own functions
    # shared (upstream, context 0 reserved: 7 usable) takes them at assignment: 1 of 8 refused there.
    host, r = run("shared", specs=specs, b=b)
    assert sum(x["assign_refused_context"] for x in r.values()) == 1
    assert len(host.contexts.by_ipmmu[0]) == 7


def test_a_seed_gives_the_same_records_but_for_wall_clock_fields():
    a = run("lazy", "per-page", seed=5, fragmentation=0.2)[1]
    b = run("lazy", "per-page", seed=5, fragmentation=0.2)[1]
    strip = lambda r: {k: v for k, v in r.items() if k not in WALL_FIELDS}      # noqa: E731
    assert all(strip(a[k]) == strip(b[k]) for k in a)
    c = run("lazy", "per-page", seed=6, fragmentation=0.2)[1]
    assert any(strip(a[k]) != strip(c[k]) for k in a)


def test_unplug_keeps_the_context_until_teardown():
    host, r = run("eager")
    hot = next(d for d in host.domains if d.name == "hotplug")
    assert set(hot.devices) == {"sdhi1"} and hot.domid in host.contexts.holders
    assert r["hotplug"]["devices"] == 2
    b = board("h3")
    specs = [DomainSpec("dom0", "dom0", 256 * MIB, passthrough=True),
             DomainSpec("d", "guest", 64 * MIB, hotplug=("sdhi0",), unplug=("sdhi0",))]
    # Neither driver frees the context when the last device goes: XT holds it from creation to
    # destroy, upstream from the first assignment to teardown (ipmmu-vmsa.c @ RELEASE-4.17.0:1339).
    for policy in ("eager", "shared", "lazy"):
        host, _ = run(policy, specs=specs, b=b)
        assert host.contexts.holders == {0, 1}, policy
    with pytest.raises(ValueError, match="cannot unplug 'sata'"):
        DomainSpec("d", "guest", 64 * MIB, unplug=("sata",))


def test_h3_dom0_maps_its_memory_and_the_board_mmio_not_passed_through():
    small = load_scenario("small-h3")
    host = Host(small.board, HostConfig(policy="eager"))
    host.run(list(small.specs))
    assert small.board.ram_bytes == 3968 * MIB and len(small.board.ram_banks) == 4
    dom0 = host.domains[0]
    ext = dom0.p2m.entries()
    from iommu_core.xen.p2m_types import CODE
    ram = int(ext.npages[(ext.sw == CODE["ram_rw"]) | (ext.sw == CODE["grant_map_rw"])].sum())
    # Its RAM (where the consoled and xenstored grant-map rings, those pages), plus the grant-table
    # frame its Linux maps into Xen's image (shared_info replaces a page).
    assert ram * 4096 == small.dom0_mem + 4096
    passed = {n for s in small.specs[1:] for n in (*s.devices, *s.hotplug)}
    want = {(r.base >> 12, -(-r.size >> 12)) for m in small.board.masters if m.name not in passed for r in m.regions}
    want |= {(r.base >> 12, -(-r.size >> 12)) for r in small.board.other_mmio}
    mmio = ext.sw == CODE["mmio_direct_c"]           # dom0's MMIO, as handle_node maps it
    got_pages = int(ext.npages[mmio].sum())
    assert got_pages == sum(n for _, n in want)
    assert all(int(p) == int(v) for p, v in zip(ext.pa[mmio], ext.iova[mmio]))          # 1:1


@pytest.mark.parametrize("policy", ["eager", "lazy"])
def test_dom0_boots_and_holds_its_devices_before_any_domu_starts(policy):
    """Xen builds dom0 (and assigns its devices) before the toolstack in it creates a domU."""
    from iommu_core.xen.trace import Recorder
    s = load_scenario("h3-fleet")
    host = Host(s.board, s.host_config(policy=policy, api="batched"))
    host.recorder = Recorder()
    records = host.run(list(s.specs))
    starts = {}
    for t, domid, *_ in host.recorder.rows:
        starts.setdefault(domid, []).append(t)
    dom0_last = max(starts[0])
    assert all(min(ts) >= dom0_last for d, ts in starts.items() if d != 0)
    assert records[0]["assign_refused_context"] == 0 and records[0]["devices"] > 0


@pytest.mark.parametrize("policy, cleans", [("eager", 980), ("shared", 980), ("lazy", 779)])
def test_p2m_entry_writes_are_cleaned_when_the_iommu_is_enabled(policy, cleans):
    # clean_pte (p2m.c @ RELEASE-4.17.0:1808): the IPMMU's walker is not coherent, so with the IOMMU
    # enabled every P2M entry write is cleaned and every new table page whole (64 + its entry: 65).
    # The tiny guest, step by step (root: 2 concatenated L1 pages, there from the start):
    #   RAM: 2 x 2 MiB at GFN 0x40000: a new L2 table (65) + 2 leaves = 67
    #   4 magic pages at 0x39000: new L2 and L3 tables (130) + 4 = 134
    #   SDHI0's 2 MMIO pages at 0xee100: new L2 and L3 (130) + 2 = 132
    #   grant frame at 0x38000: a new L3 (65) + 1 = 66; shared_info over RAM page 1023: its 2 MiB block
    #     split (a new table 65, the entry removed and written again 2), the leaf removed and written 2 = 69
    #   balloon: 256 removals (256), 256 leaves back (256)
    # eager and shared (the guest has the passthrough flag: IOMMU enabled at creation): 980.
    # lazy: enabled at the first assignment (the table is built then): 132 + 135 + 512 = 779.
    _, r = run(policy, "batched", specs=tiny())
    assert r["g"]["p2m_cache_lines_cleaned"] == cleans


def test_no_p2m_cleans_without_an_iommu():
    _, r = run("declared", "batched")
    assert r["guest"]["p2m_cache_lines_cleaned"] == 0 and r["driver"]["p2m_cache_lines_cleaned"] > 0


def test_invalidations_wait_per_context_unless_the_host_queue_is_chosen():
    # One flush register per context (IMCTR, under the domain's lock): the tiny guest flushes only
    # its own context in its own steps (dom0's toolstack loads flush dom0's, which then is idle), so it
    # never waits; the same counts either way.
    _, r = run("shared", specs=tiny())
    assert r["g"]["inv_wait_ns"] == 0
    _, pc = run("shared")
    _, hq = run("shared", invalidation_queue="host")        # the former host-wide queue, a labelled option
    assert {k: v["invalidations"] for k, v in pc.items()} == {k: v["invalidations"] for k, v in hq.items()}
    assert sum(v["inv_wait_ns"] for v in hq.values()) >= sum(v["inv_wait_ns"] for v in pc.values())
    with pytest.raises(ValueError, match="invalidation_queue"):
        HostConfig(invalidation_queue="global")


def _dom0(policy, api, **kw):
    # unpopulated-alloc: no balloon steps, so the grant maps' own calls stand alone
    _, r = run(policy, api, specs=tiny(balloon=False, **kw), dom0_unpopulated_alloc=True)
    assert all(x["mismatches"] == 0 for x in r.values())       # dfn == mfn entries included
    return r["dom0"]


def test_grant_maps_are_single_4k_entries_and_unshared_maps_them_at_dfn_eq_mfn():
    # dom0's backend grant-maps 600 pages of the guest's RAM: each one p2m call and one 4 KiB leaf
    # (p2m_grant_map_rw). Unshared (eager, per-page): the IOMMU mirrors each (600 calls) and, dom0 being
    # direct-mapped with its IOMMU on, maps each again at dfn = mfn (600 calls): 1,200 more IOMMU calls,
    # no invalidation (a map never invalidates).
    base, r = _dom0("eager", "per-page"), _dom0("eager", "per-page", grant_pages=600)
    assert r["p2m_calls"] - base["p2m_calls"] == 600 and r["p2m_leaves_4k"] - base["p2m_leaves_4k"] == 600
    assert r["p2m_leaves_2m"] == base["p2m_leaves_2m"]
    assert r["calls"] - base["calls"] == 1200 and r["invalidations"] == base["invalidations"]
    # At destroy: 600 grant unmaps and the 2 rings' (602 p2m calls); the IOMMU unmaps each twice (mirror
    # and dfn = mfn: 1,204 calls), each unmap call one sync (1,204 invalidations); the rings' 2 leaves go.
    d = _dom0("eager", "per-page", grant_pages=600, destroy=True)
    assert d["p2m_calls"] - r["p2m_calls"] == 602 and r["p2m_leaves_4k"] - d["p2m_leaves_4k"] == 600 + 2
    assert d["calls"] - r["calls"] == 1204 and d["invalidations"] - r["invalidations"] == 1204


def test_shared_maps_dom0_grants_at_gfn_eq_mfn_in_the_p2m():
    # Shared (arm_iommu_map_page): the dfn = mfn mapping is a P2M entry p2m_iommu_map_rw, so 600 grant
    # maps are 1,200 p2m calls and 1,200 4 KiB leaves, each a new valid leaf: 1,200 IOTLB flushes.
    base, r = _dom0("shared", "batched"), _dom0("shared", "batched", grant_pages=600)
    assert r["p2m_calls"] - base["p2m_calls"] == 1200 and r["p2m_leaves_4k"] - base["p2m_leaves_4k"] == 1200
    assert r["invalidations"] - base["invalidations"] == 1200
    # At destroy both go for the 600 pages and the 2 rings: 1,204 removals, each flushed.
    d = _dom0("shared", "batched", grant_pages=600, destroy=True)
    assert d["p2m_calls"] - r["p2m_calls"] == 1204 and d["invalidations"] - r["invalidations"] == 1204


def test_a_grant_frame_is_mapped_once_however_many_grants_hold_it():
    # Xen's maptrack refcount: the second grant map of a frame adds nothing to the IOMMU, and only the
    # last unmap removes it.
    host, _ = run("eager", "per-page", specs=tiny(balloon=False), dom0_unpopulated_alloc=True)
    dom0, guest = host.domains[0], host.domains[1]
    frames = guest.ram[1][0] + np.arange(2)                 # the guest's first two machine frames
    calls = dom0.iommu.counts.calls
    dom0.grant_iommu(frames, True)
    dom0.grant_iommu(frames[:1], True)
    assert dom0.iommu.counts.calls - calls == 2
    dom0.grant_iommu(frames[:1], False)
    assert frames[0] in dom0.grant_dfns and dom0.iommu.counts.calls - calls == 2
    dom0.grant_iommu(frames, False)
    assert not np.isin(frames, dom0.grant_dfns).any() and dom0.iommu.counts.calls - calls == 4
    dom0.check_all()


def test_a_scenario_file_selects_the_variant_rules(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text('[scenario]\nname = "v"\nboard = "h3"\nper_page_flush = "pre-4.12"\ninvalidation_queue = "host"\n')
    s = load_scenario(str(f))
    cfg = s.host_config(policy="eager", api="per-page")
    assert cfg.per_page_flush == "pre-4.12" and cfg.invalidation_queue == "host"
    f.write_text('[scenario]\nname = "v"\nboard = "h3"\nper_page_flush = "4.11"\n')
    with pytest.raises(ValueError, match="per_page_flush"):
        load_scenario(str(f))


def test_the_readme_shows_the_rules_table():
    from pathlib import Path

    from iommu_core.xen import rules
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert rules.markdown() in readme
    assert all(r.source for r in rules.POLICY_RULES.values())
    assert {a for a, r in rules.API_RULES.items() if r.source.startswith(rules.DESIGN)} == {"batched", "blocks"}
    assert rules.POLICY_RULES["lazy"].source.startswith(rules.DESIGN)


def test_shared_is_not_applicable_where_the_ipmmu_cannot_walk_stage_2():
    # upstream's ipmmu_stage2_supported: H3 / M3-W only from ES3.0; the m3w profile is r8a77960 (ES1.x)
    m3w = board("m3w")
    assert not m3w.ipmmu_stage2 and board("h3").ipmmu_stage2
    specs = [DomainSpec("dom0", "dom0", 256 * MIB, passthrough=True)]
    with pytest.raises(NotApplicable, match="stage-2"):
        Host(m3w, HostConfig(policy="shared")).run(specs)
    Host(m3w, HostConfig(policy="declared")).run(specs)


def test_records_are_domain_records_and_the_readme_shows_their_fields():
    from dataclasses import fields
    from pathlib import Path

    from iommu_core.store.results import NAMES
    from iommu_core.xen.record import DomainRecord, columns, markdown
    _, r = run("eager", specs=tiny(balloon=False))
    assert list(r["g"]) == [f.name for f in fields(DomainRecord)]
    assert all(f.metadata["doc"] for f in fields(DomainRecord))             # every field says what it is
    assert {name for name, *_ in columns()} <= set(NAMES)
    assert markdown() in (Path(__file__).parent.parent / "README.md").read_text()

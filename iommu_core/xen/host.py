"""A host: its board, machine memory, IPMMU contexts and invalidation queue, and
many domains booting at once once dom0 is up.

dom0 boots first and alone (its devices are assigned before any domU exists);
then the domUs start together, at seeded offsets within the arrival spread.
Domains run their life-cycle steps in a discrete-event schedule: the domain
whose clock is earliest goes next (ties broken by a seeded draw). Each step's
modelled CPU time comes from the work counted; its IOTLB invalidations then
wait for the flush register of the context they flush (one per context, as
the IPMMU has; HostConfig.invalidation_queue = "host" keeps the former single
host-wide queue as a labelled design assumption), so steps that flush the
same domain's context (dom0's, for the toolstack) delay each other.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass

import numpy as np

from .. import intervals as iv
from ..pgtable import Format, PageTable
from ..pgtable.format import GRANULE
from ..units import GIB
from .costs import CostModel
from .domain import DOM0_FOREIGN_GFN, GUEST_RAM0, POLICIES, Domain, DomainSpec
from .iommu import APIS, SHARED_MAX_IPA_BITS, Contexts, NotApplicable
from .dom0 import DOM0_SHARED_INFO_PAGE, DOMID_XEN, allocate_memory_11, xen_held, xen_image
from .memory import MachineMemory
from .toolstack import DTB_PAGES, RAMDISK_OFFSET, RING_GRANTS, Dom0Slots, image_pages
from .p2m_types import DMA_PERM_BY_CODE
from .record import DomainRecord
from .rules import PER_PAGE_FLUSH_VARIANTS, policy_rule

STEP_BATCH_PAGES = (1 << 30) // GRANULE      # RAM is populated in batches of at most 1 GiB
INVALIDATION_QUEUES = ("per-context", "host")
# The only record fields that differ between two runs of one seed: wall-clock measurements.
WALL_FIELDS = ("engine_wall_s", "sim_pages_per_s_wall")


def toolstack_reservation(ram_bytes: int) -> int:
    """Bytes Xen's toolstack reserves for a domain's unshared IOMMU tables (libxl's estimate)."""
    pages, total = -(-ram_bytes // GRANULE), 0
    for _ in range(4):
        pages = -(-pages // 512)
        total += pages
    return total * GRANULE


@dataclass(frozen=True)
class HostConfig:
    policy: str = "eager"
    api: str = "batched"
    iommu_format: str = "ipmmu-s1-39"
    p2m_format: str = "p2m-s2-40"
    dom0_mem: int = GIB
    fragmentation: float = 0.0
    seed: int = 0
    check: bool = True                    # the invariant after every step (tests always keep it on)
    # dom0's kernel has XEN_UNPOPULATED_ALLOC: foreign mappings go to unused address space, with no
    # balloon steps (the captured Debian kernel has not: it balloons a page out for each).
    dom0_unpopulated_alloc: bool = False
    arrival_spread_ns: float = 1e6        # domains start at seeded times within this window
    # The per-page API's flush rule (rules.PER_PAGE_FLUSH_VARIANTS): "4.12", once per iommu_map / unmap
    # call (the caller's flush flags, Xen 4.12 and later); "pre-4.12", once per 4 KiB page.
    per_page_flush: str = "4.12"
    # Where IOTLB invalidations wait: "per-context", each context's own flush register (IMCTR) under the
    # domain's lock, as both IPMMU drivers flush (ipmmu_tlb_invalidate, xen-project/xen:xen/drivers/
    # passthrough/arm/ipmmu-vmsa.c @ RELEASE-4.17.0:1017, under xen_domain->lock); "host", one queue for
    # the whole host (DESIGN ASSUMPTION, the model's former rule: no real driver has one).
    invalidation_queue: str = "per-context"

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}; choose from {list(POLICIES)}")
        if self.api not in APIS:
            raise ValueError(f"unknown driver API {self.api!r}; choose from {list(APIS)}")
        if self.per_page_flush not in PER_PAGE_FLUSH_VARIANTS:
            raise ValueError(f"unknown per_page_flush {self.per_page_flush!r}; choose from "
                             f"{list(PER_PAGE_FLUSH_VARIANTS)}")
        if self.invalidation_queue not in INVALIDATION_QUEUES:
            raise ValueError(f"unknown invalidation_queue {self.invalidation_queue!r}; choose from "
                             f"{list(INVALIDATION_QUEUES)}")
        Format.preset(self.iommu_format)
        fmt = Format.preset(self.p2m_format)
        if fmt.stage != 2:
            raise ValueError(f"the P2M needs a stage-2 format, got {self.p2m_format}")
        if policy_rule(self.policy).shared and fmt.ia_bits > SHARED_MAX_IPA_BITS:
            raise NotApplicable(f"policy shared: the IPMMU walks a P2M of at most {SHARED_MAX_IPA_BITS} "
                                f"input bits, {self.p2m_format} has {fmt.ia_bits}")
        if self.dom0_mem <= 0 or self.dom0_mem % GRANULE:
            raise ValueError(f"dom0_mem must be a positive multiple of 4 KiB, got {self.dom0_mem}")


class Host:
    def __init__(self, board, config: HostConfig = HostConfig(), costs: CostModel | None = None):
        self.board, self.config = board, config
        self.policy, self.api, self.check = config.policy, config.api, config.check
        self.iommu_format, self.p2m_format = config.iommu_format, config.p2m_format
        self.costs = costs or CostModel()
        self.memory = MachineMemory(board.ram_banks, config.fragmentation, config.seed)
        # Upstream (shared) reserves context 0 (ipmmu-vmsa.c @ RELEASE-4.17.0:978); XT does not (all of
        # num_ctx usable, ipmmu-vmsa-legacy.c @ RELEASE-4.13.0-xt0.2.prod-devel:1398).
        reserved = board.reserved_contexts if policy_rule(config.policy).context0_reserved else 0
        self.contexts = Contexts(board.ipmmu_contexts - reserved, board.ipmmus)
        self.domains: list[Domain] = []
        self.queue_free: dict = {}            # flush register (context's domain, or "host") -> when it is free
        self.step_inv: dict = {}              # invalidations of the running step, by the domain flushed
        self.rng = np.random.default_rng(config.seed)
        self.wall_s = 0.0
        self.recorder = None                  # a trace.Recorder to record the run's steps
        self.dom0_slots: Dom0Slots | None = None

    # -- building the plan ---------------------------------------------------------------
    def _mmio(self, names) -> tuple[np.ndarray, np.ndarray]:
        regions = [r for n in names for r in self.board.master(n).regions]
        return (np.array([r.base // GRANULE for r in regions], np.int64),
                np.array([-(-r.size // GRANULE) for r in regions], np.int64))

    def _dom0_plan(self, dom0: Domain, passed_through: set[str]):
        steps = [("create", dom0.create)]
        # Xen's allocate_memory_11 places the RAM; each block is one 1:1 p2m call.
        try:
            blocks = allocate_memory_11(self.board.ram_banks, xen_held(self.board.ram_banks, self.board.boot_modules),
                                        dom0.spec.ram_bytes)
        except ValueError as e:
            raise ValueError(f"board {self.board.name}: {e}") from None
        mfn = np.array([b for b, _ in blocks], np.int64)
        cnt = np.array([n for _, n in blocks], np.int64)
        first, frames = xen_image(self.board.ram_banks)
        self.memory.alloc_at(np.array([first]), np.array([frames]), DOMID_XEN)   # Xen's own, for good
        self.memory.alloc_at(mfn, cnt, dom0.domid)
        dom0.ram = (mfn.copy(), mfn.copy(), cnt.copy())
        dom0.ram_pages = int(cnt.sum())
        for s, n in blocks:
            for k in range(0, n, STEP_BATCH_PAGES):
                m = min(STEP_BATCH_PAGES, n - k)
                steps.append(("populate", lambda g=s + k, m=m: dom0.map_direct(np.array([g]), np.array([m]), "ram_rw")))
        own = [m.name for m in self.board.masters if m.name not in passed_through]
        if self.board.dom0_mmio:
            # handle_device: one map_regions_p2mt call per device-tree range, in tree order, as
            # mmio_direct_c (domain_build.c @ RELEASE-4.17.0: handle_node's p2mt for dom0).
            held = [r for m in self.board.masters if m.name in passed_through for r in m.regions]
            calls = [(g, n) for g, n in self.board.dom0_mmio
                     if not any(r.mfn < g + n and g < r.mfn + r.pages for r in held)]
            steps.append(("mmio", lambda: dom0.map_calls([(g, g, n, "mmio_direct_c") for g, n in calls])))
        else:
            regions = [r for m in self.board.masters if m.name not in passed_through for r in m.regions]
            regions += list(self.board.other_mmio)
            g = np.array([r.base // GRANULE for r in regions], np.int64)
            n = np.array([-(-r.size // GRANULE) for r in regions], np.int64)
            order = np.argsort(g)
            steps.append(("mmio", lambda: dom0.map_direct(g[order], n[order], "mmio_direct_c")))
        for name in own:
            steps.append(("assign", lambda name=name: self._assign(dom0, name)))
        steps.append(("booted", None))
        steps.append(("xen-pages", lambda: self._dom0_own_pages(dom0)))
        return steps

    def _dom0_own_pages(self, dom0: Domain):
        """dom0's Linux maps shared_info over a page of its RAM and its grant frame into Xen's image.

        Both are XENMEM_add_to_physmap calls of the guest (xenmem_add_to_physmap_one). shared_info
        goes where Linux's page allocator put the page it gave up: design assumption, the
        capture's place (DOM0_SHARED_INFO_PAGE pages into dom0's first bank). The grant table
        goes at Xen's own text (find_gnttab_region, domain_build.c @ RELEASE-4.17.0), which
        dom0's layout never uses.
        """
        mfn, cnt = self.memory.alloc(2, dom0.domid) if self.memory is not None else (np.zeros(0, np.int64),) * 2
        frames = np.concatenate([m + np.arange(c) for m, c in zip(mfn, cnt)]) if len(mfn) else np.zeros(2, np.int64)
        dom0.xen_pages = (mfn, cnt)
        gnttab = xen_image(self.board.ram_banks)[0]
        shared_info = int(dom0.ram[0][0]) + min(DOM0_SHARED_INFO_PAGE, int(dom0.ram[2][0]) - 1)
        return dom0.map_calls([(shared_info, int(frames[0]), 1, "ram_rw"), (gnttab, int(frames[1]), 1, "ram_rw")])

    def _domu_plan(self, d: Domain, dom0: Domain):
        spec = d.spec
        steps = [("create", d.create)]
        pages = spec.ram_bytes // GRANULE
        for k in range(0, pages, STEP_BATCH_PAGES):
            steps.append(("populate", lambda m=min(STEP_BATCH_PAGES, pages - k): d.populate_ram(m)))
        steps.append(("magic", d.populate_magic))
        steps.append(("load", lambda: self._toolstack_load(d, dom0)))
        for name in spec.devices:
            steps.append(("assign", lambda name=name: self._assign(d, name)))
        if spec.grant_pages:
            steps.append(("backend", lambda: self._backend_map(d, dom0)))
        steps.append(("booted", None))
        steps.append(("own-pages", d.map_own_pages))
        if spec.balloon_bytes:
            n = spec.balloon_bytes // GRANULE
            steps.append(("balloon-out", lambda: d.balloon_out(n)))
            steps.append(("balloon-in", lambda: d.populate_ram(n, order0=True)))
        for name in spec.hotplug:
            steps.append(("assign", lambda name=name: self._assign(d, name)))
        for name in spec.unplug:
            steps.append(("deassign", lambda name=name: d.deassign(name, self._mmio([name]))))
        if spec.destroy:
            steps.append(("destroy", lambda: self._destroy(d, dom0)))
        return steps

    def _assign(self, d: Domain, name: str):
        # dom0 maps every MMIO region of the board in one step of its own.
        mmio = self._mmio([]) if d.domid == 0 else self._mmio([name])
        return d.assign(name, mmio, self.board.master(name).main_ipmmu)

    def _backend_map(self, d: Domain, dom0: Domain):
        """dom0's backends grant-map the first grant_pages of the guest's RAM, each page one 4 KiB
        entry at a frame its balloon gave up (gnttab_alloc_pages), and its IOMMU side (GNTTAB_IOMMU_RULE)."""
        gfn, mfn, nr = d.ram
        ends = np.cumsum(nr)
        k = int(np.searchsorted(ends, d.spec.grant_pages)) + 1
        cnt = nr[:k].copy()
        cnt[-1] -= int(ends[k - 1]) - d.spec.grant_pages
        mfns = iv.pages(mfn[:k], cnt)
        at, out = self._grant_map(dom0, mfns)
        d.backend = (at, mfns)
        return sum(o[0] for o in out), sum(o[1] for o in out)

    def _grant_map(self, dom0: Domain, mfns: np.ndarray) -> tuple[np.ndarray, list]:
        """map_grant_ref of guest frames into dom0, at frames its balloon gives up first, and their
        IOMMU side (GNTTAB_IOMMU_RULE): (dom0's frames, each call's (ns, invalidations))."""
        slots = self._slots(dom0)
        at = slots.take(len(mfns))
        one = np.ones(len(at), np.int64)
        out = [] if slots.unpopulated else [dom0.update(at, 0, one, "invalid")]      # decrease_reservation
        dom0.counts.p2m_pages_mapped += len(at)
        out.append(dom0.update(at, mfns, one, "grant_map_rw"))                       # map_grant_ref
        out.append(dom0.grant_iommu(mfns, True))
        return at, out

    def _grant_unmap(self, dom0: Domain, at: np.ndarray, mfns: np.ndarray) -> list:
        """unmap_grant_ref of dom0's grant maps, their IOMMU side, and the balloon takes the frames back."""
        one = np.ones(len(at), np.int64)
        out = [dom0.update(at, 0, one, "invalid"), dom0.grant_iommu(mfns, False)]
        slots = self._slots(dom0)
        if not slots.unpopulated:
            out.append(dom0.update(at, at, one, "ram_rw"))                           # populate_physmap
        slots.give_back(at)
        return out

    def _slots(self, dom0: Domain) -> Dom0Slots:
        if self.dom0_slots is None:
            info_block = (int(dom0.ram[0][0]) + min(DOM0_SHARED_INFO_PAGE, int(dom0.ram[2][0]) - 1)) >> 9 << 9
            self.dom0_slots = Dom0Slots((dom0.ram[0], dom0.ram[2]), info_block, DOM0_FOREIGN_GFN,
                                        unpopulated=self.config.dom0_unpopulated_alloc)
        return self.dom0_slots

    def _toolstack_load(self, d: Domain, dom0: Domain):
        """libxc loads the kernel, ramdisk and device tree, clears the magic pages and maps the
        grant table, each page a foreign mapping in dom0 (toolstack.py); then xenconsoled and
        xenstored grant-map the rings, held until the guest goes."""
        spec = d.spec
        ram0 = GUEST_RAM0[0]
        kernel, ramdisk = image_pages(spec.kernel_kib), image_pages(spec.ramdisk_kib)
        rd_at = RAMDISK_OFFSET // GRANULE if RAMDISK_OFFSET // GRANULE + ramdisk + DTB_PAGES <= d.ram_pages \
            else kernel
        gfns = np.concatenate((ram0 + np.arange(kernel), ram0 + rd_at + np.arange(ramdisk + DTB_PAGES)))
        foreign = np.concatenate((d.mfns_at(gfns), d.magic_mfns, d.gnttab_mfns[:1]))
        slots = self._slots(dom0)
        at = slots.take(len(foreign))
        one = np.ones(len(at), np.int64)
        out = [] if slots.unpopulated else [dom0.update(at, 0, one, "invalid")]     # decrease_reservation
        out.append(dom0.map_foreign(at, foreign, one))                               # add_to_physmap_batch
        out.append(dom0.update(at, 0, one, "invalid"))                               # remove_from_physmap
        if not slots.unpopulated:
            out.append(dom0.update(at, at, one, "ram_rw"))                           # populate_physmap
        slots.give_back(at)
        d.ring_slots, rings = self._grant_map(dom0, d.magic_mfns[:RING_GRANTS])
        out += rings
        return sum(o[0] for o in out), sum(o[1] for o in out)

    def _destroy(self, d: Domain, dom0: Domain):
        out = []
        if getattr(d, "backend", None) is not None:
            out += self._grant_unmap(dom0, *d.backend)
        rings = getattr(d, "ring_slots", None)
        if rings is not None:
            out += self._grant_unmap(dom0, rings, d.magic_mfns[:RING_GRANTS])
        out.append(self._teardown(d))
        return sum(o[0] for o in out), sum(o[1] for o in out)

    def _teardown(self, d: Domain):
        if self.recorder is not None:
            self.recorder.action("teardown")
        d.final_min_iommu_bytes = self._min_iommu_bytes(d)
        d.final_xen = d.p2m.xen_counters()          # as it ran, before its leaves go
        with d.quiet():
            ns, inv = d.relinquish()
        t_ns, t_inv = d.teardown()
        return ns + t_ns, inv + t_inv

    # -- running -------------------------------------------------------------------
    def run(self, specs: list[DomainSpec]) -> list[dict]:
        """Boot dom0, then the domains at once; run every step; return one record per domain."""
        if not specs or specs[0].kind != "dom0":
            raise ValueError("the first domain spec must be dom0 (kind 'dom0')")
        passed = {name for s in specs[1:] for name in (*s.devices, *s.hotplug)}
        unknown = sorted(passed - {m.name for m in self.board.masters})
        if unknown:
            raise ValueError(f"device {unknown[0]!r} is not on board {self.board.name}")
        self.domains = [Domain(self, i, s) for i, s in enumerate(specs)]
        dom0 = self.domains[0]
        plans = [self._dom0_plan(dom0, passed)] + [self._domu_plan(d, dom0) for d in self.domains[1:]]
        return self._schedule(plans)

    def replay(self, specs: list[DomainSpec], steps: list[list[tuple[str, list]]]) -> list[dict]:
        """Run recorded steps instead of a scenario's: per domain, (label, actions) in order.

        Actions are ("create",), ("update", target domid, gfn, mfn, nr, types), ("grant_iommu", target
        domid, mfns, mapping), ("assign", device),
        ("deassign", device) and ("teardown",); machine frames come from the trace, so the
        host's allocator is not used.
        """
        self.memory = None
        self.domains = [Domain(self, i, s) for i, s in enumerate(specs)]
        plans = [[(label, (lambda d=d, acts=acts: self._act(d, acts)) if label != "booted" else None)
                  for label, acts in dom_steps] for d, dom_steps in zip(self.domains, steps)]
        return self._schedule(plans)

    def _act(self, d: Domain, actions: list):
        ns, inv, ran = 0.0, 0, False
        for act in actions:
            if d.refused or (act[0] == "update" and self.domains[act[1]].refused):
                continue
            if act[0] == "create":
                out = d.create()
            elif act[0] == "update":
                out = self.domains[act[1]].update(*act[2:])
            elif act[0] == "grant_iommu":
                out = self.domains[act[1]].grant_iommu(act[2], act[3])
            elif act[0] == "assign":
                out = self._assign(d, act[1])
            elif act[0] == "deassign":
                out = d.deassign(act[1], self._mmio([act[1]]))
            else:
                out = self._teardown(d)
            if out is not None:
                ns, inv, ran = ns + out[0], inv + out[1], True
        return (ns, inv) if ran else None

    def _schedule(self, plans) -> list[dict]:
        start = time.perf_counter()
        n = len(plans)
        # dom0 boots alone (Xen builds it, and its devices are assigned, before any domU exists: the
        # toolstack runs in dom0); the domUs then start at once, at seeded offsets from dom0's boot.
        arrival = np.concatenate(([0.0], self.rng.uniform(0, self.config.arrival_spread_ns, n - 1)))
        clock = arrival.copy()
        ties = self.rng.random(n)
        labels0 = [label for label, _ in plans[0]]
        dom0_booted = labels0.index("booted") if "booted" in labels0 else len(plans[0]) - 1
        heap = [(clock[0], ties[0], 0, 0)]
        rec = self.recorder
        while heap:
            _, _, i, k = heapq.heappop(heap)
            d, (label, step) = self.domains[i], plans[i][k]
            t0 = clock[i]
            if rec is not None:
                rec.begin(i, k, label, t0)
            if step is not None and not d.refused:          # a refused creation: nothing more
                self.step_inv = {}
                out = step()
                if out is not None:
                    ns, inv = out
                    t = t0 + ns
                    # Each register flushes one invalidation at a time: the step waits where another
                    # domain's step still holds it (dom0's context, for the toolstack's loads).
                    by = dict(self.step_inv)
                    rest = inv - sum(by.values())
                    if rest:
                        by[i] = by.get(i, 0) + rest
                    if self.config.invalidation_queue == "host":
                        by = {"host": sum(by.values())}
                    for reg, count in by.items():
                        if not count:
                            continue
                        begin = max(t, self.queue_free.get(reg, 0.0))
                        d.counts.inv_wait_ns += begin - t
                        t = begin + count * self.costs.iotlb_inv_ns
                        self.queue_free[reg] = t
                    clock[i] = t
                    if label == "assign":
                        d.counts.assign_ns.append(clock[i] - t0)
                    elif label == "destroy":
                        d.counts.teardown_ns = clock[i] - t0
            if label == "booted" or (i == 0 and k == len(plans[0]) - 1):
                d.counts.boot_ns = clock[i] - arrival[i]
            if i == 0 and k == dom0_booted:
                for j in range(1, n):
                    arrival[j] += clock[0]
                    clock[j] = arrival[j]
                    heapq.heappush(heap, (clock[j], ties[j], j, 0))
            if k + 1 < len(plans[i]):
                heapq.heappush(heap, (clock[i], self.rng.random(), i, k + 1))
        if self.check:
            for d in self.domains:
                d.check_all()
        self.wall_s = time.perf_counter() - start
        return [self.record(d) for d in self.domains]

    # -- what a run measured ----------------------------------------------------------
    def _min_iommu_bytes(self, d: Domain) -> int:
        """Table bytes of the fewest tables that hold the domain's DMA view with blocks, in one batch."""
        if d.iommu is None or d.iommu.kind != "unshared":
            return 0
        ext = d.p2m.entries()
        dma = DMA_PERM_BY_CODE[ext.sw] != 0
        pt = PageTable(self.iommu_format)
        lim = pt.fmt.ia_pages
        gfn = ext.iova[dma].astype(np.int64) // GRANULE
        n = np.clip(lim - gfn, 0, ext.npages[dma])
        keep = n > 0
        if keep.any():
            pt.map(gfn[keep] * GRANULE, ext.pa[dma][keep], n[keep], leaf="auto")
        return pt.table_bytes

    def record(self, d: Domain) -> dict:
        cfg, k = self.config, d.counts
        iommu = d.iommu.counts if d.iommu is not None else None
        unshared = d.iommu is not None and d.iommu.kind == "unshared"
        p2m = d.p2m.stats() if d.alive else d.final_p2m
        ist = (d.iommu.pt.stats() if d.alive else d.final_iommu) if unshared else None
        min_bytes = self._min_iommu_bytes(d) if d.alive else getattr(d, "final_min_iommu_bytes", 0)
        reserve = toolstack_reservation(d.spec.ram_bytes)
        devices = len(d.ever_devices)
        total_wall = self.wall_s
        zero = iommu is None
        return DomainRecord(
            policy=cfg.policy, api=cfg.api, format=cfg.iommu_format, p2m_format=cfg.p2m_format,
            domain="dom0" if d.domid == 0 else d.name, domid=d.domid, kind=d.spec.kind,
            ram_bytes=d.spec.ram_bytes, host_ram_bytes=self.board.ram_bytes, devices=devices,
            passthrough_flag=d.spec.passthrough, destroyed=not d.alive,
            iommu_table_bytes=k.peak_iommu_bytes, p2m_table_bytes=k.peak_p2m_bytes,
            iommu_table_bytes_final=ist["table_bytes"] if ist and d.alive else 0,
            p2m_table_bytes_final=p2m["table_bytes"] if d.alive else 0,
            iommu_tables_by_level={str(a): b for a, b in ist["tables_by_level"].items()} if ist else {},
            p2m_tables_by_level={str(a): b for a, b in p2m["tables_by_level"].items()},
            iommu_min_table_bytes=min_bytes, toolstack_reserved_bytes=reserve,
            iommu_used_over_reserved=k.peak_iommu_bytes / reserve,
            iommu_bytes_over_ram=k.peak_iommu_bytes / d.spec.ram_bytes,
            **{name: 0 if zero else getattr(iommu, name) for name in (
                "calls", "descriptors_written", "tables_allocated", "tables_freed", "block_splits",
                "invalidations", "cache_lines_cleaned", "populate_pages", "unreachable_pages")},
            assign_refused_context=k.assign_refused_context, assign_refused_undeclared=k.assign_refused_undeclared,
            create_refused_context=k.create_refused_context,
            p2m_calls=k.p2m_calls, p2m_descriptors_written=p2m["descriptors_written"],
            p2m_tables_allocated=p2m["tables_allocated"], p2m_block_splits=p2m["block_splits"],
            tlb_flushes=k.tlb_flushes, p2m_cache_lines_cleaned=k.p2m_cache_lines_cleaned,
            p2m_relinquished_leaves=k.relinquished_leaves,
            **{f"p2m_{key}": v for key, v in (d.p2m.xen_counters() if d.alive else d.final_xen).items()},
            boot_ns=k.boot_ns, assign_ns=max(k.assign_ns, default=0.0), teardown_ns=k.teardown_ns,
            inv_wait_ns=k.inv_wait_ns,
            map_calls=0 if zero else iommu.map_latency.n, unmap_calls=0 if zero else iommu.unmap_latency.n,
            map_lat_mean_us=0.0 if zero else iommu.map_latency.mean_us(),
            map_lat_std_us=0.0 if zero else iommu.map_latency.std_us(),
            unmap_lat_mean_us=0.0 if zero else iommu.unmap_latency.mean_us(),
            unmap_lat_std_us=0.0 if zero else iommu.unmap_latency.std_us(),
            mismatches=k.mismatches, seed=cfg.seed, engine_wall_s=total_wall,
            sim_pages_per_s_wall=sum(x.counts.p2m_pages_mapped for x in self.domains) / total_wall
            if total_wall else 0.0,
        ).to_dict()

"""The Xen model: whole hosts booting, per sync policy and driver API.

time_ classes boot a host; track_ classes report the model's answers (table
memory per GiB of guest RAM, invalidations and cache cleans per boot, pages a
lazy populate copies, used over the toolstack's reservation) so a change in
any of them shows on the commit that caused it, and the simulated pages per
second of wall time. The large host (`ServerBoot`,
512 GiB, dom0 + 100 domUs) runs with the invariant off and on; its size can be
shrunk with IOMMU_BENCH_DOMUS.
"""

from __future__ import annotations

import os

import numpy as np

from iommu_core.scenarios.files import load_scenario
from iommu_core.units import GIB
from iommu_core.xen.host import Host
from iommu_core.xen.iommu import UnsharedIommu
from iommu_core.xen.p2m import P2M
from iommu_core.xen.rules import APIS, POLICIES

from . import stream

DOMUS = int(os.environ.get("IOMMU_BENCH_DOMUS", "100"))


def boot(policy: str, api: str, scenario: str = "small-h3", check: bool = False, domus: int | None = None) -> list[dict]:
    """One host of a shipped scenario booted under a policy and API (its first `domus` domUs only)."""
    s = load_scenario(scenario)
    specs = list(s.specs) if domus is None else list(s.specs)[:1 + domus]
    return Host(s.board, s.host_config(policy=policy, api=api, check=check)).run(specs)


class SmallH3Boot:
    """The small H3 host (dom0 + 4 domUs), invariant on as in the tests."""

    params = [list(POLICIES), list(APIS)]
    param_names = ["policy", "api"]

    def time_boot(self, policy, api):
        boot(policy, api, check=True)


class ServerBoot:
    """The shipped server scenario (512 GiB, dom0 + 100 domUs of 256 MiB to 8 GiB, a fifth with a
    device), with the invariant off (a speed run) and on (as tests run)."""

    params = [list(POLICIES), list(APIS), ["off", "on"]]
    param_names = ["policy", "api", "invariant"]
    number = 1
    repeat = (1, 3, 60.0)
    timeout = 300

    def time_boot(self, policy, api, invariant):
        boot(policy, api, "server", check=invariant == "on", domus=DOMUS)


class Populate:
    """A lazy populate at first assignment: copy a 4 GiB guest's whole P2M into a new IOMMU table."""

    params = [list(APIS)]
    param_names = ["api"]

    def setup(self, api):
        self.p2m = P2M()
        # RAM0 (3 GiB) and RAM1 (1 GiB) backed by 2 MiB-aligned machine chunks in shuffled order.
        chunks = np.random.default_rng(0).permutation(2048) * 512 + (0x8_0000_0000 >> 12)
        gfn = np.concatenate((0x40000 + np.arange(1536) * 512, 0x200000 + np.arange(512) * 512))
        self.p2m.set_entry(gfn, chunks, 512, "ram_rw")

    def time_populate(self, api):
        UnsharedIommu("ipmmu-s1-39", api).populate(self.p2m)


class Answers:
    """The model's answers on the small H3 host, per policy and API."""

    params = [list(POLICIES), list(APIS)]
    param_names = ["policy", "api"]

    def setup_cache(self):
        return {(p, a): boot(p, a) for p in POLICIES for a in APIS}

    def track_iommu_bytes_per_guest_gib(self, runs, policy, api):
        records = runs[(policy, api)]
        return sum(r["iommu_table_bytes"] for r in records) / (sum(r["ram_bytes"] for r in records) / GIB)

    track_iommu_bytes_per_guest_gib.unit = "bytes/GiB"

    def track_invalidations_per_boot(self, runs, policy, api):
        return sum(r["invalidations"] for r in runs[(policy, api)])

    track_invalidations_per_boot.unit = "invalidations"

    def track_cache_lines_cleaned_per_boot(self, runs, policy, api):
        return sum(r["cache_lines_cleaned"] for r in runs[(policy, api)])

    track_cache_lines_cleaned_per_boot.unit = "lines"

    def track_populate_pages(self, runs, policy, api):
        return sum(r["populate_pages"] for r in runs[(policy, api)])

    track_populate_pages.unit = "pages"

    def track_used_over_reserved(self, runs, policy, api):
        records = runs[(policy, api)]
        return sum(r["iommu_table_bytes"] for r in records) / sum(r["toolstack_reserved_bytes"] for r in records)

    track_used_over_reserved.unit = "ratio"

    def track_simulated_pages_per_second(self, runs, policy, api):
        """The engine's speed inside the model: P2M pages mapped per second of the host's wall time."""
        return runs[(policy, api)][0]["sim_pages_per_s_wall"]

    track_simulated_pages_per_second.unit = "pages/s"


class StreamReplay:
    """The captured stream's first calls replayed (benchmarks/stream.py's modes and paths);
    `python -m benchmarks.harness stream` times a million calls per mode."""

    params = [list(stream.MODES), list(stream.PATHS)]
    param_names = ["mode", "path"]
    CALLS = 5000
    number = 1
    repeat = (1, 3, 60.0)
    timeout = 180                          # a first run compiles the loop (about 20 s)

    def setup(self, mode, path):
        self.log = stream.captured_log()
        stream.replay(self.log, mode, 100, path)       # load or compile the loop outside the clock

    def time_replay(self, mode, path):
        stream.replay(self.log, mode, self.CALLS, path)


class P2MSmallCall:
    """One single-page P2M map and its removal, each mirrored into an unshared IOMMU table
    (per-page API), with plain ints or with length-1 arrays, through stream.MirroredCalls
    (`compiled`) or P2M.set_entry and follow (`python`). Target: at most 10 us a call.

    asv times one pair right after each setup (this asv sets number to 1 when a benchmark has
    setup hooks), so the time_ figure is a pair on cold caches; track_us_per_call is a call
    in a steady run of them, half the best pair over thousands in a row."""

    params = [list(stream.ARGUMENTS), list(stream.PATHS)]
    param_names = ["arguments", "path"]

    def setup(self, arguments, path):
        self.pair = stream.small_call_pair(arguments, path).pair

    def time_map_and_unmap(self, arguments, path):
        self.pair()

    def track_us_per_call(self, arguments, path):
        return stream.small_call_us(arguments, path, tries=3)

    track_us_per_call.unit = "us"

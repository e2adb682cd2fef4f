"""The report's section on the model against a real Xen: Xen's own P2M counters (debug key q)
at each dump of the capture (shared/xen-real), beside the model replaying the captured calls
one by one and beside the model's own synthetic boot of the same machine (scenario qemu-virt)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from ..scenarios.files import XEN_CAPTURE, load_scenario
from ..xen.host import Host
from ..xenlog import read_capture, read_counters, replay_counters


COUNTERS = ("mappings_1g", "shattered_1g", "mappings_2m", "shattered_2m", "mappings_4k")
LEVELS = {"mappings_1g": "1G mappings", "shattered_1g": "1G shattered", "mappings_2m": "2M mappings",
          "shattered_2m": "2M shattered", "mappings_4k": "4K mappings"}


@lru_cache(maxsize=4)
def _replayed(capture: Path, stamp: float) -> list[dict]:
    log = read_capture(capture)
    return replay_counters(log, read_counters(capture / "p2m_counters.csv"), "p2m-s2-44")


def _synthetic() -> dict[tuple[int, str], dict]:
    """The qemu-virt scenario booted by the model (no trace): its counters where Xen dumped them."""
    sc = load_scenario("qemu-virt")
    host = Host(sc.board, sc.host_config(policy="shared", api="batched", check=False))
    host.run([sc.specs[0]])
    booted = host.domains[0].p2m.xen_counters()
    host = Host(sc.board, sc.host_config(policy="shared", api="batched", check=False))
    recs = host.run(list(sc.specs))
    running = {r["domid"]: {k: r[f"p2m_{k}"] for k in COUNTERS} for r in recs}
    # dom0 does not change at destroy (Xen never merges entries back): its end state is both.
    return {(0, "dom0 booted"): booted, (0, "domU running"): running[0], (1, "domU running"): running[1],
            (0, "domU destroyed"): running[0]}


def real_xen_section(capture: Path = XEN_CAPTURE):
    from .page import Section, markdown_table

    capture = Path(capture)
    dumps = _replayed(capture, (capture / "p2m_set_entry.csv.gz").stat().st_mtime)
    synthetic = _synthetic()
    rows, same = [], 0
    for d in dumps:
        syn = synthetic.get((d["domid"], d["moment"]))
        for k in COUNTERS:
            replay, model = d["model"][k], syn[k] if syn else None
            same += replay == d[k]
            rows.append({"domain": "dom0" if d["domid"] == 0 else f"domU (domid {d['domid']})",
                         "moment": d["moment"], "counter": LEVELS[k], "Xen": f"{d[k]:,}",
                         "model, replaying Xen's calls": f"{replay:,}",
                         "model, booting qemu-virt": "-" if model is None else f"{model:,}"})
    body = (f"Xen 4.17's own P2M counters at each debug-key-q dump of the capture "
            f"(`iommu_core/scenarios/data/xen-real`, a copy of shared/xen-real: Debian 12's Xen on QEMU "
            f"virt, dom0 of 1 GiB and one 256 MiB domU), beside the model replaying the captured "
            f"`p2m_set_entry` calls one by one ({same} of {len(rows)} the same) and beside the model's own "
            f"boot of the `qemu-virt` scenario, which synthesises the same life cycles (the balloon's pages "
            f"are a design assumption fitted to this capture). Xen's code and the model's rules are cited in "
            f"`iommu_core/xen/p2m_stats.py`; `iommu-bench validate` prints the same comparison.\n\n"
            + markdown_table(rows))
    return Section("real-xen", "The model against a real Xen", body)

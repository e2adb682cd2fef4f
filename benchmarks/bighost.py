"""Big hosts: the server board with N small domUs, one cell per size, each in a process of its own so
that its peak RSS is its own (wait4's ru_maxrss). The cost per domain is the figure to read: under
`eager` XT refuses most creations for want of an IPMMU context, so `lazy` (every domU built and
mirrored into dom0's IOMMU, no creation refused) is the one whose every domain boots.

  python -m benchmarks.bighost N POLICY API    one cell; prints its figures as JSON
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = (100, 500, 2000, 5000)
POLICIES = ("eager", "lazy")
API = "per-page"


def scenario(domus: int) -> str:
    """The shipped server (512 GiB, 64 PCIe functions) with `domus` domUs of 64 or 128 MiB, a fifth with
    a device: 5,000 of them fit its RAM."""
    return f"""[scenario]
name = "server-{domus}"
description = "512 GiB server, {domus} small domains of 64 or 128 MiB"
board = "server"
dom0_mem_mib = 4096
arrival_spread_ms = 1.0

[board_options]
ram_gib = 512
functions = 64

[[mix]]
name = "d"
count = {domus}
kind = "guest"
ram_mib = [64, 128]
device_share = 0.2
grant_pages = 64
"""


def cell(domus: int, policy: str, api: str = API) -> dict:
    """Boot the host in this process: its wall time and domains (booted and refused)."""
    from iommu_core.scenarios.files import load_scenario
    from iommu_core.xen.host import Host

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"server-{domus}.toml"
        path.write_text(scenario(domus))
        s = load_scenario(str(path))
    start = time.perf_counter()
    records = Host(s.board, s.host_config(policy=policy, api=api, check=False)).run(list(s.specs))
    wall = time.perf_counter() - start
    refused = sum(r.get("create_refused_context") or 0 for r in records)
    return {"domus": domus, "policy": policy, "api": api, "wall_s": wall, "domains": len(records),
            "booted": len(records) - refused, "p2m_calls": sum(r.get("calls") or 0 for r in records)}


def measured(domus: int, policy: str, api: str = API) -> dict:
    """One cell in a fresh process, with that process's peak RSS."""
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.bighost", str(domus), policy, api],
                            stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"the {domus}-domU {policy} cell failed (exit {os.waitstatus_to_exitcode(status)})")
    return {**json.loads(out), "peak_mib": usage.ru_maxrss / 1024}


def save(rows: list[dict], path: Path) -> Path:
    """The measured rows beside the plot (path with .json), with the machine they were measured on."""
    import platform
    out = path.with_suffix(".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": "python -m benchmarks.harness bighost", "machine": platform.node(),
                               "cpus": os.cpu_count(), "rows": rows}, indent=1) + "\n")
    return out


def plot(rows: list[dict], path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for policy in sorted({r["policy"] for r in rows}):
        pts = sorted((r["domus"], r["wall_s"], r["peak_mib"], r["booted"], r["domains"]) for r in rows
                     if r["policy"] == policy)
        label = f"{policy} / {API}: {pts[-1][3]:,} of {pts[-1][4]:,} domains booted at {pts[-1][0]:,}"
        left.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=label)
        right.plot([p[0] for p in pts], [p[2] for p in pts], "o-", label=label)
    left.set_xlabel("domUs on the host")
    left.set_ylabel("cell wall time (s)")
    right.set_xlabel("domUs on the host")
    right.set_ylabel("the cell's peak RSS (MiB)")
    for ax in (left, right):
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    fig.suptitle("Big hosts: the server board with 64-128 MiB domUs (one cell per point)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


if __name__ == "__main__":
    print(json.dumps(cell(int(sys.argv[1]), sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else API)))

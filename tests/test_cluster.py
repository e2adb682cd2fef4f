"""A real multi-node Ray cluster on this machine: a sweep across it, and a worker killed mid-sweep."""

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from iommu_core.store.results import read_results
from iommu_core.sweep.grid import load_sweep
from iommu_core.sweep.runner import run_sweep

SWEEP = """
[sweep]
name = "cluster"
scenarios = ["small-h3", "m3w"]
policies = ["eager", "lazy", "declared", "shared"]
apis = ["per-page", "batched"]
seeds = [0, 1]
check = true
"""


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 80 * 2**20})
    for _ in range(2):
        c.add_node(num_cpus=1, object_store_memory=80 * 2**20)
    c.wait_for_nodes()
    yield c
    c.shutdown()



def test_a_sweep_runs_across_three_nodes(cluster, tmp_path):
    (tmp_path / "s.toml").write_text(SWEEP)
    sweep = load_sweep(tmp_path / "s.toml")
    run_dir = run_sweep(sweep, tmp_path / "runs", address=cluster.address)
    rows = read_results(run_dir).to_pylist()
    assert len({r["cell"] for r in rows}) == len(sweep.cells) == 32
    # m3w's IPMMU (r8a77960, ES1.x) cannot walk stage-2: shared is not applicable there
    na = {(r["scenario"], r["policy"]) for r in rows if r["status"] == "not-applicable"}
    assert na == {("m3w", "shared")}
    assert all(r["status"] == "ok" and r["mismatches"] == 0 for r in rows if r["status"] != "not-applicable")
    assert len({r["worker"] for r in rows}) >= 2             # the work went to more than one worker


def test_a_worker_killed_mid_sweep_is_retried_and_every_cell_lands_once(cluster, tmp_path):
    (tmp_path / "s.toml").write_text(SWEEP)
    sweep = load_sweep(tmp_path / "s.toml")
    killed = []

    # Only this cluster's workers: children of its raylets (never a sweep someone else runs here).
    raylets = {info.process.pid for node in cluster.list_all_nodes() for info in node.all_processes["raylet"]}

    def parent(pid: str) -> int:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("PPid:"):
                return int(line.split()[1])
        return -1

    def kill_one():
        deadline = time.time() + 60
        while time.time() < deadline and not killed:
            for proc in Path("/proc").glob("[0-9]*"):
                try:
                    cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    ours = parent(proc.name) in raylets
                except OSError:
                    continue
                if "ray::run_cells" in cmd and ours:          # Ray titles a busy worker with its task
                    os.kill(int(proc.name), signal.SIGKILL)
                    killed.append(int(proc.name))
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one)
    killer.start()
    run_dir = run_sweep(sweep, tmp_path / "runs", address=cluster.address)
    killer.join()
    assert killed, "no worker was running a task to kill"
    rows = read_results(run_dir).to_pylist()
    cells = {}
    for r in rows:
        cells.setdefault(r["cell"], []).append(r["domain"])
    assert len(cells) == 32
    assert all(len(domains) == len(set(domains)) for domains in cells.values())    # no row twice


@pytest.mark.parametrize("name", ["aws.yaml", "onprem.yaml"])
def test_the_launcher_configs_pass_rays_own_schema(name):
    """`ray up` validates a config the same way (defaults filled in, then Ray's JSON schema)."""
    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((Path(__file__).parent.parent / "cluster" / name).read_text())
    validate_config(prepare_config(config))
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "RAY_AUTH_MODE" not in head

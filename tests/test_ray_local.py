"""The local Ray a sweep starts: loopback only (metrics included), a private token file, at most
min(--workers, CPUs) CPUs, and an address probe that a real Ray answers."""

from __future__ import annotations

import ipaddress
import os

import pytest

from iommu_core.sweep.runner import _check_address, _ray_token, ray_processes, started_ray


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return addr.is_loopback


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray, started the way run_sweep starts it, for every check below."""
    import ray
    with started_ray(workers=8) as (start_s, local):
        assert local
        yield ray


def test_every_listening_socket_of_the_local_ray_is_loopback(local_ray):
    import psutil
    procs = ray_processes()
    names = set()
    listening = []
    for pid, _ in procs:
        try:
            p = psutil.Process(pid)
            names.add(p.name())
            listening += [(p.name(), c.laddr.ip, c.laddr.port) for c in p.net_connections(kind="inet")
                          if c.status == psutil.CONN_LISTEN]
        except psutil.NoSuchProcess:
            continue
    assert any("gcs_server" in n for n in names) and any("raylet" in n for n in names), names
    assert len(listening) >= 4                                  # GCS, raylet, agents: the test sees them
    exposed = [s for s in listening if not _loopback(s[1])]
    assert not exposed, f"Ray listens beyond loopback: {exposed}"


def test_workers_cap_the_cpus_a_local_ray_gets(local_ray):
    assert local_ray.cluster_resources()["CPU"] == min(8, os.cpu_count())


def test_the_token_file_is_private(local_ray):
    token = _ray_token()
    if not token.exists():
        pytest.skip("this Ray wrote no token file")
    assert token.stat().st_mode & 0o077 == 0, oct(token.stat().st_mode)


def test_a_real_ray_passes_the_address_probe(local_ray):
    gcs = local_ray._private.worker.global_worker.node.gcs_address
    _check_address(gcs)                                         # raises if the probe refused Ray itself

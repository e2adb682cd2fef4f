"""Built-in domain mixes, until scenario files arrive: a small H3 host, and a
synthetic large server for the engine's speed target.

This sits above the Xen model: it only builds DomainSpec lists and boards.
"""

from __future__ import annotations

import numpy as np

from .xen.board import board
from .xen.domain import DomainSpec

MIB = 1 << 20
GIB = 1 << 30


def small_h3(dom0_mem: int = GIB):
    """dom0, a driver domain with EtherAVB (declared), a guest served by dom0's backends,
    a guest that gets SDHI0 and SDHI1 hot-plugged and SDHI0 taken away again, and a
    small guest destroyed at the end."""
    specs = [
        DomainSpec("dom0", "dom0", dom0_mem, passthrough=True),
        DomainSpec("driver", "driver", 512 * MIB, passthrough=True, devices=("etheravb",)),
        DomainSpec("guest", "guest", GIB, grant_pages=256, balloon_bytes=64 * MIB),
        DomainSpec("hotplug", "guest", 256 * MIB, hotplug=("sdhi0", "sdhi1"), unplug=("sdhi0",)),
        DomainSpec("small", "small", 128 * MIB, destroy=True),
    ]
    return board("h3"), specs


def synthetic_server(domus: int = 100, ram_gib: int = 512, seed: int = 0, device_share: float = 0.2):
    """dom0 plus many domUs of 256 MiB to 8 GiB; a share of them with a PCIe function each."""
    rng = np.random.default_rng(seed)
    sizes = (rng.choice([256, 512, 1024, 2048, 4096, 8192], domus) * MIB).tolist()
    with_dev = rng.random(domus) < device_share
    b = board("server", ram_gib=ram_gib, functions=max(1, int(with_dev.sum())))
    specs = [DomainSpec("dom0", "dom0", 4 * GIB, passthrough=True)]
    fn = 0
    for i, (size, dev) in enumerate(zip(sizes, with_dev)):
        devices = (f"pcie-fn{fn}",) if dev else ()
        fn += bool(dev)
        specs.append(DomainSpec(f"d{i + 1}", "driver" if dev else "guest", int(size), passthrough=bool(dev),
                                devices=devices, grant_pages=64))
    return b, specs


BUILTIN = {"small-h3": small_h3, "server-100": synthetic_server}


def builtin(name: str):
    try:
        return BUILTIN[name]()
    except KeyError:
        raise ValueError(f"unknown scenario {name!r}; built-in scenarios: {sorted(BUILTIN)}") from None

"""Board profiles: a host's RAM banks, its DMA masters behind the IPMMU, its other MMIO.

A board says what machine memory exists (for the MFN allocator), which devices
can be passed through (each with the MMIO regions a guest gets mapped 1:1 and
the IPMMU micro-TLB group it sits behind), what else dom0 maps 1:1, and how
many IPMMU contexts there are. Facts and their sources: ../shared/HARDWARE.md
("Renesas IPMMU-VMSA", "R-Car H3 Salvator-X"); anything not stated there is
marked as an assumption where it is used.

All addresses and sizes are in bytes; a page is 4 KiB.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import asdict, dataclass
from itertools import pairwise

from .. import intervals as iv
from ..units import GIB, KIB, MIB, PAGE


def checked_int(what: str, value, minimum: int | None = None) -> int:
    """`value` as a Python int (numpy integers accepted, bool and float refused)."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise ValueError(f"{what} must be an integer, got {value!r}") from None
    if minimum is not None and v < minimum:
        raise ValueError(f"{what} must be at least {minimum}, got {v}")
    return v


@dataclass(frozen=True)
class MmioRegion:
    """A 4 KiB-aligned MMIO range; the size is rounded up to whole pages when built."""

    base: int
    size: int

    def __post_init__(self):
        base = checked_int("MMIO base", self.base, 0)
        size = checked_int(f"size of the MMIO region at {base:#x}", self.size, 1)
        if base % PAGE:
            raise ValueError(f"MMIO base {base:#x} is not 4 KiB-aligned")
        object.__setattr__(self, "base", base)
        object.__setattr__(self, "size", -(-size // PAGE) * PAGE)

    @property
    def end(self) -> int:
        """First byte after the region."""
        return self.base + self.size

    @property
    def mfn(self) -> int:
        """First machine frame of the region."""
        return self.base // PAGE

    @property
    def pages(self) -> int:
        return self.size // PAGE

    def __repr__(self) -> str:
        return f"MmioRegion({self.base:#x}, {self.size:#x})"


@dataclass(frozen=True)
class DmaMaster:
    """A device behind the IPMMU that can be passed through to a guest.

    `ipmmu` is its micro-TLB group (cache IPMMU) name as in HARDWARE.md (ds0,
    ds1, hc, mp0, vi0, vi1, ...); `main_ipmmu` is the index of the main IPMMU
    whose contexts a domain holding this device uses (0 on R-Car, which has one).
    """

    name: str
    regions: tuple[MmioRegion, ...]
    ipmmu: str
    main_ipmmu: int = 0

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a DMA master needs a non-empty name, got {self.name!r}")
        regions = tuple(self.regions)
        if not regions:
            raise ValueError(f"DMA master {self.name!r} has no MMIO region")
        for r in regions:
            if not isinstance(r, MmioRegion):
                raise ValueError(f"DMA master {self.name!r}: {r!r} is not an MmioRegion")
        if not isinstance(self.ipmmu, str) or not self.ipmmu:
            raise ValueError(f"DMA master {self.name!r} needs an IPMMU group name, got {self.ipmmu!r}")
        object.__setattr__(self, "regions", regions)
        object.__setattr__(self, "main_ipmmu", checked_int(f"main IPMMU of {self.name!r}", self.main_ipmmu, 0))


@dataclass(frozen=True)
class Board:
    name: str
    ram_banks: tuple[tuple[int, int], ...]          # (base, size) in bytes, sorted, non-overlapping
    masters: tuple[DmaMaster, ...]                  # devices behind the IPMMU (can be passed through)
    other_mmio: tuple[MmioRegion, ...]              # MMIO that is not a DMA master: dom0 maps it 1:1 too
    ipmmu_contexts: int = 8                         # per main IPMMU (Gen3: 8)
    reserved_contexts: int = 1                      # context 0 reserved
    ipmmus: int = 1                                 # main IPMMUs (contexts are per main IPMMU)
    # Whether the IPMMU can walk the stage-2 P2M, so `shared` applies: upstream checks the SoC and
    # its cut (ipmmu_stage2_supported: H3 / M3-W from ES3.0, M3-N, S4; xen-project/xen:xen/drivers/
    # passthrough/arm/ipmmu-vmsa.c @ RELEASE-4.17.0:794).
    ipmmu_stage2: bool = True
    # What Xen's domain builder maps for dom0, one p2m call each, in order: (first frame,
    # pages) per device-tree reg or PCI range (xen_dom0.dom0_mmio_calls); empty: every
    # region of the board above, one batch.
    dom0_mmio: tuple[tuple[int, int], ...] = ()
    pa_bits: int | None = None                      # the CPU's physical address size, if known
    # The boot modules (dom0's kernel and ramdisk) Xen holds when it builds dom0, (base, size).
    boot_modules: tuple[tuple[int, int], ...] = ()

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a board needs a non-empty name, got {self.name!r}")
        banks = []
        for bank in self.ram_banks:
            try:
                base, size = bank
            except (TypeError, ValueError):
                raise ValueError(f"board {self.name}: RAM bank {bank!r} is not a (base, size) pair") from None
            base = checked_int(f"board {self.name}: RAM bank base", base, 0)
            size = checked_int(f"board {self.name}: size of the RAM bank at {base:#x}", size, 1)
            if base % PAGE or size % PAGE:
                raise ValueError(f"board {self.name}: RAM bank ({base:#x}, {size:#x}) is not 4 KiB-aligned")
            banks.append((base, size))
        if not banks:
            raise ValueError(f"board {self.name} has no RAM bank")
        for (b0, s0), (b1, s1) in pairwise(banks):
            if b1 < b0 + s0:
                raise ValueError(f"board {self.name}: RAM banks ({b0:#x}, {s0:#x}) and ({b1:#x}, {s1:#x}) "
                                 f"are not sorted or overlap")
        object.__setattr__(self, "ram_banks", tuple(banks))
        masters = tuple(self.masters)
        other = tuple(self.other_mmio)
        for m in masters:
            if not isinstance(m, DmaMaster):
                raise ValueError(f"board {self.name}: {m!r} is not a DmaMaster")
        for r in other:
            if not isinstance(r, MmioRegion):
                raise ValueError(f"board {self.name}: {r!r} is not an MmioRegion")
        names = [m.name for m in masters]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"board {self.name}: DMA master names {dup} appear more than once")
        object.__setattr__(self, "masters", masters)
        object.__setattr__(self, "other_mmio", other)
        ctx = checked_int(f"board {self.name}: ipmmu_contexts", self.ipmmu_contexts, 1)
        res = checked_int(f"board {self.name}: reserved_contexts", self.reserved_contexts, 0)
        if res >= ctx:
            raise ValueError(f"board {self.name}: reserved_contexts {res} leaves none of {ctx} contexts usable")
        n = checked_int(f"board {self.name}: ipmmus", self.ipmmus, 1)
        object.__setattr__(self, "ipmmu_contexts", ctx)
        object.__setattr__(self, "reserved_contexts", res)
        object.__setattr__(self, "ipmmus", n)
        object.__setattr__(self, "dom0_mmio", tuple(
            (checked_int(f"board {self.name}: dom0 MMIO frame", g, 0),
             checked_int(f"board {self.name}: dom0 MMIO pages", c, 1)) for g, c in self.dom0_mmio))
        object.__setattr__(self, "boot_modules", tuple(
            (checked_int(f"board {self.name}: boot module base", b, 0),
             checked_int(f"board {self.name}: boot module size", z, 1)) for b, z in self.boot_modules))
        if self.pa_bits is not None:
            object.__setattr__(self, "pa_bits", checked_int(f"board {self.name}: pa_bits", self.pa_bits, 32))
        for m in masters:
            if m.main_ipmmu >= n:
                raise ValueError(f"board {self.name}: master {m.name!r} is behind main IPMMU {m.main_ipmmu}, "
                                 f"the board has {n}")
        # MMIO regions may touch but not overlap each other or RAM.
        tagged = sorted([(r.base, r.end, m.name) for m in masters for r in m.regions]
                        + [(r.base, r.end, "other MMIO") for r in other]
                        + [(b, b + s, "RAM") for b, s in banks])
        for (b0, e0, n0), (b1, e1, n1) in pairwise(tagged):
            if b1 < e0:
                raise ValueError(f"board {self.name}: {n0} [{b0:#x}, {e0:#x}) overlaps {n1} [{b1:#x}, {e1:#x})")

    @property
    def ram_bytes(self) -> int:
        return sum(size for _, size in self.ram_banks)

    @property
    def ram_pages(self) -> int:
        return self.ram_bytes // PAGE

    def to_dict(self) -> dict:
        """Plain data (JSON-ready), as a trace keeps its board."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Board:
        """The board `to_dict` gave; keys newer than the data (a trace's) take their defaults."""
        masters = tuple(DmaMaster(m["name"], tuple(MmioRegion(**r) for r in m["regions"]), m["ipmmu"],
                                  m["main_ipmmu"]) for m in d["masters"])
        return cls(name=d["name"], ram_banks=tuple(tuple(b) for b in d["ram_banks"]), masters=masters,
                   other_mmio=tuple(MmioRegion(**r) for r in d["other_mmio"]),
                   ipmmu_contexts=d["ipmmu_contexts"], reserved_contexts=d["reserved_contexts"],
                   ipmmus=d["ipmmus"], dom0_mmio=tuple(tuple(c) for c in d.get("dom0_mmio", ())),
                   pa_bits=d.get("pa_bits"), boot_modules=tuple(tuple(r) for r in d.get("boot_modules", ())),
                   ipmmu_stage2=d.get("ipmmu_stage2", True))

    @property
    def usable_contexts(self) -> int:
        """IPMMU contexts domains can hold, over all main IPMMUs."""
        return self.ipmmus * (self.ipmmu_contexts - self.reserved_contexts)

    def master(self, name: str) -> DmaMaster:
        for m in self.masters:
            if m.name == name:
                return m
        raise ValueError(f"board {self.name} has no DMA master {name!r}; "
                         f"known: {', '.join(m.name for m in self.masters)}")

    def all_mmio(self) -> tuple[MmioRegion, ...]:
        """Every MMIO region of the board (masters' and others'), sorted, touching ones merged."""
        regions = [r for m in self.masters for r in m.regions] + list(self.other_mmio)
        mfns = iv.normalize([r.mfn for r in regions], [r.pages for r in regions])
        return tuple(MmioRegion(s * PAGE, (e - s) * PAGE) for s, e in zip(*(a.tolist() for a in mfns)))


def _r(base: int, size: int) -> MmioRegion:
    return MmioRegion(base, size)


# --- R-Car Gen3 (H3, M3-W): HARDWARE.md "R-Car H3 Salvator-X" --------------------------------

def _sys_dmac() -> list[DmaMaster]:
    return [DmaMaster("sys-dmac0", (_r(0xE670_0000, 64 * KIB),), "ds0"),
            DmaMaster("sys-dmac1", (_r(0xE730_0000, 64 * KIB),), "ds1"),
            DmaMaster("sys-dmac2", (_r(0xE731_0000, 64 * KIB),), "ds1")]


def _etheravb() -> DmaMaster:
    # 2 KiB of registers (rounded up to a page) + 64 KiB
    return DmaMaster("etheravb", (_r(0xE680_0000, 2 * KIB), _r(0xE6A0_0000, 64 * KIB)), "ds0")


def _sdhi() -> list[DmaMaster]:
    return [DmaMaster(f"sdhi{i}", (_r(base, 8 * KIB),), "ds1")
            for i, base in enumerate((0xEE10_0000, 0xEE12_0000, 0xEE14_0000, 0xEE16_0000))]


def _pcie0() -> DmaMaster:
    # Registers, then the I/O, 32-bit memory, memory and prefetchable memory windows.
    return DmaMaster("pcie0", (_r(0xFE00_0000, 512 * KIB), _r(0xFE10_0000, 1 * MIB), _r(0xFE20_0000, 2 * MIB),
                               _r(0x3000_0000, 128 * MIB), _r(0x3800_0000, 128 * MIB)), "hc")


def _pcie1() -> DmaMaster:
    return DmaMaster("pcie1", (_r(0xEE80_0000, 512 * KIB), _r(0xEE90_0000, 1 * MIB), _r(0xEEA0_0000, 2 * MIB),
                               _r(0xC000_0000, 128 * MIB), _r(0xC800_0000, 128 * MIB)), "hc")


def _audio_dmac() -> list[DmaMaster]:
    return [DmaMaster("audio-dmac0", (_r(0xEC70_0000, 64 * KIB),), "mp0"),
            DmaMaster("audio-dmac1", (_r(0xEC72_0000, 64 * KIB),), "mp0")]


# Display VSP fetchers (FCPVD). HARDWARE.md gives bases but no size: 0x8000 each is an
# assumption (Linux's dts declares 0x200 of registers; 0x8000 reaches the next fetcher).
VSP_FETCHER_SIZE = 0x8000
VSP_FETCHERS = (0xFEA2_7000, 0xFEA2_F000, 0xFEA3_7000)


def _vsp_fetchers(groups: tuple[str, str, str]) -> list[DmaMaster]:
    return [DmaMaster(f"fcpvd{i}", (_r(base, VSP_FETCHER_SIZE),), g)
            for i, (base, g) in enumerate(zip(VSP_FETCHERS, groups))]


def _gen3_other_mmio() -> tuple[MmioRegion, ...]:
    return (
        # GIC-400 as in Linux's r8a7795.dtsi: distributor 4 KiB, CPU interface, virtual
        # interface control and virtual CPU interface, 128 KiB each (64 KiB-aliased).
        _r(0xF101_0000, 0x1000), _r(0xF102_0000, 0x20000), _r(0xF104_0000, 0x20000), _r(0xF106_0000, 0x20000),
        _r(0xFEB0_0000, 512 * KIB),          # DU
        _r(0xEE00_0000, 0xC00),              # xHCI (0xc00 bytes, rounded up to one page)
    )


def h3() -> Board:
    """R-Car H3 on Salvator-X: 3968 MiB in 4 banks, 1 main IPMMU (Gen3: 8 contexts, 1 reserved)."""
    masters = (_sys_dmac() + [_etheravb()] + _sdhi() + [DmaMaster("sata", (_r(0xEE30_0000, 2 * MIB),), "hc"),
                                                       _pcie0(), _pcie1()]
               + _audio_dmac()
               # HARDWARE.md lists the three fetchers behind "vi0, vi1" without saying which is
               # where; Linux's r8a7795.dtsi puts fcpvd0 and fcpvd1 on vi0, fcpvd2 on vi1.
               + _vsp_fetchers(("vi0", "vi0", "vi1")))
    return Board(
        name="h3",
        ram_banks=((0x0_4800_0000, 896 * MIB), (0x5_0000_0000, GIB), (0x6_0000_0000, GIB), (0x7_0000_0000, GIB)),
        masters=tuple(masters),
        other_mmio=_gen3_other_mmio(),
        ipmmu_contexts=8, reserved_contexts=1, ipmmus=1)


def m3w() -> Board:
    """R-Car M3-W on Salvator-X: 1 main + 10 cache IPMMUs (HARDWARE.md); the rest is assumed.

    Assumptions: the memory map of the devices is H3's (M3-W shares most of it); M3-W has
    no SATA and only PCIe0 is modelled; all three VSP fetchers sit on vi0 (Linux's
    r8a77961.dtsi, the M3-W+ sibling, has no vi1 for them). RAM banks follow Linux's
    arch/arm64/boot/dts/renesas/r8a77960-salvator-x.dts as best known: two channels,
    memory@48000000 reg <0x0 0x48000000 0x0 0x78000000> (1920 MiB; the first 128 MiB
    of the channel are secure) and memory@600000000 reg <0x6 0x0 0x0 0x80000000> (2 GiB).
    """
    masters = (_sys_dmac() + [_etheravb()] + _sdhi() + [_pcie0()] + _audio_dmac()
               + _vsp_fetchers(("vi0", "vi0", "vi0")))
    return Board(
        name="m3w",
        ram_banks=((0x0_4800_0000, 0x7800_0000), (0x6_0000_0000, 2 * GIB)),
        masters=tuple(masters),
        other_mmio=_gen3_other_mmio(),
        ipmmu_contexts=8, reserved_contexts=1, ipmmus=1,
        ipmmu_stage2=False)         # r8a77960 is M3-W ES1.x: below ES3.0, upstream will not share (HARDWARE.md)


# --- a generic large server -----------------------------------------------------------------

SERVER_LOW_RAM = (0x8000_0000, 2 * GIB)     # first bank
SERVER_HIGH_RAM_BASE = 0x1_0000_0000        # the rest of RAM, one bank
SERVER_MMIO64_BASE = 0x40_0000_0000         # 64-bit PCIe window (moved above RAM if RAM reaches it)
SERVER_MMIO64_ALIGN = 0x40_0000_0000
SERVER_ECAM = (0x3000_0000, 256 * MIB)      # PCIe configuration space
SERVER_BAR0 = 64 * KIB
SERVER_BAR2 = 16 * MIB
SERVER_IPMMUS = 4


def server(ram_gib: int = 512, functions: int = 64) -> Board:
    """A generic server: `ram_gib` GiB of RAM, `functions` PCIe functions behind 4 main IPMMUs.

    A WHAT-IF: no such R-Car exists, and Xen's IPMMU drivers handle a single root IPMMU
    (ipmmu_find_root, xen-troops/xen:xen/drivers/passthrough/arm/ipmmu-vmsa-legacy.c @
    RELEASE-4.13.0-xt0.2.prod-devel:1666); four roots of 8 contexts each stand for an
    IPMMU-like IOMMU at server scale.

    RAM: 2 GiB at 0x8000_0000, the rest in one bank at 0x1_0000_0000. Each function
    pcie-fn<i> has a 64 KiB BAR0 and a 16 MiB BAR2 in a 64-bit window that starts at
    0x40_0000_0000, or, when RAM reaches that far (above 254 GiB), at the next
    0x40_0000_0000 (256 GiB) boundary above RAM (for 512 GiB: 0xC0_0000_0000). BARs are
    placed largest first, each aligned to its size: all BAR2s, then all BAR0s. Function
    i sits behind main IPMMU i % 4 (micro-TLB group "hc<i % 4>"). Configuration space is
    one 256 MiB ECAM region at 0x3000_0000.
    """
    ram_gib = checked_int("server ram_gib", ram_gib, 1)
    functions = checked_int("server functions", functions, 1)
    low = min(ram_gib, 2) * GIB
    banks = [(SERVER_LOW_RAM[0], low)]
    if ram_gib > 2:
        banks.append((SERVER_HIGH_RAM_BASE, (ram_gib - 2) * GIB))
    ram_end = banks[-1][0] + banks[-1][1]
    window = max(SERVER_MMIO64_BASE, -(-ram_end // SERVER_MMIO64_ALIGN) * SERVER_MMIO64_ALIGN)
    bar0_base = window + functions * SERVER_BAR2
    masters = tuple(
        DmaMaster(f"pcie-fn{i}",
                  (_r(bar0_base + i * SERVER_BAR0, SERVER_BAR0), _r(window + i * SERVER_BAR2, SERVER_BAR2)),
                  f"hc{i % SERVER_IPMMUS}", main_ipmmu=i % SERVER_IPMMUS)
        for i in range(functions))
    return Board(name="server", ram_banks=tuple(banks), masters=masters,
                 other_mmio=(_r(*SERVER_ECAM),),
                 ipmmu_contexts=8, reserved_contexts=1, ipmmus=SERVER_IPMMUS)


BOARDS: dict[str, Callable[..., Board]] = {"h3": h3, "m3w": m3w, "server": server}


def board(name: str, **kwargs) -> Board:
    """The board profile called `name` (keyword arguments go to the profile, e.g. server's)."""
    try:
        make = BOARDS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown board {name!r}; known: {', '.join(BOARDS)}") from None
    return make(**kwargs)

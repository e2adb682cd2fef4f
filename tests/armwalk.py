"""An independent VMSAv8-64 table walker (4 KiB granule) for exported images.

Written from the architecture rules only, and on purpose importing nothing
from iommu_core: a misreading shared with the engine cannot hide here.

An image is two files:
  <path>.bin   raw little-endian memory of the table pool, starting at the
               physical address `base`;
  <path>.json  manifest: base, root, stage, ia_bits, oa_bits, t0sz,
               start_level, root_tables, granule (4096), and mair at stage 1.

A translation fault (invalid entry) is an ordinary answer: walk() returns
None. Things a correct table never contains raise WalkError instead: a table
or descriptor address outside the image, an output or table address beyond
the output size, non-zero address bits below a block's size, a table reached
twice.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

GRANULE_SHIFT = 12
GRANULE = 1 << GRANULE_SHIFT
ENTRIES = 512
DESC_BYTES = 8
ADDR_BITS = ((1 << 48) - 1) & ~(GRANULE - 1)     # descriptor bits [47:12]
MAX_CONCAT = 16                                   # stage-2 concatenated root tables


def level_shift(level: int) -> int:
    """Lowest input-address bit indexed at `level`: L3 12, L2 21, L1 30, L0 39."""
    return GRANULE_SHIFT + 9 * (3 - level)


class WalkError(Exception):
    """The image holds something a correct table never does."""


# -- descriptor fields ---------------------------------------------------------
def kind(desc: int, level: int) -> str:
    """'invalid', 'table', 'block' or 'page' for a descriptor found at `level`."""
    if not desc & 1:
        return "invalid"
    if level == 3:
        return "page" if desc & 2 else "invalid"      # bit1 == 0 at level 3 is reserved
    if desc & 2:
        return "table"
    return "invalid" if level == 0 else "block"       # no level-0 blocks with a 4 KiB granule


def attr_bits(desc: int) -> int:
    """The descriptor without its address field [47:12] and type bits [1:0]."""
    return desc & ~(ADDR_BITS | 0b11)


def stage1_perm(desc: int) -> str:
    """AP[2] (bit 7) set: read-only."""
    return "r" if desc >> 7 & 1 else "rw"


def stage2_perm(desc: int) -> str:
    """S2AP: bit 6 read, bit 7 write."""
    r, w = desc >> 6 & 1, desc >> 7 & 1
    return {(0, 0): "none", (1, 0): "r", (0, 1): "w", (1, 1): "rw"}[(r, w)]


def stage1_start_level(t0sz: int) -> int:
    """Initial lookup level of a stage-1 walk from T0SZ (4 KiB granule)."""
    if 16 <= t0sz <= 24:
        return 0
    if 25 <= t0sz <= 33:
        return 1
    if 34 <= t0sz <= 39:
        return 2
    raise ValueError(f"T0SZ {t0sz} is outside 16..39 for a 4 KiB granule")


@dataclass
class Image:
    data: bytes
    base: int
    root: int
    stage: int
    ia_bits: int
    oa_bits: int
    start_level: int
    root_tables: int
    mair: int | None = None
    manifest: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {self.stage!r}")
        if self.stage == 1:
            if self.start_level != stage1_start_level(64 - self.ia_bits):
                raise ValueError(f"stage 1 with {self.ia_bits} input bits starts at level "
                                 f"{stage1_start_level(64 - self.ia_bits)}, manifest says {self.start_level}")
            if self.mair is None:
                raise ValueError("a stage-1 image needs its MAIR value")
        if not 0 <= self.start_level <= 3 or self.ia_bits <= level_shift(self.start_level):
            raise ValueError(f"start level {self.start_level} does not fit {self.ia_bits} input bits")
        tables = max(1, self.root_entries // ENTRIES)
        limit = 1 if self.stage == 1 else MAX_CONCAT
        if tables > limit or tables != self.root_tables:
            raise ValueError(f"{self.ia_bits} input bits from level {self.start_level} need {tables} root "
                             f"tables (at most {limit}), manifest says {self.root_tables}")
        if self.root % (GRANULE * tables):
            # concatenated roots are aligned to their total size
            raise ValueError(f"root {self.root:#x} is not aligned to {GRANULE * tables:#x}")

    # -- memory ---------------------------------------------------------------
    def read(self, addr: int, count: int = 1) -> tuple[int, ...]:
        """`count` descriptors at physical address `addr`."""
        off = addr - self.base
        if addr % DESC_BYTES or off < 0 or off + count * DESC_BYTES > len(self.data):
            raise WalkError(f"descriptor address {addr:#x} (+{count} entries) is outside the image "
                            f"[{self.base:#x}, {self.base + len(self.data):#x})")
        return struct.unpack_from(f"<{count}Q", self.data, off)

    @property
    def root_entries(self) -> int:
        return 1 << (self.ia_bits - level_shift(self.start_level))

    def _table_addr(self, desc: int) -> int:
        addr = desc & ADDR_BITS
        if addr >> self.oa_bits:
            raise WalkError(f"table address {addr:#x} is beyond the {self.oa_bits}-bit output size")
        return addr

    def _output(self, desc: int, level: int) -> int:
        addr = desc & ADDR_BITS
        low = addr & ((1 << level_shift(level)) - 1)
        if low:
            raise WalkError(f"level-{level} block {desc:#x} has address bits set below its size ({low:#x})")
        if addr >> self.oa_bits:
            raise WalkError(f"output address {addr:#x} is beyond the {self.oa_bits}-bit output size")
        return addr

    # -- walking --------------------------------------------------------------
    def path(self, va: int) -> list[tuple[int, int, int]]:
        """The descriptors a walk of `va` reads: (level, descriptor address, descriptor)."""
        if not 0 <= va < 1 << self.ia_bits:
            raise ValueError(f"address {va:#x} is outside the {self.ia_bits}-bit input range")
        steps = []
        table, level, entries = self.root, self.start_level, self.root_entries
        while True:
            # A concatenated stage-2 root is one table of root_entries entries spanning pages.
            addr = table + ((va >> level_shift(level)) & (entries - 1)) * DESC_BYTES
            (desc,) = self.read(addr)
            steps.append((level, addr, desc))
            if kind(desc, level) != "table":
                return steps
            table, level, entries = self._table_addr(desc), level + 1, ENTRIES

    def walk(self, va: int) -> tuple[int, int, int] | None:
        """(pa, leaf descriptor, level), or None on a translation fault."""
        level, _, desc = self.path(va)[-1]
        if kind(desc, level) == "invalid":
            return None
        return self._output(desc, level) | (va & ((1 << level_shift(level)) - 1)), desc, level

    def mappings(self) -> list[tuple[int, int, int, int]]:
        """Every leaf as (va, pa, size in bytes, attribute bits), sorted by va."""
        out: list[tuple[int, int, int, int]] = []
        seen: set[int] = set()

        def visit(table: int, level: int, entries: int, va0: int) -> None:
            if table in seen:
                raise WalkError(f"table {table:#x} is reached twice")
            seen.add(table)
            for i, desc in enumerate(self.read(table, entries)):
                va = va0 + (i << level_shift(level))
                k = kind(desc, level)
                if k == "table":
                    visit(self._table_addr(desc), level + 1, ENTRIES, va)
                elif k != "invalid":
                    out.append((va, self._output(desc, level), 1 << level_shift(level), attr_bits(desc)))

        visit(self.root, self.start_level, self.root_entries, 0)
        return out

    # -- attributes -----------------------------------------------------------
    def perm(self, desc: int) -> str:
        return stage1_perm(desc) if self.stage == 1 else stage2_perm(desc)

    def memattr(self, desc: int) -> int:
        """Stage 1: the MAIR byte AttrIndx [4:2] selects; stage 2: MemAttr [5:2]."""
        if self.stage == 1:
            return self.mair >> (8 * (desc >> 2 & 0x7)) & 0xFF
        return desc >> 2 & 0xF


def load_image(path) -> Image:
    """Read <path>.bin and <path>.json (path may also name either file)."""
    p = Path(path)
    if p.suffix in (".bin", ".json"):
        p = p.with_suffix("")
    m = json.loads(Path(f"{p}.json").read_text())
    data = Path(f"{p}.bin").read_bytes()
    if m["granule"] != GRANULE:
        raise ValueError(f"only a 4 KiB granule is walked, manifest says {m['granule']}")
    if m["t0sz"] != 64 - m["ia_bits"]:
        raise ValueError(f"t0sz {m['t0sz']} disagrees with ia_bits {m['ia_bits']}")
    return Image(data=data, base=m["base"], root=m["root"], stage=m["stage"], ia_bits=m["ia_bits"],
                 oa_bits=m["oa_bits"], start_level=m["start_level"], root_tables=m["root_tables"],
                 mair=m.get("mair"), manifest=m)

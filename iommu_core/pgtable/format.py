"""One description of a page-table kind, in the spirit of Linux's io_pgtable_cfg.

Everything that encodes, walks or accounts a table reads its geometry from a
`Format`; no other module carries format constants.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

GRANULE_SHIFT = 12
GRANULE = 1 << GRANULE_SHIFT          # 4 KiB: the only granule modelled
ENTRIES_SHIFT = 9                     # 512 eight-byte entries per granule table
ENTRIES = 1 << ENTRIES_SHIFT
DESC_BYTES = 8
CACHE_LINE = 64
ENTRIES_PER_LINE = CACHE_LINE // DESC_BYTES
LAST_LEVEL = 3
MAX_STAGE2_CONCAT = 16                # the architecture allows up to 16 concatenated root tables

LEAF_SIZE_LEVEL = {"4K": 3, "2M": 2, "1G": 1}


def level_shift(level: int) -> int:
    """Bit position of the lowest input-address bit a level-`level` entry indexes."""
    return GRANULE_SHIFT + ENTRIES_SHIFT * (LAST_LEVEL - level)


def level_pages(level: int) -> int:
    """4 KiB pages one level-`level` entry spans."""
    return 1 << (level_shift(level) - GRANULE_SHIFT)


@dataclass(frozen=True)
class Format:
    """A VMSAv8-64 long-descriptor table kind with a 4 KiB granule.

    stage: 1 (the IPMMU's format) or 2 (the P2M's).
    ia_bits / oa_bits: input and output address sizes.
    leaf_sizes: which of "4K", "2M", "1G" may be leaves ("4K" is always needed).
    coherent_walk: whether the walker snoops the CPU caches; if not, every
        table line written must be cleaned (the IPMMU's case).
    ns_quirk: stage 1 only: set NS in leaves and NSTable in table descriptors
        (the IPMMU faults otherwise).
    """

    name: str
    stage: int
    ia_bits: int
    oa_bits: int
    leaf_sizes: tuple[str, ...] = ("4K", "2M", "1G")
    coherent_walk: bool = True
    ns_quirk: bool = False
    leaf_levels: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        if self.stage not in (1, 2):
            raise ValueError(f"format {self.name!r}: stage must be 1 or 2, got {self.stage!r}")
        if not (isinstance(self.ia_bits, int) and 32 <= self.ia_bits <= 48):
            raise ValueError(f"format {self.name!r}: ia_bits must be an int in 32..48, got {self.ia_bits!r}")
        if not (isinstance(self.oa_bits, int) and 32 <= self.oa_bits <= 48):
            raise ValueError(f"format {self.name!r}: oa_bits must be an int in 32..48, got {self.oa_bits!r}")
        unknown = [s for s in self.leaf_sizes if s not in LEAF_SIZE_LEVEL]
        if unknown:
            raise ValueError(f"format {self.name!r}: unknown leaf size {unknown[0]!r}; "
                             f"choose from {sorted(LEAF_SIZE_LEVEL)}")
        if "4K" not in self.leaf_sizes:
            raise ValueError(f"format {self.name!r}: leaf_sizes must include '4K', got {self.leaf_sizes!r}")
        if self.ns_quirk and self.stage != 1:
            raise ValueError(f"format {self.name!r}: the NS quirk exists only for stage 1")
        levels = tuple(sorted({LEAF_SIZE_LEVEL[s] for s in self.leaf_sizes}))
        if levels[0] < self.start_level:
            raise ValueError(f"format {self.name!r}: a {self.ia_bits}-bit input starts at level "
                             f"{self.start_level}, too low for a leaf at level {levels[0]}")
        object.__setattr__(self, "leaf_levels", levels)

    # -- geometry the architecture derives from the input size --------------
    @property
    def t0sz(self) -> int:
        return 64 - self.ia_bits

    @cached_property
    def start_level(self) -> int:
        if self.stage == 1:
            return 0 if self.ia_bits > level_shift(0) else 1
        # Stage 2 starts one level lower and concatenates up to 16 root tables.
        return 1 if self.ia_bits <= level_shift(0) + 4 else 0

    @cached_property
    def root_entries(self) -> int:
        return 1 << (self.ia_bits - level_shift(self.start_level))

    @cached_property
    def root_tables(self) -> int:
        """Granule pages the root occupies (concatenated tables at stage 2)."""
        return max(1, self.root_entries // ENTRIES)

    @property
    def root_bytes(self) -> int:
        return self.root_tables * GRANULE

    @cached_property
    def levels(self) -> range:
        return range(self.start_level, LAST_LEVEL + 1)

    @cached_property
    def ia_pages(self) -> int:
        return 1 << (self.ia_bits - GRANULE_SHIFT)

    @cached_property
    def oa_pages(self) -> int:
        return 1 << (self.oa_bits - GRANULE_SHIFT)

    def with_leaf_sizes(self, leaf_sizes: tuple[str, ...]) -> "Format":
        return Format(self.name, self.stage, self.ia_bits, self.oa_bits, tuple(leaf_sizes),
                      self.coherent_walk, self.ns_quirk)

    def describe(self) -> dict:
        """The geometry a real walker needs, plus what rebuilds this object.

        The register values that go with it are descriptors.registers(self).
        """
        d = {
            "format": self.name, "stage": self.stage, "ia_bits": self.ia_bits,
            "oa_bits": self.oa_bits, "granule": GRANULE, "t0sz": self.t0sz,
            "start_level": self.start_level, "root_tables": self.root_tables,
            "root_entries": self.root_entries, "leaf_sizes": list(self.leaf_sizes),
            "coherent_walk": self.coherent_walk, "ns_quirk": self.ns_quirk,
        }
        return d

    @classmethod
    def preset(cls, name: str) -> "Format":
        try:
            return PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown format preset {name!r}; choose from {sorted(PRESETS)}") from None


PRESETS: dict[str, Format] = {
    # Renesas IPMMU-VMSA as Linux drives it: 32-bit LPAE stage 1, 40-bit output.
    "ipmmu-s1-32": Format("ipmmu-s1-32", 1, 32, 40, coherent_walk=False, ns_quirk=True),
    # The downstream unshared Xen driver's 64-bit stage-1 variant: 39-bit input.
    "ipmmu-s1-39": Format("ipmmu-s1-39", 1, 39, 40, coherent_walk=False, ns_quirk=True),
    # Xen's P2M: 40-bit IPA (2 concatenated level-1 roots), the size the IPMMU can share.
    "p2m-s2-40": Format("p2m-s2-40", 2, 40, 40),
    "p2m-s2-48": Format("p2m-s2-48", 2, 48, 48),
    # The other sizes Xen 4.17 chooses from the CPU's PA range (xen/geometry.py).
    "p2m-s2-32": Format("p2m-s2-32", 2, 32, 32),
    "p2m-s2-36": Format("p2m-s2-36", 2, 36, 36),
    "p2m-s2-42": Format("p2m-s2-42", 2, 42, 42),
    "p2m-s2-44": Format("p2m-s2-44", 2, 44, 44),
}

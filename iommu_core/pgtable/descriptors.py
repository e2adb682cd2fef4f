"""VMSAv8-64 long-descriptor bit fields, named as in the Arm ARM.

Check each constant against the manual line by line; the logic elsewhere uses
only these names. Descriptors are numpy uint64 values.
"""

from __future__ import annotations

import numpy as np

from .format import GRANULE_SHIFT, LAST_LEVEL, Format, level_shift

U64 = np.uint64

# -- both stages -------------------------------------------------------------
DESC_VALID = 1 << 0
DESC_TYPE_TABLE = 1 << 1          # levels 0-2: 1 table, 0 block; level 3: 1 page
DESC_TYPE_MASK = DESC_VALID | DESC_TYPE_TABLE
DESC_TABLE = DESC_VALID | DESC_TYPE_TABLE
DESC_PAGE = DESC_VALID | DESC_TYPE_TABLE
DESC_BLOCK = DESC_VALID
OA_MASK_48 = ((1 << 48) - 1) & ~((1 << GRANULE_SHIFT) - 1)   # bits 47:12
ATTR_SH_SHIFT = 8                  # [9:8] shareability
SH_OUTER = 0b10
SH_INNER = 0b11
ATTR_AF = 1 << 10
ATTR_CONTIG = 1 << 52
ATTR_XN = 1 << 54                  # stage 1 UXN/XN, stage 2 XN
SW_SHIFT = 55                      # [58:55] ignored by hardware: software use
SW_MASK = 0xF

# -- stage 1 -----------------------------------------------------------------
S1_ATTRINDX_SHIFT = 2              # [4:2]
S1_NS = 1 << 5
S1_AP1_UNPRIV = 1 << 6             # AP[1]: accessible from EL0 (how IOMMUs map for devices)
S1_AP2_RDONLY = 1 << 7             # AP[2]
S1_NG = 1 << 11
S1_PXN = 1 << 53
S1_TABLE_NSTABLE = 1 << 63

# MAIR slots the stage-1 AttrIndx values select.
MAIR_WRITEBACK = 0xFF              # Normal, inner/outer write-back RW-allocate
MAIR_NONCACHEABLE = 0x44           # Normal, inner/outer non-cacheable
MAIR_DEVICE_NGNRE = 0x04
S1_ATTRIDX = {"normal": 0, "normal-nc": 1, "device": 2}
MAIR = MAIR_WRITEBACK | (MAIR_NONCACHEABLE << 8) | (MAIR_DEVICE_NGNRE << 16)

# -- stage 2 -----------------------------------------------------------------
S2_MEMATTR_SHIFT = 2               # [5:2]
S2_MEMATTR = {"normal": 0xF, "normal-nc": 0x5, "device": 0x1}
S2AP_READ = 1 << 6
S2AP_WRITE = 1 << 7

# -- the vocabulary of the public API ----------------------------------------
PERM_R = 1
PERM_W = 2
PERMS = {"none": 0, "r": PERM_R, "w": PERM_W, "rw": PERM_R | PERM_W}
PERM_NAMES = {v: k for k, v in PERMS.items()}
MEMTYPES = {"normal": 0, "normal-nc": 1, "device": 2}
MEMTYPE_NAMES = {v: k for k, v in MEMTYPES.items()}
MEMTYPE_CODES = tuple(MEMTYPES)           # code -> name, in order


# -- register values that go with a format ----------------------------------
def mair(fmt: Format) -> int | None:
    """MAIR value the stage-1 AttrIndx values assume (None at stage 2)."""
    return MAIR if fmt.stage == 1 else None


def vtcr_sl0(fmt: Format) -> int | None:
    """VTCR_EL2.SL0 for stage 2 with a 4 KiB granule (0: level 2, 1: level 1, 2: level 0;
    None at stage 1)."""
    return 2 - fmt.start_level if fmt.stage == 2 else None


def registers(fmt: Format) -> dict:
    """The register fields a walker of this format is set up with, by manifest key."""
    return {"mair": mair(fmt)} if fmt.stage == 1 else {"vtcr_sl0": vtcr_sl0(fmt)}


def walker_params(fmt: Format) -> dict:
    """What a real walker needs: the format's geometry, then its register values."""
    return {**fmt.describe(), **registers(fmt)}


def allowed_perms(fmt: Format) -> tuple[str, ...]:
    # Stage 1 AP bits cannot express write-only or no access with a valid entry.
    return ("r", "rw") if fmt.stage == 1 else ("none", "r", "w", "rw")


def oa_mask(level: int) -> int:
    """Output-address bits of a leaf at `level` (47 down to the leaf's size)."""
    return OA_MASK_48 & ~((1 << level_shift(level)) - 1)


def leaf_type(level: int) -> int:
    return DESC_PAGE if level == LAST_LEVEL else DESC_BLOCK


def table_desc_bits(fmt: Format) -> int:
    """Attribute bits of every table descriptor (the address is added per table)."""
    bits = DESC_TABLE
    if fmt.ns_quirk:
        bits |= S1_TABLE_NSTABLE
    return bits


def leaf_attrs(fmt: Format, perm: np.ndarray, memtype: np.ndarray, sw: np.ndarray) -> np.ndarray:
    """Leaf attribute bits (everything but the address and the type bits).

    perm, memtype: codes from PERMS / MEMTYPES; sw: 0..15. All arrays, same shape.
    """
    perm = np.asarray(perm, dtype=U64)
    memtype = np.asarray(memtype, dtype=U64)
    device = memtype == MEMTYPES["device"]
    cacheable = memtype == MEMTYPES["normal"]
    sh = np.where(cacheable, U64(SH_INNER), U64(SH_OUTER)) << U64(ATTR_SH_SHIFT)
    attrs = sh | U64(ATTR_AF) | (np.asarray(sw, dtype=U64) << U64(SW_SHIFT))
    attrs |= np.where(device, U64(ATTR_XN), U64(0))
    if fmt.stage == 1:
        idx = np.array([S1_ATTRIDX[m] for m in MEMTYPE_CODES], dtype=U64)[memtype.astype(np.intp)]
        attrs |= idx << U64(S1_ATTRINDX_SHIFT)
        attrs |= U64(S1_AP1_UNPRIV | S1_NG)
        attrs |= np.where((perm & U64(PERM_W)) == 0, U64(S1_AP2_RDONLY), U64(0))
        if fmt.ns_quirk:
            attrs |= U64(S1_NS)
    else:
        mem = np.array([S2_MEMATTR[m] for m in MEMTYPE_CODES], dtype=U64)[memtype.astype(np.intp)]
        attrs |= mem << U64(S2_MEMATTR_SHIFT)
        attrs |= np.where((perm & U64(PERM_R)) != 0, U64(S2AP_READ), U64(0))
        attrs |= np.where((perm & U64(PERM_W)) != 0, U64(S2AP_WRITE), U64(0))
    return attrs


def _memtype_lookup(fmt: Format) -> np.ndarray:
    """Attribute field value -> memtype code (255: a value this model never writes)."""
    field = S1_ATTRIDX if fmt.stage == 1 else S2_MEMATTR
    table = np.full(16, 255, dtype=np.uint8)
    for name, value in field.items():
        table[value] = MEMTYPES[name]
    return table


def decode_leaf(fmt: Format, desc: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Permission, memtype and software-bit codes of leaf descriptors."""
    desc = np.asarray(desc, dtype=U64)
    if fmt.stage == 1:
        perm = np.where((desc & U64(S1_AP2_RDONLY)) != 0, PERM_R, PERM_R | PERM_W).astype(np.uint8)
        field = (desc >> U64(S1_ATTRINDX_SHIFT)) & U64(0x7)
    else:
        perm = (((desc & U64(S2AP_READ)) != 0) * PERM_R
                | ((desc & U64(S2AP_WRITE)) != 0) * PERM_W).astype(np.uint8)
        field = (desc >> U64(S2_MEMATTR_SHIFT)) & U64(0xF)
    memtype = _memtype_lookup(fmt)[field.astype(np.intp)]
    sw = ((desc >> U64(SW_SHIFT)) & U64(SW_MASK)).astype(np.uint8)
    return perm, memtype, sw

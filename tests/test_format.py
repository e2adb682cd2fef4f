"""Format geometry against the architecture's table (HARDWARE.md) and bad parameters."""

import pytest

from iommu_core import Format
from iommu_core.pgtable import descriptors as d
from iommu_core.pgtable.format import PRESETS

# input bits: (stage-1 levels, start level, root entries), (stage-2 start level, root pages)
ARCH_TABLE = {
    32: ((3, 1, 4), (1, 1)),
    36: ((3, 1, 64), (1, 1)),
    39: ((3, 1, 512), (1, 1)),
    40: ((4, 0, 2), (1, 2)),
    42: ((4, 0, 8), (1, 8)),
    44: ((4, 0, 32), (0, 1)),
    48: ((4, 0, 512), (0, 1)),
}


@pytest.mark.parametrize("ia_bits", sorted(ARCH_TABLE))
def test_geometry_follows_the_architecture(ia_bits):
    (levels, s1_start, s1_entries), (s2_start, s2_pages) = ARCH_TABLE[ia_bits]
    s1 = Format("s1", 1, ia_bits, 48)
    assert (len(s1.levels), s1.start_level, s1.root_entries, s1.root_tables) == (levels, s1_start, s1_entries, 1)
    assert s1.t0sz == 64 - ia_bits
    s2 = Format("s2", 2, ia_bits, 48)
    assert (s2.start_level, s2.root_tables) == (s2_start, s2_pages)
    assert s2.root_bytes == 4096 * s2_pages


def test_presets_describe_the_ipmmu_and_the_p2m():
    ipmmu = Format.preset("ipmmu-s1-32")
    assert (ipmmu.stage, ipmmu.ia_bits, ipmmu.oa_bits, ipmmu.coherent_walk, ipmmu.ns_quirk) == (1, 32, 40, False, True)
    assert Format.preset("ipmmu-s1-39").start_level == 1
    p2m = Format.preset("p2m-s2-40")
    assert (p2m.stage, p2m.start_level, p2m.root_tables, d.vtcr_sl0(p2m)) == (2, 1, 2, 1)
    assert Format.preset("p2m-s2-48").start_level == 0
    assert set(PRESETS) >= {"ipmmu-s1-32", "ipmmu-s1-39", "p2m-s2-40", "p2m-s2-48"}
    assert d.mair(ipmmu) is not None and d.mair(p2m) is None and d.vtcr_sl0(ipmmu) is None


@pytest.mark.parametrize("kwargs, word", [
    (dict(stage=3, ia_bits=40, oa_bits=40), "stage"),
    (dict(stage=1, ia_bits=31, oa_bits=40), "ia_bits"),
    (dict(stage=1, ia_bits=49, oa_bits=40), "ia_bits"),
    (dict(stage=1, ia_bits=40, oa_bits=52), "oa_bits"),
    (dict(stage=1, ia_bits=40, oa_bits=40, leaf_sizes=("4K", "16K")), "16K"),
    (dict(stage=1, ia_bits=40, oa_bits=40, leaf_sizes=("2M",)), "4K"),
    (dict(stage=2, ia_bits=40, oa_bits=40, ns_quirk=True), "NS"),
])
def test_bad_format_parameters_are_named(kwargs, word):
    with pytest.raises(ValueError, match=word):
        Format("bad", **kwargs)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="ipmmu-s1-32"):
        Format.preset("smmu-v3")

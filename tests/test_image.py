"""Export to a raw memory image, walk it with the independent walker, load it back."""

import json

import armwalk
import numpy as np
import pytest

from iommu_core import PageTable
from iommu_core.pgtable.format import PRESETS

GIB = 1 << 30


def populated(preset):
    """Pages, 2 MiB blocks, a 1 GiB block where the format reaches, mixed attributes, a split."""
    pt = PageTable(preset, base=0x4_0000_0000 if PRESETS[preset].oa_bits > 34 else 0x8000_0000)
    iova = [0x1000, 0x20_0000, 0x4000_0000, 0x8000_0000 + 0x3000]
    # The 1 GiB block's output above 4 GiB, unless the output size is 32 bits (p2m-s2-32).
    pa = [0x9000_0000, 0xA000_0000, 0x1_0000_0000 if PRESETS[preset].oa_bits > 32 else 0x4000_0000, 0xE670_0000]
    n = [5, 2 * 512, 1 << 18, 16]
    perm = ["r", "rw", "rw", "rw"]
    memtype = ["normal", "normal-nc", "normal", "device"]
    pt.map(iova, pa, n, perm=perm, memtype=memtype, sw=[1, 2, 3, 4])
    pt.unmap(0x4000_0000 + 0x20_0000 + 0x5000, 3)        # splits the 1 GiB block, then a 2 MiB one
    return pt


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_independent_walker_reads_exactly_our_mappings(preset, tmp_path):
    pt = populated(preset)
    pt.export(tmp_path / "t")
    manifest = json.loads((tmp_path / "t.json").read_text())
    fmt = pt.fmt
    assert {k: manifest[k] for k in ("base", "root", "stage", "ia_bits", "oa_bits", "t0sz", "start_level",
                                     "root_tables")} == dict(
        base=pt.base, root=pt.root, stage=fmt.stage, ia_bits=fmt.ia_bits, oa_bits=fmt.oa_bits,
        t0sz=64 - fmt.ia_bits, start_level=fmt.start_level, root_tables=fmt.root_tables)
    assert manifest["root"] % (4096 * fmt.root_tables) == 0
    img = armwalk.load_image(tmp_path / "t")
    walked = img.mappings()
    va, level, desc = pt.leaves()
    ours = [(int(v), int(dsc) & ((1 << 48) - 1) & ~((1 << (12 + 9 * (3 - int(lv)))) - 1), 1 << (12 + 9 * (3 - int(lv))),
             armwalk.attr_bits(int(dsc))) for v, lv, dsc in zip(va, level, desc)]
    assert walked == ours
    rng = np.random.default_rng(1)
    addrs = np.concatenate([rng.integers(0, 2 * GIB, 3000), [0x1000, 0x5FFF, 0x6000, 0x4020_5000]]).astype(np.uint64)
    t = pt.translate(addrs)
    for a, p, fault in zip(addrs.tolist(), t.pa.tolist(), t.fault.tolist()):
        hit = img.walk(a)
        assert (hit is None) == fault, hex(a)
        if hit is not None:
            assert hit[0] == p, hex(a)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_load_gives_back_the_same_table(preset, tmp_path):
    pt = populated(preset)
    pt.export(tmp_path / "t")
    back = PageTable.load(tmp_path / "t.bin")
    assert back.fmt == pt.fmt and back.base == pt.base
    assert back.mappings() == pt.mappings()
    assert back.stats()["tables_by_level"] == pt.stats()["tables_by_level"]
    assert back.table_bytes == pt.table_bytes
    # The loaded table is a working table: map and unmap more.
    back.map(0xC000_0000, 0x5000_0000, 512)
    back.unmap(0x1000, 5)
    pt.map(0xC000_0000, 0x5000_0000, 512)
    pt.unmap(0x1000, 5)
    assert back.mappings() == pt.mappings()


def test_load_refuses_a_damaged_image(tmp_path):
    pt = populated("p2m-s2-40")
    pt.export(tmp_path / "t")
    raw = np.fromfile(tmp_path / "t.bin", dtype="<u8")
    bad = raw.copy()
    bad[0] = (bad[0] & np.uint64(0xFFF)) | np.uint64(0xFF_0000_0000)     # root entry 0 points far away
    bad.tofile(tmp_path / "bad.bin")
    (tmp_path / "bad.json").write_text((tmp_path / "t.json").read_text())
    with pytest.raises(ValueError, match="outside the image"):
        PageTable.load(tmp_path / "bad")
    raw[:100].tofile(tmp_path / "short.bin")
    (tmp_path / "short.json").write_text((tmp_path / "t.json").read_text())
    with pytest.raises(ValueError, match="whole number of tables"):
        PageTable.load(tmp_path / "short")
    manifest = json.loads((tmp_path / "t.json").read_text())
    manifest["start_level"] = 0
    (tmp_path / "lie.json").write_text(json.dumps(manifest))
    raw.tofile(tmp_path / "lie.bin")
    with pytest.raises(ValueError, match="start_level is 0"):
        PageTable.load(tmp_path / "lie")

"""The model against a real Xen 4.17 (the package's copy of shared/xen-real's call log and counters)."""

import gzip

import numpy as np
import pytest

from iommu_core.cli import main
from iommu_core.scenarios.devicetree import board_from_devicetree
from iommu_core.scenarios.files import DATA, load_scenario, resolve_p2m_format
from iommu_core.xen.dom0 import allocate_memory_11, xen_held
from iommu_core.xen.geometry import p2m_format_for
from iommu_core.xen.host import Host
from iommu_core.xenlog import CallLogError, read_call_log, read_counters, replay_counters

CAPTURE = DATA / "xen-real"
GIB, MIB = 1 << 30, 1 << 20
HEADER = "seq,domid,gfn,nr,mfn,type,type_name,access,caller,hypercall,phase,rc\n"


@pytest.fixture(scope="module")
def log():
    return read_call_log(CAPTURE / "p2m_set_entry.csv.gz")


def test_replaying_the_capture_reproduces_every_q_dump(log):
    dumps = replay_counters(log, read_counters(CAPTURE / "p2m_counters.csv"), "p2m-s2-44")
    assert len(dumps) == 4
    for d in dumps:
        for key in ("mappings_1g", "shattered_1g", "mappings_2m", "shattered_2m", "mappings_4k"):
            assert d["model"][key] == d[key], (d["seq"], d["domid"], key)
    # The table itself holds one more 4K leaf than Xen counts (the README's walk: 193,032 and 517).
    assert dumps[0]["model"]["leaves_4k"] == 193_032 and dumps[2]["model"]["leaves_4k"] == 517


def test_a_synthetic_dom0_on_the_virt_board_is_xens_dom0():
    sc = load_scenario(str(DATA / "qemu-virt.toml"))
    assert sc.pa_bits == 44 and sc.host_config(policy="eager").p2m_format == "p2m-s2-44"
    host = Host(sc.board, sc.host_config(policy="eager", api="batched"))
    host.run([sc.specs[0]])
    p2m = host.domains[0].p2m
    c = p2m.xen_counters()
    # Xen's q dump after boot (shared/xen-real/p2m_counters.csv, seq 53).
    assert (c["mappings_1g"], c["mappings_2m"], c["mappings_4k"]) == (512, 703, 193_031)
    assert (c["shattered_1g"], c["shattered_2m"]) == (0, 1)
    # The walk of the capture: 1 + 2 + 4 + 380 table pages.
    assert p2m.stats()["tables_by_level"] == {0: 1, 1: 2, 2: 4, 3: 380}


def test_dom0_maps_every_device_tree_range_as_xen_did(log):
    board = board_from_devicetree(DATA / "qemu-virt.dtb")
    build = (np.array(log.phase) == "dom0-build") & (log.type == 5)
    assert list(board.dom0_mmio) == list(zip(log.gfn[build].tolist(), log.nr[build].tolist()))


def test_allocate_memory_11_places_dom0_where_xen_did(log):
    board = board_from_devicetree(DATA / "qemu-virt.dtb")
    ram = (np.array(log.phase) == "dom0-build") & (log.type == 1)
    assert allocate_memory_11(board.ram_banks, xen_held(board.ram_banks, board.boot_modules), GIB) == \
        list(zip(log.gfn[ram].tolist(), log.nr[ram].tolist()))


@pytest.mark.parametrize("pa_bits, shared, fmt", [(32, False, "p2m-s2-32"), (36, False, "p2m-s2-36"),
                                                   (40, False, "p2m-s2-40"), (42, False, "p2m-s2-42"),
                                                   (44, False, "p2m-s2-44"), (48, False, "p2m-s2-48"),
                                                   (52, False, "p2m-s2-48"), (44, True, "p2m-s2-40")])
def test_the_p2m_geometry_follows_the_cpu_as_xen_chooses(pa_bits, shared, fmt):
    assert resolve_p2m_format("auto", pa_bits, "shared" if shared else "eager") == fmt
    assert p2m_format_for(pa_bits, 40 if shared else None) == fmt


def test_the_44_bit_p2m_has_4_levels_and_one_root_page():
    from iommu_core.pgtable import Format
    f = Format.preset("p2m-s2-44")
    assert (f.start_level, f.root_tables) == (0, 1)


@pytest.mark.parametrize("row, why", [
    ("1,0,0x10,1,0x10,1,ram_ro,7,c,,p,0", "type_name"),
    ("1,0,0x10,0,0x10,1,ram_rw,7,c,,p,0", "nr must be at least 1"),
    ("1,0,0x10,1,INVALID,1,ram_rw,7,c,,p,0", "INVALID"),
    ("1,0,zz,1,0x10,1,ram_rw,7,c,,p,0", "gfn must be a number"),
    ("1,0,0x10,1,0x10,12,x,7,c,,p,0", "type must be"),
    ("1,0,0x10,1,0x10,1,ram_rw,7,c,,p,-22", "rc 0"),
    ("1,0,0x10,1,0x10,1,ram_rw,7,c,,,0", "phase"),
    ("1,0,0x10,1,0x10,1,ram_rw,7,c,p,0", "fields"),
])
def test_a_bad_call_log_row_is_refused_with_its_number(tmp_path, row, why):
    f = tmp_path / "log.csv"
    f.write_text(HEADER + "0,0,0x1,1,0x1,1,ram_rw,7,c,,p,0\n" + row + "\n")
    with pytest.raises(CallLogError, match=rf"row 3: .*{why}"):
        read_call_log(f)


def test_seq_must_increase_and_the_header_must_be_right(tmp_path):
    f = tmp_path / "log.csv.gz"
    f.write_bytes(gzip.compress((HEADER + "5,0,1,1,1,1,ram_rw,7,c,,p,0\n5,0,2,1,2,1,ram_rw,7,c,,p,0\n").encode()))
    with pytest.raises(CallLogError, match="row 3: seq must increase"):
        read_call_log(f)
    f.write_text("seq,domid\n1,0\n")
    with pytest.raises(CallLogError, match="row 1: the header"):
        read_call_log(f)


def test_an_imported_log_replays_under_a_policy(tmp_path, capsys):
    log = tmp_path / "log.csv"
    log.write_text(HEADER + "".join([
        "1,0,0x60000,512,0x60000,1,ram_rw,7,guest_physmap_add_entry,,dom0-build,0\n",
        "2,0,0x9000,1,0x9000,5,mmio_direct_c,7,map_regions_p2mt,,dom0-build,0\n",
        "3,0,0x60010,1,INVALID,0,invalid,7,guest_physmap_remove_page,memory_op:decrease_reservation,domU1-build,0\n",
        "4,1,0x40000,512,0x80000,1,ram_rw,7,guest_physmap_add_entry,memory_op:populate_physmap,domU1-build,0\n",
        "5,0,0x60010,1,0x80010,6,map_foreign_rw,7,guest_physmap_add_entry,memory_op:add_to_physmap_batch,"
        "domU1-build,0\n"]))
    trace = tmp_path / "t.parquet"
    assert main(["trace", "import", str(log), "-o", str(trace)]) == 0
    assert main(["trace", "replay", str(trace), "--policy", "eager", "--api", "per-page"]) == 0
    out = capsys.readouterr().out
    assert "5 calls of 2 domains" in out and "rows replayed under eager / per-page" in out


def test_validate_compares_the_capture_call_by_call(capsys):
    assert main(["validate", str(CAPTURE)]) == 0
    assert "20 of 20 counters the same" in capsys.readouterr().out


def _calls_by_domain_and_type(rows):
    from collections import Counter
    out = Counter()
    for r in rows:
        if r[5] == "update":
            out[(r[6], r[10])] += 1
    return out


def test_the_qemu_virt_scenario_boots_as_the_capture_did(log):
    """Per domain and type, the synthetic boot makes the capture's calls within 2 % (the domU's
    exactly), and ends with Xen's counters of the domU running (shared/xen-real, seq 33361-2)."""
    from iommu_core.xen.p2m_types import TYPES
    from iommu_core.xen.trace import Recorder
    sc = load_scenario("qemu-virt")
    host = Host(sc.board, sc.host_config(policy="eager", api="batched"))
    host.recorder = Recorder()
    records = {r["domid"]: r for r in host.run(list(sc.specs))}
    model = _calls_by_domain_and_type(host.recorder.rows)
    real = {}
    for d, t in zip(log.domid.tolist(), log.type.tolist()):
        real[(d, TYPES[t])] = real.get((d, TYPES[t]), 0) + 1
    assert set(model) == set(real)
    for key, n in real.items():
        if key[0] == 1:
            assert model[key] == n, key
        else:
            assert abs(model[key] - n) <= 0.02 * n, (key, model[key], n)
    want = {0: (512, 0, 683, 21, 203_271), 1: (0, 0, 127, 1, 516)}
    for d, counts in want.items():
        r = records[d]
        got = tuple(r[f"p2m_{k}"] for k in ("mappings_1g", "shattered_1g", "mappings_2m", "shattered_2m",
                                            "mappings_4k"))
        assert got == counts, d
    assert records[1]["destroyed"] and records[1]["p2m_relinquished_leaves"] == 127 + 517


def test_with_unpopulated_alloc_dom0_balloons_nothing():
    from iommu_core.xen.trace import Recorder
    sc = load_scenario("qemu-virt")
    host = Host(sc.board, sc.host_config(policy="shared", api="batched", dom0_unpopulated_alloc=True))
    host.recorder = Recorder()
    records = {r["domid"]: r for r in host.run(list(sc.specs))}
    model = _calls_by_domain_and_type(host.recorder.rows)
    # Only the foreign mappings and their removal: no decrease_reservation, no populate_physmap.
    loaded = model[(0, "map_foreign_rw")]
    assert loaded == 8046 + 241 + 1 + 4 + 1 and model[(0, "ram_rw")] == 2 + 2
    assert model[(0, "invalid")] == loaded + 2
    # Nothing of dom0's RAM is shattered but the page shared_info took.
    assert records[0]["p2m_shattered_2m"] == 1


def test_the_report_ends_with_the_model_against_xen_per_domain_and_level():
    from iommu_core.report.realxen import real_xen_section
    section = real_xen_section()
    assert section.id == "real-xen" and "(20 of 20 the same)" in section.body
    # Per domain, moment and level: Xen, the replay and the synthetic boot agree on the domU's 4K mappings.
    assert "| domU (domid 1) | domU running | 4K mappings | 516 | 516 | 516 |" in section.body

"""The live capture (`make xen-capture`): boot Debian's Xen 4.17 under QEMU,
build a domU, and check what it logs against what is deterministic in the
shared capture (../shared/xen-real): dom0's 43 build calls and dom0's
counters after boot. Needs qemu-system-aarch64 (Debian's qemu-system-arm) and,
on the first run, apt-get access to Debian's arm64 packages."""

import csv
import gzip
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "capture" / "xen_capture.py"

SET_ENTRY_COLUMNS = ["seq", "domid", "gfn", "nr", "mfn", "type", "type_name", "access",
                     "caller", "hypercall", "phase", "rc"]
COUNTER_COLUMNS = ["seq", "domid", "moment", "mappings_1g", "shattered_1g",
                   "mappings_2m", "shattered_2m", "mappings_4k"]

# (gfn, nr, type) of dom0's build in ../shared/xen-real/p2m_set_entry.csv.gz,
# in order: RAM (2 banks, ram_rw), then every device-tree `reg` range as
# mmio_direct_c (the 32 virtio-mmio transports, 8 to a page, one call each).
DOM0_BUILD = [
    (0x60000, 131072, 1),
    (0x80000, 131072, 1),
    (0x9020, 1, 5),
    *[(0xA000, 1, 5)] * 8,
    *[(0xA001, 1, 5)] * 8,
    *[(0xA002, 1, 5)] * 8,
    *[(0xA003, 1, 5)] * 8,
    (0x9030, 1, 5),
    (0x4010000, 65536, 5),
    (0x3EFF0, 16, 5),
    (0x10000, 192496, 5),
    (0x8000000, 134217728, 5),
    (0x9010, 1, 5),
    (0x0, 16384, 5),
    (0x4000, 16384, 5),
]
# dom0 after boot in ../shared/xen-real/p2m_counters.csv: the same in every run.
DOM0_BOOTED = {"mappings_1g": 512, "shattered_1g": 0, "mappings_2m": 703,
               "shattered_2m": 1, "mappings_4k": 193031}


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    if shutil.which("qemu-system-aarch64") is None:
        pytest.skip("qemu-system-aarch64 is not installed (Debian: apt-get install "
                    "qemu-system-arm); .ci/run installs it")
    out = tmp_path_factory.mktemp("xen-capture")
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], check=True, timeout=900)
    return out


def read_csv(path):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as f:
        r = csv.reader(f)
        header = next(r)
        return header, [dict(zip(header, row)) for row in r]


def num(s):
    return int(s, 0)


@pytest.mark.slow
def test_call_log_has_the_documented_columns(capture):
    header, rows = read_csv(capture / "p2m_set_entry.csv.gz")
    assert header == SET_ENTRY_COLUMNS
    assert len(rows) > 30000   # ~33,350: the domU's load is 4 calls per page in dom0
    seqs = [int(r["seq"]) for r in rows]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    for r in rows:
        assert r["gfn"].startswith("0x") and int(r["nr"]) > 0
        assert r["mfn"] == "INVALID" or r["mfn"].startswith("0x")
        assert int(r["type"]) in range(10) and r["rc"] == "0"
        assert r["phase"] in ("dom0-build", "dom0-run", "domU1-build", "domU1-run",
                              "domU1-destroy")
    assert {r["domid"] for r in rows} == {"0", "1"}


@pytest.mark.slow
def test_dom0_build_is_the_shared_captures(capture):
    _, rows = read_csv(capture / "p2m_set_entry.csv.gz")
    build = [r for r in rows if r["phase"] == "dom0-build"]
    assert len(build) == 43
    assert [(num(r["gfn"]), int(r["nr"]), int(r["type"])) for r in build] == DOM0_BUILD
    assert all(r["domid"] == "0" and r["gfn"] == r["mfn"] for r in build)  # 1:1


@pytest.mark.slow
def test_counters_have_every_dump_and_dom0_boot_is_exact(capture):
    header, rows = read_csv(capture / "p2m_counters.csv")
    assert header == COUNTER_COLUMNS
    assert [(r["domid"], r["moment"]) for r in rows] == [
        ("0", "dom0 booted"), ("0", "domU running"), ("1", "domU running"),
        ("0", "domU destroyed")]
    assert all(r["seq"] for r in rows)
    booted = rows[0]
    assert {k: int(booted[k]) for k in DOM0_BOOTED} == DOM0_BOOTED


@pytest.mark.slow
def test_validate_agrees_with_the_live_capture(capture, capsys):
    # The model replays the live run's own calls: every q dump it made must come out the same.
    from iommu_core.cli import main
    assert main(["validate", str(capture)]) == 0
    assert " counters the same" in capsys.readouterr().out

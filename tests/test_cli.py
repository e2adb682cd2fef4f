"""The `iommu-bench tables` job: a guest laid out as Xen does, mapped into every format."""

import json

import numpy as np
import pytest

from iommu_core.cli import main
from iommu_core.xen.domain import GUEST_RAM0, GUEST_RAM1_GFN
from iommu_core.xen.guestmap import H3_RAM_BANKS, MIB, guest_layout


def in_banks(pa, n):
    return any(base <= pa and pa + n * 4096 <= base + size for base, size in H3_RAM_BANKS)


@pytest.mark.parametrize("ram_mib, chunk_kib", [(64, 4), (2048, 2048), (2048, 1 << 20), (2944, 4)])
def test_guest_layout_covers_the_ram_from_board_banks(ram_mib, chunk_kib):
    lay = guest_layout(ram_mib * MIB, chunk_kib * 1024, seed=3)
    assert lay.pages * 4096 == ram_mib * MIB
    assert all(in_banks(int(p), int(n)) for p, n in zip(lay.pa, lay.npages))
    ends = lay.pa + lay.npages * 4096
    order = np.argsort(lay.pa)
    assert np.all(lay.pa[order][1:] >= ends[order][:-1])            # no machine page given twice
    ram0 = lay.iova < GUEST_RAM1_GFN * 4096
    assert int(lay.npages[ram0].sum()) == min(ram_mib * MIB // 4096, GUEST_RAM0[1])


def test_tables_job_prints_and_writes_one_row_per_table(tmp_path, capsys):
    out = tmp_path / "rows.jsonl"
    assert main(["tables", "--guest-mib", "256", "--chunk-kib", "4", "--json", str(out),
                 "--export", str(tmp_path / "img")]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["format"], r["leaf"]) for r in rows] == [
        (f, leaf) for f in ("ipmmu-s1-32", "ipmmu-s1-39", "p2m-s2-40", "p2m-s2-48") for leaf in ("auto", "4k")]
    for r in rows:
        assert r["mapped_pages"] == 256 * 256 and r["unreachable_pages"] == 0
        assert r["verified_samples"] > 0
        # 4 KiB host chunks leave no block: 64K pages need 128 level-3 tables whatever the leaf mode.
        assert r["tables_by_level"]["3"] == 128
    assert (tmp_path / "img" / "ipmmu-s1-32-auto.bin").exists()
    assert "ipmmu-s1-32" in capsys.readouterr().out


def test_superpage_host_chunks_give_blocks_and_smaller_tables(tmp_path):
    out = tmp_path / "rows.jsonl"
    main(["tables", "--guest-mib", "1024", "--chunk-kib", "2048", "--formats", "p2m-s2-40", "--json", str(out)])
    auto, pages = (json.loads(line) for line in out.read_text().splitlines())
    assert auto["tables_by_level"]["3"] == 0 and pages["tables_by_level"]["3"] == 512
    assert auto["table_bytes"] < pages["table_bytes"] / 100


@pytest.mark.parametrize("argv, fragment", [
    (["tables", "--guest-mib", "99999"], "does not fit"),
    (["tables", "--chunk-kib", "3"], "power of two"),
])
def test_bad_arguments_are_named(argv, fragment, capsys):
    assert main(argv) == 2
    assert fragment in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["tables", "--formats", "smmu"], ["tables", "--guest-mib", "-5"]])
def test_argparse_refuses_bad_values(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert "error" in capsys.readouterr().err


def test_image_lists_an_exported_table(tmp_path, capsys):
    main(["tables", "--guest-mib", "64", "--chunk-kib", "4", "--formats", "p2m-s2-40", "--leaf", "auto",
          "--export", str(tmp_path)])
    capsys.readouterr()
    assert main(["image", str(tmp_path / "p2m-s2-40-auto.bin"), "--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert "p2m-s2-40, stage 2, 40-bit input" in out and "16,384 pages" in out and "more (--limit)" in out
    assert main(["image", str(tmp_path / "missing")]) == 2
    assert "no such image" in capsys.readouterr().err


def test_boot_prints_a_row_per_domain_and_writes_records(tmp_path, capsys):
    out = tmp_path / "boot.jsonl"
    assert main(["boot", "--policy", "lazy", "--api", "blocks", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["domain"] for r in records] == ["dom0", "driver", "guest", "hotplug", "small"]
    assert all(r["policy"] == "lazy" and r["api"] == "blocks" and r["mismatches"] == 0 for r in records)
    assert all(r["domain"] in printed for r in records)


def test_boot_all_prints_one_summary_row_per_combination(capsys):
    assert main(["boot", "--policy", "all", "--api", "all"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum(1 for line in lines if line.split()[:1] in (["eager"], ["lazy"], ["declared"], ["shared"])) == 12


def test_boot_reports_an_impossible_combination(capsys):
    assert main(["boot", "--policy", "shared", "--api", "batched", "--p2m-format", "p2m-s2-48"]) == 0
    assert "not applicable" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["boot", "--policy", "sometimes", "--api", "batched"],
                                  ["boot", "--policy", "eager"]])
def test_boot_refuses_bad_arguments(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2


def test_boot_names_an_unknown_scenario(capsys):
    assert main(["boot", "--scenario", "moon", "--policy", "eager", "--api", "batched"]) == 2
    assert "no such scenario file" in capsys.readouterr().err


def test_trace_record_then_replay_gives_the_boot_records(tmp_path, capsys):
    trace = tmp_path / "t.parquet"
    assert main(["trace", "record", "small-h3", "-o", str(trace), "--policy", "lazy", "--api", "blocks"]) == 0
    assert main(["trace", "replay", str(trace), "--policy", "lazy", "--api", "blocks",
                 "--json", str(tmp_path / "replay.jsonl")]) == 0
    assert main(["boot", "--policy", "lazy", "--api", "blocks", "--json", str(tmp_path / "boot.jsonl")]) == 0
    from iommu_core.xen.host import WALL_FIELDS
    strip = lambda path: [{k: v for k, v in json.loads(line).items() if k not in WALL_FIELDS}      # noqa: E731
                          for line in path.read_text().splitlines()]
    assert strip(tmp_path / "replay.jsonl") == strip(tmp_path / "boot.jsonl")
    capsys.readouterr()
    (tmp_path / "bad.parquet").write_bytes(b"nope")
    assert main(["trace", "replay", str(tmp_path / "bad.parquet"), "--policy", "eager", "--api", "batched"]) == 2
    assert "not a readable Parquet trace" in capsys.readouterr().err

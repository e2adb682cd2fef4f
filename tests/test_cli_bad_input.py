"""Every entry point refuses bad input through the real command line: exit code 2, one line on stderr
naming the file or value, no traceback, and nothing written (no stray .tmp, no half output).

Each case makes its bad file in tmp_path and runs `iommu_core.cli.main` in-process, the way the
`iommu-bench` console script does (sys.exit(main(argv))).
"""

from __future__ import annotations

import json
import re
import socket
import sys
import threading
import time
from pathlib import Path

import fdt
import pyarrow.parquet as pq
import pytest

from iommu_core.cli import main
from iommu_core.store.results import MANIFEST_NAME, ResultsError, read_results
from iommu_core.scenarios.devicetree import board_to_dts
from iommu_core.xen.board import h3

REFERENCE = Path(__file__).parent.parent / "results" / "runs"
H3_DTS = board_to_dts(h3())
SMALL_SWEEP = "[sweep]\nname = 'tiny'\nscenarios = ['small-h3']\npolicies = ['eager']\napis = ['batched']\n"
SCENARIO = "[scenario]\nname = 'mine'\nboard = '{board}'\n\n[[domain]]\nname = 'g'\nkind = 'guest'\nram_mib = 64\n"


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory) -> Path:
    """One valid trace, recorded once for the cases that need one."""
    path = tmp_path_factory.mktemp("trace") / "ok.parquet"
    assert main(["trace", "record", "small-h3", "-o", str(path)]) == 0
    return path


def w(path: Path, content) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return str(path)


def scenario_with_tree(t: Path, name: str, tree) -> str:
    w(t / name, tree)
    return w(t / "s.toml", SCENARIO.format(board=name))


def dtb(version=17) -> bytes:
    return fdt.parse_dts(H3_DTS).to_dtb(version=version)


def cut_braces(text: str, n: int) -> str:
    return text.replace("};", "}", n)


def no_gt(text: str) -> str:
    return re.sub(r"(reg = <[^>]*)>", r"\1", text, count=1)


def run(t: Path, name: str, manifest) -> str:
    """A run folder with one foreign part and a manifest."""
    d = t / "runs" / name
    d.mkdir(parents=True)
    if manifest is not None:
        w(d / MANIFEST_NAME, manifest if isinstance(manifest, str) else json.dumps(manifest))
    return str(t / "runs")


def broken_part(t: Path) -> str:
    runs = run(t, "r1", None)
    w(t / "runs" / "r1" / "scenario=a" / "policy=b" / "api=c" / "p.parquet", b"PAR1 nope")
    return runs


def sweep_run(t: Path, recorded: str) -> str:
    """A run whose manifest records a sweep definition (as run_sweep writes it)."""
    return run(t, "r1", {"run_id": "r1", "sweep": "tiny", "status": "interrupted", "start": "x",
                         "sweep_definition": {"name": "tiny", "file": str(t / "orig.toml"), "sha256": "0" * 64,
                                              "toml": recorded}})


def empty_trace(t: Path, trace_file: Path) -> str:
    table = pq.read_table(trace_file)
    pq.write_table(table.slice(0, 0), t / "empty.parquet")
    return str(t / "empty.parquet")


def trace_v9(t: Path, trace_file: Path) -> str:
    table = pq.read_table(trace_file)
    table = table.replace_schema_metadata({**table.schema.metadata, b"schema_version": b"9"})
    pq.write_table(table, t / "v9.parquet")
    return str(t / "v9.parquet")


def image(t: Path, manifest, bin_bytes: bytes = b"\0" * 8192) -> str:
    w(t / "img.bin", bin_bytes)
    w(t / "img.json", manifest)
    return str(t / "img")


GOOD_IMAGE = json.dumps({"manifest_version": 1, "base": 0, "root": 0, "size": 4096, "format": "p2m-s2-40",
                         "stage": 2, "ia_bits": 40, "oa_bits": 40})
BIG_SWEEP = SMALL_SWEEP.replace("policies = ['eager']\napis = ['batched']\n", "") + \
    f"seeds = {list(range(1700))}\n"                       # 4 policies x 3 APIs x 1,700 seeds = 20,400 cells

# (id, argv builder (tmp_path, trace_file) -> argv, fragment of the one-line message)
CASES = [
    # tables
    ("tables-guest-mib-word", lambda t, tr: ["tables", "--guest-mib", "lots"], "'lots'"),
    ("tables-guest-mib-zero", lambda t, tr: ["tables", "--guest-mib", "0"], "'0'"),
    ("tables-guest-mib-huge", lambda t, tr: ["tables", "--guest-mib", "99999"], "does not fit"),
    ("tables-chunk-3", lambda t, tr: ["tables", "--chunk-kib", "3"], "power of two"),
    ("tables-format", lambda t, tr: ["tables", "--formats", "smmu"], "smmu"),
    ("tables-leaf", lambda t, tr: ["tables", "--leaf", "2m"], "'2m'"),
    ("tables-seed", lambda t, tr: ["tables", "--seed", "x"], "'x'"),
    ("tables-json-missing-folder", lambda t, tr: ["tables", "--guest-mib", "64", "--json", str(t / "no" / "r.jsonl")],
     "no folder"),
    ("tables-json-folder", lambda t, tr: ["tables", "--guest-mib", "64", "--json", str(t)], "a folder, not a file"),
    ("tables-export-file", lambda t, tr: ["tables", "--guest-mib", "64", "--export", w(t / "f.txt", "x")],
     "f.txt"),
    # boot and scenario files
    ("boot-policy", lambda t, tr: ["boot", "--policy", "sometimes", "--api", "batched"], "'sometimes'"),
    ("boot-api", lambda t, tr: ["boot", "--policy", "eager", "--api", "bulk"], "'bulk'"),
    ("boot-no-api", lambda t, tr: ["boot", "--policy", "eager"], "--api"),
    ("boot-seed-negative", lambda t, tr: ["boot", "--policy", "eager", "--api", "batched", "--seed", "-1"], "-1"),
    ("boot-unknown-scenario", lambda t, tr: ["boot", "--scenario", "moon", "--policy", "eager", "--api", "batched"],
     "moon: no such scenario file"),
    ("boot-scenario-folder", lambda t, tr: ["boot", "--scenario", str(t), "--policy", "eager", "--api", "batched"],
     "a directory, not a scenario file"),
    ("boot-scenario-binary", lambda t, tr: ["boot", "--scenario", w(t / "b.toml", bytes(range(256))), "--policy",
                                            "eager", "--api", "batched"], "b.toml: not a text file"),
    ("boot-scenario-not-toml", lambda t, tr: ["boot", "--scenario", w(t / "b.toml", "[scenario\n"), "--policy",
                                              "eager", "--api", "batched"], "b.toml: TOML"),
    ("boot-scenario-ram", lambda t, tr: ["boot", "--scenario", w(t / "s.toml", SCENARIO.format(board="h3").replace(
        "64", "-5")), "--policy", "eager", "--api", "batched"], "domain[0].ram_mib"),
    ("boot-scenario-board", lambda t, tr: ["boot", "--scenario", w(t / "s.toml", SCENARIO.format(board="moon")),
                                           "--policy", "eager", "--api", "batched"], "'moon'"),
    ("boot-scenario-key", lambda t, tr: ["boot", "--scenario", w(t / "s.toml", SCENARIO.format(board="h3") +
                                                                  "colour = 'red'\n"), "--policy", "eager",
                                         "--api", "batched"], "domain[0].colour"),
    ("dts-cut-in-half", lambda t, tr: ["boot", "--scenario", scenario_with_tree(t, "b.dts", H3_DTS[:len(H3_DTS) // 2]),
                                       "--policy", "eager", "--api", "batched"], "b.dts"),
    ("dts-cut-after-a-node", lambda t, tr: ["boot", "--scenario", scenario_with_tree(
        t, "b.dts", H3_DTS[:H3_DTS.index("};", H3_DTS.index("etheravb")) + 2]), "--policy", "eager", "--api",
        "batched"], "is the file cut short"),
    ("dts-three-braces", lambda t, tr: ["boot", "--scenario", scenario_with_tree(t, "b.dts", cut_braces(H3_DTS, 3)),
                                        "--policy", "eager", "--api", "batched"], "not followed by ';'"),
    ("dts-extra-brace", lambda t, tr: ["boot", "--scenario", scenario_with_tree(t, "b.dts", H3_DTS + "};\n"),
                                       "--policy", "eager", "--api", "batched"], "without a '{'"),
    ("dts-missing-gt", lambda t, tr: ["boot", "--scenario", scenario_with_tree(t, "b.dts", no_gt(H3_DTS)),
                                      "--policy", "eager", "--api", "batched"], "expected '>'"),
    ("dts-open-comment", lambda t, tr: ["boot", "--scenario", scenario_with_tree(t, "b.dts", H3_DTS + "/* oops"),
                                        "--policy", "eager", "--api", "batched"], "comment"),
    ("dts-open-string", lambda t, tr: ["boot", "--scenario", scenario_with_tree(
        t, "b.dts", H3_DTS.replace('"simple-bus";', '"simple-bus;', 1)), "--policy", "eager", "--api", "batched"],
        "string"),
    ("dts-include", lambda t, tr: ["boot", "--scenario", scenario_with_tree(t, "b.dts", '#include "x.h"\n' + H3_DTS),
                                   "--policy", "eager", "--api", "batched"], "#include"),
    ("dts-binary", lambda t, tr: ["boot", "--scenario", scenario_with_tree(t, "b.dts", b"\xff\xfe" * 50),
                                  "--policy", "eager", "--api", "batched"], "b.dts"),
    ("dts-missing", lambda t, tr: ["boot", "--scenario", w(t / "s.toml", SCENARIO.format(board="none.dts")),
                                   "--policy", "eager", "--api", "batched"], "none.dts"),
    ("dtb-truncated", lambda t, tr: ["boot", "--scenario", scenario_with_tree(t, "b.dtb", dtb()[:-100]),
                                     "--policy", "eager", "--api", "batched"], "truncated"),
    ("dtb-header-only", lambda t, tr: ["boot", "--scenario", scenario_with_tree(t, "b.dtb", dtb()[:40]),
                                       "--policy", "eager", "--api", "batched"], "b.dtb"),
    ("dtb-short", lambda t, tr: ["boot", "--scenario", scenario_with_tree(t, "b.dtb", dtb()[:20]),
                                 "--policy", "eager", "--api", "batched"], "header"),
    ("dtb-bad-magic", lambda t, tr: ["boot", "--scenario", scenario_with_tree(t, "b.dtb", b"\0" * 64),
                                     "--policy", "eager", "--api", "batched"], "magic"),
    ("dtb-struct-outside", lambda t, tr: ["boot", "--scenario", scenario_with_tree(
        t, "b.dtb", dtb()[:36] + (10**6).to_bytes(4, "big") + dtb()[40:]), "--policy", "eager", "--api", "batched"],
        "structure block"),
    ("boot-json-missing-folder", lambda t, tr: ["boot", "--policy", "eager", "--api", "batched", "--json",
                                                str(t / "no" / "b.jsonl")], "no folder"),
    ("boot-json-folder", lambda t, tr: ["boot", "--policy", "eager", "--api", "batched", "--json", str(t)],
     "a folder, not a file"),
    ("boot-fragmentation", lambda t, tr: ["boot", "--policy", "eager", "--api", "batched", "--fragmentation", "lots"],
     "'lots'"),
    # sweep files and the sweep's options (all refused before Ray starts)
    ("sweep-missing", lambda t, tr: ["sweep", str(t / "none.toml"), "--results", str(t / "runs")],
     "none.toml: no such sweep file"),
    ("sweep-folder", lambda t, tr: ["sweep", str(t), "--results", str(t / "runs")], "a directory, not a sweep file"),
    ("sweep-binary", lambda t, tr: ["sweep", w(t / "s.toml", bytes(range(256))), "--results", str(t / "runs")],
     "s.toml: not a text file"),
    ("sweep-not-toml", lambda t, tr: ["sweep", w(t / "s.toml", "[sweep\n"), "--results", str(t / "runs")],
     "s.toml: not valid TOML"),
    ("sweep-name-int", lambda t, tr: ["sweep", w(t / "s.toml", SMALL_SWEEP.replace("'tiny'", "5")), "--results",
                                      str(t / "runs")], "sweep.name: must be a non-empty string (got 5)"),
    ("sweep-no-table", lambda t, tr: ["sweep", w(t / "s.toml", "x = 1\n"), "--results", str(t / "runs")], "x: unknown table"),
    ("sweep-unknown-scenario", lambda t, tr: ["sweep", w(t / "s.toml", SMALL_SWEEP.replace("small-h3", "moon")),
                                              "--results", str(t / "runs")], "moon"),
    ("sweep-policy", lambda t, tr: ["sweep", w(t / "s.toml", SMALL_SWEEP.replace("'eager'", "'always'")),
                                    "--results", str(t / "runs")], "'always'"),
    ("sweep-key", lambda t, tr: ["sweep", w(t / "s.toml", SMALL_SWEEP + "speed = 3\n"), "--results", str(t / "runs")],
     "sweep.speed"),
    ("sweep-seed-negative", lambda t, tr: ["sweep", w(t / "s.toml", SMALL_SWEEP + "seeds = [-1]\n"), "--results",
                                           str(t / "runs")], "sweep.seeds"),
    ("sweep-seed-string", lambda t, tr: ["sweep", w(t / "s.toml", SMALL_SWEEP + "seeds = ['0']\n"), "--results",
                                         str(t / "runs")], "['0']"),
    ("sweep-check", lambda t, tr: ["sweep", w(t / "s.toml", SMALL_SWEEP + "check = 'yes'\n"), "--results",
                                   str(t / "runs")], "'yes'"),
    ("sweep-costs", lambda t, tr: ["sweep", w(t / "s.toml", SMALL_SWEEP + "[costs.x]\nwarp_ns = 1\n"), "--results",
                                   str(t / "runs")], "costs.x"),
    ("sweep-extra", lambda t, tr: ["sweep", w(t / "s.toml", SMALL_SWEEP + "[[extra]]\nformats = ['ipmmu-s1-16']\n"),
                                   "--results", str(t / "runs")], "'ipmmu-s1-16'"),
    ("sweep-too-many-cells", lambda t, tr: ["sweep", w(t / "s.toml", BIG_SWEEP), "--results", str(t / "runs")],
     "--max-cells 20400"),
    ("sweep-over-raised-limit", lambda t, tr: ["sweep", w(t / "s.toml", SMALL_SWEEP + "seeds = [0, 1, 2]\n"),
                                               "--max-cells", "2", "--results", str(t / "runs")], "--max-cells 3"),
    ("sweep-max-cells-zero", lambda t, tr: ["sweep", "--max-cells", "0"], "'0'"),
    ("sweep-workers-zero", lambda t, tr: ["sweep", "--workers", "0"], "'0'"),
    ("sweep-workers-word", lambda t, tr: ["sweep", "--workers", "two"], "'two'"),
    ("sweep-workers-hex", lambda t, tr: ["sweep", "--workers", "0x2"], "'0x2'"),
    ("sweep-object-store", lambda t, tr: ["sweep", "--object-store-mb", "-1"], "'-1'"),
    ("sweep-results-file", lambda t, tr: ["sweep", w(t / "s.toml", SMALL_SWEEP), "--results", w(t / "f.txt", "x")],
     "f.txt"),
    ("sweep-results-under-file", lambda t, tr: ["sweep", w(t / "s.toml", SMALL_SWEEP), "--results",
                                                str(Path(w(t / "f.txt", "x")) / "runs")], "f.txt"),
    ("resume-no-run", lambda t, tr: ["sweep", "--resume", "nope", "--results", str(t / "runs")], "'nope'"),
    ("resume-empty-id", lambda t, tr: ["sweep", "--resume", "", "--results", str(t / "runs")], "''"),
    ("resume-other-sweep-file", lambda t, tr: ["sweep", w(t / "other.toml", SMALL_SWEEP + "seeds = [7]\n"),
                                               "--resume", "r1", "--results", sweep_run(t, SMALL_SWEEP)],
     "other.toml differs"),
    ("resume-manifest-not-json", lambda t, tr: ["sweep", "--resume", "r1", "--results", run(t, "r1", "{oops")],
     MANIFEST_NAME),
    ("resume-manifest-list", lambda t, tr: ["sweep", "--resume", "r1", "--results", run(t, "r1", "[1, 2]")],
     "expected a JSON object"),
    ("resume-without-definition", lambda t, tr: ["sweep", "--resume", "r1", "--results",
                                                 run(t, "r1", {"sweep": "tiny"})], "give the sweep file"),
    ("resume-recorded-sweep-bad", lambda t, tr: ["sweep", "--resume", "r1", "--results", sweep_run(t, "[sweep\n")],
     "recorded sweep"),
    # report and compare
    ("report-empty-run", lambda t, tr: ["report", "", "--results", str(REFERENCE)], "''"),
    ("report-run-with-slash", lambda t, tr: ["report", "../runs", "--results", str(REFERENCE)], "'../runs'"),
    ("report-no-run", lambda t, tr: ["report", "nope", "--results", str(REFERENCE)], "'nope'"),
    ("report-no-results", lambda t, tr: ["report", "--results", str(t / "none")], "none"),
    ("report-results-file", lambda t, tr: ["report", "--results", w(t / "f.txt", "x")], "f.txt"),
    ("report-run-without-parts", lambda t, tr: ["report", "r1", "--results", run(t, "r1", None)], "r1: no runs"),
    ("report-unreadable-part", lambda t, tr: ["report", "r1", "--results", broken_part(t), "-o", str(t / "out")],
     "p.parquet"),
    ("compare-empty-run", lambda t, tr: ["compare", "", "reference", "--results", str(REFERENCE)], "''"),
    ("compare-no-run", lambda t, tr: ["compare", "reference", "nope", "--results", str(REFERENCE)], "'nope'"),
    # traces
    ("trace-record-scenario", lambda t, tr: ["trace", "record", "moon", "-o", str(t / "t.parquet")], "moon"),
    ("trace-record-to-folder", lambda t, tr: ["trace", "record", "small-h3", "-o", str(t)], "a folder, not a file"),
    ("trace-replay-missing", lambda t, tr: ["trace", "replay", str(t / "none.parquet"), "--policy", "eager", "--api",
                                            "batched"], "none.parquet: no such trace file"),
    ("trace-replay-not-parquet", lambda t, tr: ["trace", "replay", w(t / "t.parquet", b"nope"), "--policy", "eager",
                                                "--api", "batched"], "t.parquet"),
    ("trace-replay-empty", lambda t, tr: ["trace", "replay", empty_trace(t, tr), "--policy", "eager", "--api",
                                          "batched"], "empty.parquet: domain 0 has no step row"),
    ("trace-replay-version", lambda t, tr: ["trace", "replay", trace_v9(t, tr), "--policy", "eager", "--api",
                                            "batched"], "'9'"),
    ("trace-replay-json-folder", lambda t, tr: ["trace", "replay", str(tr), "--policy", "eager", "--api", "batched",
                                                "--json", str(t)], "a folder, not a file"),
    ("trace-replay-json-missing-folder", lambda t, tr: ["trace", "replay", str(tr), "--policy", "eager", "--api",
                                                        "batched", "--json", str(t / "no" / "r.jsonl")], "no folder"),
    # table images
    ("image-missing", lambda t, tr: ["image", str(t / "none")], "none"),
    ("image-manifest-not-json", lambda t, tr: ["image", image(t, "{not json")], "img.json"),
    ("image-manifest-list", lambda t, tr: ["image", image(t, "[1]")], "img.json"),
    ("image-manifest-key", lambda t, tr: ["image", image(t, json.dumps({"base": 0}))], "'format'"),
    ("image-manifest-stage", lambda t, tr: ["image", image(t, GOOD_IMAGE.replace('"stage": 2', '"stage": "two"'))],
     "img.json"),
    ("image-bin-short", lambda t, tr: ["image", image(t, GOOD_IMAGE, b"\0" * 100)], "img.bin"),
    ("image-bin-odd", lambda t, tr: ["image", image(t, GOOD_IMAGE, b"\0" * 8193)], "8193"),
    ("image-limit", lambda t, tr: ["image", "x", "--limit", "0"], "'0'"),
    ("no-verb", lambda t, tr: [], "COMMAND"),
    ("unknown-verb", lambda t, tr: ["launch"], "'launch'"),
]


def files_under(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def test_there_are_at_least_60_cases():
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("argv, fragment", [pytest.param(a, f, id=i) for i, a, f in CASES])
def test_bad_input_is_refused_in_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, trace_file, argv,
                                                              fragment):
    monkeypatch.chdir(tmp_path)                   # a default output path would land here, and be seen
    args = argv(tmp_path, trace_file)
    before = files_under(tmp_path)
    reference = files_under(REFERENCE)
    with pytest.raises(SystemExit) as e:
        sys.exit(main(args))                      # what the iommu-bench console script does
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("iommu-bench"), err
    assert fragment in lines[0]
    assert files_under(tmp_path) == before        # nothing written, no .tmp left
    assert files_under(REFERENCE) == reference


def test_an_unknown_scenario_is_named_once(capsys):
    assert main(["boot", "--scenario", "moon", "--policy", "eager", "--api", "batched"]) == 2
    assert capsys.readouterr().err.count("moon") == 1


def test_workers_with_a_leading_zero_is_decimal():
    from iommu_core.cli import build_parser
    assert build_parser().parse_args(["sweep", "--workers", "010"]).workers == 10


def test_trace_record_to_a_folder_leaves_no_tmp_beside_it(tmp_path):
    from iommu_core.store.traces import write_trace
    (tmp_path / "out").mkdir()
    with pytest.raises(OSError):
        write_trace(tmp_path / "out", [], h3(), [], {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("filters, fragment", [({"seed": "0"}, "seed='0': column 'seed' holds int64 values"),
                                               ({"seed": 1.5}, "seed=1.5"), ({"policy": 3}, "policy=3"),
                                               ({"destroyed": 1}, "destroyed=1")])
def test_read_results_refuses_a_filter_of_the_wrong_type(filters, fragment):
    with pytest.raises(ResultsError, match=re.escape(fragment)):
        read_results(REFERENCE, run="reference", **filters)
    assert read_results(REFERENCE, run="reference", seed=0, policy="lazy").num_rows > 0


def test_a_listener_that_is_not_ray_is_refused_within_10_s(tmp_path, capsys):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    accepted = []
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
    (tmp_path / "s.toml").write_text(SMALL_SWEEP)
    t = time.perf_counter()
    try:
        code = main(["sweep", str(tmp_path / "s.toml"), "--results", str(tmp_path / "runs"),
                     "--address", f"127.0.0.1:{server.getsockname()[1]}"])
    finally:
        server.close()
    assert time.perf_counter() - t < 10
    assert code == 2 and accepted                     # it connected, and the silence was refused
    err = capsys.readouterr().err
    assert "does not answer as Ray" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()

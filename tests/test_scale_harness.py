"""The scale harnesses' inputs: the grids and hosts they build are valid and of the size they claim."""

from pathlib import Path

from benchmarks import bighost, bigsweep
from iommu_core.scenarios.files import load_scenario
from iommu_core.sweep.grid import sweep_from_text


def test_the_big_grid_has_at_least_the_cells_asked_for_and_no_more_than_one_seed_over():
    for cells in (100, 10_000):
        sweep = sweep_from_text(bigsweep.grid(cells), "big.toml", max_cells=10**6)
        assert cells <= len(sweep.cells) < cells + 12
        assert {c.scenario for c in sweep.cells} == {"small-h3"}


def test_every_big_host_size_fits_the_server_board(tmp_path: Path):
    for domus in bighost.SIZES:                    # the loader refuses a mix that does not fit the board's RAM
        path = tmp_path / f"server-{domus}.toml"
        path.write_text(bighost.scenario(domus))
        assert len(load_scenario(str(path)).specs) == 1 + domus


def test_a_big_host_cell_boots_every_domain_under_lazy():
    r = bighost.cell(3, "lazy")
    assert (r["domains"], r["booted"]) == (4, 4) and r["p2m_calls"] > 0 and r["wall_s"] > 0

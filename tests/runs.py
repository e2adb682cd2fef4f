"""Runs made without Ray for the tests: run_cells + write_part, what each Ray task and the driver do."""

import json
from pathlib import Path

from iommu_core.store.results import MANIFEST_NAME, write_part
from iommu_core.sweep.grid import load_sweep
from iommu_core.sweep.runner import run_cells

REFERENCE = Path(__file__).resolve().parent.parent / "results" / "runs" / "reference"


def make_run(where: Path, text: str, run_id: str, change=None) -> Path:
    """A run folder under where/runs from a sweep file's text; `change` edits each row before writing."""
    (where / f"{run_id}.toml").write_text(text)
    sweep = load_sweep(where / f"{run_id}.toml")
    rows = run_cells(list(sweep.cells), sweep.costs, run_id)
    if change:
        rows = [change(dict(r)) for r in rows]
    run_dir = where / "runs" / run_id
    run_dir.mkdir(parents=True)
    write_part(run_dir, rows, "part-0", {"run_id": run_id, "sweep": sweep.name})
    (run_dir / MANIFEST_NAME).write_text(json.dumps({"run_id": run_id, "sweep": sweep.name, "start": run_id,
                                                     "sweep_file": str(where / f"{run_id}.toml"),
                                                     "wall_s": 10.0, "ray_start_s": 1.0, "workers": 1}))
    return run_dir

"""How a sweep shows its progress: quietly (tests, benchmarks) or as a tqdm bar on stderr.

The ETA is the runner's own: the mean wall time of the finished cells of each
scenario times the cells of that scenario still to run, over the workers. A
rate over cells would mislead, since the big hosts run first.
"""

from __future__ import annotations

import statistics
import sys
from collections import Counter


class Quiet:
    def __init__(self, total: int):
        pass

    def update(self, done: int, failed: int, eta_s: float) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


class Bar(Quiet):
    def __init__(self, total: int):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="cell", file=sys.stderr, dynamic_ncols=True,
                        bar_format="{desc}{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} cells [{elapsed}{postfix}]")
        self.bar.set_postfix_str("0 failed")

    def update(self, done: int, failed: int, eta_s: float) -> None:
        self.bar.set_postfix_str(f"{failed} failed, ETA {eta_s:.0f} s", refresh=False)
        self.bar.update(done - self.bar.n)

    def message(self, text: str) -> None:
        self.bar.write(text, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


class Eta:
    """Seconds left: per scenario, the mean wall time of its finished cells times its cells left, over
    the workers (scenarios not seen yet count at the mean of all finished cells)."""

    def __init__(self, cells, parallel: int):
        self.scenario_of = {c.key: c.scenario for c in cells}
        self.left = Counter(self.scenario_of.values())
        self.spent: dict[str, list[float]] = {}
        self.parallel = parallel

    def after(self, rows: list[dict]) -> float:
        for cell, wall in {r["cell"]: r["cell_wall_s"] or 0.0 for r in rows}.items():
            scenario = self.scenario_of[cell]
            self.spent.setdefault(scenario, []).append(wall)
            self.left[scenario] -= 1
        overall = statistics.fmean(w for walls in self.spent.values() for w in walls)
        return sum(n * statistics.fmean(self.spent.get(s, [overall])) for s, n in self.left.items()) / self.parallel

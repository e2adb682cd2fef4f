"""How a sweep shows its progress: quietly (tests, benchmarks), as a tqdm bar on a terminal, or as
plain lines in a log or CI (a bar redrawn hundreds of times is one unreadable line there).

The ETA is the runner's own: the mean wall time of the finished cells of each
scenario times the cells of that scenario still to run, over the workers. A
rate over cells would mislead, since the big hosts run first.
"""

from __future__ import annotations

import sys
import time
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


def Bar(total: int, stream=None):
    """The progress the command line shows on stderr: a bar updated in place on a terminal, else Lines."""
    stream = stream or sys.stderr
    isatty = getattr(stream, "isatty", None)
    return Terminal(total) if isatty and isatty() else Lines(total, stream)


class Terminal(Quiet):
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


class Lines(Quiet):
    """One plain line per step of progress: when `every_frac` more of the cells are done, or `every_s`
    seconds have passed since the last line, whichever comes first (so at most 1 / every_frac lines
    plus one per every_s seconds), and one at the end."""

    def __init__(self, total: int, stream=None, every_s: float = 10.0, every_frac: float = 0.05,
                 clock=time.monotonic):
        self.total, self.stream, self.every_s, self.clock = total, stream or sys.stderr, every_s, clock
        self.step = max(1, round(total * every_frac))
        self.t0 = self.last_t = clock()
        self.last_done, self.state = 0, (0, 0, None)

    def _line(self) -> None:
        done, failed, eta_s = self.state
        pct = 100 * done / self.total if self.total else 100.0
        eta = "-" if eta_s is None else f"{eta_s:.0f} s"
        print(f"sweep: {done}/{self.total} cells ({pct:.0f} %), {failed} failed, ETA {eta}, "
              f"{self.clock() - self.t0:.0f} s elapsed", file=self.stream, flush=True)
        self.last_done, self.last_t = done, self.clock()

    def update(self, done: int, failed: int, eta_s: float) -> None:
        self.state = (done, failed, eta_s)
        if done - self.last_done >= self.step or self.clock() - self.last_t >= self.every_s:
            self._line()

    def message(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.state[0] != self.last_done:
            self._line()


class Eta:
    """Seconds left: per scenario, the mean wall time of its finished cells times its cells left, over
    the workers (scenarios not seen yet count at the mean of all finished cells)."""

    def __init__(self, cells, parallel: int):
        self.scenario_of = {c.key: c.scenario for c in cells}
        self.left = Counter(self.scenario_of.values())
        self.spent: dict[str, list[float]] = {}         # scenario -> [cells finished, their seconds]
        self.parallel = parallel

    def after(self, rows: list[dict]) -> float:
        for cell, wall in {r["cell"]: r["cell_wall_s"] or 0.0 for r in rows}.items():
            scenario = self.scenario_of[cell]
            done = self.spent.setdefault(scenario, [0, 0.0])
            done[0] += 1
            done[1] += wall
            self.left[scenario] -= 1
        # running sums, so a landing costs the same at the 10,000th cell as at the first
        cells, secs = sum(n for n, _ in self.spent.values()), sum(t for _, t in self.spent.values())
        overall = secs / cells if cells else 0.0
        return sum(n * (self.spent[s][1] / self.spent[s][0] if s in self.spent else overall)
                   for s, n in self.left.items()) / self.parallel

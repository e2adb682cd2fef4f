"""The sweep's progress: a bar in place on a terminal, plain lines at a bounded rate in a log or CI."""

import io
import re

from iommu_core.sweep.progress import Bar, Lines, Terminal


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class TTY(io.StringIO):
    def isatty(self):
        return True


def test_the_bar_is_tqdm_on_a_terminal_and_lines_elsewhere():
    assert isinstance(Bar(10, stream=TTY()), Terminal)
    assert isinstance(Bar(10, stream=io.StringIO()), Lines)


def test_in_a_log_progress_is_a_line_every_5_percent_at_most_with_done_failed_and_eta():
    out, clock = io.StringIO(), Clock()
    p = Lines(240, out, clock=clock)
    for done in range(1, 241):                      # a cell every 0.05 s: the 5 % steps come first
        clock.t += 0.05
        p.update(done, done // 100, eta_s=(240 - done) * 0.05)
    p.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert 18 <= len(lines) <= 21, lines
    for line in lines:
        assert re.fullmatch(r"sweep: \d+/240 cells \(\d+ %\), \d+ failed, ETA \d+ s, \d+ s elapsed", line), line
    assert lines[0].startswith("sweep: 12/240 cells (5 %)")
    assert lines[-1] == "sweep: 240/240 cells (100 %), 2 failed, ETA 0 s, 12 s elapsed"


def test_in_a_log_slow_cells_get_a_line_every_10_seconds():
    out, clock = io.StringIO(), Clock()
    p = Lines(1000, out, clock=clock)
    for done in range(1, 32):                       # one cell every 4 s: 31 cells are only 3 %
        clock.t += 4
        p.update(done, 0, eta_s=4000.0)
    lines = out.getvalue().splitlines()
    assert len(lines) == 10 and lines[0].startswith("sweep: 3/1000 cells (0 %)"), lines
    p.close()                                       # the last cell had no line yet: the end gets one
    assert out.getvalue().splitlines()[-1].startswith("sweep: 31/1000 cells (3 %)")
    p.close()                                       # nothing new: no second final line
    assert len(out.getvalue().splitlines()) == 11


def test_a_message_is_its_own_line():
    out = io.StringIO()
    p = Lines(4, out)
    p.message("resuming r1: 2 cells have results, 2 to run")
    assert out.getvalue() == "resuming r1: 2 cells have results, 2 to run\n"

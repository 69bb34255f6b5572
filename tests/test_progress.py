"""Progress lines where no bar is drawn (logs, CI, `make demo | tee`): the figures a bar
would show, the ETA included, on plain lines."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from commfor_fast import progress as progress_module
from commfor_fast.progress import Progress


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(progress_module, "time", SimpleNamespace(monotonic=clock))  # this module's clock only
    return clock


def test_a_caller_line_gets_the_eta_at_the_rate_so_far(clock: Clock) -> None:
    progress = Progress(10, "train", unit="itr", every_s=None)
    assert not progress.live  # stderr is not a terminal under pytest
    line = "itr 0/10 | loss 0.6931"
    assert progress.with_eta(line) == line  # no rate yet: nothing to estimate
    clock.now += 2.0
    progress.update(4)  # 2 itr/s, 6 to go
    assert progress.eta() == "0:00:03"
    assert progress.with_eta("itr 4/10 | loss 0.5") == "itr 4/10 | loss 0.5 | ETA 0:00:03"
    assert progress.line() == "train: 4/10 itr (40%), 2.0 itr/s, ETA 0:00:03"


def test_a_resumed_run_estimates_from_its_own_rate(clock: Clock) -> None:
    progress = Progress(7300, "train", unit="itr", every_s=None, initial=100)  # 100 done before the resume
    clock.now += 10.0
    progress.update(100)  # 10 itr/s since the resume, 7100 to go
    assert progress.with_eta("itr 200/7300") == "itr 200/7300 | ETA 0:11:50"


def test_no_eta_without_a_total(clock: Clock) -> None:
    progress = Progress(None, "scan", every_s=None)
    clock.now += 1.0
    progress.update(5)
    assert progress.eta() is None and progress.with_eta("scanned 5") == "scanned 5"

"""The demos' progress bars redraw ten times a second on a terminal and every LOG_INTERVAL_S seconds in a log."""

from __future__ import annotations

import io
import sys

import pytest

from coupler.demos import progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("stream, interval", [(io.StringIO(), progress.LOG_INTERVAL_S), (_Terminal(), 0.1)])
def test_redraw_interval_follows_the_output(monkeypatch: pytest.MonkeyPatch, stream: io.StringIO, interval: float) -> None:
    monkeypatch.setattr(sys, "stdout", stream)
    bar = progress.progress_bar(total=100, desc="runs")
    try:
        assert bar.mininterval == interval
        for i in range(1, 101):  # polled counts, with a postfix, as the demos draw them
            progress.advance(bar, i, loss=f"{1 / i:.1e}")
    finally:
        bar.close()
    text = stream.getvalue()
    assert "runs" in text and "100/100" in text and "loss=1.0e-02" in text  # the final state is always written
    if interval == progress.LOG_INTERVAL_S:
        # 100 quick updates in a log: the first draw and the final one, not a line per update
        assert text.count("runs") <= 3

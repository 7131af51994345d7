"""BusyMeter: the share of a loop's span spent in its work, against the sum of generated intervals."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coupler.actors.busy import BusyMeter

# (gap before, length) pairs: any loop's alternation of waiting and working
gaps_and_lengths = st.lists(
    st.tuples(st.floats(0, 10, allow_nan=False), st.floats(0, 10, allow_nan=False)), min_size=1, max_size=50
)


@given(gaps_and_lengths, st.floats(0, 1e6, allow_nan=False))
def test_share_is_work_over_span(pairs: list[tuple[float, float]], t0: float) -> None:
    meter, t, busy = BusyMeter(), t0, 0.0
    for gap, length in pairs:
        start = t + gap
        meter.add(start, start + length)
        t, busy = start + length, busy + length
    first = t0 + pairs[0][0]
    span = t - first
    assert meter.intervals == len(pairs)
    assert math.isclose(meter.busy_s, busy, rel_tol=1e-9, abs_tol=1e-6)
    assert math.isclose(meter.span_s, span, rel_tol=1e-9, abs_tol=1e-6)
    share = meter.share()
    assert share is not None and 0.0 <= share <= 1.0
    if span > 1e-3:
        assert math.isclose(share, min(1.0, busy / span), rel_tol=1e-6, abs_tol=1e-6)


def test_known_intervals() -> None:
    meter = BusyMeter()
    assert meter.share() is None and meter.span_s == 0.0
    meter.add(10.0, 13.0)  # 3 s of work
    meter.add(14.0, 15.0)  # 1 s idle, 1 s of work
    meter.add(19.0, 20.0)  # 4 s idle, 1 s of work
    assert meter.busy_s == 5.0 and meter.span_s == 10.0 and meter.share() == 0.5


def test_zero_span_is_fully_busy() -> None:
    meter = BusyMeter()
    meter.add(1.0, 1.0)
    assert meter.share() == 1.0


@pytest.mark.parametrize("first, second, message", [
    ((0.0, 2.0), (1.0, 3.0), "must not overlap"),
    ((0.0, 1.0), (3.0, 2.0), "must end after it starts"),
])
def test_bad_intervals_are_refused(first: tuple[float, float], second: tuple[float, float], message: str) -> None:
    meter = BusyMeter()
    meter.add(*first)
    with pytest.raises(ValueError, match=message):
        meter.add(*second)
    assert meter.intervals == 1  # a refused interval changes nothing

"""An actor host's run loop alone: steps, requests at step boundaries, pause, stop and ends, without Dask."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Callable

import pytest

from coupler.actors.run_loop import RunLoop


class _Body:
    """Counts its steps; ends after ``n``, or raises at step ``fail_at``."""

    def __init__(self, n: int, period: float = 0.0, fail_at: int = -1) -> None:
        self.n, self.period, self.fail_at = n, period, fail_at
        self.i, self.torn_down = 0, False

    def setup(self) -> None:
        pass

    def step(self) -> bool:
        if self.i == self.fail_at:
            raise RuntimeError("boom")
        if self.i >= self.n:
            return False
        time.sleep(self.period)
        self.i += 1
        return True

    def teardown(self) -> None:
        self.torn_down = True


def _loop(body: _Body) -> tuple[RunLoop, list[tuple[str, Any, str, int]], list[str]]:
    served: list[tuple[str, Any, str, int]] = []
    ends: list[str] = []

    def serve(kind: str, arg: Any) -> int:
        served.append((kind, arg, threading.current_thread().name, body.i))
        return body.i

    loop = RunLoop("a", body, serve, lambda: ends.append("finished"), lambda: ends.append("released"))
    return loop, served, ends


def _until(ready: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_loop_runs_its_steps_to_the_end_and_releases_once() -> None:
    body = _Body(5)
    loop, _, ends = _loop(body)
    loop.start()
    loop.join(10)
    assert (loop.record.state, loop.record.steps, body.torn_down) == ("finished", 5, True)
    assert ends == ["finished", "released"] and loop.record.stopped_at >= loop.record.started_at > 0


def test_a_request_is_served_by_the_loop_thread_between_two_steps() -> None:
    body = _Body(10_000, period=0.001)
    loop, served, _ = _loop(body)
    loop.start()
    _until(lambda: body.i > 3)
    answer = asyncio.run(loop.ask("checkpoint", "x", 10))
    assert served == [("checkpoint", "x", "coupler-actor-a", answer)]  # the loop's thread, at a boundary
    assert loop.request_stop() is False
    loop.join(10)
    assert loop.record.state == "stopped"


def test_a_request_to_a_loop_that_never_started_is_served_at_once() -> None:
    loop, served, ends = _loop(_Body(1))
    assert asyncio.run(loop.ask("retire", None, 1)) == 0 and served[0][2] != "coupler-actor-a"
    assert loop.request_stop() is True and loop.record.state == "stopped" and ends == []  # the host releases


def test_a_paused_loop_parks_serves_requests_and_goes_on_when_resumed() -> None:
    body = _Body(10_000, period=0.001)
    loop, served, _ = _loop(body)
    loop.pause()
    loop.start()
    assert loop.record.state == "paused"
    asyncio.run(loop.ask("checkpoint", None, 10))
    assert body.i == 0 and served[0][3] == 0  # served while parked, before any step
    loop.resume()
    _until(lambda: body.i > 3)
    loop.request_stop()
    loop.join(10)


def test_a_step_that_raises_fails_the_loop_with_its_traceback_and_teardown_runs() -> None:
    body = _Body(10, fail_at=2)
    loop, _, ends = _loop(body)
    loop.start()
    loop.join(10)
    assert loop.record.state == "failed" and "RuntimeError: boom" in loop.record.error
    assert body.torn_down and ends == ["released"]


def test_a_request_that_finds_no_boundary_in_time_says_so() -> None:
    body = _Body(1, period=3.0)  # one long step
    loop, _, _ = _loop(body)
    loop.start()
    _until(lambda: loop.record.state == "running")
    time.sleep(0.1)
    with pytest.raises(TimeoutError, match=r"actor 'a' did not reach a step boundary within 0.2 s for checkpoint"):
        asyncio.run(loop.ask("checkpoint", None, 0.2))
    loop.join(10)

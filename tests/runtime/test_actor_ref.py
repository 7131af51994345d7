"""An ``ActorRef`` call's own timeout bounds its wait for a move or a restart.

Calls wait while the supervisor moves or restarts the actor (``move_timeout``,
600 s by default). ``stop(timeout)``, ``checkpoint(timeout)`` and
``wait(timeout)`` said "up to ``timeout`` s" and could wait ``move_timeout``
first. Stand-in proxies here record what the instance was asked; no cluster.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from coupler.runtime.control.actor_ref import ActorRef

RUNNING = {"name": "a", "state": "running", "steps": 3}
STOPPED = {"name": "a", "state": "stopped", "steps": 3}


class _Done:
    def __init__(self, value: Any) -> None:
        self.value = value

    def result(self, timeout: float | None = None) -> Any:
        return self.value


class _Proxy:
    """An instance that answers at once and records the time limits it was given."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, float]] = []

    def stop(self, timeout: float) -> _Done:
        self.asked.append(("stop", timeout))
        return _Done(STOPPED)

    def checkpoint(self, timeout: float) -> _Done:
        self.asked.append(("checkpoint", timeout))
        return _Done({"state": {}})

    def status(self) -> _Done:
        return _Done(RUNNING)


@pytest.mark.parametrize("call", ["stop", "checkpoint", "wait"])
@pytest.mark.parametrize("timeout", [0.2, 0.5])
def test_a_call_with_a_timeout_waits_no_longer_for_a_move_that_does_not_end(call: str, timeout: float) -> None:
    ref = ActorRef("a", _Proxy(), move_timeout=600)  # type: ignore[arg-type]
    ref.begin_move()
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        getattr(ref, call)(timeout)
    took = time.monotonic() - t0
    # Bounded by the call's timeout (plus a poll of wait()), far from move_timeout's 600 s.
    assert timeout <= took < timeout + 5, took


@pytest.mark.parametrize("call", ["stop", "checkpoint"])
def test_the_instance_gets_the_time_left_after_the_move(call: str) -> None:
    proxy, successor = _Proxy(), _Proxy()
    ref = ActorRef("a", proxy, move_timeout=600)  # type: ignore[arg-type]
    ref.begin_move()
    threading.Timer(0.3, ref.rebind, (successor,)).start()
    getattr(ref, call)(2.0)
    assert proxy.asked == []  # the old instance was never asked
    ((what, given),) = successor.asked
    assert what == call and 0 <= given <= 1.7 + 0.05, given  # 2 s less the move's 0.3 s (and scheduling)


def test_without_a_move_the_instance_gets_the_whole_timeout() -> None:
    proxy = _Proxy()
    ref = ActorRef("a", proxy, move_timeout=600)  # type: ignore[arg-type]
    assert ref.stop(7.0).state == "stopped"
    ((what, given),) = proxy.asked
    assert what == "stop" and 6.9 < given <= 7.0


def test_move_timeout_still_bounds_a_call_with_a_longer_timeout() -> None:
    ref = ActorRef("a", _Proxy(), move_timeout=0.2)  # type: ignore[arg-type]
    ref.begin_move()
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="still being moved or restarted after 0.2 s"):
        ref.checkpoint(60)
    assert time.monotonic() - t0 < 5


def test_no_timeout_lets_the_instance_wait_as_long_as_it_takes() -> None:
    proxy = _Proxy()
    ref = ActorRef("a", proxy, move_timeout=600)  # type: ignore[arg-type]
    ref.checkpoint(None)  # type: ignore[arg-type]
    assert proxy.asked == [("checkpoint", None)]


def test_a_timeout_longer_than_move_timeout_is_the_instances_whole() -> None:
    # move_timeout bounds the wait for a move only, not the instance's own wait (stop(1200) got 600 s).
    proxy = _Proxy()
    ref = ActorRef("a", proxy, move_timeout=5)  # type: ignore[arg-type]
    ref.stop(1200.0)
    ((_, given),) = proxy.asked
    assert 1199 < given <= 1200

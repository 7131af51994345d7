"""The checkpoint keeper's periodic cycle alone: asked in one poll, collected in a later one, never waited for.

The actor is a stand-in proxy whose calls return futures the test completes
(Dask's actor futures have the same ``done()`` and ``result()``); the real
thing is in tests/runtime/test_periodic_checkpoints.py.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from coupler.runtime.control.actor_ref import ActorRef
from coupler.runtime.control.checkpoints import CheckpointError
from coupler.runtime.control.keeping import CheckpointKeeper


class _Proxy:
    """An actor's proxy whose checkpoint and commit calls stay pending until the test answers them."""

    def __init__(self) -> None:
        self.asked: list[Future[Any]] = []
        self.commits: list[tuple[dict[str, Any], int | None]] = []

    def checkpoint(self, timeout: float) -> Future[Any]:
        self.asked.append(Future())
        return self.asked[-1]

    def commit(self, delivered: dict[str, Any], takes: int | None, outputs: dict[str, Any] | None = None) -> Future[Any]:
        self.commits.append((delivered, takes))
        done: Future[Any] = Future()
        done.set_result(None)
        return done


def _ck(steps: int, state: str = "running") -> dict[str, Any]:
    return {"status": {"state": state, "steps": steps}, "delivered": {"inp": {"p": steps}}, "takes": 0}


def _keeper() -> tuple[CheckpointKeeper, ActorRef, _Proxy, list[tuple[str, str, str]], list[float]]:
    now = [0.0]
    failed: list[tuple[str, str, str]] = []
    keeper = CheckpointKeeper(None, lambda: now[0], lambda *a: failed.append(a))
    proxy = _Proxy()
    ref = ActorRef("a", proxy)  # type: ignore[arg-type]
    keeper.begin(ref)
    return keeper, ref, proxy, failed, now


def test_a_periodic_checkpoint_is_asked_then_collected_and_committed_on_later_polls() -> None:
    keeper, ref, proxy, failed, now = _keeper()
    keeper.periodic(ref, "w", 10.0)
    assert proxy.asked == []  # not due yet
    now[0] = 10.0
    keeper.periodic(ref, "w", 10.0)
    assert len(proxy.asked) == 1 and keeper.held(ref) is None  # asked; nothing waited for
    now[0] = 25.0
    keeper.periodic(ref, "w", 10.0)
    assert len(proxy.asked) == 1  # one cycle at a time, however late
    proxy.asked[0].set_result(_ck(7))
    keeper.periodic(ref, "w", 10.0)
    assert keeper.held(ref) == _ck(7) and proxy.commits == [({"inp": {"p": 7}}, 0)]
    assert failed == []


def test_an_answer_that_comes_after_a_newer_checkpoint_was_held_is_dropped() -> None:
    """Held over the newer one, it would restart the actor from before what the newer one committed."""
    keeper, ref, proxy, failed, now = _keeper()
    now[0] = 10.0
    keeper.periodic(ref, "w", 10.0)
    keeper.hold_final(ref, _ck(9, "paused"))  # a hand-over meanwhile
    proxy.asked[0].set_result(_ck(8))
    keeper.periodic(ref, "w", 10.0)
    assert keeper.held(ref) == _ck(9, "paused") and proxy.commits == []


def test_a_failed_checkpoint_is_reported_and_tried_again_at_the_next_interval() -> None:
    keeper, ref, proxy, failed, now = _keeper()
    now[0] = 10.0
    keeper.periodic(ref, "w", 10.0)
    proxy.asked[0].set_exception(TimeoutError("no step boundary"))
    now[0] = 11.0
    keeper.periodic(ref, "w", 10.0)
    assert failed == [("a", "w", "TimeoutError('no step boundary')")] and len(proxy.asked) == 1
    now[0] = 20.0
    keeper.periodic(ref, "w", 10.0)
    assert len(proxy.asked) == 2


def test_an_abandoned_cycle_is_never_collected() -> None:
    keeper, ref, proxy, failed, now = _keeper()
    now[0] = 10.0
    keeper.periodic(ref, "w", 10.0)
    keeper.abandon(ref)  # its instance is replaced
    proxy.asked[0].set_result(_ck(3))
    keeper.periodic(ref, "w", 10.0)
    assert keeper.held(ref) is None and failed == []


class _FailingStore:
    """A checkpoint store whose writes fail (a full disk, a lost mount)."""

    def save(self, name: str, ck: dict[str, Any]) -> None:
        raise CheckpointError(f"cannot write the checkpoint of {name!r}: no space left")


def test_a_checkpoint_the_store_could_not_write_is_held_but_not_committed() -> None:
    """Producers may forget messages only once the checkpoint covering them is stored: a run resumed
    from the store starts from the older checkpoint there and needs them."""
    keeper, ref, proxy, failed, now = _keeper()
    keeper.store = _FailingStore()  # type: ignore[assignment]
    now[0] = 10.0
    keeper.periodic(ref, "w", 10.0)
    proxy.asked[0].set_result(_ck(7))
    keeper.periodic(ref, "w", 10.0)
    assert keeper.held(ref) == _ck(7)  # a restart in this run still gets it
    assert proxy.commits == [] and len(failed) == 1 and "no space left" in failed[0][2]

"""The checkpoint keeper's periodic cycle alone: asked in one poll, collected in a later one, never waited for.

The actor is a stand-in proxy whose calls return futures the test completes
(Dask's actor futures have the same ``done()`` and ``result()``); the real
thing is in tests/runtime/test_periodic_checkpoints.py.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


def test_without_a_store_a_checkpoint_that_a_store_could_not_hold_is_named_once(caplog: pytest.LogCaptureFixture) -> None:
    keeper, ref, _, _, _ = _keeper()
    bad = {**_ck(1), "state": {"w": [1.0, {"opt": object()}]}}
    with caplog.at_level("WARNING", logger="coupler.runtime.control.keeping"):
        keeper.hold_final(ref, bad)
        keeper.hold_final(ref, bad)  # a state's structure stays: said once per actor
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "actor 'a': its checkpoint is not plain data" in said[0] and "got object at state/w/1/opt" in said[0]
    assert keeper.held(ref) is bad  # kept in memory all the same
    caplog.clear()
    other = ActorRef("b", _Proxy())  # type: ignore[arg-type]
    with caplog.at_level("WARNING", logger="coupler.runtime.control.keeping"):
        keeper.begin(other, {**_ck(1), "state": {"w": [1.0, 2.0]}})
    assert not caplog.records


def test_an_encoding_error_says_where_and_for_a_jax_array_what_to_do() -> None:
    import jax.numpy as jnp
    import numpy as np

    from coupler.runtime.control.checkpoints import encode

    with pytest.raises(TypeError, match=r"got ArrayImpl at state/w \(a JAX array: np.asarray\(x\) or jax.device_get\(x\) in state_dict\)"):
        encode({"state": {"i": 3, "w": jnp.zeros(2)}})
    with pytest.raises(TypeError, match="got dtype object at 1/0"):
        encode({1: [np.zeros(2, object)]})
    with pytest.raises(TypeError, match="got set at the top"):
        encode({1, 2})


def _not_plain() -> Any:
    import collections

    import numpy as np

    return st.sampled_from([object(), {1, 2}, collections.OrderedDict(a=1), np.zeros(2, object), collections.UserList([1])])


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_the_walk_finds_a_value_exactly_when_encoding_refuses_it(data: st.DataObject) -> None:
    # The keeper warns from the walk (no copy), a store refuses by encoding: they must agree.
    import numpy as np

    from coupler.runtime.control.checkpoints import encode, first_not_plain

    plain = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(max_size=3) | st.binary(max_size=3) \
        | st.builds(np.zeros, st.integers(0, 3))
    leaves = plain | _not_plain() if data.draw(st.booleans()) else plain
    tree = data.draw(st.recursive(leaves, lambda kids: st.lists(kids, max_size=3) | st.tuples(kids, kids)
                                  | st.dictionaries(st.text(max_size=2), kids, max_size=3), max_leaves=8))
    found = first_not_plain(tree)
    try:
        encode(tree)
    except TypeError as e:
        assert found is not None and f"at {found[0] or 'the top'}" in str(e)
    else:
        assert found is None

"""The broadcast send's passes over a route that changes under them (runtime/dataplane/sender.py).

Sans-IO: a stand-in dispatch records what each consumer was handed and changes
the route while it delivers, as the worker's loop does when the broker pushes a
new table. An outside attack found a broadcast ``Queue`` losing one message when
a lost consumer's successor attached while a send delivered to the others.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from coupler.runtime.control.departure import Departure, Gone
from coupler.runtime.control.routing_table import ConsumerRef, RoutingTable
from coupler.runtime.dataplane.routing import Route
from coupler.runtime.dataplane.sender import Sender
from coupler.runtime.dataplane.settings import DeliveryConfig
from coupler.runtime.message import Spec
from coupler.runtime.policies import Latest, Policy, Queue

SPEC = Spec.of({"x": np.zeros(2, np.float32)})
LEAVES = [np.zeros(2, np.float32)]


def _ref(cid: str) -> ConsumerRef:
    return ConsumerRef(cid, f"tcp://w-{cid}", f"tcp://s-{cid}", "h")


class _Outboxes:
    def owes(self, channel: str, cid: str) -> bool:
        return False


class _Dispatch:
    """Hands messages out and runs ``during`` (a route change) at the ``at``-th hand-out."""

    def __init__(self, during: Callable[[], None] | None = None, at: int = 0) -> None:
        self.outboxes, self.handed, self.kept = _Outboxes(), [], []
        self.during, self.at = during, at

    def deliver(self, route: Route, spec: Spec, c: ConsumerRef, header: dict, leaves: list, deadline: Any, cancel: Any) -> None:
        self.handed.append(c.cid)
        if self.during is not None and len(self.handed) == self.at:
            self.during()

    def keep_for_absent(self, route: Route, spec: Spec, header: dict, leaves: list, absent: set[str]) -> None:
        self.kept.extend(sorted(absent))


def _send(route: Route, dispatch: _Dispatch) -> None:
    sender = Sender(dispatch, {}, {}, DeliveryConfig(), register=None, fix_spec=None)  # type: ignore[arg-type]
    sender._to_all(route, SPEC, {"seq": 7, "source": "p"}, LEAVES, None, None, None)


def _route(policy: Policy, present: list[str], lost: list[str]) -> Route:
    table = RoutingTable("c", 1, policy, SPEC, consumers=tuple(map(_ref, present)),
                         gone=tuple(Gone(cid, Departure.LOST) for cid in lost))  # fmt: skip
    route = Route("c", table)
    route.lost_since.update({cid: time.monotonic() for cid in lost})
    return route


def _back(route: Route, cid: str) -> Callable[[], None]:
    """The broker's table after ``cid``'s successor attached."""
    def apply() -> None:
        t = route.table
        route.table = RoutingTable(t.channel, t.version + 1, t.policy, t.spec, consumers=(*t.consumers, _ref(cid)),
                                   gone=tuple(g for g in t.gone if g.consumer != cid))  # fmt: skip
    return apply


@settings(max_examples=60, deadline=None)
@given(present=st.integers(1, 4), lost=st.integers(1, 3), at=st.integers(1, 4), returns=st.integers(0, 3))
def test_every_consumer_of_a_broadcast_queue_gets_the_message_or_has_it_kept_whenever_a_successor_attaches(
    present: int, lost: int, at: int, returns: int,
) -> None:
    here, away = [f"a{i}" for i in range(present)], [f"l{i}" for i in range(lost)]
    route = _route(Queue(4), here, away)
    back = away[: min(returns, lost)]
    changes = [_back(route, cid) for cid in back]
    dispatch = _Dispatch(lambda: [c() for c in changes], at=min(at, present))
    _send(route, dispatch)
    # Each consumer exactly once: handed the message, or kept for while it is away.
    assert sorted(dispatch.handed + dispatch.kept) == sorted(here + away), (dispatch.handed, dispatch.kept)


def test_a_successor_that_attaches_during_the_pass_is_handed_the_message() -> None:
    route = _route(Queue(4), ["a"], ["b"])
    dispatch = _Dispatch(_back(route, "b"), at=1)
    _send(route, dispatch)
    assert dispatch.handed == ["a", "b"] and dispatch.kept == []


def test_a_consumer_still_away_has_the_message_kept() -> None:
    route = _route(Queue(4), ["a"], ["b"])
    dispatch = _Dispatch()
    _send(route, dispatch)
    assert dispatch.handed == ["a"] and dispatch.kept == ["b"]


def test_a_lossy_channel_does_not_chase_a_consumer_that_attached_after_the_send() -> None:
    route = _route(Latest(), ["a"], [])
    dispatch = _Dispatch(_back(route, "late"), at=1)
    _send(route, dispatch)
    assert dispatch.handed == ["a"]


def test_a_later_pass_does_not_wait_and_a_channel_closed_meanwhile_ends_the_send() -> None:
    # Another pass (a consumer attached during the first) found the channel closed: it waited in
    # wait_consumers and raised past _partial, so the next message reused the number.
    route = _route(Queue(4), ["a"], ["b"])

    def close_after_b_returns() -> None:
        _back(route, "b")()
        t = route.table
        route.table = RoutingTable(t.channel, t.version + 1, t.policy, t.spec, closed=True, consumers=t.consumers)

    dispatch = _Dispatch(close_after_b_returns, at=1)
    _send(route, dispatch)
    assert dispatch.handed == ["a"] and dispatch.kept == []

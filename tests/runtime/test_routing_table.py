"""The routing table the broker pushes: decoded once into a typed form, and back to the same wire map."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from coupler.runtime.control.departure import Departure, Gone
from coupler.runtime.control.routing_table import ConsumerRef, RoutingTable
from coupler.runtime.message import Spec
from coupler.runtime.policies import Latest, Queue, Reservoir, Window

_names = st.text("abcxyz/-_0123456789", min_size=1, max_size=12)
_policies = st.one_of(
    st.builds(Queue, maxsize=st.integers(1, 10_000), shared=st.booleans()),
    st.just(Latest()),
    st.builds(Reservoir, capacity=st.integers(1, 1000), seed=st.none() | st.integers(0, 99)),
    st.builds(Window, capacity=st.integers(1, 1000), seed=st.none() | st.integers(0, 99)),
)
_tables = st.builds(
    RoutingTable,
    channel=_names,
    version=st.integers(0, 2**40),
    policy=_policies,
    spec=st.sampled_from([None, Spec.of({"x": np.zeros(4, np.float32)})]),
    closed=st.booleans(),
    consumers=st.lists(st.builds(ConsumerRef, _names, _names, _names, _names), max_size=4).map(tuple),
    gone=st.lists(st.builds(Gone, _names, st.sampled_from(list(Departure)), _names), max_size=4).map(tuple),
    producers=st.dictionaries(_names, _names, max_size=3),
)


@given(_tables)
def test_a_table_survives_the_wire(table: RoutingTable) -> None:
    again = RoutingTable.from_wire(table.to_wire())
    assert again == table
    assert again.moving == {g.consumer for g in table.gone if g.kind is Departure.HANDOVER}
    assert again.is_queue == isinstance(table.policy, Queue)
    assert again.maxsize == (table.policy.maxsize if isinstance(table.policy, Queue) else 0)


def test_the_broker_s_extra_reply_fields_are_ignored() -> None:
    wire = {**RoutingTable("c", 3, Queue(8)).to_wire(), "status": "OK", "epoch": 2}
    assert RoutingTable.from_wire(wire) == RoutingTable("c", 3, Queue(8))


@pytest.mark.parametrize(
    "wire, says",
    [
        ({"version": 1, "policy": {"kind": "queue"}}, "'channel'"),
        ({"channel": "c", "version": "1", "policy": {"kind": "queue"}}, "version an int"),
        ({"channel": "c", "version": 1, "policy": {"kind": "lifo"}}, "unknown policy kind"),
        ({"channel": "c", "version": 1, "policy": {"kind": "queue"}, "consumers": [["k", "w"]]}, "[id, worker, stream, host]"),
        ({"channel": "c", "version": 1, "policy": {"kind": "queue"}, "gone": [["k", "vanished", ""]]}, "a departure must be"),
    ],
)
def test_a_malformed_table_says_what_was_expected_and_what_came(wire: dict, says: str) -> None:
    with pytest.raises(ValueError) as e:
        RoutingTable.from_wire(wire)
    assert says in str(e.value)


def test_a_lost_consumer_is_expected_back_until_it_returns_or_is_given_up() -> None:
    from coupler.runtime.dataplane.routing import Route

    def table(version: int, consumers: tuple[ConsumerRef, ...], gone: tuple[Gone, ...]) -> RoutingTable:
        return RoutingTable(channel="ch", version=version, policy=Queue(4), spec=None, closed=False, consumers=consumers, gone=gone, producers={})

    a, b = ConsumerRef("a/in", "tcp://w:1", "w:9", "h"), ConsumerRef("b/in", "tcp://w:2", "w:8", "h")
    route = Route("ch", table(1, (a, b), ()))
    route.update(table(2, (), (Gone("a/in", Departure.LOST), Gone("b/in", Departure.LOST))))
    assert route.returning(300) == {"a/in", "b/in"} and route.expected_for(300) is not None
    route.update(table(3, (a,), (Gone("b/in", Departure.LOST),)))  # a came back
    assert route.returning(300) == {"b/in"}
    route.update(table(4, (a,), (Gone("b/in", Departure.DETACHED, "given up"),)))  # b will not: producers stop waiting
    assert route.returning(300) == set() and route.expected_for(300) is None

"""A replaced instance of an actor cannot deliver: consumers refuse streams of producers placed elsewhere.

A worker that the scheduler declared dead can come back (a cut link heals)
with its old actors still running while their successors run on other
workers. The broker knows where each producer registered last; a consumer's
worker refuses batches whose sources the broker places on another worker than
the stream's (runtime/dataplane/receiver.py ``ProducerOwners``), and the old
instance's send raises :class:`Fenced`. The genuine streams keep serving.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coupler.runtime.dataplane.auth import StreamKey, new_secret
from coupler.runtime.dataplane.buffers import QueueBuffer, make_buffer
from coupler.runtime.dataplane.link import Link
from coupler.runtime.dataplane.receiver import ChannelSpecs, Listener, ProducerOwners
from coupler.runtime.dataplane.settings import TransportConfig
from coupler.runtime.errors import ConsumerGone, Fenced
from coupler.runtime.message import Spec
from coupler.runtime.policies import Queue

SPEC = Spec.of({"x": np.zeros(4, np.float64)})
CHANNEL, CONSUMER = "fence", "k/in"
A, B = "tcp://10.0.0.1:1", "tcp://10.0.0.2:1"


class Broker:
    """Where the 'broker' places each producer; a successor's registration moves it."""

    def __init__(self) -> None:
        self.owners: dict[str, str] = {}
        self.asked = 0
        self.lock = threading.Lock()

    def fetch(self, channel: str) -> dict[str, str]:
        assert channel == CHANNEL
        with self.lock:
            self.asked += 1
            return dict(self.owners)


@pytest.fixture
def port() -> Iterator[tuple[Listener, QueueBuffer, StreamKey, Broker]]:
    buf = make_buffer(CHANNEL, Queue(maxsize=64))
    assert isinstance(buf, QueueBuffer)
    key = StreamKey(new_secret())
    broker = Broker()
    lst = Listener(
        "127.0.0.1", lambda ch, cid: buf if (ch, cid) == (CHANNEL, CONSUMER) else None, key=key,
        specs=ChannelSpecs(lambda ch: SPEC.to_wire()), owners=ProducerOwners(broker.fetch),
    )
    yield lst, buf, key, broker
    lst.close()


def _link(lst: Listener, key: StreamKey, origin: str) -> Link:
    return Link(CHANNEL, CONSUMER, lst.address, SPEC, queue=True, maxsize=64, host="a", peer_host="b",
                config=TransportConfig(shared_memory=False), key=key, origin=origin)


def _send(link: Link, source: str, seq: int) -> None:
    header = {"timestamp": 0.0, "step": seq, "source": source, "seq": seq, "meta": {}, "sent_at": 0.0}
    link.submit(header, [np.full(4, seq, np.float64)], 10)


def _drain(buf: QueueBuffer) -> list[tuple[str, int]]:
    got = []
    while buf.has_message():
        m = buf.get(1)
        got.append((m.source, m.seq))
    return got


def test_a_producer_placed_on_another_worker_is_refused_and_the_genuine_one_keeps_serving(
    port: tuple[Listener, QueueBuffer, StreamKey, Broker],
) -> None:
    lst, buf, key, broker = port
    broker.owners = {"sim": B, "other": A}
    zombie, genuine = _link(lst, key, A), _link(lst, key, A)
    try:
        _send(genuine, "other", 0)  # a stream from A for a producer that lives on A: fine
        with pytest.raises(Fenced):
            for q in range(20):  # the refusal comes back with the first acknowledgement
                _send(zombie, "sim", q)
                zombie.flush(10)
        for q in range(1, 30):
            _send(genuine, "other", q)
        genuine.flush(10)
    finally:
        zombie.close(orphan=False)
        genuine.close(orphan=False)
    got = _drain(buf)
    assert [s for s, _ in got] == ["other"] * 30 and [q for _, q in got] == list(range(30))
    assert lst.owners is not None and lst.owners.fenced == 1


def test_a_successor_s_first_stream_fences_its_predecessor_s_stream_from_then_on(
    port: tuple[Listener, QueueBuffer, StreamKey, Broker],
) -> None:
    """The old instance delivered before its successor, never after."""
    lst, buf, key, broker = port
    broker.owners = {"sim": A}
    old = _link(lst, key, A)
    try:
        for q in range(5):
            _send(old, "sim", q)
        old.flush(10)
        broker.owners = {"sim": B}  # the successor registers from B ...
        new = _link(lst, key, B)  # ... and its first stream opens (the owners are asked again)
        try:
            _send(new, "sim", 3)  # it resumes from its checkpoint: 3 and 4 are duplicates, dropped
            _send(new, "sim", 4)
            _send(new, "sim", 5)
            new.flush(10)
            with pytest.raises(Fenced):
                for q in range(5, 40):
                    _send(old, "sim", q)
                    old.flush(10)
            _send(new, "sim", 6)
            new.flush(10)
        finally:
            new.close(orphan=False)
    finally:
        old.close(orphan=False)
    assert _drain(buf) == [("sim", q) for q in range(7)]


def test_a_source_the_broker_does_not_know_is_let_through(port: tuple[Listener, QueueBuffer, StreamKey, Broker]) -> None:
    """Only a source placed elsewhere proves a replaced instance; an unknown one is not judged."""
    lst, buf, key, broker = port
    link = _link(lst, key, A)
    try:
        for q in range(3):
            _send(link, "new", q)
        link.flush(10)
    finally:
        link.close(orphan=False)
    assert _drain(buf) == [("new", q) for q in range(3)]


@settings(max_examples=25, deadline=None)
@given(owners=st.dictionaries(st.sampled_from(["p", "q", "r"]), st.sampled_from([A, B]), min_size=1),
       origin=st.sampled_from([A, B]), sources=st.sets(st.sampled_from(["p", "q", "r"]), min_size=1))
def test_owners_allow_exactly_the_batches_whose_every_known_source_lives_on_the_stream_s_worker(
    owners: dict[str, str], origin: str, sources: set[str]
) -> None:
    fetched: list[Any] = []
    po = ProducerOwners(lambda ch: fetched.append(ch) or owners)
    expected = all(owners.get(s, origin) == origin for s in sources)
    assert po.allowed(CHANNEL, sources, origin) is expected
    assert po.fenced == (0 if expected else 1)
    # Known and agreeing: the second look asks the broker no more.
    asked = len(fetched)
    if expected:
        assert po.allowed(CHANNEL, sources, origin) and len(fetched) == asked


def test_a_fenced_link_fails_for_good_and_is_not_taken_for_a_departed_consumer() -> None:
    """Fenced is not ConsumerGone: a sender must not wait for the consumer to come back, or resend elsewhere."""
    assert not issubclass(Fenced, ConsumerGone)

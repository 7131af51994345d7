"""A replaced instance of an actor cannot deliver after its successor: consumers refuse messages of an older epoch.

A worker that the scheduler declared dead can come back (a cut link heals)
with its old actors still running while their successors run on other
workers. The broker gives each instance of a producer an epoch (one more than
its predecessor's when that one's worker was lost); a successor's messages
carry it, and a consumer's worker that has seen it refuses batches of an older
epoch (runtime/dataplane/fence.py): the old instance's send raises
:class:`Fenced`. The genuine streams keep serving.

The earlier fence asked the broker where each producer ran when a stream
opened. A successor that opened no stream of its own -- one on the consumer's
worker, or one whose worker already had a stream to that consumer for another
producer, which is every restart in tests/multihost/test_partitions.py -- never
made it ask again, and its predecessor's messages still in flight when the
link healed were delivered after the successor's (about one run in five of
``test_a_cut_about_as_long_as_the_death_timeout_never_has_two_instances_deliver``).
The first two tests below are those two paths.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from coupler.runtime.control.broker import Broker
from coupler.runtime.control.routing_table import RoutingTable
from coupler.runtime.dataplane.auth import StreamKey, new_secret
from coupler.runtime.dataplane.buffers import QueueBuffer, make_buffer
from coupler.runtime.dataplane.dispatch import Dispatch
from coupler.runtime.dataplane.fence import EPOCH_KEY, Fence, Refusals, epoch_of, judge, stamps
from coupler.runtime.dataplane.link import Link
from coupler.runtime.dataplane.receiver import ChannelSpecs, Listener
from coupler.runtime.dataplane.routing import Reroute, Route
from coupler.runtime.dataplane.settings import DeliveryConfig, TransportConfig
from coupler.runtime.errors import ConsumerGone, Fenced, Interrupted
from coupler.runtime.message import Message, Spec
from coupler.runtime.policies import Queue

SPEC = Spec.of({"x": np.zeros(4, np.float64)})
CHANNEL, CONSUMER = "fence", "k/in"
A, B = "tcp://10.0.0.1:1", "tcp://10.0.0.2:1"


@pytest.fixture
def port() -> Iterator[tuple[Listener, QueueBuffer, StreamKey, Fence]]:
    buf = make_buffer(CHANNEL, Queue(maxsize=64))
    assert isinstance(buf, QueueBuffer)
    key = StreamKey(new_secret())
    fence = Fence()
    lst = Listener(
        "127.0.0.1", lambda ch, cid: buf if (ch, cid) == (CHANNEL, CONSUMER) else None, key=key,
        specs=ChannelSpecs(lambda ch: SPEC.to_wire()), fence=fence,
    )
    yield lst, buf, key, fence
    lst.close()


def _link(lst: Listener, key: StreamKey, origin: str) -> Link:
    return Link(CHANNEL, CONSUMER, lst.address, SPEC, queue=True, maxsize=64, host="a", peer_host="b",
                config=TransportConfig(shared_memory=False), key=key, origin=origin)


def _header(source: str, seq: int, epoch: int) -> dict[str, Any]:
    meta = {EPOCH_KEY: epoch} if epoch else {}
    return {"timestamp": 0.0, "step": seq, "source": source, "seq": seq, "meta": meta, "sent_at": 0.0}


def _send(link: Link, source: str, seq: int, epoch: int = 0) -> None:
    link.submit(_header(source, seq, epoch), [np.full(4, seq, np.float64)], 10)


def _send_here(fence: Fence, buf: QueueBuffer, source: str, seq: int, epoch: int) -> None:
    """What Dispatch.deliver_one does for a consumer on the producer's own worker (in memory, no stream)."""
    header = _header(source, seq, epoch)
    fence.saw(CHANNEL, source, epoch_of(header["meta"]))
    assert buf.put([Message.from_header(header, {"x": np.full(4, seq, np.float64)}, SPEC.nbytes)], 10) == 1


def _drain(buf: QueueBuffer) -> list[tuple[str, int]]:
    got = []
    while buf.has_message():
        m = buf.get(1)
        got.append((m.source, m.seq))
    return got


def _refused(link: Link, source: str, first: int) -> None:
    """The old instance's next sends fail with Fenced (the refusal comes back with the first acknowledgement)."""
    with pytest.raises(Fenced):
        for q in range(first, first + 40):
            _send(link, source, q)
            link.flush(10)


def test_a_successor_on_the_consumer_s_worker_fences_its_predecessor_s_stream_without_opening_one(
    port: tuple[Listener, QueueBuffer, StreamKey, Fence],
) -> None:
    """The successor delivers in memory; the old instance's stream, opened before, is refused from then on."""
    lst, buf, key, fence = port
    old = _link(lst, key, A)
    try:
        for q in range(5):
            _send(old, "sim", q)
        old.flush(10)
        for q in range(3, 7):  # restored from its checkpoint at 3: 3 and 4 are dropped as duplicates
            _send_here(fence, buf, "sim", q, epoch=1)
        _refused(old, "sim", 5)
    finally:
        old.close(orphan=False)
    assert _drain(buf) == [("sim", q) for q in range(7)]
    assert fence.fenced == 1 and fence.marks(CHANNEL) == {"sim": 1}


def test_a_successor_on_a_stream_another_producer_opened_fences_its_predecessor(
    port: tuple[Listener, QueueBuffer, StreamKey, Fence],
) -> None:
    """The successor's worker already streams to the consumer for another producer: no stream opens, the fence still holds."""
    lst, buf, key, fence = port
    old, shared = _link(lst, key, A), _link(lst, key, B)
    try:
        _send(shared, "other", 0)
        for q in range(5):
            _send(old, "sim", q)
        old.flush(10)
        shared.flush(10)
        _send(shared, "sim", 5, epoch=1)  # the successor's first message, on the stream "other" opened
        shared.flush(10)
        _refused(old, "sim", 5)
        for q in range(1, 20):  # the genuine stream keeps serving, both producers
            _send(shared, "other", q)
        _send(shared, "sim", 6, epoch=1)
        shared.flush(10)
    finally:
        old.close(orphan=False)
        shared.close(orphan=False)
    got = _drain(buf)
    assert [q for s, q in got if s == "sim"] == list(range(7))
    assert [q for s, q in got if s == "other"] == list(range(20))
    assert fence.fenced == 1


def test_the_old_instance_delivers_before_its_successor_and_never_after(
    port: tuple[Listener, QueueBuffer, StreamKey, Fence],
) -> None:
    """Until the successor's first message arrives nothing is known to refuse; from then on the old stream is refused."""
    lst, buf, key, fence = port
    old = _link(lst, key, A)
    try:
        for q in range(5):
            _send(old, "sim", q)
        old.flush(10)
        new = _link(lst, key, B)
        try:
            for q in (3, 4, 5):
                _send(new, "sim", q, epoch=1)
            new.flush(10)
            _refused(old, "sim", 5)
            _send(new, "sim", 6, epoch=1)
            new.flush(10)
        finally:
            new.close(orphan=False)
    finally:
        old.close(orphan=False)
    assert _drain(buf) == [("sim", q) for q in range(7)]


def test_a_first_instance_carries_no_epoch_and_is_never_refused(port: tuple[Listener, QueueBuffer, StreamKey, Fence]) -> None:
    lst, buf, key, fence = port
    link = _link(lst, key, A)
    try:
        for q in range(3):
            _send(link, "new", q)
        link.flush(10)
    finally:
        link.close(orphan=False)
    assert _drain(buf) == [("new", q) for q in range(3)]
    assert fence.marks(CHANNEL) == {} and fence.fenced == 0


def test_a_batch_judged_before_a_rise_is_delivered_before_the_message_that_rose() -> None:
    """No interleaving of a receiving thread and an in-memory delivery puts an old message behind a newer instance's."""
    fence = Fence()
    order: list[str] = []
    inside, leave = threading.Event(), threading.Event()

    def old_batch() -> None:
        with fence.admitting(CHANNEL, [("sim", 0)]) as admitted:
            assert admitted
            inside.set()
            leave.wait(10)
            order.append("old")

    t = threading.Thread(target=old_batch)
    t.start()
    assert inside.wait(10)
    rose = threading.Thread(target=lambda: (fence.saw(CHANNEL, "sim", 1), order.append("new")))
    rose.start()
    rose.join(0.2)
    assert rose.is_alive() and order == []  # the successor's delivery waits for the batch judged before it
    leave.set()
    t.join(10)
    rose.join(10)
    assert order == ["old", "new"]
    with fence.admitting(CHANNEL, [("sim", 0)]) as admitted:
        assert not admitted


def test_a_malformed_epoch_is_a_malformed_stream() -> None:
    for bad in (-1, "1", 1.0, None, True):
        with pytest.raises(ValueError):
            epoch_of({EPOCH_KEY: bad})
    assert epoch_of({}) == 0 and epoch_of({"other": 1}) == 0 and epoch_of({EPOCH_KEY: 3}) == 3
    assert stamps(["a", "b"], [{}, {EPOCH_KEY: 2}]) == [("a", 0), ("b", 2)]


_stamps = st.lists(st.tuples(st.sampled_from(["p", "q", "r"]), st.integers(0, 3)), max_size=6)


@settings(max_examples=300, deadline=None)
@given(marks=st.dictionaries(st.sampled_from(["p", "q", "r"]), st.integers(1, 3)), batch=_stamps)
def test_judge_admits_exactly_the_batches_with_no_epoch_below_its_source_s_mark(marks: dict[str, int], batch: list[Any]) -> None:
    admitted, after = judge(marks, batch)
    seen = dict(marks)
    expected = True
    for s, e in batch:  # each message against the marks as the batch's earlier messages left them
        if e < seen.get(s, 0):
            expected = False
            break
        if e > seen.get(s, 0):
            seen[s] = e  # (a mark of 0 is kept as none)
    assert admitted is expected
    assert dict(after) == (seen if expected else marks)
    assert all(after.get(s, 0) >= e for s, e in marks.items())  # marks never go down


class Partition(RuleBasedStateMachine):
    """Instances of two producers and one consumer worker, every interleaving of their deliveries.

    Each instance sends numbered messages in batches on its own stream (in order), or
    in memory on the consumer's worker. A restart starts a successor one epoch up, from
    any checkpoint the consumer's deliveries allow (a checkpoint covers only what was
    accepted); the old instance goes on sending, its batches still in flight. The
    consumer drops numbers it has (a QueueBuffer's duplicate suppression).

    What must hold, per source: the consumer takes 0, 1, 2, ... once each, in order,
    and never a message of an instance older than one it already took from.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fence = Fence()
        self.last: dict[str, int] = {}  # source -> highest seq accepted (the buffer's duplicate suppression)
        self.taken: dict[str, list[tuple[int, int]]] = {"p": [], "q": []}  # source -> (seq, epoch) accepted
        # source -> instances: [epoch, next seq to send, batches in flight, fenced]
        self.instances: dict[str, list[list[Any]]] = {s: [[0, 0, [], False]] for s in ("p", "q")}

    def _accept(self, source: str, batch: list[tuple[int, int]]) -> None:
        for seq, epoch in batch:
            if seq > self.last.get(source, -1):
                self.last[source] = seq
                self.taken[source].append((seq, epoch))

    @rule(source=st.sampled_from(["p", "q"]), which=st.integers(0, 3), n=st.integers(1, 3))
    def send(self, source: str, which: int, n: int) -> None:
        inst = self.instances[source][which % len(self.instances[source])]
        if inst[3]:
            return  # its send raised Fenced: it sends no more
        inst[2].append([(inst[1] + k, inst[0]) for k in range(n)])
        inst[1] += n

    @rule(source=st.sampled_from(["p", "q"]), which=st.integers(0, 3))
    def arrive(self, source: str, which: int) -> None:
        inst = self.instances[source][which % len(self.instances[source])]
        if not inst[2]:
            return
        batch = inst[2].pop(0)
        with self.fence.admitting(CHANNEL, [(source, e) for _, e in batch]) as admitted:
            if admitted:
                self._accept(source, batch)
        if not admitted:
            inst[3], inst[2] = True, []  # the stream is refused and closed: what it carried is not delivered

    @rule(source=st.sampled_from(["p", "q"]))
    def deliver_here(self, source: str) -> None:
        """The newest instance, if it runs on the consumer's worker, delivers its next message in memory."""
        inst = self.instances[source][-1]
        if inst[2]:
            return  # it has a stream with messages in flight: not on this worker
        seq, epoch = inst[1], inst[0]
        self.fence.saw(CHANNEL, source, epoch)
        inst[1] += 1
        self._accept(source, [(seq, epoch)])

    @precondition(lambda self: max(len(v) for v in self.instances.values()) < 4)
    @rule(source=st.sampled_from(["p", "q"]), back=st.integers(0, 5))
    def restart(self, source: str, back: int) -> None:
        """Its worker is declared dead; the successor resumes from a checkpoint at or below what was accepted."""
        checkpoint = max(0, self.last.get(source, -1) + 1 - back)
        epoch = self.instances[source][-1][0] + 1
        self.instances[source].append([epoch, checkpoint, [], False])

    @invariant()
    def every_message_once_in_order_and_one_instance_at_a_time(self) -> None:
        for source, got in self.taken.items():
            assert [q for q, _ in got] == list(range(len(got)))
            epochs = [e for _, e in got]
            assert epochs == sorted(epochs), f"{source}: an older instance delivered after a newer one: {got}"

    def teardown(self) -> None:
        # Every instance's stream drains: nothing is lost, whichever instance carries it to the end.
        for source, insts in self.instances.items():
            newest = insts[-1]
            for inst in insts:
                while inst[2]:
                    self.arrive(source, insts.index(inst))
            while newest[1] <= self.last.get(source, -1):
                newest[1] += 1  # (replays the consumer drops)
            self.send(source, len(insts) - 1, 1)
            self.arrive(source, len(insts) - 1)
            assert self.last.get(source, -1) == newest[1] - 1
        self.every_message_once_in_order_and_one_instance_at_a_time()


Partition.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
test_every_interleaving_of_instances_delivers_each_message_once_in_order_and_one_instance_at_a_time = Partition.TestCase


def test_a_worker_that_is_closing_opens_no_new_stream(port: tuple[Listener, QueueBuffer, StreamKey, Fence]) -> None:
    """A zombie worker's teardown drops what its links owed; its actors, still running, must not send past that.

    Seen in the boundary partition test: the old simulator's worker learned it was
    unknown to the scheduler and closed its links (seq 46 pending on one), while the
    actor went on and sent 47 through a new stream. The learner took 47 before its
    successor (restored at 31) had sent anything, and later dropped the successor's 46
    as a duplicate: 46 was lost.
    """
    lst, buf, key, _ = port
    closing = threading.Event()
    dispatch = Dispatch(
        address=lambda: A, buffers={}, routes={}, config=TransportConfig(shared_memory=False),
        delivery=DeliveryConfig(), host="a", ssl_context=None, key=key, closing=closing, on_drained=lambda ch: None,
    )
    table = {"channel": CHANNEL, "policy": {"kind": "queue", "maxsize": 64}, "spec": SPEC.to_wire(), "closed": False,
             "consumers": [[CONSUMER, B, lst.address, "b"]], "gone": [], "moving": [], "producers": {}, "version": 1}
    route = Route(CHANNEL, RoutingTable.from_wire(table))
    consumer = route.consumers[0]
    leaves = [np.full(4, 0.0)]
    dispatch.deliver_one(route, SPEC, consumer, _header("sim", 0, 0), leaves, time.monotonic() + 10, None)
    closing.set()
    dispatch.close()  # (the worker's teardown)
    with pytest.raises(Interrupted):
        dispatch.deliver_one(route, SPEC, consumer, _header("sim", 1, 0), leaves, time.monotonic() + 10, None)
    assert len(dispatch.links) == 0


class _Scheduler:
    """What the broker reads of its scheduler here: the live workers (and a status that skips routing pushes)."""

    def __init__(self, *workers: str) -> None:
        self.workers = dict.fromkeys(workers)
        self.status = type("Status", (), {"name": "closing"})()


def _broker(*workers: str) -> tuple[Broker, _Scheduler]:
    b, sched = Broker(), _Scheduler(*workers)
    b.scheduler = sched
    assert b.declare(name=CHANNEL, policy={"kind": "queue", "maxsize": 4})["status"] == "OK"
    return b, sched


def _register(b: Broker, source: str, worker: str) -> dict[str, Any]:
    return asyncio.run(b.attach(name=CHANNEL, role="producer", ident=source, address=worker))


def test_the_broker_gives_a_producer_the_next_epoch_once_its_worker_is_lost_and_only_then() -> None:
    C = "tcp://10.0.0.3:1"
    b, sched = _broker(A, B, C)
    assert _register(b, "sim", A)["epoch"] == 0
    assert _register(b, "sim", A)["epoch"] == 0  # the same instance again (a route dropped and asked for anew)
    assert _register(b, "sim", B)["epoch"] == 0  # a move: its predecessor on A is alive, stopped and flushed
    del sched.workers[B]
    asyncio.run(b.remove_worker(sched, B))
    assert _register(b, "sim", C)["epoch"] == 1  # its successor after the loss
    # Lost again, and the successor registers before the broker's remove_worker has run: bumped once.
    del sched.workers[C]
    assert _register(b, "sim", A)["epoch"] == 2
    asyncio.run(b.remove_worker(sched, C))
    assert _register(b, "sim", A)["epoch"] == 2
    # The old worker, back after the partition, cannot register a producer: its instances were replaced.
    reply = _register(b, "other", C)
    assert reply["status"] == "error" and reply["error"] == "Fenced", reply


def test_a_replaced_consumer_s_late_detach_leaves_its_successor_attached() -> None:
    b, _ = _broker(A, B)
    consumer = "learner/data"
    assert asyncio.run(b.attach(name=CHANNEL, role="consumer", ident=consumer, address=B, stream="10.0.0.2:9"))["status"] == "OK"
    asyncio.run(b.detach(name=CHANNEL, ident=consumer, address=A))  # the old instance's worker, shutting down
    assert [c[0] for c in b.routing(name=CHANNEL)["consumers"]] == [consumer]
    asyncio.run(b.detach(name=CHANNEL, ident=consumer, address=B))
    assert b.routing(name=CHANNEL)["consumers"] == []


def test_a_fenced_link_fails_for_good_and_is_not_taken_for_a_departed_consumer() -> None:
    """Fenced is not ConsumerGone: a sender must not wait for the consumer to come back, or resend elsewhere."""
    assert not issubclass(Fenced, ConsumerGone)


def test_a_fenced_instance_s_refused_messages_are_not_resent_and_its_later_sends_fail_at_once(
    port: tuple[Listener, QueueBuffer, StreamKey, Fence],
) -> None:
    """What a replaced instance sent is its successor's to send: refused once, never resent through new streams.

    Before, the refused batch and what followed it went back to the consumer's
    outbox as if the stream had broken; a resend thread then opened a new stream,
    was refused again, and so on for as long as the old instance lived (and its
    next send opened yet another stream instead of raising ``Fenced``).
    """
    lst, buf, key, fence = port
    _send_here(fence, buf, "sim", 0, 1)  # the successor (epoch 1) has delivered on the consumer's worker
    dispatch = Dispatch(
        address=lambda: A, buffers={}, routes={}, config=TransportConfig(shared_memory=False),
        delivery=DeliveryConfig(), host="a", ssl_context=None, key=key, closing=threading.Event(), on_drained=lambda ch: None,
    )
    table = {"channel": CHANNEL, "policy": {"kind": "queue", "maxsize": 64}, "spec": SPEC.to_wire(), "closed": False,
             "consumers": [[CONSUMER, B, lst.address, "b"]], "gone": [], "moving": [], "producers": {}, "version": 1}
    route = Route(CHANNEL, RoutingTable.from_wire(table))
    dispatch.routes[CHANNEL] = route
    consumer = route.consumers[0]

    def deliver(seq: int) -> None:
        for _ in range(100):  # as Sender does: a broken stream reroutes, after what it owed
            try:
                dispatch.deliver(route, SPEC, consumer, _header("sim", seq, 0), [np.full(4, seq, np.float64)], time.monotonic() + 10, None)
                return
            except Reroute:
                continue
        raise AssertionError(f"seq {seq}: rerouted 100 times")

    with pytest.raises(Fenced):  # the refusal comes back with an acknowledgement: some send after it sees it
        for seq in range(5, 200):
            deliver(seq)
            time.sleep(0.005)
    refused = fence.fenced
    for seq in range(200, 205):
        with pytest.raises(Fenced):
            deliver(seq)
    time.sleep(0.5)  # a resend thread, if one were started, would have come back by now
    assert fence.fenced == refused, f"the old instance was refused {fence.fenced - refused} more times after it knew"
    assert not any(box.owes for box in dispatch.outboxes.values()), "a fenced instance's messages are kept to resend"
    assert _drain(buf) == [("sim", 0)]
    dispatch.close()


def test_a_refusal_fails_that_instance_and_older_ones_not_a_later_one_nor_other_producers() -> None:
    refusals = Refusals()
    assert not refusals
    refusals.note(CHANNEL, {"sim": 1})
    for epoch in (0, 1):
        with pytest.raises(Fenced):
            refusals.check(CHANNEL, _header("sim", 9, epoch))
    refusals.check(CHANNEL, _header("sim", 9, 2))  # restarted here later: it sends
    refusals.check(CHANNEL, _header("other", 9, 0))
    refusals.check("another-channel", _header("sim", 9, 0))
    refusals.forget(CHANNEL)
    refusals.check(CHANNEL, _header("sim", 9, 0))
    assert not refusals

"""The send window (runtime/dataplane/window.py) against a model consumer, through every interleaving.

Sends, writes, the consumer's deliveries, takes, grants and acknowledgements
arrive in any order hypothesis picks (the wire keeps each direction in order,
as TCP does). Whatever the order:

- a ``Queue`` consumer never holds more than its size (a message goes only
  against a credit it granted);
- it receives every message once, in the order sent, with no gap;
- the producer's view adds up: every message is queued, in flight, or
  acknowledged, exactly once; and what a broken stream hands back
  (:meth:`SendWindow.left`) is exactly what was not acknowledged, oldest first.
"""

from __future__ import annotations

from collections import deque

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from coupler.runtime.dataplane.payloads import Item
from coupler.runtime.dataplane.settings import TransportConfig
from coupler.runtime.dataplane.window import Frame, Room, SendWindow

MSG = 1000  # bytes per message


def _item(seq: int, nbytes: int = MSG, large: bool = False) -> Item:
    return Item({"source": "p", "seq": seq}, [], nbytes, large)


class WindowMachine(RuleBasedStateMachine):
    """One producer stream to one consumer, the consumer modelled by its slots and what it received."""

    @initialize(queue=st.booleans(), maxsize=st.integers(1, 12), batch=st.sampled_from([MSG, 3 * MSG, 64 * MSG]))
    def start(self, queue: bool, maxsize: int, batch: int) -> None:
        self.queue, self.maxsize = queue, maxsize
        config = TransportConfig(batch_bytes=batch, window_bytes=5 * MSG)
        self.w = SendWindow(queue=queue, maxsize=maxsize, config=config)
        self.next_seq = 0
        self.to_consumer: deque[Frame] = deque()  # frames written, not yet read by the consumer
        self.to_producer: deque[tuple[str, int, int]] = deque()  # (kind, n, acked/accepted) not yet read
        self.held: deque[int] = deque()  # in the consumer's queue
        self.received: list[int] = []
        self.granted = 0  # slots the consumer granted in all
        self.used = 0  # messages it received against them
        self.unacked_batches = 0  # batches received and not acknowledged yet
        self.acked_seqs: list[int] = []
        self.refused = False
        self.in_flight_seqs: deque[list[int]] = deque()  # per batch written, its seqs (as the producer sent them)

    # -- the producer ------------------------------------------------------------------------------
    @precondition(lambda self: not self.refused)
    @rule(large=st.booleans())
    def send(self, large: bool) -> None:
        nbytes = 4 * MSG if large else MSG
        room = self.w.room(nbytes)
        if room is Room.ASK:
            self.write()  # the link writes the request for credits, then looks again
            room = self.w.room(nbytes)
        if room is Room.TAKEN:
            self.w.reserve(nbytes)
            self.w.queue_item(_item(self.next_seq, nbytes, large))
            self.next_seq += 1

    @precondition(lambda self: not self.refused)
    @rule()
    def write(self) -> None:
        frame = self.w.next_frame()
        if frame is not None:
            self.to_consumer.append(frame)

    # -- the consumer ------------------------------------------------------------------------------
    @precondition(lambda self: self.to_consumer)
    @rule(refuse=st.integers(0, 20))
    def consumer_reads(self, refuse: int) -> None:
        frame = self.to_consumer.popleft()
        if frame.want is not None:
            self.granted -= min(frame.want.get("ret", 0), self.granted - self.used)  # credits given back
            self._grant(frame.want["n"])
        if frame.batch is None:
            if frame.sync:
                self._ack()
            return
        seqs = [it.header["seq"] for it in frame.batch.items]
        if refuse == 0 and not self.refused:  # the consumer detaches mid-batch: it takes a prefix
            took = len(seqs) // 2
            self._take_in(seqs[:took])
            self.to_producer.append(("refuse", self.unacked_batches, took))
            self.unacked_batches = 0
            self.refused = True
            return
        if self.refused:
            return  # nobody reads any more
        self._take_in(seqs)
        self.unacked_batches += 1
        if frame.batch.asked:
            self._ack()

    def _take_in(self, seqs: list[int]) -> None:
        for q in seqs:
            if self.queue:
                assert self.used < self.granted, f"message {q} arrived without a credit ({self.used} of {self.granted} used)"
                self.used += 1
                assert len(self.held) < self.maxsize, "the consumer holds more than its size"
            self.held.append(q)
            self.received.append(q)

    def _ack(self) -> None:
        if self.unacked_batches:
            self.to_producer.append(("ack", self.unacked_batches, 0))
            self.unacked_batches = 0

    def _grant(self, want: int) -> None:
        if not self.queue:
            return
        free = self.maxsize - len(self.held) - (self.granted - self.used)
        n = max(0, min(free, want))
        if n:
            self.granted += n
            self.to_producer.append(("grant", n, self.unacked_batches))
            self.unacked_batches = 0

    @precondition(lambda self: self.held and not self.refused)
    @rule()
    def consumer_takes(self) -> None:
        self.held.popleft()
        self._grant(self.maxsize)  # the freed slot (and any other) goes back to the producer

    # -- back to the producer --------------------------------------------------------------------------
    @precondition(lambda self: self.to_producer)
    @rule()
    def producer_reads(self) -> None:
        kind, n, extra = self.to_producer.popleft()
        if kind == "grant":
            self.w.granted(n)
            if extra:
                self._acknowledged(extra)
        elif kind == "ack":
            self._acknowledged(n)
        else:
            self._acknowledged(n)
            self.acked_seqs += [it.header["seq"] for it in self.w.refused(extra)]
            left = [it.header["seq"] for it in self.w.left()]
            assert self.acked_seqs + left == list(range(self.next_seq)), "a broken stream hands back the rest, in order"
            self.next_seq = len(self.acked_seqs) + len(left)  # (nothing more is sent on this stream)
            self.left = left

    def _acknowledged(self, n: int) -> None:
        for batch in self.w.acknowledged(n):
            self.acked_seqs += [it.header["seq"] for it in batch.items]

    @rule()
    def producer_goes_idle(self) -> None:
        self.w.idle()

    # -- what must always hold ----------------------------------------------------------------------
    @invariant()
    def the_consumer_gets_every_message_once_in_order(self) -> None:
        assert self.received == list(range(len(self.received)))

    @invariant()
    def acknowledged_is_a_prefix_of_what_was_received(self) -> None:
        assert self.acked_seqs == self.received[: len(self.acked_seqs)]

    @invariant()
    def every_message_is_in_exactly_one_place(self) -> None:
        if self.refused and not self.w.inflight and not self.w.pending:
            return  # handed back (checked when it happened)
        queued = [it.header["seq"] for it in self.w.pending]
        inflight = [it.header["seq"] for b in self.w.inflight for it in b.items]
        assert self.acked_seqs + inflight + queued == list(range(self.next_seq))

    @invariant()
    def counters_stay_in_range(self) -> None:
        assert self.w.credits >= 0 and self.w.want >= 0 and self.w.queued_bytes >= 0
        if self.queue:
            assert self.w.credits <= self.granted - self.used + self.w.returning


TestSendWindow = WindowMachine.TestCase
TestSendWindow.settings = settings(max_examples=200, stateful_step_count=60, deadline=None)


def test_a_lone_message_always_goes_even_over_the_byte_window() -> None:
    w = SendWindow(queue=False, maxsize=0, config=TransportConfig(window_bytes=10))
    assert w.room(100) is Room.TAKEN  # nothing queued: it goes, however large
    w.reserve(100)
    w.queue_item(_item(0, 100))
    assert w.room(100) is Room.FULL  # now the window is over


def test_a_queue_window_asks_for_credits_ahead_and_waits_without_them() -> None:
    w = SendWindow(queue=True, maxsize=8, config=TransportConfig())
    assert w.room(MSG) is Room.ASK and w.want == w.prefetch == 4
    frame = w.next_frame()
    assert frame is not None and frame.batch is None and frame.want == {"n": 4, "ret": 0}
    assert w.room(MSG) is Room.FULL  # asked, not granted yet
    w.granted(4)
    assert w.room(MSG) is Room.TAKEN and w.credits == 3

"""The outbox (runtime/dataplane/outbox.py) driven through every interleaving of its events.

Events: a message is queued on a stream (the log keeps the link's item), the
consumer commits a checkpoint, the stream breaks and hands back what it had
not delivered, the consumer comes back under a new stream, owed messages are
handed on one by one. A model says what the consumer's successor must get;
the outbox must owe exactly that, in order, and keep (and mark ``kept``)
exactly the segments of the messages its log holds.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from coupler.runtime.dataplane.outbox import Outbox, ReplayLog
from coupler.runtime.dataplane.payloads import Item

LIMIT = 10_000  # bytes: large enough that nothing overflows in these runs (overflow has its own test)


@dataclass
class FakeSegment:
    """What the log touches of a shared-memory segment."""

    kept: bool = False


class OutboxMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.box = Outbox("ch", "k/in", ReplayLog("ch", "k/in", LIMIT))
        self.next_seq = 0
        self.committed = -1
        self.unacked: list[Item] = []  # on the current stream, not yet acknowledged
        self.items: list[Item] = []  # every item ever queued
        self.stream = 0
        self.box.meet(f"s{self.stream}")

    @rule(large=st.booleans())
    def queue_on_stream(self, large: bool) -> None:
        item = Item({"source": "p", "seq": self.next_seq}, None if large else [], 8, large)
        if large:
            item.segment = FakeSegment()  # type: ignore[assignment]
        self.next_seq += 1
        self.box.log.keep(item)  # type: ignore[union-attr]
        self.unacked.append(item)
        self.items.append(item)

    @precondition(lambda self: self.unacked)
    @rule(n=st.integers(1, 5))
    def acknowledge(self, n: int) -> None:
        del self.unacked[:n]

    @precondition(lambda self: self.next_seq > 0)
    @rule(data=st.data())
    def commit(self, data: st.DataObject) -> None:
        mark = data.draw(st.integers(self.committed, self.next_seq - 1))
        self.committed = max(self.committed, mark)
        self.box.commit({"p": mark})

    @rule()
    def stream_breaks(self) -> None:
        left, self.unacked = self.unacked, []
        self.box.adopt(left)
        assert [it.header["seq"] for it in self.box.owed] == self._expected()

    @rule()
    def successor_attaches(self) -> None:
        self.stream += 1
        self.unacked = []
        self.box.meet(f"s{self.stream}")
        assert [it.header["seq"] for it in self.box.owed] == self._expected()

    @precondition(lambda self: self.box.owes)
    @rule()
    def hand_on_head(self) -> None:
        head = self.box.head()
        assert head is not None
        self.box.sent(head)

    def _expected(self) -> list[int]:
        return list(range(self.committed + 1, self.next_seq))

    @invariant()
    def log_holds_what_no_checkpoint_covers(self) -> None:
        assert [it.header["seq"] for it in self.box.log.replay()] == self._expected()  # type: ignore[union-attr]

    @invariant()
    def owed_is_in_order_and_uncommitted_or_later(self) -> None:
        seqs = [it.header["seq"] for it in self.box.owed]
        assert seqs == sorted(seqs)
        assert len(set(seqs)) == len(seqs)

    @invariant()
    def exactly_the_logged_segments_are_kept(self) -> None:
        logged = {id(it) for it in self.box.log.replay()}  # type: ignore[union-attr]
        for it in self.items:
            if it.segment is not None:
                assert it.segment.kept == (id(it) in logged), it.header

    @invariant()
    def resend_claims_are_exclusive(self) -> None:
        if self.box.owes and not self.box.resending:
            assert self.box.needs_resend(f"s{self.stream}")
            assert not self.box.needs_resend(f"s{self.stream}")  # claimed: a second thread is not started
            self.box.resend_ended()


TestOutbox = OutboxMachine.TestCase
TestOutbox.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


def test_an_overflowing_log_forgets_the_oldest_and_lets_go_of_their_segments() -> None:
    log = ReplayLog("ch", "k/in", limit_bytes=3 * 8)
    items = []
    for seq in range(5):
        it = Item({"source": "p", "seq": seq}, None, 8, True)
        it.segment = FakeSegment()  # type: ignore[assignment]
        log.keep(it)
        items.append(it)
    assert [it.header["seq"] for it in log.replay()] == [2, 3, 4]
    assert [it.segment.kept for it in items] == [False, False, True, True, True]  # type: ignore[union-attr]
    assert log.forgotten == 2
    log.clear()
    assert not any(it.segment.kept for it in items)  # type: ignore[union-attr]


def test_an_outbox_without_a_log_owes_what_a_broken_stream_hands_back_before_what_it_owed_later() -> None:
    box = Outbox("ch", "k/in", None)
    late = Item({"source": "p", "seq": 9}, [], 8, False)
    box.owe(late)
    back = [Item({"source": "p", "seq": s}, [], 8, False) for s in (3, 4)]
    box.adopt(back)
    assert [it.header["seq"] for it in box.owed] == [3, 4, 9]
    assert box.drop_owed() == 3 and not box.owes

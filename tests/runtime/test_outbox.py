"""The outbox (runtime/dataplane/outbox.py) driven through every interleaving of its events.

Events: a message is queued on a stream (the log keeps the link's item, if it
is not full), the consumer commits a checkpoint, the stream breaks and hands
back what it had not delivered, the consumer comes back under a new stream,
owed messages are handed on one by one. The log's size is drawn small enough
that it fills and heals. A model says what the log keeps and what the
consumer must be owed; the outbox must owe exactly that, in order, and keep
(and mark ``kept``) exactly the segments of the messages its log holds.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from coupler.runtime.dataplane.outbox import Outbox, ReplayLog
from coupler.runtime.dataplane.payloads import Item

SIZE = 8  # payload bytes of every message here


@dataclass
class FakeSegment:
    """What the log touches of a shared-memory segment."""

    kept: bool = False


class OutboxMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.next_seq = 0
        self.committed = -1
        self.unacked: list[Item] = []  # on the current stream, not yet acknowledged
        self.items: list[Item] = []  # every item ever queued
        self.stream = 0
        # The model: what the log keeps, the highest message it did not keep since it was
        # last whole, and the seqs owed.
        self.logged: list[int] = []
        self.gap: int | None = None
        self.owed: list[int] = []

    @initialize(capacity=st.integers(1, 12))
    def start(self, capacity: int) -> None:
        self.limit = capacity * SIZE
        self.box = Outbox("ch", "k/in", ReplayLog("ch", "k/in", self.limit))
        self.box.meet(f"s{self.stream}")

    @rule(large=st.booleans())
    def queue_on_stream(self, large: bool) -> None:
        seq = self.next_seq
        item = Item({"source": "p", "seq": seq}, None if large else [], SIZE, large)
        if large:
            item.segment = FakeSegment()  # type: ignore[assignment]
        self.next_seq += 1
        kept = self.box.log.keep(item)  # type: ignore[union-attr]
        full = self.gap is not None or (bool(self.logged) and (len(self.logged) + 1) * SIZE > self.limit)
        if full:
            self.gap = seq
        else:
            self.logged.append(seq)
        assert kept == (not full)
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
        self.logged = [s for s in self.logged if s > self.committed]
        if self.gap is not None and self.committed >= self.gap:
            self.gap = None

    @rule()
    def stream_breaks(self) -> None:
        left, self.unacked = self.unacked, []
        self.box.adopt(left)
        self._owe_again({it.header["seq"] for it in left})
        # Nothing in flight is lost, full log or not.
        assert {it.header["seq"] for it in left if it.header["seq"] > self.committed} <= set(self._owed())

    @rule()
    def successor_attaches(self) -> None:
        self.stream += 1
        self.unacked = []
        self.box.meet(f"s{self.stream}")
        self._owe_again(set())

    def _owe_again(self, handed_back: set[int]) -> None:
        self.owed = sorted(set(self.logged) | {s for s in (*self.owed, *handed_back) if s > self.committed})
        assert self._owed() == self.owed

    @precondition(lambda self: self.box.owes)
    @rule()
    def hand_on_head(self) -> None:
        head = self.box.head()
        assert head is not None
        self.box.sent(head)
        assert head.header["seq"] == self.owed.pop(0)

    @precondition(lambda self: self.box.owes)
    @rule()
    def hand_on_head_through_a_link(self) -> None:
        # A replay goes out through the successor's link, which keeps its own item of the message
        # in the log again: the log kept every replayed message twice, and filled up on a stream
        # far smaller than its limit.
        head = self.box.head()
        assert head is not None
        again = Item(dict(head.header), [], SIZE, False)
        self.items.append(again)
        kept = self.box.log.keep(again)  # type: ignore[union-attr]
        seq = head.header["seq"]
        if seq <= self.committed:  # owed still, but a checkpoint covers it: nothing to keep
            assert kept and not again.logged
        elif seq not in self.logged:  # a message a full log did not keep: the link's copy is offered anew
            full = self.gap is not None or (bool(self.logged) and (len(self.logged) + 1) * SIZE > self.limit)
            if full:
                self.gap = max(self.gap if self.gap is not None else -1, seq)
            else:
                self.logged = sorted([*self.logged, seq])
            assert kept == (not full)
        else:
            assert kept and not again.logged  # kept already: not twice
        self.box.sent(head)
        assert seq == self.owed.pop(0)

    def _owed(self) -> list[int]:
        return [it.header["seq"] for it in self.box.owed]

    @invariant()
    def log_keeps_what_the_model_says(self) -> None:
        assert [it.header["seq"] for it in self.box.log.replay()] == self.logged  # type: ignore[union-attr]
        assert self.box.log.full == (self.gap is not None)  # type: ignore[union-attr]

    @invariant()
    def a_whole_log_holds_everything_no_checkpoint_covers(self) -> None:
        if self.gap is None:
            assert self.logged == list(range(self.committed + 1, self.next_seq))

    @invariant()
    def log_stays_within_its_limit(self) -> None:
        log = self.box.log
        assert log.nbytes <= self.limit or len(log.items) == 1  # type: ignore[union-attr]

    @invariant()
    def owed_is_in_order_and_uncommitted_or_later(self) -> None:
        seqs = self._owed()
        assert seqs == sorted(seqs)
        assert len(set(seqs)) == len(seqs)

    @invariant()
    def exactly_the_logged_items_and_segments_are_kept(self) -> None:
        logged = {id(it) for it in self.box.log.replay()}  # type: ignore[union-attr]
        for it in self.items:
            assert it.logged == (id(it) in logged), it.header
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


def test_a_full_log_keeps_the_run_after_the_commit_until_a_commit_covers_its_holes() -> None:
    log = ReplayLog("ch", "k/in", limit_bytes=3 * SIZE)
    items = []
    for seq in range(5):
        it = Item({"source": "p", "seq": seq}, None, SIZE, True)
        it.segment = FakeSegment()  # type: ignore[assignment]
        items.append((it, log.keep(it)))
    assert [kept for _, kept in items] == [True, True, True, False, False]
    assert [it.header["seq"] for it in log.replay()] == [0, 1, 2]
    assert [it.segment.kept for it, _ in items] == [True, True, True, False, False]  # type: ignore[union-attr]
    assert log.full and log.gaps == {"p": 4} and log.forgotten == 2
    log.commit({"p": 3})  # covers 0-3, not the hole at 4: still full
    assert log.full and not log.replay()
    assert not log.keep(Item({"source": "p", "seq": 5}, [], SIZE, False))
    log.commit({"p": 5})  # covers every hole: it keeps again
    assert not log.full and log.keep(Item({"source": "p", "seq": 6}, [], SIZE, False))
    log.clear()
    assert not any(it.segment.kept for it, _ in items)  # type: ignore[union-attr]


def test_a_forced_add_is_kept_in_a_full_log_and_makes_room_by_forgetting_the_oldest() -> None:
    log = ReplayLog("ch", "k/in", limit_bytes=2 * SIZE)
    for seq in range(3):
        log.add({"source": "p", "seq": seq}, [], SIZE)
    assert [it.header["seq"] for it in log.replay()] == [0, 1] and log.full
    log.add({"source": "p", "seq": 3}, [], SIZE, force=True)  # for a consumer that is away: its only way there
    assert [it.header["seq"] for it in log.replay()] == [1, 3]
    assert log.gaps == {"p": 2}  # 0 was kept and then forgotten, 2 never kept: the hole ends at 2


def test_an_outbox_without_a_log_owes_what_a_broken_stream_hands_back_before_what_it_owed_later() -> None:
    box = Outbox("ch", "k/in", None)
    late = Item({"source": "p", "seq": 9}, [], 8, False)
    box.owe(late)
    back = [Item({"source": "p", "seq": s}, [], 8, False) for s in (3, 4)]
    box.adopt(back)
    assert [it.header["seq"] for it in box.owed] == [3, 4, 9]
    assert box.drop_owed() == 3 and not box.owes

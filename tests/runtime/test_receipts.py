"""Work-sharing queues across a producer's restart (runtime/dataplane/receipts.py), driven by hypothesis.

The model: a producer shares its messages among two or three members, each
over its own FIFO link; it checkpoints (after a flush, as the runtime does),
commits, and is killed at any point, when a random prefix of what each link
carries arrives and the rest is lost. Its successor sends again everything from
the checkpoint on, under the same numbers, routed by the plan the members'
receipts give; each member drops a number at or below its highest. Whatever the
interleaving, every number must be processed exactly once across the members.
"""

from __future__ import annotations

from collections import Counter, deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from coupler.runtime.dataplane.receipts import FLOOR_KEY, Avoid, Pin, ReceiptLog, ReplayPlan, floor_of

SRC = "p"


class Member:
    """A work-sharing member: its dedupe mark (the buffer's ``last_seq``), receipts and what it processed."""

    def __init__(self) -> None:
        self.mark = -1
        self.receipts = ReceiptLog()
        self.processed: list[int] = []
        self.link: deque[tuple[int, int]] = deque()  # (seq, floor) in flight to it

    def receive(self, seq: int, floor: int) -> None:
        if seq <= self.mark:
            return  # a duplicate: dropped
        self.mark = seq
        self.receipts.add(SRC, seq, floor)
        self.processed.append(seq)


class SharedQueueModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.members: list[Member] = []
        self.next_seq = 0
        self.checkpoint = 0  # next_seq of the last checkpoint taken
        self.floor = 0  # next_seq of the last committed checkpoint

    @rule(n=st.integers(2, 3))
    @precondition(lambda self: not self.members)
    def start(self, n: int) -> None:
        self.members = [Member() for _ in range(n)]

    @rule(k=st.integers(0, 2))
    @precondition(lambda self: self.members)
    def send(self, k: int) -> None:
        """The producer sends its next message to member ``k`` (whichever had room)."""
        self.members[k % len(self.members)].link.append((self.next_seq, self.floor))
        self.next_seq += 1

    @rule(k=st.integers(0, 2))
    @precondition(lambda self: self.members)
    def arrive(self, k: int) -> None:
        m = self.members[k % len(self.members)]
        if m.link:
            m.receive(*m.link.popleft())

    @rule()
    @precondition(lambda self: self.members)
    def checkpoint_after_flush(self) -> None:
        for m in self.members:
            while m.link:
                m.receive(*m.link.popleft())
        self.checkpoint = self.next_seq

    @rule()
    def commit(self) -> None:
        self.floor = self.checkpoint

    @rule(data=st.data())
    @precondition(lambda self: self.members)
    def kill_and_restart(self, data: st.DataObject) -> None:
        """The producer dies: each link delivers a prefix of what it carried; the successor sends the rest again."""
        for m in self.members:
            arrived = data.draw(st.integers(0, len(m.link)))
            for _ in range(arrived):
                m.receive(*m.link.popleft())
            m.link.clear()
        start = self.checkpoint
        plan = ReplayPlan.from_records(start, [(str(i), m.mark, m.receipts.since(SRC, start)) for i, m in enumerate(self.members)])
        for seq in range(start, self.next_seq):
            where = None if plan.over(seq) else plan.route(seq)
            if isinstance(where, Pin):
                k = int(where.cid)
            else:
                allowed = [i for i in range(len(self.members)) if not (isinstance(where, Avoid) and str(i) in where.cids)]
                k = data.draw(st.sampled_from(allowed or list(range(len(self.members)))))
            self.members[k].receive(seq, start)  # the successor's floor is its checkpoint's
            plan.sent(seq, str(k))
        self.floor = max(self.floor, start)

    @invariant()
    def nothing_processed_twice(self) -> None:
        counts = Counter(q for m in self.members for q in m.processed)
        assert all(c == 1 for c in counts.values()), {q: c for q, c in counts.items() if c > 1}

    @invariant()
    def nothing_lost_once_everything_arrived(self) -> None:
        # What a kill loses on the way is at or after the checkpoint (it follows a flush),
        # and the successor sends all of that again: once the links are empty, all arrived.
        if not any(m.link for m in self.members):
            assert sorted(q for m in self.members for q in m.processed) == list(range(self.next_seq))


SharedQueueModel.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
TestSharedQueueAcrossProducerRestarts = SharedQueueModel.TestCase


@given(
    routes=st.lists(st.tuples(st.integers(0, 2), st.booleans()), min_size=1, max_size=30),
    start=st.integers(0, 10),
)
@settings(max_examples=300, deadline=None)
def test_after_a_restart_every_number_is_processed_once_and_none_is_lost(routes: list[tuple[int, bool]], start: int) -> None:
    """One restart, exhaustively: numbers ``start`` on went to members, some lost on the way (a FIFO tail per link)."""
    members = [Member() for _ in range(3)]
    for q in range(start):
        members[q % 3].receive(q, 0)  # before the checkpoint: all arrived
    lost_from: dict[int, int] = {}
    for i, (k, lost) in enumerate(routes):
        seq = start + i
        if lost or k in lost_from:  # a link loses a tail: nothing after a lost message on it arrives
            lost_from.setdefault(k, seq)
            continue
        members[k].receive(seq, start)
    plan = ReplayPlan.from_records(start, [(str(i), m.mark, m.receipts.since(SRC, start)) for i, m in enumerate(members)])
    for seq in range(start, start + len(routes)):
        where = plan.route(seq)
        if isinstance(where, Pin):
            k = int(where.cid)
        else:
            k = next(i for i in (2, 1, 0) if not (isinstance(where, Avoid) and str(i) in where.cids))
        members[k].receive(seq, start)
        plan.sent(seq, str(k))
    got = sorted(q for m in members for q in m.processed)
    assert got == list(range(start + len(routes)))


def test_a_plan_pins_what_a_member_had_and_avoids_members_that_would_drop_the_rest() -> None:
    # a had 10 and 12; b had 11 and 14; 13 was lost on its way to b
    plan = ReplayPlan.from_records(10, [("a", 12, [10, 12]), ("b", 14, [11, 14])])
    assert plan.route(10) == Pin("a") and plan.route(11) == Pin("b") and plan.route(12) == Pin("a")
    assert plan.route(13) == Avoid(frozenset({"b"}))  # b would drop 13 (it has 14); a accepts it
    assert plan.route(14) == Pin("b")
    assert plan.over(15) and plan.route(15) is None


def test_a_number_below_every_members_mark_that_none_recorded_goes_anywhere() -> None:
    """A member restarted from its checkpoint has its predecessor's mark but not its receipts."""
    plan = ReplayPlan.from_records(5, [("a", 9, []), ("b", 8, [6])])
    assert plan.route(5) is None and plan.route(6) == Pin("b") and plan.route(7) is None


def test_receipts_keep_numbers_from_the_floor_on_and_at_most_the_limit() -> None:
    log = ReceiptLog(limit=4)
    for q in range(6):
        log.add("p", q)
    assert log.since("p", 0) == [2, 3, 4, 5] and log.overflowed == 2
    log.add("p", 6, floor=5)
    assert log.since("p", 0) == [5, 6]
    log.add("p", 7, floor=3)  # floors never go down
    assert log.since("p", 0) == [5, 6, 7]
    log.add("p", 4)  # below the floor: not kept
    assert log.since("p", 0) == [5, 6, 7]
    log.forget("p")
    assert log.sources() == []


def test_receipts_stay_sorted_when_carried_messages_come_out_of_order() -> None:
    log = ReceiptLog()
    for q in (5, 7, 3):
        log.add("p", q)
    assert log.since("p", 4) == [5, 7] and log.since("p", 0) == [3, 5, 7]


@pytest.mark.parametrize(
    ("meta", "floor"),
    [({FLOOR_KEY: 7}, 7), ({}, None), (None, None), ({FLOOR_KEY: -1}, None), ({FLOOR_KEY: True}, None),
     ({FLOOR_KEY: "7"}, None), ({FLOOR_KEY: 2**63}, None)],
)
def test_a_malformed_floor_from_a_peer_is_ignored(meta: object, floor: int | None) -> None:
    assert floor_of(meta) == floor

"""The input-order logging protocol (runtime/dataplane/lineage.py), driven through every interleaving by hypothesis.

The model: a merging actor takes messages of two producers in some order,
sends outputs on one or two channels (each send carries the takes since that
channel's previous send), checkpoints and commits now and then, and is killed
at any point. Its consumers keep what the notes carried. Whatever the
interleaving, the order a restart joins from the consumers must be exactly the
takes the dead instance made after its checkpoint, up to its last send that a
consumer received: the prefix every output it sent depends on.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from coupler.runtime.dataplane.lineage import LineageStore, ReplayOrder, TakeLog, TakesNote, replay_order


class MergerModel(RuleBasedStateMachine):
    """One merging actor, two output channels with two consumers each, one checkpoint at a time."""

    def __init__(self) -> None:
        super().__init__()
        self.log = TakeLog()
        self.taken: list[tuple[str, str, int]] = []  # every take, ever (the truth)
        self.next_seq = {"p": 0, "q": 0}
        self.stores = {(ch, k): LineageStore() for ch in ("o1", "o2") for k in (0, 1)}
        self.last_send_take = 0  # takes made before the last send any consumer received
        self.checkpoint = 0  # the count at the last checkpoint taken
        self.committed = 0

    @rule(src=st.sampled_from(["p", "q"]), channel=st.sampled_from(["in1", "in2"]))
    def take(self, src: str, channel: str) -> None:
        seq = self.next_seq[src]
        self.next_seq[src] += 1
        self.log.record(channel, src, seq)
        self.taken.append((channel, src, seq))

    @rule(channel=st.sampled_from(["o1", "o2"]), consumer=st.sampled_from([0, 1, None]), lost=st.booleans())
    def send(self, channel: str, consumer: int | None, lost: bool) -> None:
        """A send on ``channel`` to one consumer (work-sharing) or both (``None``: broadcast); ``lost``: it failed."""
        note = self.log.note_for(channel)
        if lost or note is None:
            return  # a failed send is not marked sent: the next one carries the same takes again
        for k in (0, 1) if consumer is None else (consumer,):
            self.stores[(channel, k)].add("merger", TakesNote.from_wire(note.to_wire()))
        self.log.sent(channel, note)
        self.last_send_take = self.log.count

    @rule()
    def checkpoint_taken(self) -> None:
        self.checkpoint = self.log.count

    @rule()
    def commit(self) -> None:
        self.log.commit(self.checkpoint)
        self.committed = self.checkpoint

    @rule()
    def restart(self) -> None:
        """Kill and restore from the last checkpoint (committed or not yet): the joined order is the truth's suffix."""
        start = self.checkpoint
        parts = [s.since("merger", start) for s in self.stores.values()]
        order = replay_order(parts, start)
        assert order == self.taken[start:self.last_send_take]
        # The restored instance repeats exactly those takes, then goes on.
        self.log = TakeLog(start)
        self.committed = start  # the supervisor commits the checkpoint it restored from
        self.taken = self.taken[:start] + order
        for ch, src, seq in order:
            self.log.record(ch, src, seq)
        self.next_seq = {s: 1 + max([q for _, p, q in self.taken if p == s], default=-1) for s in ("p", "q")}
        self.last_send_take = start + len(order)

    @invariant()
    def stores_keep_nothing_below_a_committed_base_they_were_told(self) -> None:
        for store in self.stores.values():
            base = store._base.get("merger", 0)
            assert all(n >= base for n in store.since("merger", 0))
            assert base <= self.committed


TestMergerModel = MergerModel.TestCase
TestMergerModel.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


class _Msg:
    def __init__(self, source: str, seq: int) -> None:
        self.source, self.seq = source, seq


@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.sampled_from(["p", "q"]), st.integers(0, 50)), max_size=30))
def test_a_replay_order_hands_out_each_channels_head_only(takes: list[tuple[str, str, int]]) -> None:
    order = ReplayOrder(takes)
    items = {"a": [_Msg(s, q) for ch, s, q in reversed(takes) if ch == "a"], "b": [_Msg(s, q) for ch, s, q in takes if ch == "b"]}
    out = []
    while order.head() is not None:
        picks = {ch: order.pick(ch, items[ch]) for ch in ("a", "b")}
        ready = [ch for ch, i in picks.items() if i is not None]
        assert len(ready) == 1, "exactly the head's channel can hand out"
        ch = ready[0]
        m = items[ch].pop(picks[ch])
        out.append((ch, m.source, m.seq))
        order.pop()
    assert out == takes


def test_a_gap_or_a_conflict_ends_the_order() -> None:
    t = [("a", "p", i) for i in range(5)]
    assert replay_order([{0: t[0], 1: t[1]}, {3: t[3]}], 0) == t[:2]  # nobody holds take 2
    assert replay_order([{0: t[0], 1: t[1]}, {1: t[2], 2: t[2]}], 0) == t[:1]  # two answers for take 1
    assert replay_order([{5: t[0]}], 5) == [t[0]]


@pytest.mark.parametrize(
    "wire",
    [None, [], [0, 0], [-1, 0, []], [0, 0, [["a", "p"]]], [0, 0, [["a", "p", -3]]], [0, True, []], [0, 0, [[1, "p", 2]]], "x"],
)
def test_a_malformed_note_is_refused_with_what_was_expected(wire: object) -> None:
    with pytest.raises(ValueError, match="takes note"):
        TakesNote.from_wire(wire)


def test_a_commit_beyond_the_takes_made_is_refused() -> None:
    log = TakeLog(3)
    log.record("a", "p", 0)
    with pytest.raises(ValueError, match="only 4 takes"):
        log.commit(5)


def test_without_commits_the_takes_kept_stay_bounded_and_a_restart_then_repeats_nothing() -> None:
    log, store = TakeLog(limit=100), LineageStore(limit=100)
    for i in range(1000):
        log.record("a", "p", i)
        note = log.note_for("o")
        assert note is not None
        store.add("m", note)
        log.sent("o", note)
    assert log.count - log.base <= 100, "the actor keeps at most its limit"
    assert len(store) <= 100, "so does each consumer, per producer"
    assert log.overflowed >= 900
    assert replay_order([store.since("m", 0)], 0) == []  # the start of the order is gone: nothing to repeat

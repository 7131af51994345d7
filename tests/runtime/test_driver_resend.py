"""A script's publisher across restarts of its relay: what it keeps, and every returned number delivered once.

The relay here is a model (no cluster): it numbers messages from where its last
checkpoint resumes, as ``actors/relay.py`` does, and its consumer keeps the first
payload of each number, as a ``Queue`` consumer's marks do. Hypothesis chooses
sends, checkpoints and restarts, and how much of what followed the checkpoint
had reached the consumer when the relay's worker was lost.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coupler.runtime.driver import Publisher
from coupler.runtime.driver_resend import ResendLog
from coupler.runtime.errors import SequenceBehind


class _Relay:
    """What the publisher calls: ``send`` with ``expect`` and ``skip_to`` of ``DriverRelay``, in memory."""

    name = "driver-pub0:ch"

    def __init__(self) -> None:
        self.next_seq = 0
        self.checkpoint: int | None = None
        self.consumer: dict[int, float] = {}  # number -> first payload taken under it
        self.after_checkpoint: list[int] = []  # numbers sent since the checkpoint, in order

    def call(self, method: str, *args: Any, **kw: Any) -> Any:
        if method == "skip_to":
            (seq,) = args
            assert seq >= self.next_seq
            self.next_seq = seq
            return None
        assert method == "send"
        (data,) = args
        expect = kw["expect"]
        if expect is not None:
            if self.next_seq == expect + 1:
                return expect
            if self.next_seq < expect:
                raise SequenceBehind("behind", self.next_seq)
            assert self.next_seq == expect
        seq = self.next_seq
        self.next_seq += 1
        self.consumer.setdefault(seq, float(data["v"]))
        self.after_checkpoint.append(seq)
        return seq

    def take_checkpoint(self) -> None:
        self.checkpoint, self.after_checkpoint = self.next_seq, []

    def lose_worker(self, reached: int) -> None:
        """Restart from the checkpoint; of what followed it, only the first ``reached`` had reached the consumer."""
        for seq in self.after_checkpoint[reached:]:
            self.consumer.pop(seq, None)
        self.next_seq, self.after_checkpoint = self.checkpoint or 0, []


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.just(("send",)), st.just(("checkpoint",)), st.tuples(st.just("lose"), st.integers(0, 6))), max_size=40))
def test_every_number_a_send_returned_reaches_the_consumer_once_with_its_payload(ops: list[tuple[Any, ...]]) -> None:
    relay = _Relay()
    pub = Publisher("ch", relay, lambda r: None, checkpointed=lambda: relay.checkpoint)  # type: ignore[arg-type]
    returned: dict[int, float] = {}
    value = 0.0
    for op in ops:
        if op[0] == "send":
            data = {"v": np.array(value)}
            seq = pub.send(data)
            data["v"][...] = -1.0  # the script changes its array once send returned: what is kept is a copy
            assert seq not in returned, f"number {seq} returned twice"
            returned[seq] = value
            value += 1.0
        elif op[0] == "checkpoint":
            relay.take_checkpoint()
        else:
            relay.lose_worker(op[1])
    pub.send({"v": np.array(value)})  # the next send brings a restarted relay up to date
    returned[max(returned, default=-1) + 1] = value
    assert {seq: relay.consumer.get(seq) for seq in returned} == returned
    assert sorted(returned) == list(range(len(returned)))  # gap-free: nothing was lost, so nothing skipped


def test_what_the_log_could_not_keep_is_skipped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    relay = _Relay()
    pub = Publisher("ch", relay, lambda r: None, checkpointed=lambda: relay.checkpoint, keep_bytes=16)  # type: ignore[arg-type]
    for i in range(5):  # 8 bytes each: two are kept, the rest is not
        pub.send({"v": np.array(float(i))})
    relay.lose_worker(0)  # nothing after the (absent) checkpoint had reached the consumer
    with caplog.at_level(logging.WARNING):
        assert pub.send({"v": np.array(5.0)}) == 5
    assert relay.consumer == {0: 0.0, 1: 1.0, 5: 5.0}  # 0 and 1 sent again; 2-4 lost, their numbers never reused
    assert "messages 2 to 4 were not kept" in caplog.text


def test_the_log_keeps_a_gap_free_run_after_the_checkpoint_within_its_bytes() -> None:
    log = ResendLog("src", "ch", limit_bytes=24)
    for seq in range(5):
        log.add(seq, {"x": np.zeros(1)}, {}, checkpointed=None)  # 8 bytes each
    assert [k.seq for k in log.since(0)] == [0, 1, 2] and log.full_from == 3 and log.nbytes == 24
    log.add(5, {"x": np.zeros(1)}, {}, checkpointed=2)  # covers 0 and 1, not the hole at 3: still not keeping
    assert [k.seq for k in log.since(2)] == [2] and log.full_from == 3
    log.add(6, {"x": np.zeros(1)}, {}, checkpointed=6)  # covers the hole: whole again, keeps 6
    assert [k.seq for k in log.since(6)] == [6] and log.full_from is None and log.nbytes == 8
    assert ResendLog("src", "ch", 0).keeps is False  # at-least-once off: nothing kept


def test_a_subscription_drops_what_a_restarted_relay_takes_again() -> None:
    from coupler.actors.hand_outs import HandOut
    from coupler.runtime.driver import Subscription
    from coupler.runtime.message import Message

    class _InRelay:
        name = "driver-sub0:ch"

        def __init__(self, seqs: list[tuple[str, int]]) -> None:
            self.queue = [Message({"v": np.array(float(q))}, source=s, seq=q) for s, q in seqs]
            self.number = -1

        def call(self, method: str, *args: Any) -> Any:
            assert method == "receive"
            self.number += 1
            return HandOut(self.number, self.queue.pop(0))

    # The relay was restarted from a checkpoint that covered a/0 only: a/1 and a/2 come again;
    # b's numbers are its own.
    relay = _InRelay([("a", 0), ("a", 1), ("b", 0), ("a", 2), ("a", 1), ("a", 2), ("b", 0), ("a", 3), ("b", 1)])
    sub = Subscription("ch", relay, lambda r: None)  # type: ignore[arg-type]
    got = [(m.source, m.seq) for m in (sub.receive(timeout=5) for _ in range(6))]
    assert got == [("a", 0), ("a", 1), ("b", 0), ("a", 2), ("a", 3), ("b", 1)] and not relay.queue

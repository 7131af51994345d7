"""A subscription relay's hand-outs (actors/hand_outs.py) across lost replies and restarts, driven by hypothesis.

The model: a producer's ``Queue`` stream (numbers 0, 1, ...), a relay that takes
from it for the script, checkpoints (covering what its log says) and is lost at
any point -- between a take and its record, between the record and the reply --
and restored from its last checkpoint, with the producer replaying what that
checkpoint does not cover. The script retries a call that failed and drops a
number it had. Whatever the interleaving, the script gets 0, 1, 2, ... once
each, in order, with nothing missing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from coupler.actors.hand_outs import HandOut, HandOutLog
from coupler.runtime import Message


def _msg(seq: int) -> Message:
    return Message({"v": np.array(float(seq))}, source="p", seq=seq)


class RelayModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.log = HandOutLog()
        self.taken = -1  # the relay buffer's taken mark: its next take is this + 1
        self.checkpoint: dict[str, Any] | None = None
        self.ack = -1  # the script's last hand-out number
        self.got: list[int] = []  # what the script took, after its (source, seq) drop

    def _restart(self) -> None:
        """The relay's worker is lost: a successor from the last checkpoint; the producer replays past it."""
        self.log = HandOutLog()
        if self.checkpoint is None:
            self.taken = -1
            return
        self.log.load(self.checkpoint["state"])
        self.taken = self.checkpoint["delivered"].get("p", -1)

    def _checkpoint(self) -> None:
        state = self.log.state()
        self.checkpoint = {"state": state, "delivered": dict(state["covered"])}

    @rule(
        checkpoint_before_record=st.booleans(),
        checkpoint_before_reply=st.booleans(),
        lost=st.sampled_from(["no", "before record", "before reply"]),
    )
    def call(self, checkpoint_before_record: bool, checkpoint_before_reply: bool, lost: str) -> None:
        """One ``receive`` call of the script, which may lose the relay's worker on its way."""
        h: HandOut | None = self.log.acknowledge(self.ack)
        if h is None:
            self.taken += 1  # the buffer hands it out (its taken mark moves)
            m = _msg(self.taken)
            if checkpoint_before_record:
                self._checkpoint()
            if lost == "before record":
                self._restart()
                return
            h = self.log.record(m)
        if checkpoint_before_reply:
            self._checkpoint()
        if lost != "no":
            self._restart()
            return  # the reply never reached the script; it retries the call
        self.ack = h.number
        seq = h.message.seq
        if not self.got or seq > self.got[-1]:
            self.got.append(seq)

    @rule()
    def checkpoint(self) -> None:
        self._checkpoint()

    @rule()
    def lose_the_relay(self) -> None:
        self._restart()

    @invariant()
    def the_script_gets_every_number_once_in_order(self) -> None:
        assert self.got == list(range(len(self.got))), self.got


RelayModel.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
TestHandOutsAcrossRelayLosses = RelayModel.TestCase


def test_an_acknowledged_hand_out_is_forgotten_and_a_restored_one_comes_again_first() -> None:
    log = HandOutLog()
    a, b = log.record(_msg(0)), log.record(_msg(1))
    assert (a.number, b.number) == (0, 1) and log.covered() == {"p": 1}
    assert log.acknowledge(0) is None  # 0 forgotten, 1 kept
    restored = HandOutLog()
    restored.load(log.state())
    again = restored.acknowledge(0)
    assert again is not None and again.number == 1 and again.message.seq == 1
    assert restored.acknowledge(1) is None and restored.state()["handed"] == []


def test_new_numbers_stay_above_an_acknowledgement_from_before_the_checkpoint() -> None:
    log = HandOutLog()
    log.load({"handed": [], "next": 3, "covered": {}})
    assert log.acknowledge(7) is None and log.record(_msg(0)).number == 8


@pytest.mark.parametrize("state", [{}, {"handed": [], "next": "x", "covered": {}}, {"handed": [[0]], "next": 1, "covered": {}}])
def test_a_state_that_is_not_a_logs_is_refused(state: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="handed, next and covered"):
        HandOutLog().load(state)

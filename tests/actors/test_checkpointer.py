"""What the checkpointer waits for, with stand-in ports (no cluster).

A periodic checkpoint flushed every output, lossy ones included, so a ``Latest``
producer waited for a consumer whose host was cut off (5 s per checkpoint, its
other consumers starved: an outside attack on emulated hosts). A hand-over whose
``Queue`` outputs were not accepted, or that abandoned a step, must say it is
incomplete, so that the supervisor restarts the actor from its last stored
checkpoint instead (runtime/control/spawning.py).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from coupler.actors.checkpointing import LOSSY_HANDOVER_FLUSH_TIMEOUT, Checkpointer
from coupler.actors.run_loop import LoopRecord
from coupler.actors.take_order import TakeOrder
from coupler.runtime import ChannelTimeout


class _Out:
    def __init__(self, channel: str, lossy: bool, accepts: bool = True) -> None:
        self.channel, self.source, self.lossy, self.accepts = channel, f"a/{channel}", lossy, accepts
        self.flushed: list[float | None] = []

    def flush(self, timeout: float | None = None) -> None:
        self.flushed.append(timeout)
        if not self.accepts:
            raise ChannelTimeout(f"channel {self.channel!r}: not accepted within {timeout} s")


def _checkpointer(outputs: dict[str, Any], state: str = "running") -> Checkpointer:
    endpoint = SimpleNamespace(sender=SimpleNamespace(next_seq=lambda channel, source: 3))
    return Checkpointer("a", "A", endpoint, {}, outputs, LoopRecord(state=state), TakeOrder(),  # type: ignore[arg-type]
                        lambda: {"i": 1}, lambda s: None)  # fmt: skip


@pytest.mark.parametrize("accepts", [True, False])
def test_a_periodic_checkpoint_waits_for_queue_outputs_only(accepts: bool) -> None:
    queue, latest = _Out("q", lossy=False), _Out("l", lossy=True, accepts=accepts)
    ck = _checkpointer({"q": queue, "l": latest}).take_after_flush()
    assert queue.flushed and not latest.flushed
    assert ck["outputs"] == {"q": {"next_seq": 3}, "l": {"next_seq": 3}}


def test_a_queue_output_not_accepted_still_fails_the_periodic_checkpoint() -> None:
    with pytest.raises(ChannelTimeout):
        _checkpointer({"q": _Out("q", lossy=False, accepts=False)}).take_after_flush()


@pytest.mark.parametrize(
    ("queue_accepts", "abandoned", "incomplete"),
    [
        (True, False, ""),
        (False, False, "what was sent on 'q' was not accepted"),
        (True, True, "a step was abandoned"),
        (False, True, "a step was abandoned; what was sent on 'q' was not accepted"),
    ],
)
def test_a_hand_over_says_whether_a_successor_may_resume_from_it(queue_accepts: bool, abandoned: bool, incomplete: str) -> None:
    outputs = {"q": _Out("q", lossy=False, accepts=queue_accepts), "l": _Out("l", lossy=True, accepts=False)}
    ck = _checkpointer(outputs).hand_over("running", abandoned=abandoned)
    assert ck["incomplete"] == incomplete
    # A lossy output's last value is given a moment to go, and its loss does not count.
    assert outputs["l"].flushed == [LOSSY_HANDOVER_FLUSH_TIMEOUT]


@pytest.mark.parametrize(("state", "abandoned"), [("stopped", False), ("failed", False), ("failed", True)])
def test_an_actor_that_ended_hands_over_complete_whatever_its_outputs(state: str, abandoned: bool) -> None:
    # It never sends again, nor does its successor: a restart from an older checkpoint would roll
    # a stopped actor back to "created" with older results (a review found it).
    outputs = {"q": _Out("q", lossy=False, accepts=False)}
    assert _checkpointer(outputs, state=state).hand_over("running", abandoned=abandoned)["incomplete"] == ""


def test_an_actor_stopped_by_the_hand_overs_own_abort_is_incomplete() -> None:
    # The forced retire interrupts the step blocked in a send: the loop ends "stopped", mid-step.
    outputs = {"q": _Out("q", lossy=False)}
    assert _checkpointer(outputs, state="stopped").hand_over("running", abandoned=True)["incomplete"] == "a step was abandoned"

"""Periodic checkpoints never hold up the supervisor's poll: a slow one is collected on a later poll."""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

import cloudpickle
import dask

import supervision_actors
from supervision_actors import Counter
from coupler.runtime import Coupling
from polling import until

cloudpickle.register_pickle_by_value(supervision_actors)
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # SlowCheckpoint travels to the workers by value

PAUSE = 3.5  # seconds a SlowCheckpoint's state_dict takes (under the 5 s a periodic checkpoint may take)


class SlowCheckpoint(Counter):
    """A :class:`Counter` whose ``state_dict`` takes :data:`PAUSE` seconds (a large state copied slowly)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.begun = 0  # state_dict calls begun (read by status() from Dask's actor thread)

    def state_dict(self) -> dict[str, Any]:
        self.begun += 1
        time.sleep(PAUSE)
        return super().state_dict()

    def info(self) -> dict[str, Any]:
        return {**super().info(), "begun": self.begun}




def test_a_slow_checkpoint_does_not_delay_the_restart_of_another_actor() -> None:
    """With checkpoints taken inside the poll, the poll waited for the slow one (3.5 s here)
    before it looked at the workers again: the other actor's loss went unnoticed meanwhile."""
    settings = {
        "coupler.supervision.poll-interval": 0.2,
        "coupler.supervision.checkpoint-interval": 6,
        "coupler.supervision.restart-backoff": 0,
    }
    with dask.config.set(settings), Coupling(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cp:
        w = cp.workers()
        slow = cp.spawn(SlowCheckpoint, 1_000_000, 8, 0.01, name="slow", workers=w[0])
        other = cp.spawn(Counter, 1_000_000, 8, 0.01, name="other", workers=w[1])
        slow.start()
        other.start()
        until("the slow checkpoint to begin", lambda: slow.status().info["begun"] >= 1, timeout=30)

        began = time.monotonic()
        cp.supervisor.poll()  # the watch thread's poll holds the same lock while it acts
        assert time.monotonic() - began < 1.5, "a poll waited for a checkpoint"

        pid = cp.client.run(os.getpid, workers=[w[1]])[w[1]]
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        until("the restart", lambda: other.generation == 1, timeout=45)
        noticed = cp.supervisor._records["other"].awaiting_since - killed
        assert noticed < 2.0, f"the loss was handled {noticed:.1f} s after the kill"

        # The slow checkpoint is collected by a later poll once it is done.
        until("the slow checkpoint", lambda: cp.supervisor.last_checkpoint("slow") is not None, timeout=30)
        assert not [e for e in cp.supervisor.events if e.kind == "checkpoint-failed" and e.actor == "slow"]
        assert other.status().state == "running"

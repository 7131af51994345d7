"""Actors for the emulated-host tests (shipped to the workers by value).

Every message also carries the identity of the simulator instance that sent it,
so a test can tell a restarted simulator's successor from its old instance, still
running on a cut-off host: the two must never both deliver.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import numpy as np

from chaos_actors import QueueLearner, Simulator, checksum, sample, sgd_step


class TimedSimulator(Simulator):
    """The reliability tests' simulator, stamping each sample with its instance and recording when each send returned.

    Every emulated host shares the VM's monotonic clock, so the driver can set the send
    times against the moments it cut and healed a link: a long gap between two sends
    is how long the producer was blocked.
    """

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.instance = secrets.randbits(62)  # a new one in every instance (a restart builds a new instance)
        self.sent_at: list[tuple[int, float]] = []

    def step(self) -> bool:
        if self.i >= self.n:
            return False
        time.sleep(self.period)
        self.outputs["out"].send({**sample(self.seed, self.i), "instance": np.array(self.instance, np.int64)}, step=self.i)
        self.sent_at.append((self.i, time.monotonic()))
        self.i += 1
        return True

    def instance_id(self) -> int:
        """This instance's identity (what its messages carry)."""
        return self.instance

    def send_times(self) -> list[tuple[int, float]]:
        """(seq, when its send returned) for every send of this instance."""
        return list(self.sent_at)


class InstanceLearner(QueueLearner):
    """A QueueLearner that also records which simulator instance sent each message it trained on."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.instances: list[int] = []

    def step(self) -> bool:
        m = self.inputs["data"].receive()
        self.w = sgd_step(self.w, m.data["x"], m.data["y"])
        self.trained.append((m.source, m.seq))
        self.instances.append(int(m.data["instance"]))
        self.total += checksum(m.data)  # x and y only: the stamp is not part of the sample
        return True

    def record(self) -> dict[str, Any]:
        return {**super().record(), "instances": list(self.instances)}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "instances": list(self.instances)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.instances = [int(i) for i in state["instances"]]

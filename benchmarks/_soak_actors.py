"""Actor hosts the soak benchmark spawns (shipped to workers by value: numpy and coupler only)."""

from __future__ import annotations

from typing import Any

import numpy as np

from coupler.actors import ActorHost


class SoakProducer(ActorHost):
    """Send ``n`` float32 messages of ``nbytes`` on its ``out`` port, then finish.

    Args:
        n: messages to send.
        nbytes: payload bytes per message (a multiple of 4).
    """

    def __init__(self, n: int, nbytes: int, **kw: Any) -> None:
        super().__init__(**kw)
        self.n, self.i = n, 0
        self.payload = np.zeros(nbytes // 4, np.float32)

    def step(self) -> bool:
        if self.i >= self.n:
            return False
        self.payload[0] = self.i  # a different message each time, written by this step
        self.outputs["out"].send({"x": self.payload}, step=self.i)
        self.i += 1
        return True


class SoakConsumer(ActorHost):
    """Take messages from its ``inp`` port and count them (the payload is read, not kept)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.taken = 0
        self.checksum = 0.0

    def step(self) -> bool:
        m = self.inputs["inp"].receive()
        self.checksum += float(m.data["x"][0])
        self.taken += 1
        return True

    def info(self) -> dict[str, Any]:
        return {"taken": self.taken}

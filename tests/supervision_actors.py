"""Actor hosts with checkpointable state for the supervision tests (shipped to workers by value)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from coupler.actors import ActorHost


class Counter(ActorHost):
    """Sends ``n`` messages ``{"x": float32[size] filled with i}`` on ``out``, one per step.

    Args:
        n: messages to send.
        size: floats per message.
        period: seconds to sleep per step (stands for computing the data).
    """

    def __init__(self, n: int, size: int = 8, period: float = 0.0, **kw: Any) -> None:
        super().__init__(**kw)
        self.n, self.size, self.period, self.i = n, size, period, 0

    def step(self) -> bool:
        if self.i >= self.n:
            return False
        if self.period:
            time.sleep(self.period)
        if "out" in self.outputs:
            self.outputs["out"].send({"x": np.full(self.size, self.i, np.float32)}, step=self.i)
        self.i += 1
        return True

    def info(self) -> dict[str, Any]:
        return {"i": self.i}

    def state_dict(self) -> dict[str, Any]:
        return {"i": self.i}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.i = int(state.get("i", 0))


class Tally(ActorHost):
    """Receives from ``inp`` and records ``(source, seq, value)`` of every message, plus a checksum.

    Args:
        period: seconds to sleep after each message (a slow consumer: it has messages left when a channel closes).
    """

    def __init__(self, period: float = 0.0, **kw: Any) -> None:
        super().__init__(**kw)
        self.period = period
        self.got: list[tuple[str, int, float]] = []
        self.checksum = 0.0
        self.workers_seen: list[str] = []

    def setup(self) -> None:
        self.workers_seen.append(self.endpoint.address)

    def step(self) -> bool:
        m = self.inputs["inp"].receive()
        x = m.data["x"]
        self.got.append((m.source, m.seq, float(x[0])))
        self.checksum += float(x.sum())
        if self.period:
            time.sleep(self.period)
        return True

    def info(self) -> dict[str, Any]:
        return {"count": len(self.got)}

    def record(self) -> dict[str, Any]:
        return {"got": list(self.got), "checksum": self.checksum, "workers": list(self.workers_seen)}

    def state_dict(self) -> dict[str, Any]:
        return {"got": list(self.got), "checksum": self.checksum, "workers": list(self.workers_seen)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.got = [(str(s), int(q), float(v)) for s, q, v in state.get("got", [])]
        self.checksum = float(state.get("checksum", 0.0))
        self.workers_seen = list(state.get("workers", []))


class FieldLog(ActorHost):
    """Receives simulator snapshots from ``inp`` and keeps ``(source, seq, step, member, field)``.

    Args:
        period: seconds to sleep after each message (a slow consumer: back-pressure).
    """

    def __init__(self, period: float = 0.0, **kw: Any) -> None:
        super().__init__(**kw)
        self.period = period
        self.got: list[tuple[str, int, int, int, np.ndarray]] = []

    def step(self) -> bool:
        m = self.inputs["inp"].receive()
        if self.period:
            time.sleep(self.period)
        self.got.append((m.source, m.seq, m.step, int(m.meta["member"]), np.array(m.data["field"])))
        return True

    def info(self) -> dict[str, Any]:
        return {"count": len(self.got)}

    def record(self) -> list[tuple[str, int, int, int, np.ndarray]]:
        return list(self.got)

"""Actors for the data-plane tests (shipped to workers by value)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from coupler.actors import ActorHost


class Streamer(ActorHost):
    """Sends ``n`` messages ``{"x": float32[size] filled with i}`` as fast as it can, then flushes."""

    def __init__(self, n: int, size: int, **kw: Any) -> None:
        super().__init__(**kw)
        self.n, self.size, self.i = n, size, 0

    def step(self) -> bool:
        if self.i >= self.n:
            self.outputs["out"].flush(timeout=60)
            return False
        self.outputs["out"].send({"x": np.full(self.size, float(self.i), np.float32)}, step=self.i, timestamp=0.25 * self.i)
        self.i += 1
        return True

    def link_stats(self) -> list[dict[str, Any]]:
        """This worker's producer links (what the endpoint reports)."""
        with self.endpoint._lock:
            return [link.stats() for link in self.endpoint.links.values()]

    def pid(self) -> int:
        return os.getpid()


class Keeper(ActorHost):
    """Receives everything and keeps it, to check what a consumer owns."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.msgs: list[Any] = []

    def step(self) -> bool:
        self.msgs.append(self.inputs["inp"].receive())
        return True

    def count(self) -> int:
        return len(self.msgs)

    def summary(self) -> dict[str, Any]:
        """Order, timestamps, content and ownership of what arrived."""
        xs = [m.data["x"] for m in self.msgs]
        ok = all(bool(np.all(x == x[0])) for x in xs)
        writable = all(x.flags.writeable for x in xs)
        for x in xs:  # the consumer may use its data as its own: scribble on it
            x[0] = -1.0
        return {
            "seq": [m.seq for m in self.msgs],
            "step": [m.step for m in self.msgs],
            "timestamp": [m.timestamp for m in self.msgs],
            "first": [float(x[1]) for x in xs],
            "uniform": ok,
            "writable": writable,
            "lag_ok": all(m.sent_at > 0 for m in self.msgs),
        }

    def drop(self) -> None:
        self.msgs.clear()

    def pid(self) -> int:
        return os.getpid()

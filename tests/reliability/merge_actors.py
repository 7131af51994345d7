"""Actors for the exactly-once tests of merging actors (shipped to the workers by value).

Every value is exact in float64, so what the sink got can be compared with what
an offline replay computes, to the bit.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from coupler.actors.base import ActorHost


def value(seed: int, i: int) -> float:
    """The ``i``-th value source ``seed`` sends (distinct across sources and steps)."""
    return float(seed * 100_000 + i)


class Source(ActorHost):
    """Sends ``n`` values on ``out``, one per step; deterministic, so a restart repeats them."""

    def __init__(self, n: int, seed: int, period: float = 0.0, **kw: Any) -> None:
        super().__init__(**kw)
        self.n, self.seed, self.period, self.i = n, seed, period, 0

    def step(self) -> bool:
        if self.i >= self.n:
            return False
        if self.period:
            time.sleep(self.period)
        self.outputs["out"].send({"v": np.array(value(self.seed, self.i))}, step=self.i)
        self.i += 1
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"i": self.i}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.i = int(state["i"])


class Merger(ActorHost):
    """Forwards each value it takes, whatever input it came from, with its running count and a random draw.

    What it sends depends on the order of its takes (the count, the draw from a
    generator whose state is checkpointed): the case a restart used to break.
    It polls its inputs (takes from whichever has a message), so with several
    inputs their interleaving is set by timing too.

    Args:
        add: added to every value.
        seed: of the random generator.
        period: seconds per step.
    """

    def __init__(self, add: float = 1.0, seed: int = 0, period: float = 0.0, **kw: Any) -> None:
        super().__init__(**kw)
        self.add, self.period = add, period
        self.count = 0
        self.rng = np.random.default_rng(seed)
        self._turn = 0

    def step(self) -> bool:
        ports = sorted(self.inputs)
        for k in range(len(ports)):
            port = self.inputs[ports[(self._turn + k) % len(ports)]]
            m = port.receive(timeout=0, default=None)
            if m is not None:
                self._turn += 1
                return self._forward(m)
        time.sleep(0.002)  # nothing anywhere: an empty step (checkpoints and stops are served between steps)
        return True

    def _forward(self, m: Any) -> bool:
        if self.period:
            time.sleep(self.period)
        self.count += 1
        draw = self.rng.standard_normal()
        self.outputs["out"].send({"v": m.data["v"] + self.add, "n": np.array(float(self.count)), "draw": np.array(draw)})
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "rng": self.rng.bit_generator.state, "turn": self._turn}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = int(state["count"])
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = state["rng"]
        self._turn = int(state["turn"])


class Sink(ActorHost):
    """Records every message of its ``Queue`` input: ``(source, seq, v, n, draw)``; checkpointed."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.got: list[tuple[str, int, float, float, float]] = []

    def step(self) -> bool:
        m = self.inputs["data"].receive()
        self.got.append((m.source, m.seq, float(m.data["v"]), float(m.data["n"]), float(m.data["draw"])))
        return True

    def info(self) -> dict[str, Any]:
        return {"count": len(self.got)}

    def record(self) -> list[tuple[str, int, float, float, float]]:
        return list(self.got)

    def state_dict(self) -> dict[str, Any]:
        return {"got": [list(g) for g in self.got]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.got = [(str(s), int(q), float(v), float(n), float(d)) for s, q, v, n, d in state["got"]]

"""Actors for the lossy-policy tests: a producer that runs until stopped and a consumer of any policy."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from coupler.actors.base import ActorHost


class Ticker(ActorHost):
    """Sends its step number on ``out`` every ``period`` seconds until stopped."""

    def __init__(self, period: float = 0.01, **kw: Any) -> None:
        super().__init__(**kw)
        self.period, self.i = period, 0

    def step(self) -> bool:
        time.sleep(self.period)
        self.outputs["out"].send({"i": np.array(self.i, np.int64)}, step=self.i)
        self.i += 1
        return True

    def info(self) -> dict[str, Any]:
        return {"i": self.i}

    def state_dict(self) -> dict[str, Any]:
        return {"i": self.i}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.i = int(state["i"])


class Reader(ActorHost):
    """Takes from ``data`` (``receive`` on Latest, ``sample`` on Reservoir/Window); remembers the newest step seen."""

    def __init__(self, sample: bool, **kw: Any) -> None:
        super().__init__(**kw)
        self.sample, self.newest, self.reads = sample, -1, 0

    def step(self) -> bool:
        if self.sample:
            batch = self.inputs["data"].sample(4, timeout=5)
            newest = int(np.max(batch["i"]))
        else:
            newest = int(self.inputs["data"].receive(timeout=5).data["i"])
        self.newest = max(self.newest, newest)
        self.reads += 1
        time.sleep(0.01)
        return True

    def info(self) -> dict[str, Any]:
        return {"newest": self.newest, "reads": self.reads}

    def state_dict(self) -> dict[str, Any]:
        return {"newest": self.newest}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.newest = int(state["newest"])

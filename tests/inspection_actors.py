"""Actor hosts that keep a coupling busy for the inspection tests (dashboard, /metrics, browser).

Shipped to workers by value (see ``tests/conftest.py``).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from coupler.actors import ActorHost


class Ticker(ActorHost):
    """Sends ``{"x": float32[size]}`` every ``period`` seconds until stopped (a steady message rate)."""

    def __init__(self, period: float = 0.01, size: int = 256, **kw: Any) -> None:
        super().__init__(**kw)
        self.period, self.size, self.i = period, size, 0

    def step(self) -> bool:
        self.outputs["out"].send({"x": np.full(self.size, self.i, np.float32)}, step=self.i)
        self.i += 1
        time.sleep(self.period)
        return True


class Fitter(ActorHost):
    """Receives from ``inp`` and reports a decreasing ``loss`` = 1 / (1 + messages received)."""

    def step(self) -> bool:
        self.inputs["inp"].receive()
        self.report_metric("loss", 1.0 / (2.0 + self._steps))
        return True

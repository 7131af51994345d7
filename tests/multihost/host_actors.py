"""Actors for the emulated-host tests (shipped to the workers by value)."""

from __future__ import annotations

import time
from typing import Any

from chaos_actors import Simulator


class TimedSimulator(Simulator):
    """The reliability tests' simulator, also recording when each send returned (``time.monotonic``).

    Every emulated host shares the VM's monotonic clock, so the driver can set these
    times against the moments it cut and healed a link: a long gap between two sends
    is how long the producer was blocked.
    """

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.sent_at: list[tuple[int, float]] = []

    def step(self) -> bool:
        more = super().step()
        if more:
            self.sent_at.append((self.i - 1, time.monotonic()))
        return more

    def send_times(self) -> list[tuple[int, float]]:
        """(seq, when its send returned) for every send of this instance."""
        return list(self.sent_at)

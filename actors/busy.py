"""The share of a loop's wall time spent in its work: how busy a learner keeps its device.

A learner that trains on a GPU while simulations stream in is only worth its
GPU if it spends most of its time in training steps rather than waiting for data,
sampling its buffer or publishing weights. :class:`BusyMeter` keeps that share
from the intervals of work it is told about; it reads no clock itself, so the
learner (or a test) passes the times.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class BusyMeter:
    """Time spent in work, over the span from the start of the first piece of work to the end of the last.

    Attributes:
        busy_s: seconds inside work intervals.
        first_start: when the first interval began (``None``: none yet).
        last_end: when the last interval ended.
        intervals: intervals recorded.
    """

    busy_s: float = 0.0
    first_start: float | None = None
    last_end: float | None = None
    intervals: int = 0

    def add(self, start: float, end: float) -> None:
        """Record one interval of work.

        Args:
            start, end: its bounds, on one monotonic clock (seconds).

        Raises:
            ValueError: if ``end < start``, or if it starts before the previous interval ended (intervals
                are one loop's, so they never overlap).
        """
        if end < start:
            raise ValueError(f"a work interval must end after it starts; got start {start} > end {end}")
        if self.last_end is not None and start < self.last_end:
            raise ValueError(f"work intervals must not overlap: this one starts at {start}, the last ended at {self.last_end}")
        if self.first_start is None:
            self.first_start = start
        self.last_end = end
        self.busy_s += end - start
        self.intervals += 1

    @property
    def span_s(self) -> float:
        """Seconds from the first interval's start to the last one's end (0 before any)."""
        if self.first_start is None or self.last_end is None:
            return 0.0
        return self.last_end - self.first_start

    def share(self) -> float | None:
        """``busy_s / span_s``, in ``[0, 1]``; ``None`` before any work, 1 for work of zero span."""
        if self.first_start is None:
            return None
        span = self.span_s
        return 1.0 if span <= 0 else min(1.0, self.busy_s / span)

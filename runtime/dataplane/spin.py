"""Spin, then sleep: how long a consumer waiting on its stream polls before it lets its CPU go idle.

A thread that sleeps in ``poll`` lets its CPU go idle, and the next frame
must wake both: on a virtual machine an idle virtual CPU halts, and waking it
is the largest single cost of a small message's hop (tens of microseconds,
more than the rest of the hop's handling). On physical nodes deep idle states
cost the same kind of delay. So a consumer that expects its next frame soon
polls without sleeping for a short while first, as MPI libraries do; what
that costs is the CPU it spends polling.

It expects a frame soon when its last wait was no longer than the spin: a
ping-pong, a steady stream, a request and its answer. A consumer whose last
wait was longer (it waits for a slow producer, or for nothing) sleeps at once.
So a consumer spins only while spinning catches its frames: the CPU it spends
is at most the time it would have slept, one spin per message, and one spin
in vain each time its waits grow long.

:class:`SpinPolicy` is sans-IO: the reader role (:mod:`~coupler.runtime.dataplane.read_role`)
asks it how long to spin and tells it how long each wait took.
"""

from __future__ import annotations

SPIN_S = 500e-6  # seconds a consumer polls without sleeping, at most, when its last wait was no longer


class SpinPolicy:
    """How long the next wait spins before it sleeps (see the module docstring).

    Args:
        spin_s: seconds to spin at most (0: never spin).

    Raises:
        ValueError: for a spin that is not a duration >= 0.
    """

    def __init__(self, spin_s: float = SPIN_S) -> None:
        if not spin_s >= 0:
            raise ValueError(f"a spin is a duration >= 0 s, got {spin_s!r}")
        self.spin_s = float(spin_s)
        self.last_wait = 0.0  # a new stream's consumer spins at first
        self.spins = 0  # waits that spun
        self.caught = 0  # ... and saw their frame while spinning

    def budget(self) -> float:
        """Seconds the wait that starts now may spin (0: sleep at once)."""
        return self.spin_s if self.last_wait <= self.spin_s else 0.0

    def waited(self, seconds: float, *, spun: bool = False, caught: bool = False) -> None:
        """A wait ended after ``seconds``: with a frame, a wake, or its deadline.

        Args:
            seconds: how long it waited.
            spun: it spun first.
            caught: what ended it came while it spun.
        """
        self.last_wait = max(0.0, seconds)
        self.spins += spun
        self.caught += caught


__all__ = ["SPIN_S", "SpinPolicy"]

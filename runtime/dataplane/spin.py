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

Spinning pays where a wake is a large share of a message's hop: small
messages. Streams of messages over :data:`SPIN_MAX_BYTES` do not spin: their
hop is a copy, and they keep the CPUs busy copying, so a spin takes more from
the producers than it saves (a 1 MiB broadcast to four consumers on the
2-core VM ran at 6.0-7.1 GB/s with its consumers spinning, 7.8-8.5 without).
And in one process at most half the CPUs it may run on (at least one) spin at
once (:class:`SpinSlots`): a consumer that finds no free slot sleeps at once,
so however many consumers a worker hosts, spinning takes at most half of its CPUs.

:class:`SpinPolicy` is sans-IO: the reader role (:mod:`~coupler.runtime.dataplane.read_role`)
asks it how long to spin and tells it how long each wait took.
"""

from __future__ import annotations

import os
import threading

SPIN_S = 500e-6  # seconds a consumer polls without sleeping, at most, when its last wait was no longer
SPIN_MAX_BYTES = 256 << 10  # only streams of messages up to this size spin (see SpinPolicy.for_messages)


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

    @classmethod
    def for_messages(cls, nbytes: int, spin_s: float) -> SpinPolicy:
        """The policy of a stream whose messages hold ``nbytes`` payload bytes: no spin above :data:`SPIN_MAX_BYTES`.

        A large message's hop is its copy, and a wake is a small share of it,
        whereas a stream of large messages keeps the CPUs busy copying: a spin
        there takes more from the producers than it saves.

        Raises:
            ValueError: for a spin that is not a duration >= 0.
        """
        return cls(spin_s if nbytes <= SPIN_MAX_BYTES else 0.0)

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


class SpinSlots:
    """How many threads of a process may spin at once (see the module docstring).

    Args:
        n: threads that may spin at once (>= 1).

    Raises:
        ValueError: for ``n`` < 1.
    """

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"at least one thread must be allowed to spin, got {n}")
        self.n = n
        self.taken = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        """Take a slot if one is free; the caller spins only if it got one, and then gives it back."""
        with self._lock:
            if self.taken >= self.n:
                return False
            self.taken += 1
            return True

    def give_back(self) -> None:
        """Give a taken slot back.

        Raises:
            RuntimeError: if none is taken (a bug in the caller).
        """
        with self._lock:
            if self.taken <= 0:
                raise RuntimeError("a spin slot given back that nobody took")
            self.taken -= 1


def process_slots() -> SpinSlots:
    """The slots of this process: half the CPUs it may run on, at least one."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        cpus = os.cpu_count() or 1
    return SpinSlots(max(1, cpus // 2))


SLOTS = process_slots()


__all__ = ["SLOTS", "SPIN_MAX_BYTES", "SPIN_S", "SpinPolicy", "SpinSlots", "process_slots"]

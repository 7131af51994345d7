"""A :class:`Cancel`: the flag that interrupts an actor's blocked sends, waking them at once.

A send blocks on a condition variable (a link's, a route's, a queue's) that
the data plane notifies when the awaited change happens: a credit, a consumer
attaching, a free slot. The one change that does not come through those
conditions is the actor stopping. A plain ``threading.Event`` cannot wake a
thread that waits on a condition, so each wait used to look at the flag every
50 ms. A :class:`Cancel` instead notifies every condition that a thread waits
on while it is being raised, and the waits need no timeout of their own.

Lock order: a waiter holds its condition's lock while it registers, then takes
the cancel's registry lock (a leaf lock); :meth:`Cancel.set` copies the registry
under that lock, releases it, and only then takes each condition's lock to
notify. No lock is held across the two, so no cycle can form.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import ContextManager


class Cancel:
    """A flag, like ``threading.Event``, that also wakes threads waiting on conditions (see the module docstring)."""

    def __init__(self) -> None:
        self._flag = threading.Event()
        self._lock = threading.Lock()
        self._calls: dict[object, Callable[[], None]] = {}  # token -> what to call when it is raised

    def is_set(self) -> bool:
        """Whether it was raised."""
        return self._flag.is_set()

    def set(self) -> None:
        """Raise it: call everything registered through :meth:`calling` (and so wake every :meth:`waking`)."""
        self._flag.set()
        with self._lock:
            calls = list(self._calls.values())
        for fn in calls:
            fn()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until it is raised or ``timeout`` seconds pass; returns whether it was raised."""
        return self._flag.wait(timeout)

    @contextmanager
    def calling(self, fn: Callable[[], None]) -> Iterator[None]:
        """While in this block, :meth:`set` calls ``fn`` (look at :meth:`is_set` inside it, before waiting).

        ``fn`` runs in the thread that raises the flag, with no lock of this class held.
        """
        token = object()
        with self._lock:
            self._calls[token] = fn
        try:
            yield
        finally:
            with self._lock:
                del self._calls[token]

    def waking(self, cond: threading.Condition) -> ContextManager[None]:
        """While in this block, :meth:`set` notifies ``cond``.

        Enter it holding ``cond``'s lock and look at :meth:`is_set` inside it,
        before waiting: a ``set`` from then on notifies ``cond``, and it cannot
        do so before the wait has released the lock.
        """

        def notify() -> None:
            with cond:
                cond.notify_all()

        return self.calling(notify)


def waking(cancel: Cancel | None, cond: threading.Condition) -> ContextManager[None]:
    """``cancel.waking(cond)``, or a block that does nothing when there is no cancel."""
    return nullcontext() if cancel is None else cancel.waking(cond)


__all__ = ["Cancel", "waking"]

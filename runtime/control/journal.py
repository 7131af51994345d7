"""The supervisor's journal: what it did to which actor, when, and why.

Each move, restart, resume, give-up and failed checkpoint is one
:class:`SupervisionEvent`; ``Supervisor.events`` reads them, tests assert on
them, and people read their ``detail``. The journal is written from the
supervisor's thread and from callers' threads (``move``, ``spawn``), so it
keeps its own lock.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class SupervisionEvent:
    """Something the supervisor did.

    Attributes:
        time: wall-clock time (``time.time()``).
        actor: the actor's name.
        kind: ``moved``, ``restarted``, ``resumed`` (from a stored checkpoint), ``gave-up``
            or ``checkpoint-failed``.
        source: the worker it left (or lost).
        target: the worker it went to (``""`` if none).
        detail: a human-readable reason.
    """

    time: float
    actor: str
    kind: str
    source: str
    target: str = ""
    detail: str = ""


EVENTS_KEPT = 10_000
"""Events a journal keeps, newest; older ones are counted, not kept (a producer whose periodic checkpoint
fails while it waits for room adds one every interval, about 2,900 a day at the default 30 s)."""


class Journal:
    """The supervisor's events, oldest first, the newest ``kept`` of them.

    Args:
        clock: wall-clock time source (``time.time``), for the events' times.
        kept: events kept at most; older ones are dropped and counted in :attr:`dropped`.
    """

    def __init__(self, clock: Callable[[], float], kept: int = EVENTS_KEPT) -> None:
        self.clock = clock
        self._events: deque[SupervisionEvent] = deque(maxlen=kept)
        self.dropped = 0  # events older than the kept ones
        self._lock = threading.Lock()

    def add(self, actor: str, kind: str, source: str, target: str = "", detail: str = "") -> None:
        """Note that the supervisor did ``kind`` to ``actor`` (from ``source`` to ``target``), now."""
        event = SupervisionEvent(self.clock(), actor, kind, source, target, detail)
        with self._lock:
            self.dropped += len(self._events) == self._events.maxlen
            self._events.append(event)

    def checkpoint_failed(self, actor: str, worker: str, why: str) -> None:
        """A checkpoint of ``actor`` on ``worker`` could not be taken or written (the keeper's report)."""
        self.add(actor, "checkpoint-failed", worker, "", why)

    def events(self) -> list[SupervisionEvent]:
        """The events so far, oldest first (a copy)."""
        with self._lock:
            return list(self._events)

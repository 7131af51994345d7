"""A worker's outboxes, one per (channel, consumer): made on first use, found by channel, dropped at the end.

:class:`~coupler.runtime.dataplane.dispatch.Dispatch` owns one :class:`OutboxTable`.
What one outbox holds (its replay log, what it owes, its resend) is
:class:`~coupler.runtime.dataplane.outbox.Outbox`'s; the table only keeps them.
Its lock guards the table, not the outboxes in it, and is never held while an
outbox's own lock is taken (see the lock order in :mod:`coupler.runtime.dataplane`).
"""

from __future__ import annotations

import threading

from coupler.runtime.dataplane.outbox import Outbox, ReplayLog
from coupler.runtime.dataplane.routing import Route
from coupler.runtime.dataplane.settings import DeliveryConfig

OutboxKey = tuple[str, str]  # (channel, consumer)


class OutboxTable:
    """The outboxes of one worker's producers.

    Args:
        delivery: delivery settings (whether and how much a ``Queue`` outbox's replay log keeps).
    """

    def __init__(self, delivery: DeliveryConfig) -> None:
        self.delivery = delivery
        self._boxes: dict[OutboxKey, Outbox] = {}
        self._lock = threading.Lock()

    def get(self, route: Route, cid: str) -> Outbox:
        """Consumer ``cid``'s outbox (made on first use; with a replay log on a ``Queue`` with retention)."""
        key = (route.channel, cid)
        box = self._boxes.get(key)  # a dict read is atomic: no lock on the hot path
        if box is None:
            log = ReplayLog(route.channel, cid, self.delivery.retain_bytes) if route.is_queue and self.delivery.retain else None
            with self._lock:
                box = self._boxes.setdefault(key, Outbox(route.channel, cid, log))
        return box

    def find(self, key: OutboxKey) -> Outbox | None:
        """The outbox at ``key``, if one was made."""
        return self._boxes.get(key)

    def owes(self, channel: str, cid: str) -> bool:
        """Whether consumer ``cid`` is owed messages (a hint, read without locks)."""
        box = self._boxes.get((channel, cid))
        return box is not None and box.owes

    def of(self, channel: str) -> list[Outbox]:
        """The outboxes of ``channel``, as they are now."""
        with self._lock:
            return [b for k, b in self._boxes.items() if k[0] == channel]

    def owing(self, channel: str) -> list[Outbox]:
        """The outboxes of ``channel`` that owe messages now."""
        return [b for b in self.of(channel) if b.owes]

    def holds(self, channel: str) -> bool:
        """Whether an outbox of ``channel`` keeps messages (its links must stay for the commits)."""
        return any(b.holds for b in self.of(channel))

    def pop(self, channel: str, cid: str | None) -> list[Outbox]:
        """Remove and return the outboxes of ``channel`` (of consumer ``cid`` only, if given)."""
        with self._lock:
            keys = [k for k in self._boxes if k[0] == channel and (cid is None or k[1] == cid)]
            return [self._boxes.pop(k) for k in keys]

    def items(self) -> list[tuple[OutboxKey, Outbox]]:
        """Every outbox with its key, as they are now."""
        with self._lock:
            return list(self._boxes.items())

    def values(self) -> list[Outbox]:
        """Every outbox, as they are now."""
        with self._lock:
            return list(self._boxes.values())


__all__ = ["OutboxKey", "OutboxTable"]

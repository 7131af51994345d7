"""A producing worker's view of where each channel's consumers are.

The broker owns the routing tables and pushes every change to the workers that
produce on the channel; a :class:`Route` is a worker's copy, read by sending
threads on every message (typed: decoded once, on arrival) and replaced by the worker's
event loop.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from coupler.runtime.control.departure import Departure, Gone
from coupler.runtime.control.routing_table import ConsumerRef, RoutingTable
from coupler.runtime.dataplane import waits
from coupler.runtime.dataplane.cancel import Cancel, waking
from coupler.runtime.dataplane.settings import DeliveryConfig
from coupler.runtime.dataplane.receipts import ReplayPlan
from coupler.runtime.dataplane.waits import WaitKind
from coupler.runtime.errors import ChannelClosed, ChannelTimeout, ConsumerGone, Interrupted
from coupler.runtime.message import Spec


@dataclass
class Route:
    """A producer-side copy of a channel's routing table, updated by the broker.

    Read by sending threads, replaced by the worker's loop; ``cond`` wakes
    senders that wait for a consumer.
    """

    channel: str
    table: RoutingTable  # replaced, never changed: a sender's one read of it sees one version
    cond: threading.Condition = field(default_factory=threading.Condition)
    # Consumer -> when this worker first saw it lost (its worker died); it is expected back
    # (restarted by the supervisor) for ``coupler.delivery.lost-consumer-wait`` seconds.
    lost_since: dict[str, float] = field(default_factory=dict)
    # (consumer, stream) pairs of a lossy channel whose stream failed: skipped until the route changes.
    unreachable: set[tuple[str, str]] = field(default_factory=set)

    @property
    def consumers(self) -> tuple[ConsumerRef, ...]:
        """The consumers."""
        return self.table.consumers

    @property
    def gone(self) -> tuple[Gone, ...]:
        """The consumers that left, and how."""
        return self.table.gone

    @property
    def spec(self) -> Spec | None:
        """The channel's spec (``None`` until the first message fixes it)."""
        return self.table.spec

    @property
    def is_queue(self) -> bool:
        """Whether the channel is a ``Queue`` (at-least-once, credited)."""
        return self.table.is_queue

    def update(self, table: RoutingTable) -> bool:
        """Take a routing table the broker pushed (ignored if older than the one held); wake waiting senders.

        Returns:
            Whether the route changed.
        """
        if table.version < self.table.version:
            return False
        with self.cond:
            self.table = table
            self.unreachable = set()  # the route changed: try every consumer it lists again
            lost = {g.consumer for g in table.gone if g.kind is Departure.LOST}
            for cid in lost:
                self.lost_since.setdefault(cid, time.monotonic())
            # Back (attached again), or gone for good (its supervisor gave up on it): no longer expected.
            for cid in [c for c in self.lost_since if c not in lost]:
                del self.lost_since[cid]
            self.cond.notify_all()
        return True

    def returning(self, lost_wait: float) -> set[str]:
        """Consumers that left and are expected back: moving ones, and lost ones for ``lost_wait`` seconds.

        A consumer whose worker was lost is restarted by the supervisor (after a
        back-off and a placement); producers wait for it rather than fail at once.
        """
        back = set(self.table.moving)
        now = time.monotonic()
        for gone in self.gone:
            since = self.lost_since.get(gone.consumer)
            if since is not None and now - since < lost_wait:
                back.add(gone.consumer)
        return back

    def expected_for(self, lost_wait: float) -> float | None:
        """Seconds until the last lost consumer is no longer expected back (``None``: none is).

        Moving consumers have no such limit: a routing update ends their move.
        """
        now = time.monotonic()
        left = [self.lost_since[g.consumer] + lost_wait - now for g in self.gone if g.consumer in self.lost_since]
        left = [t for t in left if t > 0]
        return max(left) if left else None

    def wait_consumers(
        self, deadline: float | None, timeout: float | None, cancel: Cancel | None, lost_wait: float,
        lossy: bool = False,
    ) -> tuple[ConsumerRef, ...]:
        """The channel's consumers; waits while there are none (or they are moving, or lost and expected back).

        With ``lossy`` (Latest, Reservoir, Window), once consumers have left and
        none is attached, it returns none at once: the message is dropped and the
        producer goes on (a successor gets the values sent after it attached).

        Raises:
            ChannelClosed: the channel is closed.
            ConsumerGone: every consumer left, and none is expected back.
            ChannelTimeout: none attached by ``deadline``.
            Interrupted: ``cancel`` was set.
        """
        table = self.table  # one read of the reference: the loop replaces it, never mutates it
        if table.consumers and not table.closed:
            return table.consumers
        noted, outer = False, None
        with self.cond, waking(cancel, self.cond):
            try:
                while True:
                    table = self.table
                    if table.closed:
                        raise ChannelClosed(f"channel {self.channel!r} is closed; cannot send")
                    if table.consumers:
                        return table.consumers
                    if table.gone and lossy:
                        return ()
                    back = self.returning(lost_wait) if table.gone else set()
                    if table.gone and not back:
                        gone = ", ".join(str(g) for g in self.gone)
                        raise ConsumerGone(f"channel {self.channel!r} has no consumer left: {gone}")
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise ChannelTimeout(f"channel {self.channel!r}: no consumer attached within {timeout} s")
                    if cancel is not None and cancel.is_set():
                        raise Interrupted("send interrupted: the actor is stopping")
                    if not noted:
                        kind = WaitKind.RETURN if back else WaitKind.CONSUMER
                        outer, noted = waits.begin(kind, self.channel, ", ".join(sorted(back))), True
                    # Routing updates and the cancel notify; a lost consumer's wait and the deadline end in time.
                    self.cond.wait(earliest(remaining, self.expected_for(lost_wait) if back else None))
            finally:
                if noted:
                    waits.end(outer)

    def wait_departure(self, c: ConsumerRef, limit: float, cancel: Cancel | None) -> bool:
        """Wait until the broker takes consumer ``c`` (at its stream) off the route; ``False`` at ``limit`` or on ``cancel``."""
        with self.cond, waking(cancel, self.cond), waits.waiting(WaitKind.RETURN, self.channel, c.cid):
            while any(x.cid == c.cid and x.stream == c.stream for x in self.consumers):
                left = limit - time.monotonic()
                if left <= 0 or (cancel is not None and cancel.is_set()):
                    return False
                self.cond.wait(left)  # routing updates and the cancel notify
        return True


def expected_back(route: Route, c: ConsumerRef, delivery: DeliveryConfig, deadline: float | None, cancel: Cancel | None) -> bool:
    """After its stream broke: wait for the broker to take consumer ``c`` off the route.

    On a ``Queue`` channel with retention a consumer whose worker died is
    expected back (restarted by the supervisor); the send goes on once the
    broker has confirmed the loss.

    Args:
        route: the channel's route.
        c: the consumer whose stream broke.
        delivery: delivery settings (retention, how long a lost consumer is waited for).
        deadline: ``time.monotonic()`` of the send's deadline, or ``None``.
        cancel: gives up the wait when set.

    Returns:
        Whether it left the route (it is kept for, and the send goes on). ``False``
        (the send fails with :class:`ConsumerGone`) for other channels, or if the
        route did not change within ``lost_consumer_wait`` (or by the deadline).
    """
    if not (route.is_queue and delivery.retain):
        return False
    limit = time.monotonic() + delivery.lost_consumer_wait
    if deadline is not None:
        limit = min(limit, deadline)
    return route.wait_departure(c, limit, cancel)


def earliest(a: float | None, b: float | None) -> float | None:
    """The smaller of two waits in seconds, ``None`` meaning no limit."""
    if a is None:
        return b
    return a if b is None else min(a, b)


class Reroute(Exception):
    """A link closed because its consumer moved: deliver along the new route."""


@dataclass
class ProducerStats:
    """Counters of one (channel, source) pair on this worker."""

    sent: int = 0
    nbytes: int = 0
    last_seq: int = -1
    next_seq: int = 0
    dropped: int = 0  # copies for consumers of a lossy channel whose stream failed
    epoch: int = 0  # this producer instance's epoch, from the broker (its messages carry it if above 0: fence.py)
    floor: int = 0  # next_seq of the producer's last committed checkpoint (work-sharing messages carry it: receipts.py)
    replay: ReplayPlan | None = None  # a restarted producer's routing of its repeated work-sharing messages
    lock: threading.Lock = field(default_factory=threading.Lock)

    def as_dict(self) -> dict[str, int]:
        return {"sent": self.sent, "nbytes": self.nbytes, "last_seq": self.last_seq, "dropped": self.dropped}


__all__ = ["ProducerStats", "Reroute", "Route", "earliest", "expected_back"]

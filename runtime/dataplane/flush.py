"""Flushing a channel on one worker: every message sent from here accepted, what is owed delivered first.

A flush runs in the calling actor's thread (``OutPort.flush``, a checkpoint,
an actor's end). It delivers what outboxes owe to consumers that are on the
route, drops what is owed to consumers that left for good, waits for those
that are away and expected back (a routing update, the end of their expected
return, the deadline or the cancel wakes it; it never polls), and then waits
for every link's acknowledgements. A stream that breaks meanwhile hands back
what it held, and the flush starts over so that those go first.
"""

from __future__ import annotations

import logging
import time

from coupler.runtime.dataplane import waits
from coupler.runtime.dataplane.cancel import Cancel, waking
from coupler.runtime.dataplane.dispatch import Dispatch
from coupler.runtime.dataplane.routing import Reroute, Route, earliest, expected_back
from coupler.runtime.dataplane.settings import DeliveryConfig
from coupler.runtime.dataplane.waits import WaitKind
from coupler.runtime.errors import ChannelTimeout, ConsumerGone, Interrupted

logger = logging.getLogger(__name__)


def flush(dispatch: Dispatch, route: Route, delivery: DeliveryConfig, timeout: float | None, cancel: Cancel | None) -> None:
    """Wait until every message sent on ``route``'s channel from this worker was accepted.

    Messages kept for a moving consumer are delivered first (this waits for it).

    Args:
        dispatch: the worker's links and outboxes.
        route: the channel's route.
        delivery: delivery settings (how long a lost consumer is waited for).
        timeout: seconds in all (``None``: as long as it takes).
        cancel: gives up the wait when set.

    Raises:
        ChannelTimeout: not everything was accepted within ``timeout``.
        Interrupted: ``cancel`` was set.
        ConsumerGone: a consumer left for good with messages it had not accepted.
        ChannelClosed: the channel was closed.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while not _flush_pass(dispatch, route, delivery, deadline, timeout, cancel):
        pass  # a stream broke: what it had not delivered is kept again, so deliver that first


def _flush_pass(
    dispatch: Dispatch, route: Route, delivery: DeliveryConfig, deadline: float | None, timeout: float | None,
    cancel: Cancel | None,
) -> bool:
    """One flush pass: deliver what is owed, then wait for every link's acknowledgements.

    Returns:
        False if a link's stream broke while its consumer stays (the pass must be made again).
    """
    channel = route.channel
    while True:
        table = route.table  # replaced, never changed, by a routing update: tells whether one came
        waiting = dispatch.outboxes.owing(channel)
        if not waiting:
            break
        spec = route.spec
        assert spec is not None
        consumers = {c.cid: c for c in route.wait_consumers(deadline, timeout, cancel, delivery.lost_consumer_wait)}
        gone = {g.consumer for g in route.gone} - route.returning(delivery.lost_consumer_wait)
        progressed = False
        for box in waiting:
            c = consumers.get(box.consumer)
            if c is None and box.consumer in gone:
                n = box.drop_owed()
                logger.warning("channel %r: dropping %d messages kept for consumer %r, which left for good", channel, n, box.consumer)
                progressed = True
            elif c is not None:
                item = box.head()
                if item is None:
                    continue
                try:
                    dispatch.deliver_one(route, spec, c, item.header, item.payload_leaves(spec), deadline, cancel)
                except Reroute:
                    continue
                except ConsumerGone:
                    if expected_back(route, c, delivery, deadline, cancel):
                        continue  # lost: kept for its successor, which the next pass waits for
                    raise
                box.sent(item)
                progressed = True
        if not progressed:
            if deadline is not None and time.monotonic() > deadline:
                raise ChannelTimeout(f"channel {channel!r}: the consumers kept for resend did not come back within {timeout} s")
            if cancel is not None and cancel.is_set():
                raise Interrupted("flush interrupted: the actor is stopping")
            # Only a routing update (the consumer is back, or gone for good), the end of the
            # lost consumer's wait, the deadline or the cancel can change that: wait for one.
            with route.cond, waking(cancel, route.cond):
                if route.table is table and not (cancel is not None and cancel.is_set()):
                    remaining = None if deadline is None else deadline - time.monotonic()
                    until = route.expected_for(delivery.lost_consumer_wait)
                    with waits.waiting(WaitKind.RETURN, channel, ", ".join(b.consumer for b in waiting)):
                        route.cond.wait(earliest(remaining, until))
    for key, link in dispatch.links.items(channel):
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            link.flush(remaining, cancel)
        except ConsumerGone:
            if link.closing:
                raise
            if dispatch.forget_broken(key, link):
                return False
            # Nothing is owed: the consumer accepted all of it before the stream broke.
    return True




__all__ = ["flush"]

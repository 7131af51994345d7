"""Handing one message to one consumer: in memory on this worker, or through a stream, after what it is owed.

The :class:`Dispatch` of a worker owns its producer links (one stream per
(channel, consumer, consumer incarnation), in a
:class:`~coupler.runtime.dataplane.link_table.LinkTable`) and its outboxes (one per
(channel, consumer), see :mod:`~coupler.runtime.dataplane.outbox`). Senders
(:mod:`~coupler.runtime.dataplane.sender`) call :meth:`Dispatch.deliver` for
each consumer a message goes to; link threads hand back what a broken stream
owed; resend threads catch up consumers that nobody sends to any more.

Order per consumer: what it is owed always goes before anything newer. Several
threads may catch a consumer up at once (senders, a resend thread): an owed
message leaves the queue only after it was handed on, so a later one never
overtakes it; at worst the consumer drops a copy as a duplicate.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

import numpy as np

from coupler.runtime.dataplane.auth import StreamKey
from coupler.runtime.dataplane.buffers import ConsumerBuffer
from coupler.runtime.dataplane.cancel import Cancel
from coupler.runtime.dataplane.fence import Fence, Refusals
from coupler.runtime.dataplane.link import Link
from coupler.runtime.dataplane.link_table import LinkKey, LinkTable
from coupler.runtime.dataplane.local_delivery import deliver_here
from coupler.runtime.dataplane.outbox import Outbox
from coupler.runtime.dataplane.outbox_table import OutboxKey, OutboxTable
from coupler.runtime.dataplane.payloads import Item, frozen_leaves, release_segments
from coupler.runtime.control.routing_table import ConsumerRef
from coupler.runtime.dataplane.routing import Reroute, Route
from coupler.runtime.dataplane.settings import DeliveryConfig, TransportConfig
from coupler.runtime.errors import ChannelClosed, ConsumerGone, Fenced, Interrupted
from coupler.runtime.message import DeviceLeaves, Spec, to_host

logger = logging.getLogger(__name__)



class Dispatch:
    """A worker's producer links and outboxes, and the delivery of one message to one consumer.

    Args:
        address: this worker's address (a consumer there gets messages in memory).
        buffers: this worker's consumer buffers, by (channel, consumer).
        routes: this worker's routes, by channel (read to resend to consumers that came back).
        config: transport settings.
        delivery: delivery settings (retention).
        host: this host's key (shared memory between equal keys).
        ssl_context: a client TLS context for streams, or ``None``.
        key: the cluster's stream secret.
        closing: set at teardown (stops resends).
        on_drained: called with a channel once a consumer's commit emptied its log
            (the channel's links may be released, see ``Endpoint.release_producer``).
        fence: this worker's marks of producer epochs (a message delivered here in memory raises
            its source's, see ``fence.py``), or ``None``.
    """

    def __init__(
        self, *, address: Callable[[], str], buffers: dict[tuple[str, str], ConsumerBuffer], routes: dict[str, Route],
        config: TransportConfig, delivery: DeliveryConfig, host: str, ssl_context: Any, key: StreamKey,
        closing: Cancel, on_drained: Callable[[str], None], fence: Fence | None = None,
    ) -> None:
        self.address, self.buffers, self.routes = address, buffers, routes
        self.config, self.delivery, self.host = config, delivery, host
        self.ssl_context, self.key, self.closing, self.on_drained = ssl_context, key, closing, on_drained
        self.fence = fence
        self.links = LinkTable()
        self.outboxes = OutboxTable(delivery)
        self.refusals = Refusals()  # producer instances a consumer refused as replaced: their sends fail at once

    # -- what is kept for consumers ---------------------------------------------------------------
    def frozen(self, route: Route, leaves: list[np.ndarray]) -> list[np.ndarray]:
        """Leaves fit to keep in a replay log (Queue channels with retention), else as they are."""
        if not (route.is_queue and self.delivery.retain):
            return leaves
        frozen = frozen_leaves(to_host(leaves))
        return DeviceLeaves(frozen, leaves.device) if isinstance(leaves, DeviceLeaves) else frozen

    def keep_for_absent(self, route: Route, spec: Spec, header: dict[str, Any], leaves: list[np.ndarray], absent: set[str]) -> None:
        """Keep a broadcast Queue message for consumers that are away and expected back.

        They get it, after what else they are owed, when they return (see :meth:`deliver`).
        """
        if not (absent and route.is_queue and self.delivery.retain):
            return
        leaves = self.frozen(route, leaves)
        for cid in absent:
            box = self.outboxes.get(route, cid)
            # Forced: the log is the only way it reaches the consumer, full or not.
            box.log.add(header, leaves, spec.nbytes, force=True)  # type: ignore[union-attr]  (retention: it has a log)
            box.owe_all_kept()

    def owe_late(self, route: Route, spec: Spec, header: dict[str, Any], leaves: list[np.ndarray], late: list[str]) -> None:
        """A broadcast ``Queue`` message that consumers ``late`` did not take in time: it reaches them before anything newer."""
        kept = frozen_leaves(to_host(leaves))
        for cid in late:
            box = self.outboxes.get(route, cid)
            item = box.log.add(header, kept, spec.nbytes) if box.log is not None else Item(header, kept, spec.nbytes, False)
            box.owe(item)
            self.resend_owed(route, cid)

    # -- delivery -------------------------------------------------------------------------------
    def deliver(
        self, route: Route, spec: Spec, c: ConsumerRef, header: dict[str, Any], leaves: list[np.ndarray],
        deadline: float | None, cancel: Cancel | None,
    ) -> None:
        """Hand one message to one consumer, after any messages it still has to get back.

        On a ``Queue`` channel the message is also kept in the consumer's replay
        log until the consumer commits it (the stream's link puts it there; for a
        consumer on this worker, a read-only copy goes there here); a consumer
        reached at a new stream (a successor of a lost or moved one) first gets
        everything in its log again: it drops what its checkpoint already covers
        (duplicate suppression).

        Raises:
            Reroute: the route changed under the send (deliver along the new one).
            ConsumerGone: the consumer left and is not expected back.
            ChannelClosed: the channel was closed.
            ChannelTimeout: no room by ``deadline``.
            Interrupted: ``cancel`` was set.
        """
        if self.refusals:
            self.refusals.check(route.channel, header)
        box = self.catch_up(route, spec, c, deadline, cancel)
        kept = None
        if box.log is not None and c.worker == self.address():
            if box.log.full:  # no copy for a log that would not keep it
                box.log.missed(header)
            else:
                kept = box.log.add(header, self.frozen(route, leaves), spec.nbytes)
        try:
            self.deliver_one(route, spec, c, header, leaves, deadline, cancel)
        except BaseException:
            if kept is not None:
                box.log.remove(kept)  # type: ignore[union-attr]
            raise

    def catch_up(
        self, route: Route, spec: Spec, c: ConsumerRef, deadline: float | None, cancel: Cancel | None,
    ) -> Outbox:
        """Send consumer ``c`` what it is owed from this worker, oldest first; return its outbox."""
        box = self.outboxes.get(route, c.cid)
        box.meet(c.stream)
        while box.owes:  # leftovers of a previous instance of this consumer go first, in order
            item = box.head()
            if item is None:
                break
            self.deliver_one(route, spec, c, item.header, item.payload_leaves(spec), deadline, cancel)
            box.sent(item)
        return box

    def deliver_one(
        self, route: Route, spec: Spec, c: ConsumerRef, header: dict[str, Any], leaves: list[np.ndarray],
        deadline: float | None, cancel: Cancel | None,
    ) -> None:
        """Hand one message to ``c``: into its buffer if it is on this worker, else to its stream's link.

        Raises:
            Reroute: the consumer moved, or its stream broke and it is owed what the stream held.
            ConsumerGone: the consumer left (or cannot be reached).
            ChannelClosed: the channel was closed.
            ChannelTimeout: no room by ``deadline`` (back-pressure).
            Interrupted: ``cancel`` was set.
        """
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        if c.worker == self.address():
            deliver_here(self.buffers.get((route.channel, c.cid)), route.channel, c, spec, header, leaves, remaining, cancel,
                         fence=self.fence, device_to_device=self.config.device_to_device)
            return
        link = self.link(route, spec, c)
        try:
            link.submit(header, leaves if type(leaves) is list else to_host(leaves), remaining, cancel)
        except ConsumerGone:
            if link.closing:  # the route changed under us (the consumer moved)
                raise Reroute() from None
            if self.forget_broken((route.channel, c.cid, c.stream), link):
                # Deliver again, through a new stream, after what the broken one owed. A consumer
                # that is gone after all refuses the new stream (or cannot be reached): ConsumerGone.
                raise Reroute() from None
            raise

    # -- links ----------------------------------------------------------------------------------
    def link(self, route: Route, spec: Spec, c: ConsumerRef) -> Link:
        """The live link to ``c`` at its stream (opened on first use).

        Raises:
            Reroute: another thread found the stream broken (deliver what it owed first).
            ConsumerGone, ChannelClosed: the stream cannot be opened.
            Interrupted: this worker is closing (its links dropped what they owed: nothing newer may follow).
        """
        key = (route.channel, c.cid, c.stream)
        link = self.links.live(key)
        if link is not None:
            return link
        if self.closing.is_set():
            # Teardown closed the links without handing back what they had not delivered; a
            # new stream would carry this producer's next message past them, and the consumer
            # would drop them when its successor sends them again (a gap in the sequence).
            raise Interrupted(f"channel {route.channel!r}: this worker is closing; no new stream to {c.cid!r}")
        broken = self.links.get(key)
        if broken is not None and not broken.closing and self.forget_broken(key, broken):
            raise Reroute()
        box = self.outboxes.get(route, c.cid)
        return self.links.install(key, lambda: Link(
            route.channel, c.cid, c.stream, spec,
            queue=route.is_queue, maxsize=route.table.maxsize,
            host=self.host, peer_host=c.host, config=self.config, ssl_context=self.ssl_context,
            on_orphans=lambda items, k=(route.channel, c.cid): self._adopt_orphans(k, items),
            on_commit=lambda marks, k=(route.channel, c.cid): self.commit_received(k, marks), key=self.key,
            on_fenced=lambda sources, ch=route.channel: self.refusals.note(ch, sources),
            log=box.log, origin=self.address(),
        ))

    def close_links(self, channel: str, keep: set[LinkKey] | None = None, cid: str | None = None, orphan: bool = True) -> None:
        """Close ``channel``'s links (of consumer ``cid`` only, if given) except those in ``keep``.

        Args:
            orphan: hand back what they did not deliver (to send again), or drop it.
        """
        self.links.close(channel, keep, cid, orphan)

    def forget(self, channel: str, cid: str | None) -> None:
        """Drop what this worker keeps to send to consumer ``cid`` of ``channel`` (``None``: every one), and its links.

        Replay logs hold up to ``coupler.delivery.retain-bytes`` each; kept for a
        consumer that left for good, or on a closed channel, they would hold that
        memory for the rest of the run (and replay it all to a later consumer that
        happened to take the same name). Its links go too, without handing back
        what they carry (nobody will take it): each holds a reader thread, a
        socket and a shared-memory arena here and a receiving thread on the
        consumer's worker.
        """
        for box in self.outboxes.pop(channel, cid):
            box.clear()
        if cid is None:
            self.refusals.forget(channel)
        self.links.close(channel, cid=cid, orphan=False)

    def close(self) -> None:
        """Teardown: close every link without handing anything back (and open no new one: see :meth:`link`)."""
        self.links.close(orphan=False)

    def forget_broken(self, key: LinkKey, link: Link) -> bool:
        """Drop a link whose stream broke, once what it had not delivered is kept for a resend (see ``LinkTable.drop_broken``).

        Returns:
            Whether the consumer is owed messages now (they must go before anything else).
        """
        self.links.drop_broken(key, link)
        return self.outboxes.owes(key[0], key[1])

    # -- what streams hand back -------------------------------------------------------------------
    def _adopt_orphans(self, key: OutboxKey, items: list[Item]) -> None:
        """Keep what a consumer did not accept -- it departed, or its stream broke -- to send it again.

        It goes to the consumer (or its replacement, same consumer id) before
        anything sent later: a resend thread starts now (see :meth:`resend_owed`)
        if the consumer is still on the route (its stream broke), or on the routing
        update that brings it back; the producer's next send or flush may be first.
        """
        route = self.routes.get(key[0])
        if route is not None and (route.table.closed or not route.is_queue):
            release_segments(items)  # a closed channel replays nothing; a lossy one loses what was in flight
            return
        if route is None:
            box = self.outboxes.find(key)
            if box is None:
                release_segments(items)  # forgotten: nobody will send these
                return
        else:
            box = self.outboxes.get(route, key[1])
        box.adopt(items)
        if route is not None:
            self.resend_owed(route, key[1])

    def commit_received(self, key: OutboxKey, marks: dict[str, int]) -> None:
        """The consumer ``key`` stored a checkpoint covering ``marks``: stop keeping those messages."""
        box = self.outboxes.find(key)
        if box is not None and box.commit(marks):
            self.on_drained(key[0])  # the last thing an ended producer's links were kept for

    # -- resends ----------------------------------------------------------------------------------
    def resend_owed(self, route: Route, cid: str | None = None) -> None:
        """Start sending what consumers are owed, in a thread per consumer.

        Called on routing updates (a consumer came back) and when a link hands
        back what its consumer did not accept. Senders catch up before their
        next message; this covers producers that send nothing more (finished,
        paused, or waiting for an answer), whose consumer would otherwise wait
        for their next send, checkpoint or final flush.

        Args:
            route: the channel's route.
            cid: only this consumer (else every consumer on the route).
        """
        table = route.table
        spec, consumers = table.spec, table.consumers
        if spec is None or table.closed or self.closing.is_set():
            return  # (at teardown every link hands back what it holds: nothing to resend to)
        for c in consumers:
            if cid is not None and c.cid != cid:
                continue
            box = self.outboxes.find((route.channel, c.cid))
            if box is None or not box.needs_resend(c.stream):
                continue
            threading.Thread(
                target=self._resend, args=(route, spec, box), name=f"coupler-resend-{route.channel}", daemon=True
            ).start()

    def _resend(self, route: Route, spec: Spec, box: Outbox) -> None:
        try:
            while True:
                c = next((x for x in route.consumers if x.cid == box.consumer), None)
                if c is None:
                    return  # away: its return (a routing update) starts this again
                try:
                    self.catch_up(route, spec, c, None, self.closing)
                    return
                except Reroute:
                    time.sleep(0.01)  # a stream broke on the way (it handed back what it owed): again, through a new one
        except (ConsumerGone, ChannelClosed, Interrupted) as e:
            # The consumer went again, or this worker closes: the next routing update starts over.
            logger.info("channel %r: resending to consumer %r stopped: %r", route.channel, box.consumer, e)
        except Fenced as e:
            # This worker's producers were replaced elsewhere: what they owe is their successors' to send.
            n = box.drop_owed()
            logger.warning("channel %r: dropped %d messages owed to %r: %s", route.channel, n, box.consumer, e)
        finally:
            if box.resend_ended() and not self.closing.is_set():
                self.resend_owed(route, box.consumer)  # handed back after this thread's last look


__all__ = ["Dispatch"]

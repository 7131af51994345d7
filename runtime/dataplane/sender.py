"""The producer side of a channel on one worker: sequence numbers, broadcast, work sharing, flush.

:meth:`Sender.send` validates a message against the channel's spec, numbers
it (one gap-free sequence per source), and hands it to every consumer
(broadcast) or to exactly one (a work-sharing ``Queue``) through the worker's
:class:`~coupler.runtime.dataplane.dispatch.Dispatch`. It runs in the calling
actor's thread; it touches the worker's event loop only the first time a
source uses a channel (to register with the broker, through ``register``).
A flush is :mod:`~coupler.runtime.dataplane.flush`'s.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Callable

import numpy as np

from coupler.runtime.dataplane import waits
from coupler.runtime.dataplane.dispatch import Dispatch
from coupler.runtime.dataplane.flush import flush
from coupler.runtime.dataplane.cancel import Cancel
from coupler.runtime.dataplane.fence import EPOCH_KEY
from coupler.runtime.dataplane.receipts import FLOOR_KEY, Avoid, Pin, ReplayPlan
from coupler.runtime.control.routing_table import ConsumerRef
from coupler.runtime.dataplane.routing import ProducerStats, Reroute, Route, expected_back
from coupler.runtime.dataplane.settings import DeliveryConfig
from coupler.runtime.dataplane.waits import WaitKind
from coupler.runtime.errors import ChannelClosed, ChannelTimeout, ConsumerGone, Interrupted, PartiallyDelivered
from coupler.runtime.message import Spec, flatten

class Sender:
    """Sends of every producer on this worker.

    Args:
        dispatch: the worker's dispatch (links, outboxes, delivery to one consumer).
        routes: the worker's routes, by channel (shared with the endpoint, which applies updates).
        producers: counters per (channel, source) (shared with the endpoint's reports).
        delivery: delivery settings.
        register: registers a source on a channel with the broker and returns the route (blocks).
        fix_spec: asks the broker to fix a channel's spec from a first message; returns the spec it holds (blocks).
    """

    def __init__(
        self, dispatch: Dispatch, routes: dict[str, Route], producers: dict[tuple[str, str], ProducerStats],
        delivery: DeliveryConfig, register: Callable[[str, str], Route], fix_spec: Callable[[str, Spec], dict[str, Any]],
    ) -> None:
        self.dispatch, self.routes, self.producers, self.delivery = dispatch, routes, producers, delivery
        self.register, self.fix_spec = register, fix_spec

    def send(
        self,
        channel: str,
        source: str,
        data: Any,
        *,
        timestamp: float = 0.0,
        step: int = 0,
        meta: dict[str, Any] | None = None,
        timeout: float | None = None,
        cancel: Cancel | None = None,
    ) -> int:
        """Validate ``data`` against the channel's spec and deliver it to every consumer.

        Returns once every consumer's link has taken the message (it is then
        delivered in order, or handed to the consumer's replacement). Blocks while
        a ``Queue`` consumer is full: back-pressure. On a work-sharing
        ``Queue(shared=True)`` the message goes to exactly one consumer, and the
        send blocks only while none has room.

        Args:
            channel: channel name.
            source: producer name (an actor name); sequence numbers are per source.
            data: payload pytree.
            timestamp: simulation time.
            step: producer's step counter.
            meta: small metadata dict.
            timeout: seconds to wait for a consumer to exist and for room.
            cancel: an event that gives up the wait when set (the actor is stopping).

        Returns:
            The message's sequence number.

        Raises:
            UnknownChannel: the channel was never declared.
            SpecMismatch: ``data`` does not fit the channel's spec.
            ChannelClosed: the channel is closed.
            ConsumerGone: every consumer left, and none is expected back.
            ChannelTimeout: no consumer, or no room, within ``timeout``.
            PartiallyDelivered: a broadcast that some consumers took and others not in time.
            Interrupted: ``cancel`` was set.
        """
        leaves, treedef = flatten(data)
        route = self.routes.get(channel)
        stats = self.producers.get((channel, source))
        if route is None or stats is None:
            route = self.register(channel, source)
            stats = self.producers.setdefault((channel, source), ProducerStats())
        table = route.table
        spec, shared = table.spec, table.shared
        if spec is None:
            spec = Spec.from_wire(self.fix_spec(channel, Spec.from_leaves(treedef, leaves)))
            with route.cond:
                route.table = replace(route.table, spec=spec)
        spec.check(channel, treedef, leaves)
        deadline = None if timeout is None else time.monotonic() + timeout
        with stats.lock:  # one sequence per source, gap-free even if a port is shared by threads
            header = {
                "timestamp": float(timestamp), "step": int(step), "source": source, "seq": stats.next_seq,
                "meta": {**(meta or {}), EPOCH_KEY: stats.epoch} if stats.epoch else (meta or {}), "sent_at": time.time(),
            }  # Message.header()'s fields, built directly: this is the hot path (a replaced instance's epoch: fence.py)
            try:
                if shared:
                    if stats.floor:  # members keep their receipts from here on (receipts.py)
                        header["meta"] = {**header["meta"], FLOOR_KEY: stats.floor}
                    self._to_one(route, spec, header, leaves, deadline, timeout, cancel, stats)
                else:
                    self._to_all(route, spec, header, leaves, deadline, timeout, cancel)
            except (ChannelTimeout, Interrupted) as e:
                if not getattr(e, "seq_used", False):
                    raise
                stats.next_seq += 1  # some consumers have it under this number: never reuse it
                stats.sent += 1
                stats.last_seq = header["seq"]
                raise
            stats.next_seq += 1
            stats.sent += 1
            stats.nbytes += spec.nbytes
            stats.last_seq = header["seq"]
        return header["seq"]

    def _consumers(
        self, route: Route, deadline: float | None, timeout: float | None, cancel: Cancel | None, lossy: bool = False,
    ) -> list[ConsumerRef]:
        return route.wait_consumers(deadline, timeout, cancel, self.delivery.lost_consumer_wait, lossy=lossy)

    def _to_all(
        self, route: Route, spec: Spec, header: dict[str, Any], leaves: list[np.ndarray],
        deadline: float | None, timeout: float | None, cancel: Cancel | None,
    ) -> None:
        """Broadcast: hand the message to every consumer (a moved one along its new route).

        On a ``Queue`` channel a consumer that is away and expected back gets it on its return.
        """
        table = route.table
        is_queue, consumers = table.is_queue, table.consumers
        if (
            len(consumers) == 1 and not table.closed and not self.dispatch.outboxes.owes(route.channel, consumers[0].cid)
            and not (table.gone and route.returning(self.delivery.lost_consumer_wait))
        ):
            # The common case -- one consumer, nothing owed to it, nobody away and expected
            # back (for whom the message must be kept, see below) -- without the bookkeeping.
            try:
                self.dispatch.deliver(route, spec, consumers[0], header, leaves, deadline, cancel)
                return
            except (Reroute, ConsumerGone):
                pass  # the general path below sorts it out (and delivers at most once: nothing was taken)
        delivered: set[str] = set()
        while True:
            unreachable = route.unreachable
            if delivered:
                # A later pass: some consumer took it, so its number is used whatever happens now.
                # Those on the route get it without a wait; one away is kept for below (waiting here
                # could raise past _partial, and the next message would reuse the number).
                now = route.table
                current = () if now.closed else now.consumers
            else:
                current = self._consumers(route, deadline, timeout, cancel, lossy=not is_queue)
            todo = [c for c in current if c.cid not in delivered and (c.cid, c.stream) not in unreachable]
            failures: list[Exception] = []
            reroute = False
            for c in todo:
                try:
                    self.dispatch.deliver(route, spec, c, header, leaves, deadline, cancel)
                    delivered.add(c.cid)
                except Reroute:
                    reroute = True
                except ConsumerGone as e:
                    if expected_back(route, c, self.delivery, deadline, cancel):
                        reroute = True  # kept for it if it comes back (see Dispatch.keep_for_absent)
                    elif not is_queue:
                        # A lossy policy loses this consumer's copy, never the producer: skip the
                        # consumer until the broker changes the route (its successor attaches anew).
                        route.unreachable.add((c.cid, c.stream))
                        stats = self.producers.get((route.channel, header["source"]))
                        if stats is not None:
                            stats.dropped += 1
                        delivered.add(c.cid)
                    else:
                        failures.append(e)
                except (ChannelClosed, ChannelTimeout, Interrupted) as e:
                    e.consumer = c.cid  # type: ignore[attr-defined]  (for _partial)
                    failures.append(e)
            if failures:
                if delivered and is_queue:
                    self._partial(route, spec, header, leaves, delivered, failures)
                for kind in (ChannelClosed, Interrupted, ConsumerGone):
                    for e in failures:
                        if isinstance(e, kind):
                            raise e
                raise failures[0]
            if not reroute:
                table = route.table
                present = {c.cid for c in table.consumers}
                if is_queue and not table.closed and present - delivered:
                    # A consumer attached while this pass delivered (a lost one's successor, back on
                    # the route): it is present, so it is kept for by nobody below, and it was not
                    # in this pass. Another pass delivers it (after what it is owed); it lost the
                    # message otherwise (1 run in 4 with a consumer killed before its checkpoint).
                    continue
                self.dispatch.keep_for_absent(route, spec, header, leaves, route.returning(self.delivery.lost_consumer_wait) - present)
                return

    def _partial(
        self, route: Route, spec: Spec, header: dict[str, Any], leaves: list[np.ndarray],
        delivered: set[str], failures: list[Exception],
    ) -> None:
        """A broadcast ``Queue`` message some consumers took and others did not, in time: it is sent.

        Its sequence number is used (``send`` counts it), so it must reach the
        others too, before anything newer: it is kept for them as owed (a resend
        thread delivers it once they have room), and a timeout becomes
        :class:`PartiallyDelivered`, which says so. Reusing the number for the
        next payload gave the consumers that had it a wrong value under it.
        """
        late = [getattr(e, "consumer", None) for e in failures if isinstance(e, (ChannelTimeout, Interrupted))]
        late = [cid for cid in late if cid is not None]
        self.dispatch.owe_late(route, spec, header, leaves, late)
        for e in failures:
            e.seq_used = True  # type: ignore[attr-defined]  (send counts the number as used)
        for i, e in enumerate(failures):
            if isinstance(e, ChannelTimeout) and not isinstance(e, PartiallyDelivered):
                failures[i] = PartiallyDelivered(
                    f"channel {route.channel!r}: message {header['seq']} of {header['source']!r} was taken by "
                    f"{sorted(delivered)} but not by {late} within the timeout; it is kept for them and "
                    f"reaches them before anything newer (do not send it again)",
                    header["seq"], tuple(sorted(delivered)), tuple(late),
                )
                failures[i].seq_used = True  # type: ignore[attr-defined]

    def _to_one(
        self, route: Route, spec: Spec, header: dict[str, Any], leaves: list[np.ndarray],
        deadline: float | None, timeout: float | None, cancel: Cancel | None, stats: ProducerStats,
    ) -> None:
        """Work-sharing: hand the message to exactly one consumer that has room.

        Each pass offers it, without waiting, to every consumer in turn (starting
        at a rotating one, so that members with room share the work evenly). A
        refusal (no credit, gone, moving) takes nothing, so the message is never
        at two consumers. Between passes the sender backs off briefly: credits
        come back asynchronously from several consumers, and a task channel's
        messages are coarse, so a millisecond-scale poll costs nothing that matters.

        A restarted producer's repeated messages follow its :class:`ReplayPlan`
        (``stats.replay``): one a member had goes back to that member alone, and
        one no member had avoids the members that would drop it as old.
        """
        seq, turn = header["seq"], stats.sent
        plan = stats.replay
        if plan is not None and plan.over(seq):
            stats.replay = plan = None
        where = None if plan is None else plan.route(seq)
        if isinstance(where, Pin) and self._pinned_away(route, spec, header, leaves, where.cid):
            plan.sent(seq, where.cid)  # type: ignore[union-attr]
            return
        backoff = 0.001
        while True:
            consumers = self._consumers(route, deadline, timeout, cancel)
            if isinstance(where, Pin):
                offer = [c for c in consumers if c.cid == where.cid]
                if not offer and self._pinned_away(route, spec, header, leaves, where.cid):
                    plan.sent(seq, where.cid)  # type: ignore[union-attr]
                    return
            elif isinstance(where, Avoid):
                offer = [c for c in consumers if c.cid not in where.cids] or list(consumers)
            else:
                offer = list(consumers)
            gone: list[Exception] = []
            for i in range(len(offer)):
                c = offer[(turn + i) % len(offer)]
                try:
                    self.dispatch.deliver(route, spec, c, header, leaves, time.monotonic(), cancel)
                    if plan is not None:
                        plan.sent(seq, c.cid)
                    return
                except (Reroute, ChannelTimeout):
                    continue
                except ConsumerGone as e:
                    gone.append(e)
            if offer and len(gone) == len(offer) and len(offer) == len(consumers) and not route.table.moving:
                raise gone[0]
            if deadline is not None and time.monotonic() >= deadline:
                raise ChannelTimeout(
                    f"channel {route.channel!r}: no consumer of the work-sharing queue had room within {timeout} s"
                )
            if cancel is not None and cancel.is_set():
                raise Interrupted("send interrupted: the actor is stopping")
            with waits.waiting(WaitKind.ROOM, route.channel):  # (any consumer of the work-sharing queue)
                time.sleep(backoff)
            backoff = min(2 * backoff, 0.02)

    def _pinned_away(self, route: Route, spec: Spec, header: dict[str, Any], leaves: list[np.ndarray], cid: str) -> bool:
        """Whether the member a repeated message belongs to is not attached; then it is settled without a send.

        A member away and expected back gets it kept in its replay log (its
        successor may need it); one that left for good had processed it.
        """
        if any(c.cid == cid for c in route.consumers):
            return False
        if cid in route.returning(self.delivery.lost_consumer_wait):
            self.dispatch.keep_for_absent(route, spec, header, leaves, {cid})
        return True

    def next_seq(self, channel: str, source: str) -> int:
        """The sequence number ``source``'s next message on ``channel`` will carry (for checkpoints)."""
        stats = self.producers.get((channel, source))
        return 0 if stats is None else stats.next_seq

    def resume_seq(self, channel: str, source: str, next_seq: int, replay: ReplayPlan | None = None) -> None:
        """Continue ``source``'s sequence on ``channel`` at ``next_seq`` (a restored producer).

        Registers the source with the broker first, as its first send would.

        Args:
            channel: channel name.
            source: the producer's name.
            next_seq: the checkpoint's next number (also the committed floor).
            replay: on a work-sharing queue, where the messages sent again go
                (from what the members had, see :mod:`~coupler.runtime.dataplane.receipts`).

        Raises:
            ValueError: for a negative ``next_seq``.
            UnknownChannel: if the channel was never declared.
        """
        if next_seq < 0:
            raise ValueError(f"next_seq must be >= 0, got {next_seq}")
        self.register(channel, source)
        stats = self.producers.setdefault((channel, source), ProducerStats())
        with stats.lock:
            stats.next_seq = max(stats.next_seq, int(next_seq))
            stats.last_seq = stats.next_seq - 1
            stats.floor = max(stats.floor, int(next_seq))
            stats.replay = replay

    def committed(self, channel: str, source: str, next_seq: int) -> None:
        """A checkpoint of ``source`` whose next number on ``channel`` is ``next_seq`` is stored.

        A restart never sends again what comes before it, so a work-sharing
        queue's members may forget their receipts below it (their floor).
        """
        stats = self.producers.get((channel, source))
        if stats is not None:
            # Not under stats.lock, which a send blocked on back-pressure holds: one int
            # store, and only this commit path raises it after the restore.
            stats.floor = max(stats.floor, int(next_seq))

    def flush(self, channel: str, timeout: float | None = None, cancel: Cancel | None = None) -> None:
        """Wait until every message sent on ``channel`` from this worker was accepted (see :func:`~coupler.runtime.dataplane.flush.flush`).

        Raises:
            ChannelTimeout: not everything was accepted within ``timeout``.
            Interrupted: ``cancel`` was set.
            ConsumerGone: a consumer left for good with messages it had not accepted.
            ChannelClosed: the channel was closed.
        """
        route = self.routes.get(channel)
        if route is not None:
            flush(self.dispatch, route, self.delivery, timeout, cancel)


__all__ = ["Sender"]

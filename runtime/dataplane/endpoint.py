"""The endpoint: coupler's data plane on every worker, a Dask worker plugin.

Producers on this worker send messages straight to the workers of the
channel's consumers, one hop, over a dedicated stream per (channel, consumer)
(:class:`~coupler.runtime.dataplane.link.Link`): pipelined, small messages coalesced into
batches, ``Queue`` back-pressure by credits, and shared memory for large
messages when both ends are on one host. Consumers on this worker receive
them through the worker's :class:`~coupler.runtime.dataplane.receiver.Listener` into
the buffer their channel's policy implies. When producer and consumer share
a worker process the message is handed over in memory (one copy, so that the
consumer owns its data). Nothing goes through the scheduler, Dask's comms
for tasks, ``distributed.Queue`` or actor handles.

Actors call the endpoint from their own run-loop threads. Sends touch the
worker's event loop only the first time a source uses a channel (to register
with the broker); the broker pushes routing changes to the loop, which
updates the routes that the sending threads read.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from collections import deque
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, TypeVar

import dask.config
import dask.utils
import numpy as np
import psutil
from distributed import get_worker
from distributed.comm import get_address_host
from distributed.diagnostics.plugin import WorkerPlugin
from tornado.ioloop import PeriodicCallback

from coupler.runtime.dataplane import shm
from coupler.runtime.dataplane.auth import StreamKey
from coupler.runtime.dataplane.buffers import ConsumerBuffer, QueueBuffer, make_buffer
from coupler.runtime.control.departure import Departure, Gone
from coupler.runtime.errors import (
    ChannelClosed,
    ChannelTimeout,
    ConsumerGone,
    Interrupted,
    NoCoupling,
    PartiallyDelivered,
    raise_for_reply,
)
from coupler.runtime.dataplane.lineage import Take
from coupler.runtime.dataplane.link import Item, Link, ReplayLog, TransportConfig, frozen_leaves, owned_leaves, release_segments
from coupler.runtime.message import DeviceLeaves, Message, Spec, flatten, to_host, unflatten
from coupler.runtime.policies import policy_from_wire
from coupler.runtime.dataplane.receiver import ChannelSpecs, Listener, raise_open_file_limit
from coupler.runtime.dataplane.wire import BATCH_BYTES_MAX

logger = logging.getLogger(__name__)

ENDPOINT_NAME = "coupler-endpoint"
T = TypeVar("T")
_SWEEP_EVERY = 10.0  # seconds between sweeps of orphaned shared-memory names
# Seconds a sender waits for a broken stream's reader to hand back what the consumer did not accept.
LINK_WIND_UP_TIMEOUT = 10.0


@dataclass(frozen=True)
class ConsumerRef:
    """Where a consumer lives: its id, worker, stream address and host key."""

    cid: str
    worker: str
    stream: str
    host: str


@dataclass
class Route:
    """A producer-side copy of a channel's routing table, updated by the broker.

    Read by sending threads, replaced by the worker's loop; ``cond`` wakes
    senders that wait for a consumer.
    """

    channel: str
    table: dict[str, Any]
    cond: threading.Condition = field(default_factory=threading.Condition)
    _spec: tuple[Any, Spec | None] = (None, None)

    _decoded: tuple[Any, Spec | None, bool, bool, list[ConsumerRef]] = (None, None, False, False, [])
    _gone: tuple[Any, list[Gone]] = (None, [])

    def decoded(self) -> tuple[Any, Spec | None, bool, bool, list[ConsumerRef]]:
        """``(table, spec, is_queue, is_shared, consumers)``, decoded once per routing table.

        Every send reads them: one call and one identity check, not one property each.
        """
        table = self.table
        d = self._decoded
        if d[0] is not table:
            wire, policy = table.get("spec"), table["policy"]
            if self._spec[0] is not wire:  # the spec is decoded again only when it changed
                self._spec = (wire, None if wire is None else Spec.from_wire(wire))
            d = self._decoded = (
                table, self._spec[1], policy["kind"] == "queue", bool(policy.get("shared", False)),
                [ConsumerRef(*c) for c in table["consumers"]],
            )
        return d

    @property
    def consumers(self) -> list[ConsumerRef]:
        """The consumers."""
        return self.decoded()[4]

    @property
    def gone(self) -> list[Gone]:
        """The consumers that left, and how (decoded once per routing table)."""
        table = self.table
        cached = self._gone
        if cached[0] is not table:
            cached = self._gone = (table, [Gone.from_wire(g) for g in table["gone"]])
        return cached[1]

    @property
    def spec(self) -> Spec | None:
        """The channel's spec (``None`` until the first message fixes it)."""
        return self.decoded()[1]

    @property
    def is_queue(self) -> bool:
        """Whether the channel is a ``Queue`` (at-least-once, credited)."""
        return self.decoded()[2]


class _Reroute(Exception):
    """A link closed because its consumer moved: deliver along the new route."""


@dataclass
class ProducerStats:
    """Counters of one (channel, source) pair on this worker."""

    sent: int = 0
    nbytes: int = 0
    last_seq: int = -1
    next_seq: int = 0
    dropped: int = 0  # copies for consumers of a lossy channel whose stream failed
    lock: threading.Lock = field(default_factory=threading.Lock)

    def as_dict(self) -> dict[str, int]:
        return {"sent": self.sent, "nbytes": self.nbytes, "last_seq": self.last_seq, "dropped": self.dropped}


@dataclass(frozen=True)
class DeliveryConfig:
    """At-least-once delivery on ``Queue`` channels (``coupler.delivery`` in dask.config).

    Attributes:
        retain: keep what was sent to each ``Queue`` consumer until its stored checkpoint
            covers it, to replay to its successor after a loss.
        retain_bytes: most payload bytes kept per (channel, consumer) on a worker.
        lost_consumer_wait: seconds producers wait for a consumer whose worker was lost
            to come back (restarted by the supervisor) before sends fail with ConsumerGone.
        replay_order_wait: seconds a restarted merging actor waits for the next input of its
            predecessor's recorded order before it gives the order up (runtime/dataplane/lineage.py).
    """

    retain: bool = True
    retain_bytes: int = 256 << 20
    lost_consumer_wait: float = 300.0
    replay_order_wait: float = 60.0


def delivery_config() -> DeliveryConfig:
    """The ``coupler.delivery`` settings of this process.

    Raises:
        ValueError: for a negative size or duration.
    """
    c = dask.config.get("coupler.delivery", default={}) or {}
    d = DeliveryConfig()
    size, wait = c.get("retain-bytes", d.retain_bytes), c.get("lost-consumer-wait", d.lost_consumer_wait)
    try:
        retain_bytes = int(dask.utils.parse_bytes(size))
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"coupler.delivery.retain-bytes must be a size (bytes or e.g. '1 GiB'), got {size!r}") from None
    try:
        lost_wait = float(dask.utils.parse_timedelta(wait, default="seconds"))
    except (TypeError, ValueError, KeyError, IndexError, OverflowError):
        raise ValueError(f"coupler.delivery.lost-consumer-wait must be a duration (seconds or e.g. '5 minutes'), got {wait!r}") from None
    if retain_bytes < 0 or lost_wait < 0:
        raise ValueError(f"coupler.delivery: retain-bytes and lost-consumer-wait must be >= 0, got {size!r} and {wait!r}")
    order = c.get("replay-order-wait", d.replay_order_wait)
    try:
        order_wait = float(dask.utils.parse_timedelta(order, default="seconds"))
    except (TypeError, ValueError, KeyError, IndexError, OverflowError):
        raise ValueError(f"coupler.delivery.replay-order-wait must be a duration (seconds or e.g. '1 minute'), got {order!r}") from None
    if order_wait < 0:
        raise ValueError(f"coupler.delivery.replay-order-wait must be >= 0, got {order!r}")
    return DeliveryConfig(
        retain=bool(c.get("retain", d.retain)), retain_bytes=retain_bytes, lost_consumer_wait=lost_wait,
        replay_order_wait=order_wait,
    )


def transport_config() -> TransportConfig:
    """The ``coupler.transport`` settings of this process."""
    c = dask.config.get("coupler.transport", default={}) or {}
    d = TransportConfig()
    return TransportConfig(
        shared_memory=bool(c.get("shared-memory", d.shared_memory)),
        inline_max=int(dask.utils.parse_bytes(c.get("inline-max", d.inline_max))),
        batch_bytes=int(dask.utils.parse_bytes(c.get("batch-bytes", d.batch_bytes))),
        window_bytes=int(dask.utils.parse_bytes(c.get("window-bytes", d.window_bytes))),
        shm_pool_bytes=int(dask.utils.parse_bytes(c.get("shm-pool-bytes", d.shm_pool_bytes))),
        device_to_device=bool(c.get("device-to-device", d.device_to_device)),
    )


def _freeze_startup_objects() -> None:
    """Take the objects this process holds now out of the cyclic garbage collector's scans (``gc.freeze``).

    A worker holds ~170k tracked objects once Dask and coupler are up. A stream's
    messages allocate containers fast enough to cause a full collection every
    few seconds, and each scanned all of them: ~150 ms (2 per 4 s on a 4 KiB
    stream, 7 % of the producer's time) in which no thread of the worker moved.
    Frozen, a full collection scans only what was made since (6 ms for 4 of
    them). The cost: a reference cycle among the frozen objects is never freed;
    they are the process's long-lived state, so that is rare and bounded.
    """
    gc.collect()  # what is garbage now is freed, not frozen
    gc.freeze()


class Endpoint(WorkerPlugin):
    """Worker plugin holding this worker's consumer buffers, listener and producer links.

    Args:
        report_interval: seconds between counter reports to the broker.
    """

    name = ENDPOINT_NAME
    idempotent = True

    def __init__(self, report_interval: float = 0.5) -> None:
        self.report_interval = report_interval

    # -- plugin life cycle ---------------------------------------------------------------
    def setup(self, worker: Any) -> None:
        import coupler.runtime.config  # noqa: F401  (installs coupler's defaults in this process)

        self.worker = worker
        self._address: str | None = None
        self.loop: asyncio.AbstractEventLoop = worker.loop.asyncio_loop
        self.config = transport_config()
        self.buffers: dict[tuple[str, str], ConsumerBuffer] = {}
        self.routes: dict[str, Route] = {}
        self.producers: dict[tuple[str, str], ProducerStats] = {}
        self.links: dict[tuple[str, str, str], Link] = {}
        self.orphans: dict[tuple[str, str], deque[Item]] = {}
        self.delivery = delivery_config()
        self.replay_logs: dict[tuple[str, str], ReplayLog] = {}  # (channel, consumer) -> kept for a replay
        self.incarnations: dict[tuple[str, str], str] = {}  # (channel, consumer) -> stream it was last sent to
        self.lost_since: dict[tuple[str, str], float] = {}  # (channel, consumer) -> when its worker was seen lost
        # channel -> (consumer, stream) pairs of a lossy channel whose stream failed, skipped until the route changes
        self.unreachable: dict[str, set[tuple[str, str]]] = {}
        self._resending: set[tuple[str, str]] = set()  # (channel, consumer) being caught up by _resend_owed
        self._closing = threading.Event()  # stops those threads at teardown
        self._lock = threading.Lock()  # links and orphans, shared by sending threads and link threads
        self.actors: dict[str, Any] = {}  # name -> object with status_dict()
        self.host = shm.host_key()
        try:
            host = get_address_host(worker.address)
        except (ValueError, TypeError):
            host = "127.0.0.1"
        self._server_ssl, self._client_ssl = self._ssl_contexts(worker)
        raise_open_file_limit()  # every stream costs a descriptor (see receiver.Listener)
        # The cluster's stream secret comes from the broker; streams wait for it (StreamKey.secret).
        self.stream_key = StreamKey()

        async def fetch_secret() -> None:
            try:
                self.stream_key.set((await self._broker("coupler_stream_secret"))["secret"])
            except Exception as e:  # no broker, or an old one: every stream is refused, saying why
                self.stream_key.fail(f"the broker did not hand out the cluster's stream secret: {e!r}")

        self._secret_task = self.loop.create_task(fetch_secret())  # (held: the loop keeps only a weak reference)
        # Batches are checked against the spec the broker holds, asked for from the receiving thread.
        specs = ChannelSpecs(lambda ch: self.call(lambda: self._broker("coupler_routing", name=ch), timeout=30)["spec"])
        self.listener = Listener(
            host, self._lookup, self._server_ssl, key=self.stream_key, specs=specs,
            batch_bytes=max(BATCH_BYTES_MAX, self.config.batch_bytes, self.config.inline_max),
        )
        self.retire_at = self._retire_at(worker)
        worker.handlers["coupler_routing_update"] = self._handle_routing_update
        worker.handlers["coupler_takes"] = self._handle_takes
        shm.sweep_orphans()
        self._last_sweep = time.monotonic()
        self._reporter = PeriodicCallback(self._report, self.report_interval * 1000)
        self._reporter.start()
        if bool(dask.config.get("coupler.gc-freeze", True)):
            _freeze_startup_objects()

    @staticmethod
    def _ssl_contexts(worker: Any) -> tuple[Any, Any]:
        """TLS contexts from the worker's Dask ``Security`` whenever its comm is secured (``tls://``, ``wss://``)."""
        if not str(worker.address).startswith(("tls://", "wss://")):
            return None, None
        server = worker.security.get_listen_args("worker").get("ssl_context")
        client = worker.security.get_connection_args("worker").get("ssl_context")
        return server, client

    @staticmethod
    def _retire_at(worker: Any) -> float | None:
        """When a worker with a lifetime (walltime) will close itself, as epoch seconds."""
        lifetime = getattr(worker, "lifetime", None)
        if not lifetime:
            return None
        # Dask counts the lifetime from the Worker's construction, a moment after the
        # process started: using the process start makes the estimate slightly early.
        return psutil.Process().create_time() + float(lifetime)

    def teardown(self, worker: Any) -> None:
        self._closing.set()
        self._reporter.stop()
        self.listener.close()
        with self._lock:
            links = list(self.links.values())
            self.links.clear()
        for link in links:
            link.close(orphan=False)
        for buf in self.buffers.values():
            buf.close()
        shm.sweep_orphans()

    @property
    def address(self) -> str:
        # Read on every send: kept once known (a worker's address does not change).
        a = self._address
        if a is None:
            a = self._address = self.worker.address
        return a

    # -- bridging threads and the loop -----------------------------------------------------
    def call(
        self, fn: Callable[[], Awaitable[T]], timeout: float | None = None, cancel: threading.Event | None = None
    ) -> T:
        """Run a coroutine on the worker's loop from another thread and wait for it.

        Args:
            fn: makes the coroutine (called on the loop).
            timeout: seconds to wait.
            cancel: when set while waiting, the coroutine is cancelled.

        Raises:
            RuntimeError: when called on the event loop itself (it would deadlock).
            ChannelTimeout: after ``timeout``.
            Interrupted: when ``cancel`` was set.
        """
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            raise RuntimeError(
                "coupler ports block; call them from an actor's run loop (its own thread), "
                "not from the worker's event loop or an async actor method"
            )
        async def run() -> T:
            return await fn()

        fut = asyncio.run_coroutine_threadsafe(run(), self.loop)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            waits = [0.1 if cancel is not None else None]
            if deadline is not None:
                waits.append(max(0.0, deadline - time.monotonic()))
            wait = min((w for w in waits if w is not None), default=None)
            # Not fut.result(wait): our ChannelTimeout is a TimeoutError, which is
            # what result() raises on expiry too; futures_wait tells the two apart.
            done, _ = futures_wait([fut], timeout=wait)
            if done:
                return fut.result()
            if cancel is not None and cancel.is_set():
                fut.cancel()
                raise Interrupted("send interrupted: the actor is stopping")
            if deadline is not None and time.monotonic() >= deadline:
                fut.cancel()
                raise ChannelTimeout(f"operation did not complete within {timeout} s")

    async def _broker(self, op: str, **kwargs: Any) -> dict[str, Any]:
        reply = await getattr(self.worker.scheduler, op)(**kwargs)
        return raise_for_reply(reply)

    # -- consumer side -----------------------------------------------------------------------
    def _lookup(self, channel: str, consumer: str) -> ConsumerBuffer | None:
        return self.buffers.get((channel, consumer))

    def attach_consumer(self, channel: str, consumer: str, preload: list[Message] | None = None) -> ConsumerBuffer:
        """Create this consumer's buffer, then announce it to the broker.

        Args:
            channel: channel name.
            consumer: consumer id (``actor/port``).
            preload: messages to hold before anything arrives (a moved consumer's leftovers).

        Raises:
            UnknownChannel: if the channel was never declared.
        """

        async def attach() -> ConsumerBuffer:
            table = await self._broker("coupler_routing", name=channel)
            buf = make_buffer(channel, policy_from_wire(table["policy"]))
            if preload:
                buf.preload(preload)
            self.buffers[(channel, consumer)] = buf  # before the broker tells producers
            table = await self._broker(
                "coupler_attach", name=channel, role="consumer", ident=consumer, address=self.address,
                stream=self.listener.address, host=self.host,
            )
            if table["closed"]:
                buf.close()
            return buf

        return self.call(attach)

    def detach_consumer(self, channel: str, consumer: str, handover: bool = False) -> list[Message]:
        """Remove a consumer's buffer and tell the broker (producers stop sending to it).

        Args:
            channel: channel name.
            consumer: consumer id.
            handover: the consumer is moving (a restart elsewhere): producers wait for
                it instead of failing, and what it held is returned to be preloaded.

        Returns:
            With ``handover``, the messages the buffer still held (``Queue``, ``Latest``).
        """

        async def detach() -> list[Message]:
            buf = self.buffers.pop((channel, consumer), None)
            left: list[Message] = []
            if buf is not None:
                buf.detach()
                if handover:
                    left = buf.drain()
                # Wake a thread still waiting on it. Not close(): a stream that delivers to it meanwhile
                # must hear "gone" (ConsumerGone), not "closed" (which would end its producer as if
                # the channel had closed).
                buf.interrupt()
            departure = Departure.HANDOVER if handover else Departure.DETACHED
            await self._broker("coupler_detach", name=channel, ident=consumer, departure=departure.value)
            return left

        return self.call(detach)

    # -- producer side -------------------------------------------------------------------------
    async def _route(self, channel: str, source: str) -> Route:
        route = self.routes.get(channel)
        if route is None:
            table = await self._broker("coupler_attach", name=channel, role="producer", ident=source, address=self.address)
            route = self.routes.setdefault(channel, Route(channel, table))
        elif (channel, source) not in self.producers:
            await self._broker("coupler_attach", name=channel, role="producer", ident=source, address=self.address)
        return route

    def _handle_routing_update(self, table: dict[str, Any]) -> dict[str, str]:
        channel = table["channel"]
        route = self.routes.get(channel)
        if route is not None and table["version"] >= route.table["version"]:
            with route.cond:
                route.table = table
                route.cond.notify_all()
            present = {c.cid for c in route.consumers}
            self.unreachable.pop(channel, None)  # the route changed: try every consumer it lists again
            for gone in route.gone:
                if gone.kind is Departure.LOST:
                    self.lost_since.setdefault((channel, gone.consumer), time.monotonic())
                elif gone.kind is Departure.DETACHED and gone.consumer not in present:
                    self._forget_consumer(channel, gone.consumer)  # it closed its port: it will not come back for these
            for key in [k for k in self.lost_since if k[0] == channel and k[1] in present]:
                del self.lost_since[key]
            current = {(channel, c.cid, c.stream) for c in route.consumers}
            with self._lock:
                stale = [k for k in self.links if k[0] == channel and k not in current]
                closing = [self.links.pop(k) for k in stale]
            for link in closing:
                link.close(orphan=not table["closed"])
            self._resend_owed(route)
        if table["closed"]:
            for (ch, _), buf in list(self.buffers.items()):
                if ch == channel:
                    buf.close()  # its consumer drains it, sees the end, and detaches (which drops it)
            self._forget_channel(channel)
        return {"status": "OK"}

    def _forget_channel(self, channel: str) -> None:
        """Drop everything this worker keeps to send on a closed ``channel``.

        Its route, its producers' counters (the broker keeps their last ones as
        departed totals), its replay logs and what was kept for a resend (a closed
        channel replays nothing: see :meth:`_adopt_orphans`), and its links: each
        holds a reader thread, a socket and a shared-memory arena, and the
        consumer's worker a receiving thread, until it is closed. A sender still
        blocked on the old route sees it closed (:class:`ChannelClosed`); a later
        one asks the broker again and is refused.
        """
        with self._lock:
            for key in [k for k in self.producers if k[0] == channel]:
                del self.producers[key]
            self.routes.pop(channel, None)
        self._forget_consumer(channel, None)

    def release_producer(self, channel: str, source: str) -> None:
        """Producer ``source`` (an actor) of ``channel`` on this worker has ended: give back what it used.

        Its counters stay until the channel is closed, so that the broker's
        totals count what it sent even if it ended before the next report. The
        channel's links, route and replay logs go once nothing else needs them
        (see :meth:`_release_if_idle`).

        Args:
            channel: channel name.
            source: the producer's name (its actor's).
        """
        self._release_if_idle(channel, ending=source)

    def _release_if_idle(self, channel: str, ending: str = "") -> None:
        """Close ``channel``'s links and drop its route here if no producer on this worker needs them.

        A producer needs them while its actor (other than ``ending``) is
        registered here with an output on the channel. A consumer needs them
        while a replay log holds messages it has not committed: its successor
        must get them again (docs/reliability.md), and its commits come back
        through the links. So this runs again on every commit; the consumer's
        departure or the channel's close frees the rest. An ended producer
        flushed, so the links carry nothing; what one still held would be
        handed back for a resend, which opens a new link.

        Args:
            channel: channel name.
            ending: the producer that is ending now (still registered).
        """
        for name, actor in list(self.actors.items()):
            if name != ending and any(p.channel == channel for p in getattr(actor, "outputs", {}).values()):
                return
        with self._lock:
            if any(k[0] == channel and log.items for k, log in self.replay_logs.items()):
                return
            if any(k[0] == channel and q for k, q in self.orphans.items()):
                return
            self.routes.pop(channel, None)
            closing = [self.links.pop(k) for k in [k for k in self.links if k[0] == channel]]
        for link in closing:
            link.close(orphan=True)
        self._forget_consumer(channel, None)

    def _forget_consumer(self, channel: str, cid: str | None) -> None:
        """Drop what this worker keeps to send again to consumer ``cid`` of ``channel`` (``None``: every one).

        Replay logs hold up to ``coupler.delivery.retain-bytes`` each; kept for a
        consumer that left for good, or on a closed channel, they would hold that
        memory for the rest of the run (and replay it all to a later consumer that
        happened to take the same name). Its links go too, without handing back
        what they carry (nobody will take it): each holds a reader thread, a
        socket and a shared-memory arena here and a receiving thread on the
        consumer's worker.
        """
        with self._lock:
            for key in [k for k in self.replay_logs if k[0] == channel and (cid is None or k[1] == cid)]:
                self.replay_logs.pop(key).clear()  # lets go of the segments it kept
            for kept in (self.orphans, self.incarnations, self.lost_since):
                for key in [k for k in kept if k[0] == channel and (cid is None or k[1] == cid)]:
                    del kept[key]
            closing = [self.links.pop(k) for k in [k for k in self.links if k[0] == channel and (cid is None or k[1] == cid)]]
        for link in closing:
            link.close(orphan=False)

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
        cancel: threading.Event | None = None,
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
            UnknownChannel, SpecMismatch, ChannelClosed, ConsumerGone, ChannelTimeout, Interrupted.
        """
        leaves, treedef = flatten(data)
        route = self.routes.get(channel)
        stats = self.producers.get((channel, source))
        if route is None or stats is None:
            route = self.call(lambda: self._route(channel, source))
            stats = self.producers.setdefault((channel, source), ProducerStats())
        _, spec, _, shared, _ = route.decoded()
        if spec is None:
            proposed = Spec.from_leaves(treedef, leaves)
            reply = self.call(lambda: self._broker("coupler_fix_spec", name=channel, spec=proposed.to_wire()))
            with route.cond:
                route.table = {**route.table, "spec": reply["spec"]}
            spec = Spec.from_wire(reply["spec"])
        spec.check(channel, treedef, leaves)
        deadline = None if timeout is None else time.monotonic() + timeout
        with stats.lock:  # one sequence per source, gap-free even if a port is shared by threads
            header = {
                "timestamp": float(timestamp), "step": int(step), "source": source, "seq": stats.next_seq,
                "meta": meta or {}, "sent_at": time.time(),
            }  # Message.header()'s fields, built directly: this is the hot path
            try:
                if shared:
                    self._deliver_to_one(route, spec, header, leaves, deadline, timeout, cancel, stats.sent)
                else:
                    self._deliver_to_all(route, spec, header, leaves, deadline, timeout, cancel)
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

    def _deliver_to_all(
        self, route: Route, spec: Spec, header: dict[str, Any], leaves: list[np.ndarray],
        deadline: float | None, timeout: float | None, cancel: threading.Event | None,
    ) -> None:
        """Broadcast: hand the message to every consumer (a moved one along its new route).

        On a ``Queue`` channel a consumer that is away and expected back gets it on its return.
        """
        table, _, is_queue, _, consumers = route.decoded()
        if (
            len(consumers) == 1 and not table["closed"] and not self.orphans.get((route.channel, consumers[0].cid))
            and not ((table["gone"] or table.get("moving")) and self._returning(route))
        ):
            # The common case -- one consumer, nothing owed to it, nobody away and expected
            # back (for whom the message must be kept, see below) -- without the bookkeeping.
            try:
                self._deliver(route, spec, consumers[0], header, leaves, deadline, cancel)
                return
            except (_Reroute, ConsumerGone):
                pass  # the general path below sorts it out (and delivers at most once: nothing was taken)
        delivered: set[str] = set()
        while True:
            unreachable = self.unreachable.get(route.channel, ())
            todo = [
                c for c in self._wait_consumers(route, deadline, timeout, cancel, lossy=not is_queue)
                if c.cid not in delivered and (c.cid, c.stream) not in unreachable
            ]
            failures: list[Exception] = []
            reroute = False
            for c in todo:
                try:
                    self._deliver(route, spec, c, header, leaves, deadline, cancel)
                    delivered.add(c.cid)
                except _Reroute:
                    reroute = True
                except ConsumerGone as e:
                    if self._left_route(route, c, deadline, cancel):
                        reroute = True  # kept for it if it comes back (see _keep_for_absent)
                    elif not is_queue:
                        # A lossy policy loses this consumer's copy, never the producer: skip the
                        # consumer until the broker changes the route (its successor attaches anew).
                        self.unreachable.setdefault(route.channel, set()).add((c.cid, c.stream))
                        stats = self.producers.get((route.channel, header["source"]))
                        if stats is not None:
                            stats.dropped += 1
                        delivered.add(c.cid)
                    else:
                        failures.append(e)
                except (ChannelClosed, ChannelTimeout, Interrupted) as e:
                    e.consumer = c.cid  # type: ignore[attr-defined]  (for _keep_for_late)
                    failures.append(e)
            if failures:
                if delivered and is_queue:
                    self._keep_for_late(route, spec, header, leaves, delivered, failures)
                for kind in (ChannelClosed, Interrupted, ConsumerGone):
                    for e in failures:
                        if isinstance(e, kind):
                            raise e
                raise failures[0]
            if not reroute:
                if route.is_queue and self.delivery.retain:
                    self._keep_for_absent(route, spec, header, leaves)
                return

    def _keep_for_late(
        self, route: Route, spec: Spec, header: dict[str, Any], leaves: list[np.ndarray],
        delivered: set[str], failures: list[Exception],
    ) -> None:
        """A broadcast ``Queue`` message some consumers took and others did not, in time: it is sent.

        Its sequence number is used (the caller's ``send`` counts it), so it must
        reach the others too, before anything newer: it is kept for them as owed
        (a resend thread delivers it once they have room), and a timeout becomes
        :class:`PartiallyDelivered`, which says so. Reusing the number for the
        next payload gave the consumers that had it a wrong value under it.
        """
        late = [getattr(e, "consumer", None) for e in failures if isinstance(e, (ChannelTimeout, Interrupted))]
        late = [cid for cid in late if cid is not None]
        kept = frozen_leaves(to_host(leaves))
        for cid in late:
            log = self._replay_log(route, cid)
            item = log.add(header, kept, spec.nbytes) if log is not None else Item(header, kept, spec.nbytes, False)
            with self._lock:
                self.orphans.setdefault((route.channel, cid), deque()).append(item)
            self._resend_owed(route, cid)
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

    def _deliver_to_one(
        self, route: Route, spec: Spec, header: dict[str, Any], leaves: list[np.ndarray],
        deadline: float | None, timeout: float | None, cancel: threading.Event | None, turn: int,
    ) -> None:
        """Work-sharing: hand the message to exactly one consumer that has room.

        Each pass offers it, without waiting, to every consumer in turn (starting
        at a rotating one, so that members with room share the work evenly). A
        refusal (no credit, gone, moving) takes nothing, so the message is never
        at two consumers. Between passes the sender backs off briefly: credits
        come back asynchronously from several consumers, and a task channel's
        messages are coarse, so a millisecond-scale poll costs nothing that matters.
        """
        backoff = 0.001
        while True:
            consumers = self._wait_consumers(route, deadline, timeout, cancel)
            gone: list[Exception] = []
            for i in range(len(consumers)):
                c = consumers[(turn + i) % len(consumers)]
                try:
                    self._deliver(route, spec, c, header, leaves, time.monotonic(), cancel)
                    return
                except (_Reroute, ChannelTimeout):
                    continue
                except ConsumerGone as e:
                    gone.append(e)
            if len(gone) == len(consumers) and not route.table.get("moving"):
                raise gone[0]
            if deadline is not None and time.monotonic() >= deadline:
                raise ChannelTimeout(
                    f"channel {route.channel!r}: no consumer of the work-sharing queue had room within {timeout} s"
                )
            if cancel is not None and cancel.is_set():
                raise Interrupted("send interrupted: the actor is stopping")
            time.sleep(backoff)
            backoff = min(2 * backoff, 0.02)

    def next_seq(self, channel: str, source: str) -> int:
        """The sequence number ``source``'s next message on ``channel`` will carry (for checkpoints)."""
        stats = self.producers.get((channel, source))
        return 0 if stats is None else stats.next_seq

    def resume_seq(self, channel: str, source: str, next_seq: int) -> None:
        """Continue ``source``'s sequence on ``channel`` at ``next_seq`` (a restored producer).

        Registers the source with the broker first, as its first send would.

        Raises:
            ValueError: for a negative ``next_seq``.
            UnknownChannel: if the channel was never declared.
        """
        if next_seq < 0:
            raise ValueError(f"next_seq must be >= 0, got {next_seq}")
        self.call(lambda: self._route(channel, source))
        stats = self.producers.setdefault((channel, source), ProducerStats())
        with stats.lock:
            stats.next_seq = max(stats.next_seq, int(next_seq))
            stats.last_seq = stats.next_seq - 1

    def _wait_consumers(
        self, route: Route, deadline: float | None, timeout: float | None, cancel: threading.Event | None,
        lossy: bool = False,
    ) -> list[ConsumerRef]:
        """The channel's consumers; waits while there are none (or they are moving).

        With ``lossy`` (Latest, Reservoir, Window), once consumers have left and
        none is attached, it returns none at once: the message is dropped and the
        producer goes on (a successor gets the values sent after it attached).
        """
        table = route.table  # one read of the reference: the loop replaces it, never mutates it
        if table["consumers"] and not table["closed"]:
            return route.consumers
        with route.cond:
            while True:
                table = route.table
                if table["closed"]:
                    raise ChannelClosed(f"channel {route.channel!r} is closed; cannot send")
                if table["consumers"]:
                    return route.consumers
                if table["gone"] and lossy:
                    return []
                if table["gone"] and not self._returning(route):
                    gone = ", ".join(str(g) for g in route.gone)
                    raise ConsumerGone(f"channel {route.channel!r} has no consumer left: {gone}")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise ChannelTimeout(f"channel {route.channel!r}: no consumer attached within {timeout} s")
                if cancel is not None and cancel.is_set():
                    raise Interrupted("send interrupted: the actor is stopping")
                route.cond.wait(0.05 if remaining is None else min(remaining, 0.05))

    def _left_route(
        self, route: Route, c: ConsumerRef, deadline: float | None, cancel: threading.Event | None
    ) -> bool:
        """After its stream broke: wait for the broker to take consumer ``c`` off the route.

        On a ``Queue`` channel with retention a consumer whose worker died is
        expected back (restarted by the supervisor); the send goes on once the
        broker has confirmed the loss. Returns ``False`` (the send fails with
        :class:`ConsumerGone`) for other channels, or if the route did not change
        within ``lost_consumer_wait`` (or the send's deadline).
        """
        if not (route.is_queue and self.delivery.retain):
            return False
        limit = time.monotonic() + self.delivery.lost_consumer_wait
        if deadline is not None:
            limit = min(limit, deadline)
        with route.cond:
            while any(x.cid == c.cid and x.stream == c.stream for x in route.consumers):
                if time.monotonic() >= limit or (cancel is not None and cancel.is_set()):
                    return False
                route.cond.wait(0.05)
        return True

    def _returning(self, route: Route) -> set[str]:
        """Consumers that left and are expected back: moving ones, and lost ones for a while.

        A consumer whose worker was lost is restarted by the supervisor (after a
        back-off and a placement); producers wait ``coupler.delivery.lost-consumer-wait``
        seconds for it rather than fail at once.
        """
        table = route.table
        back = set(table.get("moving") or ())
        now = time.monotonic()
        for gone in route.gone:
            since = self.lost_since.get((route.channel, gone.consumer))
            if since is not None and now - since < self.delivery.lost_consumer_wait:
                back.add(gone.consumer)
        return back

    def _replay_log(self, route: Route, cid: str) -> ReplayLog | None:
        """The replay log of a ``Queue`` consumer (``None``: not a Queue, or retention is off)."""
        if not (route.is_queue and self.delivery.retain):
            return None
        key = (route.channel, cid)
        log = self.replay_logs.get(key)
        if log is None:
            with self._lock:
                log = self.replay_logs.setdefault(key, ReplayLog(route.channel, cid, self.delivery.retain_bytes))
        return log

    def _frozen(self, route: Route, leaves: list[np.ndarray]) -> list[np.ndarray]:
        """Leaves fit to keep in a replay log (Queue channels with retention), else as they are."""
        if not (route.is_queue and self.delivery.retain):
            return leaves
        frozen = frozen_leaves(to_host(leaves))
        return DeviceLeaves(frozen, leaves.device) if isinstance(leaves, DeviceLeaves) else frozen

    def _keep_for_absent(self, route: Route, spec: Spec, header: dict[str, Any], leaves: list[np.ndarray]) -> None:
        """Keep a broadcast Queue message for consumers that are away and expected back.

        They get it, after what else they are owed, when they return (see :meth:`_deliver`).
        """
        present = {c.cid for c in route.consumers}
        absent = self._returning(route) - present
        if absent:
            leaves = self._frozen(route, leaves)
        for cid in absent:
            log = self._replay_log(route, cid)
            if log is None:
                return
            log.add(header, leaves, spec.nbytes)
            with self._lock:
                self.orphans[(route.channel, cid)] = deque(log.replay())

    def _deliver(
        self, route: Route, spec: Spec, c: ConsumerRef, header: dict[str, Any], leaves: list[np.ndarray],
        deadline: float | None, cancel: threading.Event | None,
    ) -> None:
        """Hand one message to one consumer, after any messages it still has to get back.

        On a ``Queue`` channel the message is also kept in the consumer's replay
        log until the consumer commits it (the stream's link puts it there; for a
        consumer on this worker, a read-only copy goes there here); a consumer
        reached at a new stream (a successor of a lost or moved one) first gets
        everything in its log again: it drops what its checkpoint already covers
        (duplicate suppression).
        """
        log = self._catch_up(route, spec, c, deadline, cancel)
        kept = None
        if log is not None and c.worker == self.address:
            kept = log.add(header, self._frozen(route, leaves), spec.nbytes)
        try:
            self._deliver_one(route, spec, c, header, leaves, deadline, cancel)
        except BaseException:
            if kept is not None:
                log.remove(kept)  # type: ignore[union-attr]
            raise

    def _catch_up(
        self, route: Route, spec: Spec, c: ConsumerRef, deadline: float | None, cancel: threading.Event | None,
    ) -> ReplayLog | None:
        """Send consumer ``c`` what it is owed from this worker, oldest first; return its replay log.

        A consumer reached at a new stream (a successor of a lost or moved one)
        is owed everything in its log again; one whose stream broke, what the
        link had not delivered. Several threads may run this at once (senders, and
        :meth:`_resend_owed`'s): an item leaves the queue only after it was handed
        on, so a later one never overtakes it; at worst the consumer drops a copy
        as a duplicate.
        """
        key = (route.channel, c.cid)
        log = self._replay_log(route, c.cid)
        if log is not None and self.incarnations.get(key) != c.stream:  # (a dict read: no lock per message)
            with self._lock:
                before = self.incarnations.get(key)
                self.incarnations[key] = c.stream
                if before is not None and before != c.stream:
                    self.orphans[key] = deque(log.replay())
        while self.orphans.get(key):  # leftovers of a previous instance of this consumer go first, in order
            with self._lock:
                q = self.orphans.get(key)
                item = q[0] if q else None
            if item is None:
                break
            self._deliver_one(route, spec, c, item.header, item.payload_leaves(spec), deadline, cancel)
            with self._lock:
                q = self.orphans.get(key)
                if q and q[0] is item:
                    q.popleft()
        return log

    def _resend_owed(self, route: Route, cid: str | None = None) -> None:
        """Start sending what consumers are owed, in a thread per consumer.

        Called on routing updates (a consumer came back) and when a link hands
        back what its consumer did not accept (:meth:`_adopt_orphans`). Senders
        catch up before their next message; this covers producers that send
        nothing more (finished, paused, or waiting for an answer), whose consumer
        would otherwise wait for their next send, checkpoint or final flush.

        Args:
            route: the channel's route.
            cid: only this consumer (else every consumer on the route).
        """
        table, spec, is_queue, _, consumers = route.decoded()
        if spec is None or table["closed"] or self._closing.is_set():
            return  # (at teardown every link hands back what it holds: nothing to resend to)
        retain = is_queue and self.delivery.retain
        for c in consumers:
            if cid is not None and c.cid != cid:
                continue
            key = (route.channel, c.cid)
            log = self.replay_logs.get(key) if retain else None
            with self._lock:
                before = self.incarnations.get(key)
                owed = bool(self.orphans.get(key)) or (
                    log is not None and before is not None and before != c.stream and bool(log.items)
                )
                if not owed or key in self._resending:
                    continue
                self._resending.add(key)
            threading.Thread(
                target=self._resend, args=(route, spec, c.cid), name=f"coupler-resend-{route.channel}", daemon=True
            ).start()

    def _resend(self, route: Route, spec: Spec, cid: str) -> None:
        key = (route.channel, cid)
        try:
            while True:
                c = next((x for x in route.consumers if x.cid == cid), None)
                if c is None:
                    return  # away: its return (a routing update) starts this again
                try:
                    self._catch_up(route, spec, c, None, self._closing)
                    return
                except _Reroute:
                    time.sleep(0.01)  # a stream broke on the way (it handed back what it owed): again, through a new one
        except (ConsumerGone, ChannelClosed, Interrupted) as e:
            # The consumer went again, or this worker closes: the next routing update starts over.
            logger.info("channel %r: resending to consumer %r stopped: %r", route.channel, cid, e)
        finally:
            with self._lock:
                self._resending.discard(key)
                again = bool(self.orphans.get(key))
            if again and not self._closing.is_set():
                self._resend_owed(route, cid)  # handed back after this thread's last look

    def _deliver_one(
        self, route: Route, spec: Spec, c: ConsumerRef, header: dict[str, Any], leaves: list[np.ndarray],
        deadline: float | None, cancel: threading.Event | None,
    ) -> None:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        if c.worker == self.address:
            buf = self.buffers.get((route.channel, c.cid))
            if buf is None or not buf.accepting:
                raise ConsumerGone(f"channel {route.channel!r}: consumer {c.cid!r} on {c.worker} has detached")
            # Same process: the consumer owns its host arrays (a copy, writable as
            # anywhere else); with device-to-device, JAX arrays on the device are shared.
            if not isinstance(leaves, DeviceLeaves):
                mine = owned_leaves(leaves)
            elif self.config.device_to_device:
                mine = owned_leaves(leaves.device)
            else:
                mine = owned_leaves(to_host(leaves), leaves.device)
            data = unflatten(spec.treedef, mine)
            if buf.put([Message.from_header(header, data, spec.nbytes)], remaining, cancel):
                return
            if not buf.accepting:
                raise ConsumerGone(f"channel {route.channel!r}: consumer {c.cid!r} on {c.worker} has detached")
            if cancel is not None and cancel.is_set():
                raise Interrupted("send interrupted: the actor is stopping")
            raise ChannelTimeout(
                f"channel {route.channel!r}: consumer {c.cid!r} did not accept the message within the timeout "
                f"(its queue is full: back-pressure)"
            )
        link = self._link(route, spec, c)
        try:
            link.submit(header, leaves if type(leaves) is list else to_host(leaves), remaining, cancel)
        except ConsumerGone:
            if link.closing:  # the route changed under us (the consumer moved)
                raise _Reroute() from None
            if self._forget_broken((route.channel, c.cid, c.stream), link):
                # Deliver again, through a new stream, after what the broken one owed. A consumer
                # that is gone after all refuses the new stream (or cannot be reached): ConsumerGone.
                raise _Reroute() from None
            raise

    def _link(self, route: Route, spec: Spec, c: ConsumerRef) -> Link:
        key = (route.channel, c.cid, c.stream)
        link = self.links.get(key)  # a dict read is atomic: no lock on the hot path
        if link is not None and not link.dead:
            return link
        if link is not None and not link.closing and self._forget_broken(key, link):
            raise _Reroute()  # another thread found its stream broken: deliver what it owed first
        link = Link(
            route.channel, c.cid, c.stream, spec,
            queue=route.is_queue, maxsize=int(route.table["policy"].get("maxsize", 0) or 0),
            host=self.host, peer_host=c.host, config=self.config, ssl_context=self._client_ssl,
            on_orphans=lambda items, k=(route.channel, c.cid): self._adopt_orphans(k, items),
            on_commit=lambda marks, k=(route.channel, c.cid): self._commit_received(k, marks), key=self.stream_key,
            log=self._replay_log(route, c.cid),
        )
        with self._lock:
            old = self.links.get(key)
            if old is not None and not old.dead:
                link.close(orphan=False)
                return old
            self.links[key] = link
        return link

    def _adopt_orphans(self, key: tuple[str, str], items: list[Item]) -> None:
        """Keep what a consumer did not accept -- it departed, or its stream broke -- to send it again.

        It goes to the consumer (or its replacement, same consumer id) before
        anything sent later: a resend thread starts now (see :meth:`_resend_owed`)
        if the consumer is still on the route (its stream broke), or on the routing
        update that brings it back; the producer's next send or flush may be first.
        """
        route = self.routes.get(key[0])
        if route is not None and (route.table["closed"] or not route.is_queue):
            release_segments(items)  # a closed channel replays nothing; a lossy one loses what was in flight
            return
        log = None if route is None else self._replay_log(route, key[1])
        with self._lock:
            if log is not None:
                # The log holds these and what the consumer accepted since its commit: all of it again.
                self.orphans[key] = deque(log.replay())
            else:
                self.orphans.setdefault(key, deque()).extendleft(reversed(items))  # older than anything queued later
        if route is not None:
            self._resend_owed(route, key[1])

    def _commit_received(self, key: tuple[str, str], marks: dict[str, int]) -> None:
        """The consumer ``key`` stored a checkpoint covering ``marks``: stop keeping those messages."""
        log = self.replay_logs.get(key)
        if log is not None:
            log.commit(marks)
            if not log.items:
                self._release_if_idle(key[0])  # the last thing an ended producer's links were kept for

    def commit_consumer(self, channel: str, consumer: str, marks: dict[str, int]) -> None:
        """A consumer on this worker commits: its stored checkpoint covers ``marks`` (source -> seq).

        Producers (on this worker directly, elsewhere through their links) stop
        keeping those messages for a replay.
        """
        buf = self.buffers.get((channel, consumer))
        if isinstance(buf, QueueBuffer):
            buf.commit(marks)
        self._commit_received((channel, consumer), {str(s): int(q) for s, q in marks.items()})

    # -- input-order logging (runtime/dataplane/lineage.py) ---------------------------------------------
    def _handle_takes(self, channel: str, source: str, since: int) -> dict[str, Any]:
        """What each consumer of ``channel`` on this worker holds of ``source``'s takes from ``since`` on."""
        parts = [
            [[n, *take] for n, take in buf.takes_since(str(source), int(since)).items()]
            for (ch, _), buf in list(self.buffers.items())
            if ch == channel and isinstance(buf, QueueBuffer)
        ]
        return {"status": "OK", "parts": parts}

    def gather_takes(self, channels: list[str], source: str, since: int, timeout: float = 30.0) -> list[dict[int, Take]]:
        """Ask every consumer of ``channels`` for the takes ``source``'s messages told it, from ``since`` on.

        A restarted merging actor joins them (:func:`~coupler.runtime.dataplane.lineage.replay_order`)
        to take its replayed inputs in its predecessor's order. A consumer whose
        worker does not answer is left out, with a warning: only one failure at a
        time is covered (see docs/reliability.md).

        Args:
            channels: the actor's output channels (only ``Queue`` ones carry notes that matter).
            source: the actor's name.
            since: the number of the first take after the checkpoint it restarts from.
            timeout: seconds for all the answers.

        Returns:
            One dict (take number -> take) per consumer.
        """

        async def ask(channel: str, address: str) -> list[list[list[Any]]]:
            if address == self.address:
                return self._handle_takes(channel, source, since)["parts"]
            try:
                reply = await self.worker.rpc(address).coupler_takes(channel=channel, source=source, since=since)
            except (OSError, asyncio.TimeoutError) as e:
                logger.warning("takes of %r on %r: consumer worker %s did not answer: %s", source, channel, address, e)
                return []
            return raise_for_reply(reply)["parts"]

        async def gather() -> list[dict[int, Take]]:
            asks = []
            for channel in channels:
                table = await self._broker("coupler_routing", name=channel)
                if table["policy"]["kind"] == "queue":
                    asks += [ask(channel, a) for a in sorted({c[1] for c in table["consumers"]})]
            parts: list[dict[int, Take]] = []
            for reply in await asyncio.gather(*asks):
                parts += [{int(n): (str(ch), str(src), int(seq)) for n, ch, src, seq in part} for part in reply]
            return parts

        return self.call(gather, timeout=timeout)

    def flush(self, channel: str, timeout: float | None = None, cancel: threading.Event | None = None) -> None:
        """Wait until every message sent on ``channel`` from this worker was accepted.

        Messages kept for a moving consumer are delivered first (this waits for it).

        Raises:
            ChannelTimeout, Interrupted, ConsumerGone, ChannelClosed.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        route = self.routes.get(channel)
        if route is None:
            return
        while not self._flush_links(route, deadline, timeout, cancel):
            pass  # a stream broke: what it had not delivered is kept again, so deliver that first

    def _flush_links(
        self, route: Route, deadline: float | None, timeout: float | None, cancel: threading.Event | None
    ) -> bool:
        """One flush pass: deliver what is kept for resend, then wait for every link's acknowledgements.

        Returns:
            False if a link's stream broke while its consumer stays (the pass must be made again).
        """
        channel = route.channel
        while True:
            with self._lock:
                waiting = {k: q for k, q in self.orphans.items() if k[0] == channel and q}
            if not waiting:
                break
            spec = route.spec
            assert spec is not None
            consumers = {c.cid: c for c in self._wait_consumers(route, deadline, timeout, cancel)}
            gone = {g.consumer for g in route.gone} - self._returning(route)
            progressed = False
            for (ch, cid), q in waiting.items():
                c = consumers.get(cid)
                if c is None and cid in gone:
                    logger.warning("channel %r: dropping %d messages kept for consumer %r, which left for good", ch, len(q), cid)
                    with self._lock:
                        self.orphans.pop((ch, cid), None)
                    progressed = True
                elif c is not None:
                    item = q[0]
                    try:
                        self._deliver_one(route, spec, c, item.header, item.payload_leaves(spec), deadline, cancel)
                    except _Reroute:
                        continue
                    except ConsumerGone:
                        if self._left_route(route, c, deadline, cancel):
                            continue  # lost: kept for its successor, which the next pass waits for
                        raise
                    with self._lock:
                        if q and q[0] is item:
                            q.popleft()
                    progressed = True
            if not progressed:
                if deadline is not None and time.monotonic() > deadline:
                    raise ChannelTimeout(f"channel {channel!r}: the consumers kept for resend did not come back within {timeout} s")
                if cancel is not None and cancel.is_set():
                    raise Interrupted("flush interrupted: the actor is stopping")
                time.sleep(0.05)
        with self._lock:
            links = [(k, l) for k, l in self.links.items() if k[0] == channel]
        for key, link in links:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                link.flush(remaining, cancel)
            except ConsumerGone:
                if link.closing:
                    raise
                if self._forget_broken(key, link):
                    return False
                # Nothing is owed: the consumer accepted all of it before the stream broke.
        return True

    def _forget_broken(self, key: tuple[str, str, str], link: Link) -> bool:
        """Drop a link whose stream broke, once what it had not delivered is kept for a resend.

        Waiting for that (the link's reader hands those messages to
        :meth:`_adopt_orphans` as it winds up) keeps anything sent from now on,
        through a new stream, from overtaking them: a consumer drops a message
        older than one it already has from the same source as a duplicate.

        Returns:
            Whether the consumer is owed messages now (they must go before anything else).
        """
        if not link.wound_up.wait(LINK_WIND_UP_TIMEOUT):
            logger.warning("channel %r: the broken stream to %r did not wind up within %s s", key[0], key[1], LINK_WIND_UP_TIMEOUT)
        with self._lock:
            if self.links.get(key) is link:
                del self.links[key]
            return bool(self.orphans.get((key[0], key[1])))

    # -- reporting -------------------------------------------------------------------------------
    def register_actor(self, name: str, actor: Any) -> None:
        """Report ``actor.status_dict()`` with this worker's counters."""
        self.actors[name] = actor

    def unregister_actor(self, name: str) -> None:
        self.actors.pop(name, None)

    def actor_ended(self, name: str, status: dict[str, Any], timeout: float = 10.0) -> None:
        """Stop reporting actor ``name`` and give the broker its final ``status`` to keep.

        Called from the actor's thread once its loop has ended for good (see
        ``ActorHost._release``): the periodic report would otherwise carry it
        for the rest of the worker's life, and the last report before it was
        dropped might predate its end.

        Raises:
            ChannelTimeout: if the broker did not answer within ``timeout`` seconds.
        """
        self.actors.pop(name, None)
        self.call(lambda: self._broker("coupler_actor_ended", name=name, status=status), timeout=timeout)

    def report_payload(self) -> dict[str, Any]:
        """This worker's counters, by channel, and its actors' status."""
        channels: dict[str, Any] = {}
        for (ch, src), p in self.producers.items():
            channels.setdefault(ch, {"producers": {}, "consumers": {}})["producers"][src] = p.as_dict()
        for (ch, cid), buf in self.buffers.items():
            channels.setdefault(ch, {"producers": {}, "consumers": {}})["consumers"][cid] = {
                **buf.stats.as_dict(),
                "policy": type(buf).__name__,
                "worker": self.address,
            }
        actors = {}
        for name, a in list(self.actors.items()):
            try:
                actors[name] = a.status_dict()
            except Exception as e:  # a broken status must not stop the reports
                actors[name] = {"state": "unknown", "error": repr(e)}
        with self._lock:
            links = list(self.links.values())
        for link in links:
            ch = channels.setdefault(link.channel, {"producers": {}, "consumers": {}})
            ch.setdefault("links", []).append(link.stats())
        return {"channels": channels, "actors": actors, "retire_at": self.retire_at}

    async def _report(self) -> None:
        if time.monotonic() - self._last_sweep > _SWEEP_EVERY:
            self._last_sweep = time.monotonic()
            shm.sweep_orphans()  # names left by a process killed mid-handshake
        with self._lock:
            links = list(self.links.values())
        idle = [link for link in links if link.give_back_idle_credits()]
        if idle:  # a write may block: not on the event loop
            threading.Thread(target=lambda: [link.wake() for link in idle], name="coupler-credits", daemon=True).start()
        if self.worker.status.name not in ("running", "paused"):
            return
        try:
            await self.worker.scheduler.coupler_report(address=self.address, **self.report_payload())
        except Exception as e:
            logger.debug("coupler report failed: %s", e)


def local_endpoint() -> Endpoint:
    """The endpoint of the worker this code runs on.

    Raises:
        NoCoupling: outside a Dask worker, or on a worker without coupler installed.
    """
    try:
        worker = get_worker()
    except ValueError:
        raise NoCoupling("coupler ports work inside actors on Dask workers; no worker found in this process") from None
    ep = worker.plugins.get(ENDPOINT_NAME)
    if ep is None:
        raise NoCoupling(f"worker {worker.address} has no coupler endpoint: create the actor through Coupling.spawn")
    return ep


__all__ = ["Endpoint", "local_endpoint"]

"""The endpoint: coupler's data plane on every worker, a Dask worker plugin.

It assembles the worker's parts and connects them to the broker:

- the producer side: a :class:`~coupler.runtime.dataplane.sender.Sender` (sequence
  numbers, broadcast, work sharing, flush) over a
  :class:`~coupler.runtime.dataplane.dispatch.Dispatch` (links and outboxes: one
  message to one consumer, after what it is owed);
- the consumer side: the consumer buffers, attached and detached by
  :class:`~coupler.runtime.dataplane.consumers.LocalConsumers`, and the worker's
  :class:`~coupler.runtime.dataplane.receiver.Listener`, which receives streams
  into them (secured as :mod:`~coupler.runtime.dataplane.security` says);
- the routes (:mod:`~coupler.runtime.dataplane.routing`), updated when the broker
  pushes a change, and dropped when nothing needs them
  (:class:`~coupler.runtime.dataplane.retention.SendRetention`); the commits of
  consumers here; what consumers hold of a restarted producer's messages
  (:class:`~coupler.runtime.dataplane.gathering.ConsumerRecords`); the periodic report
  (:class:`~coupler.runtime.dataplane.report.Reporter`).

Producers send straight to the workers of the channel's consumers, one hop.
Nothing goes through the scheduler, Dask's comms for tasks,
``distributed.Queue`` or actor handles. Actors call the endpoint from their own
run-loop threads; see :mod:`coupler.runtime.dataplane` for the thread model.
"""

from __future__ import annotations

import asyncio
import gc
import threading
from concurrent.futures import wait as futures_wait
from contextlib import nullcontext
from typing import Any, Awaitable, Callable, TypeVar

import dask.config
from distributed import get_worker
from distributed.comm import get_address_host
from distributed.diagnostics.plugin import WorkerPlugin

from coupler.runtime.dataplane import shm
from coupler.runtime.dataplane.auth import StreamKey
from coupler.runtime.dataplane.buffers import ConsumerBuffer, QueueBuffer
from coupler.runtime.dataplane.cancel import Cancel
from coupler.runtime.dataplane.consumers import LocalConsumers
from coupler.runtime.control.departure import Departure
from coupler.runtime.control.routing_table import RoutingTable
from coupler.runtime.dataplane.dispatch import Dispatch
from coupler.runtime.dataplane.lineage import Take
from coupler.runtime.dataplane.receipts import ReplayPlan
from coupler.runtime.dataplane.report import Reporter
from coupler.runtime.dataplane.retention import SendRetention
from coupler.runtime.dataplane.security import fetch_stream_secret, ssl_contexts
from coupler.runtime.dataplane.gathering import ConsumerRecords
from coupler.runtime.dataplane.fence import Fence
from coupler.runtime.dataplane.receiver import ChannelSpecs, Listener, raise_open_file_limit
from coupler.runtime.dataplane.routing import ProducerStats, Route
from coupler.runtime.dataplane.sender import Sender
from coupler.runtime.dataplane.settings import delivery_config, transport_config
from coupler.runtime.dataplane.wire import BATCH_BYTES_MAX
from coupler.runtime.errors import ChannelTimeout, Interrupted, NoCoupling, raise_for_reply
from coupler.runtime.message import Message, Spec

ENDPOINT_NAME = "coupler-endpoint"
T = TypeVar("T")


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
        self.delivery = delivery_config()
        self._closing = Cancel()  # stops resend threads at teardown (and wakes their waits)
        self._lock = threading.Lock()  # routes and producers' counters against their removal
        self.host = shm.host_key()
        try:
            host = get_address_host(worker.address)
        except (ValueError, TypeError):
            host = "127.0.0.1"
        self._server_ssl, client_ssl = ssl_contexts(worker)
        raise_open_file_limit()  # every stream costs a descriptor (see receiver.Listener)
        # The cluster's stream secret comes from the broker; streams wait for it (StreamKey.secret).
        self.stream_key = StreamKey()
        self.fence = Fence()  # epochs of the producers seen here: replaced instances are refused (fence.py)
        self.dispatch = Dispatch(
            address=lambda: self.address, buffers=self.buffers, routes=self.routes, config=self.config,
            delivery=self.delivery, host=self.host, ssl_context=client_ssl, key=self.stream_key,
            closing=self._closing, on_drained=lambda ch: self.retention.release_if_idle(ch), fence=self.fence,
        )
        self.sender = Sender(
            self.dispatch, self.routes, self.producers, self.delivery,
            register=lambda ch, src: self.call(lambda: self._route(ch, src)), fix_spec=self._fix_spec,
        )
        secret = fetch_stream_secret(self.stream_key, lambda: self._broker("coupler_stream_secret"))
        self._secret_task = self.loop.create_task(secret)  # (held: the loop keeps only a weak reference)
        # Batches are checked against the spec the broker holds, asked for from the receiving thread.
        specs = ChannelSpecs(lambda ch: self.call(lambda: self._broker("coupler_routing", name=ch), timeout=30)["spec"])
        self.listener = Listener(
            host, lambda ch, cid: self.buffers.get((ch, cid)), self._server_ssl, key=self.stream_key, specs=specs, fence=self.fence,
            batch_bytes=max(BATCH_BYTES_MAX, self.config.batch_bytes, self.config.inline_max),
            spin=self.config.spin_s,
        )
        self.consumers = LocalConsumers(self.buffers, self.listener, self.fence, lambda: self.address, self.host, self._broker)
        self.records = ConsumerRecords(worker, self.buffers, lambda: self.address, self._broker)
        worker.handlers["coupler_routing_update"] = self._handle_routing_update
        worker.handlers["coupler_takes"] = self.records.held_takes
        worker.handlers["coupler_receipts"] = self.records.held_receipts
        shm.sweep_orphans()
        self.reporter = Reporter(worker, lambda: self.address, self.buffers, self.producers, self.dispatch, self.report_interval)
        self.retention = SendRetention(self.routes, self.producers, self._lock, self.dispatch, self.reporter.actors)
        self.reporter.start()
        if bool(dask.config.get("coupler.gc-freeze", True)):
            _freeze_startup_objects()

    def teardown(self, worker: Any) -> None:
        # Dask tears down a plugin whose setup failed part of the way too (a bad setting, a
        # port it could not bind): release the parts that were made, and only those.
        parts = vars(self)
        if "_closing" in parts:
            self._closing.set()
        if "reporter" in parts:
            self.reporter.stop()
        if "listener" in parts:
            self.listener.close()
        if "dispatch" in parts:
            self.dispatch.close()
        for buf in parts.get("buffers", {}).values():
            buf.close()
        shm.sweep_orphans()

    @property
    def actors(self) -> dict[str, Any]:
        """The actors this worker reports on, by name (see :meth:`register_actor`)."""
        return self.reporter.actors

    @property
    def address(self) -> str:
        # Read on every send: kept once known (a worker's address does not change).
        a = self._address
        if a is None:
            a = self._address = self.worker.address
        return a

    # -- bridging threads and the loop -----------------------------------------------------
    def call(
        self, fn: Callable[[], Awaitable[T]], timeout: float | None = None, cancel: Cancel | None = None
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
        # A cancel cancels the future, which ends the wait (no polling for it).
        with nullcontext() if cancel is None else cancel.calling(fut.cancel):
            if cancel is not None and cancel.is_set():
                fut.cancel()
            # Not fut.result(timeout): our ChannelTimeout is a TimeoutError, which is
            # what result() raises on expiry too; futures_wait tells the two apart.
            done, _ = futures_wait([fut], timeout=timeout)
        if done and not fut.cancelled():
            return fut.result()
        fut.cancel()
        if cancel is not None and cancel.is_set():
            raise Interrupted("send interrupted: the actor is stopping")
        raise ChannelTimeout(f"operation did not complete within {timeout} s")

    async def _broker(self, op: str, **kwargs: Any) -> dict[str, Any]:
        reply = await getattr(self.worker.scheduler, op)(**kwargs)
        return raise_for_reply(reply)

    # -- consumer side (runtime/dataplane/consumers.py) -----------------------------------------------
    def attach_consumer(self, channel: str, consumer: str, preload: list[Message] | None = None) -> ConsumerBuffer:
        """Create this consumer's buffer, then announce it to the broker (:meth:`LocalConsumers.attach`).

        Args:
            channel: channel name.
            consumer: consumer id (``actor/port``).
            preload: messages to hold before anything arrives (a moved consumer's leftovers).

        Returns:
            The consumer's buffer.

        Raises:
            UnknownChannel: if the channel was never declared.
        """
        return self.call(lambda: self.consumers.attach(channel, consumer, preload))

    def detach_consumer(self, channel: str, consumer: str, handover: bool = False, detail: str = "") -> list[Message]:
        """Remove a consumer's buffer and tell the broker (:meth:`LocalConsumers.detach`).

        Args:
            channel: channel name.
            consumer: consumer id.
            handover: the consumer is moving: producers wait for it, and what it held is returned.
            detail: why it leaves, for its producers' errors.

        Returns:
            With ``handover``, the messages the buffer still held (``Queue``, ``Latest``).
        """
        return self.call(lambda: self.consumers.detach(channel, consumer, handover, detail))

    # -- producer side -------------------------------------------------------------------------
    def _fix_spec(self, channel: str, proposed: Spec) -> dict[str, Any]:
        """Ask the broker to fix ``channel``'s spec from a first message; the spec it holds, on the wire."""
        return self.call(lambda: self._broker("coupler_fix_spec", name=channel, spec=proposed.to_wire()))["spec"]

    async def _route(self, channel: str, source: str) -> Route:
        route = self.routes.get(channel)
        if route is None or (channel, source) not in self.producers:
            reply = await self._broker("coupler_attach", name=channel, role="producer", ident=source, address=self.address)
            if route is None:
                route = self.routes.setdefault(channel, Route(channel, RoutingTable.from_wire(reply)))
            # The epoch the broker gave this instance: its messages carry it (fence.py).
            self.producers.setdefault((channel, source), ProducerStats()).epoch = int(reply.get("epoch", 0))
        return route

    def _handle_routing_update(self, table: dict[str, Any]) -> dict[str, str]:
        return self._apply_routing(RoutingTable.from_wire(table))

    def _apply_routing(self, table: RoutingTable) -> dict[str, str]:
        channel = table.channel
        route = self.routes.get(channel)
        if route is not None and route.update(table):
            present = {c.cid for c in route.consumers}
            for gone in route.gone:
                if gone.kind is Departure.DETACHED and gone.consumer not in present:
                    self.dispatch.forget(channel, gone.consumer)  # it closed its port: it will not come back for these
            current = {(channel, c.cid, c.stream) for c in route.consumers}
            self.dispatch.close_links(channel, keep=current, orphan=not table.closed)
            self.dispatch.resend_owed(route)
        if table.closed:
            self.consumers.close_channel(channel)
            self.retention.forget(channel)
        return {"status": "OK"}

    def release_producer(self, channel: str, source: str) -> None:
        """Producer ``source`` (an actor) of ``channel`` on this worker has ended: give back what it used.

        The channel's links, route and replay logs go once nothing else needs
        them (:meth:`SendRetention.release_if_idle <coupler.runtime.dataplane.retention.SendRetention.release_if_idle>`).

        Args:
            channel: channel name.
            source: the producer's name (its actor's).
        """
        self.retention.release_if_idle(channel, ending=source)

    def commit_consumer(self, channel: str, consumer: str, marks: dict[str, int]) -> None:
        """A consumer on this worker commits: its stored checkpoint covers ``marks`` (source -> seq).

        Producers (on this worker directly, elsewhere through their links) stop
        keeping those messages for a replay.
        """
        buf = self.buffers.get((channel, consumer))
        if isinstance(buf, QueueBuffer):
            buf.commit(marks)
        self.dispatch.commit_received((channel, consumer), {str(s): int(q) for s, q in marks.items()})

    # -- input-order logging (runtime/dataplane/lineage.py) ---------------------------------------------
    def gather_takes(self, channels: list[str], source: str, since: int, timeout: float = 30.0) -> list[dict[int, Take]]:
        """Ask every consumer of ``channels`` for the takes ``source``'s messages told it, from ``since`` on.

        A restarted merging actor joins them (:func:`~coupler.runtime.dataplane.lineage.replay_order`)
        to take its replayed inputs in its predecessor's order; see
        :meth:`ConsumerRecords.gather_takes <coupler.runtime.dataplane.gathering.ConsumerRecords.gather_takes>`.

        Args:
            channels: the actor's output channels.
            source: the actor's name.
            since: the number of the first take after the checkpoint it restarts from.
            timeout: seconds for all the answers.

        Returns:
            One dict (take number -> take) per consumer.

        Raises:
            ChannelTimeout: after ``timeout``.
        """
        return self.call(lambda: self.records.gather_takes(channels, source, since), timeout=timeout)

    def gather_receipts(self, channel: str, source: str, since: int, timeout: float = 30.0) -> ReplayPlan | None:
        """Ask the members of work-sharing ``channel`` what they had of ``source``'s messages from ``since`` on.

        A restarted producer routes what it sends again by the plan (see
        :mod:`~coupler.runtime.dataplane.receipts`).

        Returns:
            The plan, or ``None`` when the channel is not work-sharing or no member had anything from ``since`` on.

        Raises:
            ChannelTimeout: after ``timeout``.
        """
        return self.call(lambda: self.records.gather_receipts(channel, source, since), timeout=timeout)

    # -- reporting (runtime/dataplane/report.py) ----------------------------------------------------
    def register_actor(self, name: str, actor: Any) -> None:
        """Report ``actor.status_dict()`` with this worker's counters."""
        self.reporter.register(name, actor)

    def unregister_actor(self, name: str) -> None:
        """Stop reporting actor ``name``."""
        self.reporter.unregister(name)

    def actor_ended(self, name: str, status: dict[str, Any], timeout: float = 10.0) -> None:
        """Stop reporting actor ``name`` and give the broker its final ``status`` to keep.

        Called from the actor's thread once its loop has ended for good (see
        ``ActorHost._release``): the periodic report would otherwise carry it
        for the rest of the worker's life, and the last report before it was
        dropped might predate its end.

        Raises:
            ChannelTimeout: if the broker did not answer within ``timeout`` seconds.
        """
        self.reporter.unregister(name)
        self.call(lambda: self._broker("coupler_actor_ended", name=name, status=status), timeout=timeout)

    def report_payload(self) -> dict[str, Any]:
        """This worker's counters, by channel, and its actors' status (:meth:`Reporter.payload`)."""
        return self.reporter.payload()


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

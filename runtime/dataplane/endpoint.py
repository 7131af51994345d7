"""The endpoint: coupler's data plane on every worker, a Dask worker plugin.

It assembles the worker's parts and connects them to the broker:

- the producer side: a :class:`~coupler.runtime.dataplane.sender.Sender` (sequence
  numbers, broadcast, work sharing, flush) over a
  :class:`~coupler.runtime.dataplane.dispatch.Dispatch` (links and outboxes: one
  message to one consumer, after what it is owed);
- the consumer side: the consumer buffers (attached and detached here) and the
  worker's :class:`~coupler.runtime.dataplane.receiver.Listener`, which receives
  streams into them;
- the routes (:mod:`~coupler.runtime.dataplane.routing`), updated when the broker
  pushes a change; the commits of consumers here; input-order takes; reports.

Producers send straight to the workers of the channel's consumers, one hop.
Nothing goes through the scheduler, Dask's comms for tasks,
``distributed.Queue`` or actor handles. Actors call the endpoint from their own
run-loop threads; see :mod:`coupler.runtime.dataplane` for the thread model.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from concurrent.futures import wait as futures_wait
from contextlib import nullcontext
from typing import Any, Awaitable, Callable, TypeVar

import dask.config
import psutil
from distributed import get_worker
from distributed.comm import get_address_host
from distributed.diagnostics.plugin import WorkerPlugin
from tornado.ioloop import PeriodicCallback

from coupler.runtime.dataplane import shm
from coupler.runtime.dataplane.auth import StreamKey
from coupler.runtime.dataplane.buffers import ConsumerBuffer, QueueBuffer, make_buffer
from coupler.runtime.dataplane.cancel import Cancel
from coupler.runtime.control.departure import Departure
from coupler.runtime.dataplane.dispatch import Dispatch
from coupler.runtime.dataplane.lineage import Take
from coupler.runtime.dataplane.fence import Fence
from coupler.runtime.dataplane.receiver import ChannelSpecs, Listener, raise_open_file_limit
from coupler.runtime.dataplane.routing import ProducerStats, Route
from coupler.runtime.dataplane.sender import Sender
from coupler.runtime.dataplane.settings import delivery_config, transport_config
from coupler.runtime.dataplane.wire import BATCH_BYTES_MAX
from coupler.runtime.errors import ChannelTimeout, Interrupted, NoCoupling, raise_for_reply
from coupler.runtime.message import Message, Spec
from coupler.runtime.policies import policy_from_wire

logger = logging.getLogger(__name__)

ENDPOINT_NAME = "coupler-endpoint"
T = TypeVar("T")
_SWEEP_EVERY = 10.0  # seconds between sweeps of orphaned shared-memory names


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
        self.actors: dict[str, Any] = {}  # name -> object with status_dict()
        self.host = shm.host_key()
        try:
            host = get_address_host(worker.address)
        except (ValueError, TypeError):
            host = "127.0.0.1"
        self._server_ssl, client_ssl = self._ssl_contexts(worker)
        raise_open_file_limit()  # every stream costs a descriptor (see receiver.Listener)
        # The cluster's stream secret comes from the broker; streams wait for it (StreamKey.secret).
        self.stream_key = StreamKey()
        self.fence = Fence()  # epochs of the producers seen here: replaced instances are refused (fence.py)
        self.dispatch = Dispatch(
            address=lambda: self.address, buffers=self.buffers, routes=self.routes, config=self.config,
            delivery=self.delivery, host=self.host, ssl_context=client_ssl, key=self.stream_key,
            closing=self._closing, on_drained=self._release_if_idle, fence=self.fence,
        )
        self.sender = Sender(
            self.dispatch, self.routes, self.producers, self.delivery,
            register=lambda ch, src: self.call(lambda: self._route(ch, src)), fix_spec=self._fix_spec,
        )

        async def fetch_secret() -> None:
            try:
                self.stream_key.set((await self._broker("coupler_stream_secret"))["secret"])
            except Exception as e:  # no broker, or an old one: every stream is refused, saying why
                self.stream_key.fail(f"the broker did not hand out the cluster's stream secret: {e!r}")

        self._secret_task = self.loop.create_task(fetch_secret())  # (held: the loop keeps only a weak reference)
        # Batches are checked against the spec the broker holds, asked for from the receiving thread.
        specs = ChannelSpecs(lambda ch: self.call(lambda: self._broker("coupler_routing", name=ch), timeout=30)["spec"])
        self.listener = Listener(
            host, self._lookup, self._server_ssl, key=self.stream_key, specs=specs, fence=self.fence,
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
        self.dispatch.close()
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
            buf.consumer = consumer
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
            if not any(ch == channel for ch, _ in self.buffers):  # what the data port knows of it goes too
                self.listener.specs.forget(channel)
                self.fence.forget(channel)
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
            await self._broker("coupler_detach", name=channel, ident=consumer, departure=departure.value, address=self.address)
            return left

        return self.call(detach)

    # -- producer side -------------------------------------------------------------------------
    def _fix_spec(self, channel: str, proposed: Spec) -> dict[str, Any]:
        """Ask the broker to fix ``channel``'s spec from a first message; the spec it holds, on the wire."""
        return self.call(lambda: self._broker("coupler_fix_spec", name=channel, spec=proposed.to_wire()))["spec"]

    async def _route(self, channel: str, source: str) -> Route:
        route = self.routes.get(channel)
        if route is None or (channel, source) not in self.producers:
            table = await self._broker("coupler_attach", name=channel, role="producer", ident=source, address=self.address)
            route = self.routes.setdefault(channel, Route(channel, table)) if route is None else route
            # The epoch the broker gave this instance: its messages carry it (fence.py).
            self.producers.setdefault((channel, source), ProducerStats()).epoch = int(table.get("epoch", 0))
        return route

    def _handle_routing_update(self, table: dict[str, Any]) -> dict[str, str]:
        channel = table["channel"]
        route = self.routes.get(channel)
        if route is not None and route.update(table):
            present = {c.cid for c in route.consumers}
            for gone in route.gone:
                if gone.kind is Departure.DETACHED and gone.consumer not in present:
                    self.dispatch.forget(channel, gone.consumer)  # it closed its port: it will not come back for these
            current = {(channel, c.cid, c.stream) for c in route.consumers}
            self.dispatch.close_links(channel, keep=current, orphan=not table["closed"])
            self.dispatch.resend_owed(route)
        if table["closed"]:
            for (ch, _), buf in list(self.buffers.items()):
                if ch == channel:
                    buf.close()  # its consumer drains it, sees the end, and detaches (which drops it)
            self._forget_channel(channel)
        return {"status": "OK"}

    def _forget_channel(self, channel: str) -> None:
        """Drop everything this worker keeps to send on a closed ``channel``.

        Its route, its producers' counters (the broker keeps their last ones as
        departed totals), its outboxes (a closed channel replays nothing), and its links: each
        holds a reader thread, a socket and a shared-memory arena, and the
        consumer's worker a receiving thread, until it is closed. A sender still
        blocked on the old route sees it closed (:class:`ChannelClosed`); a later
        one asks the broker again and is refused.
        """
        with self._lock:
            for key in [k for k in self.producers if k[0] == channel]:
                del self.producers[key]
            self.routes.pop(channel, None)
        self.dispatch.forget(channel, None)

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
        if self.dispatch.outboxes.holds(channel):
            return
        with self._lock:
            self.routes.pop(channel, None)
        self.dispatch.close_links(channel, orphan=True)
        self.dispatch.forget(channel, None)

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
        for link in self.dispatch.links.values():
            ch = channels.setdefault(link.channel, {"producers": {}, "consumers": {}})
            ch.setdefault("links", []).append(link.stats())
        return {"channels": channels, "actors": actors, "retire_at": self.retire_at}

    async def _report(self) -> None:
        if time.monotonic() - self._last_sweep > _SWEEP_EVERY:
            self._last_sweep = time.monotonic()
            shm.sweep_orphans()  # names left by a process killed mid-handshake
        links = self.dispatch.links.values()
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

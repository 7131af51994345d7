"""The endpoint: coupler's data plane on every worker, a Dask worker plugin.

Producers on this worker send messages straight to the workers of the
channel's consumers over Dask comms (one hop, numpy arrays framed without
copies by ``to_serialize``); consumers on this worker receive them into the
buffer their channel's policy implies. Nothing goes through the scheduler,
``distributed.Queue`` or actor handles. When producer and consumer share a
worker process the message is handed over in memory (one copy).

Actors call the endpoint from their own run-loop threads; the endpoint runs
every network operation on the worker's event loop
(``asyncio.run_coroutine_threadsafe``) and blocks only the calling thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, TypeVar

import numpy as np
from distributed import get_worker
from distributed.diagnostics.plugin import WorkerPlugin
from distributed.protocol.serialize import to_serialize
from tornado.ioloop import PeriodicCallback

from coupler.runtime.buffers import ConsumerBuffer, make_buffer
from coupler.runtime.errors import (
    ChannelClosed,
    ChannelTimeout,
    ConsumerGone,
    Interrupted,
    NoCoupling,
    raise_for_reply,
)
from coupler.runtime.message import Message, Spec, flatten, unflatten
from coupler.runtime.policies import policy_from_wire

logger = logging.getLogger(__name__)

ENDPOINT_NAME = "coupler-endpoint"
T = TypeVar("T")


@dataclass
class Route:
    """A producer-side copy of a channel's routing table, updated by the broker."""

    channel: str
    table: dict[str, Any]
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    spec_sent_to: set[tuple[str, str]] = field(default_factory=set)

    @property
    def consumers(self) -> list[tuple[str, str]]:
        return [tuple(c) for c in self.table["consumers"]]  # type: ignore[misc]

    _spec: tuple[Any, Spec | None] = (None, None)

    @property
    def spec(self) -> Spec | None:
        """The channel's spec, decoded once per routing table (sends are a hot path)."""
        wire = self.table.get("spec")
        if self._spec[0] is not wire:
            self._spec = (wire, None if wire is None else Spec.from_wire(wire))
        return self._spec[1]


@dataclass
class ProducerStats:
    """Counters of one (channel, source) pair on this worker."""

    sent: int = 0
    nbytes: int = 0
    last_seq: int = -1
    next_seq: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def as_dict(self) -> dict[str, int]:
        return {"sent": self.sent, "nbytes": self.nbytes, "last_seq": self.last_seq}


class Endpoint(WorkerPlugin):
    """Worker plugin holding this worker's consumer buffers and producer routes.

    Args:
        report_interval: seconds between counter reports to the broker.
    """

    name = ENDPOINT_NAME
    idempotent = True

    def __init__(self, report_interval: float = 0.5) -> None:
        self.report_interval = report_interval

    # -- plugin life cycle ---------------------------------------------------------------
    def setup(self, worker: Any) -> None:
        self.worker = worker
        self.loop: asyncio.AbstractEventLoop = worker.loop.asyncio_loop
        self.buffers: dict[tuple[str, str], ConsumerBuffer] = {}
        self.consumer_specs: dict[str, Spec] = {}
        self.routes: dict[str, Route] = {}
        self.producers: dict[tuple[str, str], ProducerStats] = {}
        self.actors: dict[str, Any] = {}  # name -> object with status_dict()
        worker.handlers["coupler_deliver"] = self._handle_deliver
        worker.handlers["coupler_routing_update"] = self._handle_routing_update
        self._reporter = PeriodicCallback(self._report, self.report_interval * 1000)
        self._reporter.start()

    def teardown(self, worker: Any) -> None:
        self._reporter.stop()
        for buf in self.buffers.values():
            buf.close()

    @property
    def address(self) -> str:
        return self.worker.address

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
    def attach_consumer(self, channel: str, consumer: str) -> ConsumerBuffer:
        """Create this consumer's buffer, then announce it to the broker.

        Raises:
            UnknownChannel: if the channel was never declared.
        """

        async def attach() -> ConsumerBuffer:
            table = await self._broker("coupler_routing", name=channel)
            buf = make_buffer(channel, policy_from_wire(table["policy"]), self.loop)
            self.buffers[(channel, consumer)] = buf  # before the broker tells producers
            if table.get("spec") is not None:
                self.consumer_specs[channel] = Spec.from_wire(table["spec"])
            table = await self._broker("coupler_attach", name=channel, role="consumer", ident=consumer, address=self.address)
            if table["closed"]:
                buf.close()
            return buf

        return self.call(attach)

    def detach_consumer(self, channel: str, consumer: str) -> None:
        """Remove a consumer's buffer and tell the broker (producers stop sending to it)."""

        async def detach() -> None:
            buf = self.buffers.pop((channel, consumer), None)
            if buf is not None:
                buf.close()
            await self._broker("coupler_detach", name=channel, ident=consumer)

        self.call(detach)

    async def _handle_deliver(
        self,
        channel: str,
        consumer: str,
        headers: list[dict[str, Any]],
        frames: list[Any],
        spec: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        buf = self.buffers.get((channel, consumer))
        if buf is None:
            return {"status": "gone", "accepted": 0}
        if buf.closed:
            return {"status": "closed", "accepted": 0}
        if spec is not None:
            self.consumer_specs[channel] = Spec.from_wire(spec)
        s = self.consumer_specs.get(channel)
        if s is None:  # e.g. this consumer restarted; ask once
            table = await self._broker("coupler_routing", name=channel)
            s = self.consumer_specs[channel] = Spec.from_wire(table["spec"])
        k = len(s.fields)
        msgs = [Message.from_header(h, unflatten(s.treedef, frames[i * k : (i + 1) * k])) for i, h in enumerate(headers)]
        accepted = await buf.put(msgs, timeout)
        status = "OK" if accepted == len(msgs) else ("closed" if buf.closed else "timeout")
        return {"status": status, "accepted": accepted}

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
            route.table = table
            route.changed.set()
            route.changed = asyncio.Event()
        if table["closed"]:
            for (ch, _), buf in self.buffers.items():
                if ch == channel:
                    buf.close()
        return {"status": "OK"}

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

        Blocks the calling thread until every consumer accepted the message (a
        full ``Queue`` makes it wait: back-pressure).

        Args:
            channel: channel name.
            source: producer name (an actor name); sequence numbers are per source.
            data: payload pytree.
            timestamp: simulation time.
            step: producer's step counter.
            meta: small metadata dict.
            timeout: seconds to wait for a consumer to exist and to accept.
            cancel: an event that gives up the wait when set (the actor is stopping).

        Returns:
            The message's sequence number.

        Raises:
            UnknownChannel, SpecMismatch, ChannelClosed, ConsumerGone, ChannelTimeout, Interrupted.
        """
        leaves, treedef = flatten(data)
        route = self.call(lambda: self._route(channel, source))
        stats = self.producers.setdefault((channel, source), ProducerStats())
        spec = route.spec
        if spec is None:
            proposed = Spec.from_leaves(treedef, leaves)
            reply = self.call(lambda: self._broker("coupler_fix_spec", name=channel, spec=proposed.to_wire()))
            route.table = {**route.table, "spec": reply["spec"]}
            spec = Spec.from_wire(reply["spec"])
        spec.check(channel, treedef, leaves)
        with stats.lock:  # one sequence per source, gap-free even if a port is shared by threads
            if route.table["closed"]:
                raise ChannelClosed(f"channel {channel!r} is closed; cannot send (source {source!r})")
            msg = Message(data=None, timestamp=timestamp, step=step, source=source, seq=stats.next_seq, meta=meta or {})
            self.call(lambda: self._deliver_all(route, spec, msg, leaves, timeout), cancel=cancel)
            stats.next_seq += 1
            stats.sent += 1
            stats.nbytes += spec.nbytes
            stats.last_seq = msg.seq
        return msg.seq

    async def _deliver_all(self, route: Route, spec: Spec, msg: Message, leaves: list[np.ndarray], timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not route.consumers:
            if route.table["closed"]:
                raise ChannelClosed(f"channel {route.channel!r} is closed; cannot send")
            if route.table["gone"]:
                gone = ", ".join(f"{c} ({why})" for c, why in route.table["gone"])
                raise ConsumerGone(f"channel {route.channel!r} has no consumer left: {gone}")
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise ChannelTimeout(f"channel {route.channel!r}: no consumer attached within {timeout} s")
            try:
                await asyncio.wait_for(route.changed.wait(), remaining)
            except (asyncio.TimeoutError, TimeoutError):
                pass
        consumers = route.consumers
        results = await asyncio.gather(
            *(self._deliver_one(route, spec, cid, addr, msg, leaves, deadline) for cid, addr in consumers),
            return_exceptions=True,
        )
        failures = [(cid, r) for (cid, _), r in zip(consumers, results) if r is not None]
        if failures:
            for _, r in failures:
                if isinstance(r, ChannelClosed):
                    raise r
            for _, r in failures:
                if isinstance(r, ConsumerGone):
                    raise r
            raise failures[0][1]

    async def _deliver_one(
        self, route: Route, spec: Spec, cid: str, addr: str, msg: Message, leaves: list[np.ndarray], deadline: float | None
    ) -> None:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        header = msg.header()
        if addr == self.address:
            buf = self.buffers.get((route.channel, cid))
            if buf is None:
                reply = {"status": "gone", "accepted": 0}
            else:
                # Same process: the consumer must own its data, so copy once.
                copy = unflatten(spec.treedef, [np.array(a, copy=True) for a in leaves])
                accepted = await buf.put([Message.from_header(header, copy)], remaining)
                reply = {"status": "OK" if accepted else ("closed" if buf.closed else "timeout"), "accepted": accepted}
        else:
            key = (cid, addr)
            first = key not in route.spec_sent_to
            try:
                reply = await self.worker.rpc(addr).coupler_deliver(
                    channel=route.channel,
                    consumer=cid,
                    headers=[header],
                    frames=[to_serialize(np.ascontiguousarray(a)) for a in leaves],
                    spec=spec.to_wire() if first else None,
                    timeout=remaining,
                )
            except (OSError, EnvironmentError) as e:
                raise ConsumerGone(
                    f"channel {route.channel!r}: consumer {cid!r} on {addr} is unreachable ({type(e).__name__}: {e})"
                ) from e
            if first and reply.get("status") == "OK":
                route.spec_sent_to.add(key)
        status = reply["status"]
        if status == "OK":
            return None
        if status == "gone":
            raise ConsumerGone(f"channel {route.channel!r}: consumer {cid!r} on {addr} has detached")
        if status == "closed":
            raise ChannelClosed(f"channel {route.channel!r} is closed; consumer {cid!r} refused the message")
        raise ChannelTimeout(
            f"channel {route.channel!r}: consumer {cid!r} did not accept the message within the timeout "
            f"(its queue is full: back-pressure)"
        )

    # -- reporting -------------------------------------------------------------------------------
    def register_actor(self, name: str, actor: Any) -> None:
        """Report ``actor.status_dict()`` with this worker's counters."""
        self.actors[name] = actor

    def unregister_actor(self, name: str) -> None:
        self.actors.pop(name, None)

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
        return {"channels": channels, "actors": actors}

    async def _report(self) -> None:
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

"""The consumers on one worker: their buffers, from attach to detach, and the broker told of each.

A consumer's buffer is made here before the broker announces the consumer to
producers, so that the first stream to arrive finds it; the worker's
:class:`~coupler.runtime.dataplane.receiver.Listener` receives into it. When the
last consumer of a channel leaves this worker, what the data port keeps of the
channel (its spec, its producers' epochs) goes too.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, MutableMapping

from coupler.runtime.control.departure import Departure
from coupler.runtime.dataplane.buffers import ConsumerBuffer, make_buffer
from coupler.runtime.dataplane.fence import Fence
from coupler.runtime.dataplane.receiver import Listener
from coupler.runtime.message import Message
from coupler.runtime.control.routing_table import RoutingTable

Broker = Callable[..., Awaitable[dict[str, Any]]]


class LocalConsumers:
    """Attaches and detaches the consumers on this worker (coroutines, run on the worker's event loop).

    Args:
        buffers: the consumer buffers, by (channel, consumer) (shared with the endpoint and its parts).
        listener: the worker's data port (its address is announced; its spec copies are dropped).
        fence: the producers' epochs seen here (dropped with a channel's last consumer).
        address: this worker's address.
        host: this worker's host key (consumers on the same host map shared memory).
        broker: calls a broker operation by name with keyword arguments; returns its checked reply.
    """

    def __init__(
        self,
        buffers: MutableMapping[tuple[str, str], ConsumerBuffer],
        listener: Listener,
        fence: Fence,
        address: Callable[[], str],
        host: str,
        broker: Broker,
    ) -> None:
        self.buffers, self.listener, self.fence = buffers, listener, fence
        self.address, self.host, self.broker = address, host, broker

    async def attach(self, channel: str, consumer: str, preload: list[Message] | None = None) -> ConsumerBuffer:
        """Create this consumer's buffer, then announce it to the broker.

        Args:
            channel: channel name.
            consumer: consumer id (``actor/port``).
            preload: messages to hold before anything arrives (a moved consumer's leftovers).

        Returns:
            The consumer's buffer (closed already if the channel is, or was closed and
            forgotten: the successor of a consumer lost while it drained ends as it would have).

        Raises:
            UnknownChannel: if the channel was never declared.
        """
        table = RoutingTable.from_wire(await self.broker("coupler_routing", name=channel, forgotten_ok=True))
        buf = make_buffer(channel, table.policy)
        buf.consumer = consumer
        if preload:
            buf.preload(preload)
        self.buffers[(channel, consumer)] = buf  # before the broker tells producers
        table = RoutingTable.from_wire(await self.broker(
            "coupler_attach", name=channel, role="consumer", ident=consumer, address=self.address(),
            stream=self.listener.address, host=self.host,
        ))
        if table.closed:
            buf.close()
        return buf

    async def detach(self, channel: str, consumer: str, handover: bool = False, detail: str = "") -> list[Message]:
        """Remove a consumer's buffer and tell the broker (producers stop sending to it).

        Args:
            channel: channel name.
            consumer: consumer id.
            handover: the consumer is moving (a restart elsewhere): producers wait for
                it instead of failing, and what it held is returned to be preloaded.
            detail: why it leaves (e.g. its actor failed), for the producers' ``ConsumerGone``.

        Returns:
            With ``handover``, the messages the buffer still held (``Queue``, ``Latest``).
        """
        buf = self.buffers.pop((channel, consumer), None)
        if not any(ch == channel for ch, _ in self.buffers):  # what the data port knows of it goes too
            self.listener.specs.forget(channel)
            self.fence.forget(channel)
        left: list[Message] = []
        if buf is not None:
            buf.detach()
            # With a hand-over what it held goes to the successor; else it goes now, with its
            # shared-memory mappings (an ended actor keeps its ports until it is released).
            held = buf.drain()
            if handover:
                left = held
            # Wake a thread still waiting on it. Not close(): a stream that delivers to it meanwhile
            # must hear "gone" (ConsumerGone), not "closed" (which would end its producer as if
            # the channel had closed).
            buf.interrupt()
        departure = Departure.HANDOVER if handover else Departure.DETACHED
        # Its final counters: reports come every interval, and what it took since the last one
        # would be missing from the channel's totals.
        counters = None if buf is None else {k: int(getattr(buf.stats, k)) for k in ("received", "nbytes", "dropped", "taken")}
        await self.broker(
            "coupler_detach", name=channel, ident=consumer, departure=departure.value, address=self.address(),
            counters=counters, detail=detail[:300],
        )
        return left

    def close_channel(self, channel: str) -> None:
        """``channel`` closed: close its consumers' buffers here.

        Each consumer drains its buffer, sees the end, and detaches (which drops it).

        Args:
            channel: channel name.
        """
        for (ch, _), buf in list(self.buffers.items()):
            if ch == channel:
                buf.close()


__all__ = ["LocalConsumers"]

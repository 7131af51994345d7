"""The coupling script as a participant: a producer and a consumer on channels, like any actor.

:class:`Participant` gives :class:`~coupler.runtime.Coupling` its ``send``,
``receive`` and ``subscribe`` (with their awaitable twins) and ``publisher``.
Each port of the script is a relay actor that the coupling spawns and
supervises (see :mod:`coupler.runtime.driver`); this module owns the script's
ports, made on first use and ended when the coupling closes.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from typing import Any

from coupler.runtime.control.actor_ref import ActorRef
from coupler.runtime.control.spawning import SpawnSpec
from coupler.runtime.driver import NO_DEFAULT, DriverPorts, Publisher, Subscription
from coupler.runtime.errors import ChannelClosed
from coupler.runtime.message import Message


class Participant(ABC):
    """The script's publishers and subscriptions, and sending and receiving through them.

    A subclass says how a port's relay actor is spawned (:meth:`_spawn_relay`)
    and calls :meth:`_close_ports` when it closes.
    """

    _driver_ports: DriverPorts | None = None

    @abstractmethod
    def _spawn_relay(self, spec: SpawnSpec) -> ActorRef:
        """Spawn (and supervise) the relay actor of one of the script's ports."""

    def _relay_checkpoint(self, name: str) -> dict[str, Any] | None:
        """The last checkpoint its supervisor holds of relay ``name`` (``None``: none, or no supervisor)."""
        return None

    @property
    def _ports(self) -> DriverPorts:
        if self._driver_ports is None:
            self._driver_ports = DriverPorts(self._spawn_relay, self._relay_checkpoint)
        return self._driver_ports

    def _close_channel_ports(self, channel: str) -> Subscription | None:
        """Give back the default publisher of ``channel`` (flushed); return its inbox, to close after the channel."""
        if self._driver_ports is None:
            return None
        return self._driver_ports.close_channel(channel)[1]

    def _close_ports(self) -> None:
        """End every publisher and subscription of the script (what was sent goes out first)."""
        if self._driver_ports is not None:
            self._driver_ports.close()
            self._driver_ports = None

    def publisher(self, channel: str) -> Publisher:
        """A new producer on ``channel`` for this script, with a source name of its own.

        Its relay actor is given back by ``Publisher.close`` (a ``with`` block),
        when it is garbage collected, or when the coupling closes.

        Raises:
            UnknownChannel: if ``channel`` was never declared.
        """
        return self._ports.publisher(channel)

    def send(
        self,
        channel: str,
        data: Any,
        *,
        timestamp: float = 0.0,
        step: int = 0,
        meta: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> int:
        """Send one message on ``channel`` from this script, like an actor's ``OutPort.send``.

        The first send on a channel makes this script a producer there (the
        coupling's own :class:`Publisher` for it, kept until the coupling or the
        channel closes): sequence numbers, spec checks and back-pressure are those
        of every producer. A send that meets the channel closed gives that
        publisher back; a send on a channel declared again under the same name
        later is a new producer there, numbered from 0.

        Args:
            channel: a declared channel.
            data: pytree of arrays; must fit the channel's spec.
            timestamp: simulation time of the data.
            step: the sender's step counter.
            meta: small JSON-like metadata.
            timeout: seconds to wait for consumers and space (``None``: forever).

        Returns:
            The message's sequence number.

        Raises:
            UnknownChannel: the channel was never declared.
            SpecMismatch: the data does not fit the channel's spec (nothing is sent).
            ChannelClosed: the channel is closed.
            ConsumerGone: a consumer left or its worker was lost.
            ChannelTimeout: no consumer or no space within ``timeout``.
        """
        pub = self._ports.default_publisher(channel)
        try:
            return pub.send(data, timestamp=timestamp, step=step, meta=meta, timeout=timeout)
        except ChannelClosed:
            pub.close(flush=False)  # nothing more can go out on it; a later send starts a new producer
            raise

    async def asend(
        self,
        channel: str,
        data: Any,
        *,
        timestamp: float = 0.0,
        step: int = 0,
        meta: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> int:
        """:meth:`send`, awaitable (for notebooks and asyncio programs)."""
        pub = await asyncio.to_thread(self._ports.default_publisher, channel)
        try:
            return await pub.asend(data, timestamp=timestamp, step=step, meta=meta, timeout=timeout)
        except ChannelClosed:
            await pub.aclose(flush=False)
            raise

    def subscribe(self, channel: str, *, timeout: float | None = None) -> Subscription:
        """Make this script a consumer on ``channel``, from now on; iterate the result for its messages.

        Each subscription is a consumer of its own: on a broadcast channel it
        gets every message sent after it attached, on a ``Queue`` it holds up
        producers while it does not take. It ends with ``close()``, a ``with``
        block, the end of a closed channel, garbage collection (so a loop over
        ``cp.subscribe(...)`` that is left detaches it), or the coupling's close.

        Args:
            channel: a declared channel.
            timeout: seconds each step of an iteration waits for a message
                before it raises ``ChannelTimeout`` (``None``: forever).

        Returns:
            The subscription: ``for msg in sub``, ``async for msg in sub``,
            ``sub.receive()``, ``sub.sample(n)``, ``sub.latest()``.

        Raises:
            UnknownChannel: if ``channel`` was never declared.
        """
        return self._ports.subscribe(channel, timeout)

    def receive(self, channel: str, timeout: float | None = None, default: Any = NO_DEFAULT) -> Message:
        """Take the next message of ``channel`` for this script, like an actor's ``InPort.receive``.

        The first call on a channel attaches this script as a consumer (the
        coupling's own :class:`Subscription` for it), so it sees what is sent from
        then on; :meth:`subscribe` first to see messages that producers send
        before. The consumer stays attached until the channel ends or the coupling closes.

        Args:
            channel: a declared channel.
            timeout: seconds to wait (``None``: forever; ``0``: do not wait).
            default: returned instead of raising when nothing arrives in time.

        Returns:
            The message.

        Raises:
            UnknownChannel: the channel was never declared.
            ChannelTimeout: nothing arrived in time and no ``default`` was given.
            ChannelClosed: the channel is closed and drained.
            WrongPolicy: the channel is a replay buffer (``subscribe`` and ``sample`` instead).
        """
        return self._ports.inbox(channel).receive(timeout, default)

    async def areceive(self, channel: str, timeout: float | None = None, default: Any = NO_DEFAULT) -> Message:
        """:meth:`receive`, awaitable (for notebooks and asyncio programs)."""
        sub = await asyncio.to_thread(self._ports.inbox, channel)
        return await sub.areceive(timeout, default)

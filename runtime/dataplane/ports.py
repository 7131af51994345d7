"""Ports: an actor's named ends of channels, declared when the actor is built.

An :class:`OutPort` sends on a channel under the actor's name (its *source*);
an :class:`InPort` owns the actor's consumer buffer on that channel. Both are
used from the actor's run-loop thread, in the spirit of MUSCLE3's
``send(port, msg)`` / ``receive(port, default=...)``.

Example (inside an actor's ``step``)::

    self.outputs["field"].send({"u": u}, timestamp=t, step=k)
    msg = self.inputs["weights"].receive(timeout=0, default=None)
"""

from __future__ import annotations

from typing import Any

from coupler.runtime.dataplane.buffers import BufferStats, ConsumerBuffer, LatestBuffer
from coupler.runtime.dataplane.cancel import Cancel
from coupler.runtime.dataplane.endpoint import Endpoint
from coupler.runtime.dataplane.waits import check_timeout
from coupler.runtime.errors import ChannelTimeout, WrongPolicy
from coupler.runtime.message import Message, check_meta

_MISSING: Any = object()


class OutPort:
    """The sending end of a channel for one producer.

    Args:
        endpoint: the worker's endpoint.
        channel: channel name.
        source: the producer's name (sequence numbers are per source).
        cancel: an event that interrupts a blocked ``send`` when set (its actor stops).
    """

    def __init__(self, endpoint: Endpoint, channel: str, source: str, cancel: Cancel | None = None) -> None:
        self.endpoint = endpoint
        self.channel = channel
        self.source = source
        self.cancel = cancel

    def send(
        self,
        data: Any,
        *,
        timestamp: float = 0.0,
        step: int = 0,
        meta: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> int:
        """Send one message to every consumer; block while a ``Queue`` consumer is full.

        Args:
            data: pytree of arrays; must fit the channel's spec.
            timestamp: simulation time of the data.
            step: the producer's step counter.
            meta: small JSON-like metadata.
            timeout: seconds to wait for consumers and space (``None``: forever).

        Returns:
            The message's sequence number.

        Raises:
            SpecMismatch: the data does not fit the channel's spec (nothing is sent).
            ChannelClosed: the channel is closed.
            ConsumerGone: a consumer left or its worker was lost.
            ChannelTimeout: no consumer or no space within ``timeout``.
            Interrupted: the port's actor is stopping.
            UnknownChannel: the channel was never declared.
            ValueError: for a timeout that is not a number (or NaN), or a ``meta`` key of the
                runtime's own (``coupler.``).
            TypeError: ``meta`` is not a dict with string keys.
        """
        check_meta(meta)
        return self._send(data, timestamp, step, meta, timeout)

    def _send(self, data: Any, timestamp: float, step: int, meta: dict[str, Any] | None, timeout: float | None) -> int:
        """:meth:`send` with ``meta`` as it is: the actor layer adds a key of the runtime's own (its takes)."""
        check_timeout(timeout)
        return self.endpoint.sender.send(
            self.channel, self.source, data, timestamp=timestamp, step=step, meta=meta, timeout=timeout, cancel=self.cancel
        )

    @property
    def lossy(self) -> bool:
        """Whether the channel's policy may drop messages (``Latest``, ``Reservoir``, ``Window``; not ``Queue``).

        A periodic checkpoint does not wait for their acceptance (a consumer cut
        off would hold up the producer, which must never block on a lossy
        channel); a hand-over gives the last value a second; the end of a run
        waits for it.
        """
        route = self.endpoint.sender.routes.get(self.channel)
        return route is not None and not route.is_queue

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every message sent on this channel from this worker was accepted by its consumers.

        ``send`` returns once a message is on its way (pipelined); call this
        where the producer must know it arrived, e.g. at the end of a run.
        Messages kept for a consumer that is being moved are delivered first.

        Raises:
            ChannelTimeout: not all accepted within ``timeout``.
            ConsumerGone, ChannelClosed: a consumer failed to take them.
            Interrupted: the port's actor is stopping.
        """
        self.endpoint.sender.flush(self.channel, timeout=timeout, cancel=self.cancel)


class InPort:
    """The receiving end of a channel for one consumer; attaches on construction.

    Args:
        endpoint: the worker's endpoint.
        channel: channel name.
        consumer: unique consumer name, e.g. ``"learner/data"``.
        preload: messages to hold before anything arrives (a moved consumer's leftovers).

    Raises:
        UnknownChannel: if the channel was never declared.
    """

    def __init__(self, endpoint: Endpoint, channel: str, consumer: str, preload: list[Message] | None = None) -> None:
        self.endpoint = endpoint
        self.channel = channel
        self.consumer = consumer
        self.buffer: ConsumerBuffer = endpoint.attach_consumer(channel, consumer, preload=preload)
        self._attached = True

    def receive(self, timeout: float | None = None, default: Any = _MISSING) -> Message:
        """Take the next message (``Queue``: oldest; ``Latest``: newest not yet taken).

        Args:
            timeout: seconds to wait (``None``: forever; ``0``: do not wait).
            default: returned instead of raising when nothing arrives in time.

        Returns:
            The message (its ``data`` owned by this consumer).

        Raises:
            ChannelTimeout: nothing arrived in time and no ``default`` was given.
            ChannelClosed: the channel is closed and drained.
            WrongPolicy: the channel is a replay buffer (use :meth:`sample`).
            Interrupted: the actor was asked to stop while this waited.
            ValueError: for a timeout that is not a number (NaN included).
        """
        check_timeout(timeout)
        try:
            return self.buffer.get(timeout)
        except ChannelTimeout:
            if default is _MISSING:
                raise
            return default

    def latest(self) -> Message | None:
        """The newest message of a ``Latest`` channel without waiting, taken before or not.

        Raises:
            WrongPolicy: on other policies.
        """
        if not isinstance(self.buffer, LatestBuffer):
            raise WrongPolicy(f"channel {self.channel!r}: latest() needs a Latest channel, got {type(self.buffer).__name__}")
        return self.buffer.peek()

    def sample(self, n: int, timeout: float | None = None) -> Any:
        """Draw a mini-batch of ``n`` payloads from a ``Reservoir`` or ``Window`` channel.

        Raises:
            WrongPolicy: on ``Queue`` and ``Latest`` channels.
            ChannelTimeout: if the buffer stays empty for ``timeout`` seconds.
            ChannelClosed: the channel is closed and the buffer empty.
            Interrupted: the actor was asked to stop while this waited.
            ValueError: for ``n < 1``, or a timeout that is not a number.
        """
        check_timeout(timeout)
        return self.buffer.sample(n, timeout=timeout)

    def __len__(self) -> int:
        """Messages held now."""
        return len(self.buffer)

    @property
    def stats(self) -> BufferStats:
        """This consumer's counters."""
        return self.buffer.stats

    @property
    def closed(self) -> bool:
        """Whether the channel was closed (messages may remain to drain)."""
        return self.buffer.closed

    def close(self, handover: bool = False, detail: str = "") -> list[Message]:
        """Detach: producers stop sending here; idempotent.

        Args:
            handover: this consumer is moving (restarted elsewhere under the same
                name): producers keep what it did not take and wait for its return.
            detail: why, for the producers' ``ConsumerGone`` (e.g. its actor failed).

        Returns:
            With ``handover``, the messages it held and had not taken (to pass as
            ``preload`` to its replacement's port); else an empty list.
        """
        if not self._attached:
            return []
        self._attached = False
        return self.endpoint.detach_consumer(self.channel, self.consumer, handover=handover, detail=detail)

"""The driver relay: the actor host that holds a coupling script's port on a channel.

The coupling script (the *driver*) is not a Dask worker and has no data-plane
endpoint, so it cannot own a port itself. When it sends or subscribes
(``Coupling.send``, ``Coupling.subscribe``; see :mod:`coupler.runtime.driver`),
a :class:`DriverRelay` is spawned on a worker with one port on the channel: an
output port ``out`` for a sender, an input port ``in`` for a subscription. The
driver then calls the relay's methods through its ``ActorRef``; each does one
port operation. So a driver is a producer or a consumer like any actor:
sequence numbers under the relay's name, spec checks, policies, back-pressure
and the typed errors all come from the same ports, and errors raised here
reach the driver as the same exceptions (Dask re-raises an actor method's
exception at the caller).

The relay runs no loop of its own: it is driven by calls (so its status reads
``created`` until it is released; ``info()`` counts what it passed on). Port operations
block (a full ``Queue``, an empty buffer), and every synchronous actor method
of a worker shares one thread, so each method is ``async`` (it runs on the
worker's event loop) and does its port operation in a thread of its own for
the length of the call; a relay holds no thread between calls. Stopping the
relay (``ActorRef.release``) interrupts a call blocked in a port and, like any
actor's end, detaches its input and gives back its output's links.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Callable, TypeVar

from coupler.actors.base import ActorHost
from coupler.runtime import InPort, Message, OutPort

T = TypeVar("T")

IN_PORT = "in"  # the input port of a subscription's relay
OUT_PORT = "out"  # the output port of a sender's relay


class DriverRelay(ActorHost):
    """One port of the coupling script on a channel, held on a worker.

    Args:
        name: the relay's actor name: the source of what it sends, and with
            ``/in`` its consumer name.
        inputs: ``{"in": channel}`` for a subscription.
        outputs: ``{"out": channel}`` for a sender.

    Raises:
        UnknownChannel: if the channel was never declared.
    """

    def __init__(self, *, name: str, inputs: dict[str, str] | None = None, outputs: dict[str, str] | None = None) -> None:
        super().__init__(name=name, inputs=inputs, outputs=outputs)
        self._relayed = {"sent": 0, "received": 0}

    def info(self) -> dict[str, Any]:
        """What the relay passed on so far: ``{"relay": "driver", "sent": n, "received": n}``."""
        return {"relay": "driver", **self._relayed}

    # -- the driver's calls ---------------------------------------------------------------------
    async def send(
        self,
        data: Any,
        *,
        timestamp: float = 0.0,
        step: int = 0,
        meta: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> int:
        """Send one message on the relay's output port (see ``OutPort.send``).

        Returns:
            The message's sequence number (per channel and source, the relay's name).

        Raises:
            SpecMismatch, ChannelClosed, ConsumerGone, ChannelTimeout: as ``OutPort.send``.
            Interrupted: the relay was stopped while the send waited.
            RuntimeError: the relay has no output port (it is a subscription's).
        """
        port = self._out()
        seq = await self._in_thread(lambda: port.send(data, timestamp=timestamp, step=step, meta=meta, timeout=timeout))
        self._relayed["sent"] += 1
        return seq

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until what the relay sent was accepted by its consumers (see ``OutPort.flush``).

        Raises:
            ChannelTimeout, ConsumerGone, ChannelClosed: as ``OutPort.flush``.
        """
        port = self._out()
        await self._in_thread(lambda: port.flush(timeout=timeout))

    async def receive(self, timeout: float | None = None) -> Message:
        """Take the next message from the relay's input port (see ``InPort.receive``).

        Raises:
            ChannelTimeout: nothing arrived within ``timeout``.
            ChannelClosed: the channel is closed and drained.
            WrongPolicy: the channel is a replay buffer (``Reservoir``, ``Window``).
            Interrupted: the relay was stopped while the receive waited.
        """
        port = self._in()
        m = await self._in_thread(lambda: port.receive(timeout))
        self._relayed["received"] += 1
        return m

    async def sample(self, n: int, timeout: float | None = None) -> Any:
        """A mini-batch of ``n`` payloads of a ``Reservoir`` or ``Window`` channel (see ``InPort.sample``).

        Raises:
            WrongPolicy: on ``Queue`` and ``Latest`` channels.
            ChannelTimeout: the buffer stayed empty for ``timeout`` seconds.
        """
        port = self._in()
        return await self._in_thread(lambda: port.sample(n, timeout))

    def latest(self) -> Message | None:
        """The newest message of a ``Latest`` channel, without waiting (see ``InPort.latest``).

        Raises:
            WrongPolicy: on other policies.
        """
        return self._in().latest()

    # -- helpers ----------------------------------------------------------------------------------
    def _out(self) -> OutPort:
        try:
            return self.outputs[OUT_PORT]
        except KeyError:
            raise _wrong_end(self.name, "send on") from None

    def _in(self) -> InPort:
        try:
            return self.inputs[IN_PORT]
        except KeyError:
            raise _wrong_end(self.name, "receive from") from None

    async def _in_thread(self, op: Callable[[], T]) -> T:
        """Run a blocking port operation in a thread of its own, for this call only.

        Not ``asyncio.to_thread``: the event loop's default pool is small and shared
        with the worker's own work, and a receive may wait for as long as it likes.
        """
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(op())
            except BaseException as e:  # the caller re-raises it
                done.set_exception(e)

        threading.Thread(target=run, name=f"coupler-relay-{self.name}", daemon=True).start()
        return await asyncio.wrap_future(done)


def _wrong_end(name: str, what: str) -> RuntimeError:
    # The driver module calls each relay only at its own end: this is a bug there, not a user error.
    return RuntimeError(f"driver relay {name!r} cannot {what} its channel: it holds the other end")

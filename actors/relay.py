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

A subscription's relay numbers what it hands the script and keeps each
hand-out until the script's next call acknowledges it (:mod:`~coupler.actors.hand_outs`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import AsyncIterator
from typing import Any, Callable, TypeVar

from coupler.actors.base import ActorHost
from coupler.actors.hand_outs import HandOut, HandOutLog
from coupler.runtime import InPort, Message, OutPort
from coupler.runtime.errors import SequenceBehind

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
        # Held by a send for its whole length, and by a checkpoint or a hand-over: a checkpoint
        # is of a step boundary, which a relay, sending from the script's calls in threads
        # of their own, has only between two sends. Its next sequence number then covers
        # exactly the messages its flush saw accepted.
        self._sending = asyncio.Lock()
        self._hand_outs = HandOutLog()  # a subscription's, until the script acknowledges them

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
        expect: int | None = None,
    ) -> int:
        """Send one message on the relay's output port (see ``OutPort.send``).

        Args:
            expect: the sequence number the script gives this message (``None``: any, its
                first). A relay restarted from a checkpoint may resume before it: then nothing
                is sent and :class:`SequenceBehind` says where it resumes, for the script to
                send what it kept from there on again. One just after it means that the
                relay's predecessor sent this very message before the checkpoint (the call
                came again after the loss of its worker): it is not sent twice.

        Returns:
            The message's sequence number (per channel and source, the relay's name).

        Raises:
            SpecMismatch, ChannelClosed, ConsumerGone, ChannelTimeout: as ``OutPort.send``.
            Interrupted: the relay was stopped while the send waited.
            SequenceBehind: the relay resumes before ``expect``.
            RuntimeError: the relay has no output port (it is a subscription's), or it is
                further ahead of ``expect`` than the one message a repeated call explains.
        """
        port = self._out()
        async with self._sending:
            return await self._send(port, data, timestamp, step, meta, timeout, expect)

    async def _send(
        self, port: OutPort, data: Any, timestamp: float, step: int, meta: dict[str, Any] | None, timeout: float | None,
        expect: int | None,
    ) -> int:
        if expect is not None:
            have = self.endpoint.sender.next_seq(port.channel, port.source)
            if have == expect + 1:
                return expect
            if have < expect:
                raise SequenceBehind(
                    f"driver relay {self.name!r} resumes at sequence number {have}, the script's next is {expect}", have,
                )
            if have != expect:
                raise RuntimeError(f"driver relay {self.name!r} is at sequence number {have}, the script's next is {expect}")
        seq = await self._in_thread(lambda: port.send(data, timestamp=timestamp, step=step, meta=meta, timeout=timeout))
        self._relayed["sent"] += 1
        return seq

    async def skip_to(self, seq: int) -> None:
        """Number the next message ``seq``: the script lost the ones before it (see ``runtime/driver.py``).

        Raises:
            ValueError: if ``seq`` is not ahead of the next number.
            RuntimeError: the relay has no output port.
        """
        port = self._out()
        async with self._sending:
            have = self.endpoint.sender.next_seq(port.channel, port.source)
            if seq < have:
                raise ValueError(f"driver relay {self.name!r} is at sequence number {have}, cannot go back to {seq}")
            # In a thread: a source's first number registers it with the broker (a call the loop cannot wait for).
            await self._in_thread(lambda: self.endpoint.sender.resume_seq(port.channel, port.source, seq))

    async def checkpoint(self, timeout: float | None = 30.0) -> dict[str, Any]:
        """``ActorHost.checkpoint``, between two sends (see ``_sending``).

        A subscription's checkpoint covers the takes it handed out (its state keeps
        those not acknowledged), not a take still on its way to being handed out:
        the producers keep that one for a successor.

        Raises:
            TimeoutError: if no send ended, or the checkpoint was not taken, within ``timeout``.
        """
        async with self._between_sends(timeout):
            ck = await super().checkpoint(timeout)
        if IN_PORT in ck.get("delivered", {}):
            ck["delivered"][IN_PORT] = dict(ck["state"]["covered"])  # read with the hand-outs it keeps
        return ck

    def state_dict(self) -> dict[str, Any]:
        """A subscription's hand-outs the script has not acknowledged (see :class:`HandOutLog`)."""
        return self._hand_outs.state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue a predecessor's hand-outs: those not acknowledged are handed again first.

        Raises:
            ValueError: if ``state`` is not a relay's.
        """
        if state:
            self._hand_outs.load(state)

    @contextlib.asynccontextmanager
    async def _between_sends(self, timeout: float | None) -> AsyncIterator[None]:
        try:
            await asyncio.wait_for(self._sending.acquire(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"driver relay {self.name!r}: a send still waits after {timeout} s (back-pressure)") from None
        try:
            yield
        finally:
            self._sending.release()

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until what the relay sent was accepted by its consumers (see ``OutPort.flush``).

        Raises:
            ChannelTimeout, ConsumerGone, ChannelClosed: as ``OutPort.flush``.
        """
        port = self._out()
        await self._in_thread(lambda: port.flush(timeout=timeout))

    async def receive(self, timeout: float | None = None, ack: int = -1) -> HandOut:
        """Take the next message from the relay's input port (see ``InPort.receive``).

        Args:
            timeout: seconds to wait for a message (``None``: forever).
            ack: the number of the last hand-out the script got (``-1``: none); the
                relay forgets it and those before.

        Returns:
            The message, numbered: a restored relay first hands again what its
            predecessor handed and the script had not acknowledged.

        Raises:
            ChannelTimeout: nothing arrived within ``timeout``.
            ChannelClosed: the channel is closed and drained.
            WrongPolicy: the channel is a replay buffer (``Reservoir``, ``Window``).
            Interrupted: the relay was stopped while the receive waited.
        """
        port = self._in()
        again = self._hand_outs.acknowledge(ack)
        if again is not None:
            return again

        def take() -> HandOut:
            # Recorded in the thread that took it: a checkpoint covers no take the log lacks.
            return self._hand_outs.record(port.receive(timeout))

        h = await self._in_thread(take)
        self._relayed["received"] += 1
        return h

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

"""The coupling script as a participant: it sends on channels and receives from them.

The script that holds a :class:`~coupler.runtime.Coupling` (the *driver*) is
not a Dask worker and has no data-plane endpoint. Its ports are therefore held
for it on a worker, each by a relay actor (``coupler.actors.relay.DriverRelay``)
that it calls through an :class:`~coupler.runtime.ActorRef`:

- a :class:`Publisher` is a producer on one channel: its messages carry the
  relay's name as their source and gap-free sequence numbers (see
  :class:`Publisher` for the loss of its relay's worker), they are checked
  against the channel's spec, and a send waits while a ``Queue`` consumer is
  full, exactly as an actor's ``OutPort.send``;
- a :class:`Subscription` is a consumer on one channel: it attaches when made,
  its buffer follows the channel's policy (a ``Queue`` consumer that does not
  take pushes back on the producers, ``Latest`` hands out the newest), and it
  detaches when closed, when it has drained a closed channel, when it is
  garbage collected, or when the coupling closes.

Errors are the ports' own typed errors (``SpecMismatch``, ``ChannelClosed``,
``ChannelTimeout``, ``ConsumerGone``, ``WrongPolicy``...), re-raised here.

Every call is synchronous, with an awaitable twin (``asend``, ``areceive``,
``async for``) for notebooks and asyncio programs. A call runs in a thread of
its own, one at a time per port, so a caller may give up waiting (Ctrl-C in a
notebook, a cancelled task) without losing what the call took: a message that
arrives after its receiver gave up is kept and is the next one received.

Example::

    with Coupling() as cp:
        cp.channel("numbers", Queue(8))
        with cp.subscribe("numbers", timeout=30) as sub:
            cp.send("numbers", {"x": np.arange(3.0)})
            print(sub.receive().data["x"])
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import importlib.metadata
import itertools
import logging
import secrets
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Generic, TypeVar

from coupler.runtime.control.actor_ref import ActorRef
from coupler.runtime.control.broker import check_name
from coupler.runtime.control.spawning import SpawnSpec
from coupler.runtime.dataplane.settings import delivery_config
from coupler.runtime.dataplane.waits import check_timeout
from coupler.runtime.driver_resend import ResendLog
from coupler.runtime.errors import ActorReleased, ChannelClosed, ChannelTimeout, Interrupted, PartiallyDelivered, SequenceBehind
from coupler.runtime.message import Message, check_meta

logger = logging.getLogger(__name__)

T = TypeVar("T")
NO_DEFAULT: Any = object()  # the default of `default=`: raise instead of returning one
# Seconds a closing publisher waits for what it sent to be accepted.
CLOSE_FLUSH_TIMEOUT = 30.0
# Seconds a closing port waits for its relay to stop (it stops at once unless its worker is lost).
RELEASE_TIMEOUT = 10.0

SpawnRelay = Callable[[SpawnSpec], ActorRef]


def relay_spec(name: str, *, inputs: dict[str, str] | None = None, outputs: dict[str, str] | None = None) -> SpawnSpec:
    """How to spawn the relay of one driver port.

    Args:
        name: the relay's actor name.
        inputs: ``{"in": channel}`` for a subscription.
        outputs: ``{"out": channel}`` for a publisher.

    Returns:
        The spawn spec (any worker, no resources).
    """
    return SpawnSpec(relay_class(), (), {"inputs": inputs or {}, "outputs": outputs or {}}, name)


@functools.cache
def relay_class() -> type:
    """The actor host class of a driver port, which the actor layer provides.

    Actor hosts live a layer above the runtime (they import it), so the runtime
    does not import one: the ``relay`` entry point of the ``coupler.driver``
    group (``pyproject.toml``) names it, and it is loaded when the first driver
    port is made.

    Raises:
        RuntimeError: if no installed package provides the entry point.
    """
    found = importlib.metadata.entry_points(group="coupler.driver", name="relay")
    if not found:
        raise RuntimeError(
            "expected the 'relay' entry point of group 'coupler.driver' (coupler.actors.relay:DriverRelay), found "
            "none: install coupler (make venv, or pip install the wheel) rather than importing it from a source tree"
        )
    return next(iter(found)).load()


class _Call(Generic[T]):
    """One call on a relay, run in its own thread; the caller may give up waiting for it."""

    def __init__(self, run: Callable[[], T], order: threading.Lock, keep: Callable[[T], None] | None, what: str) -> None:
        self.future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._lock = threading.Lock()  # orders the result against abandon()
        self._abandoned = False
        self._keep = keep

        def body() -> None:
            with order:  # one call at a time per port, in the order they were made
                try:
                    result = run()
                except BaseException as e:
                    with self._lock:
                        if not self._abandoned:
                            self.future.set_exception(e)
                        elif not isinstance(e, Interrupted):  # Interrupted: its port was closed meanwhile
                            logger.warning("%s, given up by its caller, failed: %r", what, e)
                    return
                with self._lock:
                    if self._abandoned:
                        if keep is not None:
                            keep(result)
                    else:
                        self.future.set_result(result)

        threading.Thread(target=body, name="coupler-driver-call", daemon=True).start()

    def wait(self) -> T:
        """The call's result, waiting in this thread; an interrupted wait (Ctrl-C) abandons the call.

        Raises:
            Exception: what the call raised (the relay's typed errors).
        """
        try:
            self.future.exception()  # waits, without raising the call's own error
        except BaseException:
            self.abandon()
            raise
        return self.future.result()

    async def await_(self) -> T:
        """The call's result, awaited; a cancelled await abandons the call.

        Raises:
            Exception: what the call raised (the relay's typed errors).
        """
        try:
            return await asyncio.wrap_future(self.future)
        except asyncio.CancelledError:
            self.abandon()
            raise

    def abandon(self) -> None:
        """Nobody waits for the result any more: a result still to come, or come unread, is kept."""
        with self._lock:
            if self._abandoned:
                return
            self._abandoned = True
            f = self.future
            if f.done() and not f.cancelled() and f.exception() is None and self._keep is not None:
                self._keep(f.result())


class _Port:
    """What a publisher and a subscription share: a relay, calls in order, a close that is idempotent."""

    def __init__(self, channel: str, relay: ActorRef, release: Callable[[ActorRef], None]) -> None:
        self.channel = channel
        self.relay = relay
        self._order = threading.Lock()
        self._closed = False
        # Garbage collection of an unclosed port gives its relay back, from another thread: a
        # collection may run in the Dask client's own event-loop thread, where a call would hang.
        self._finalizer = weakref.finalize(self, release, relay)
        self._finalizer.atexit = False  # at exit the coupling, if still open, closes it

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (or the port ended by itself)."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise ChannelClosed(f"the driver's {type(self).__name__.lower()} {self.relay.name!r} on channel {self.channel!r} is closed")

    def _call(self, method: str, *args: Any, keep: Callable[[Any], None] | None = None, **kwargs: Any) -> _Call[Any]:
        self._check_open()
        return _Call(lambda: self.relay.call(method, *args, **kwargs), self._order, keep, f"{self.relay.name}.{method}")

    def _release(self, timeout: float = RELEASE_TIMEOUT) -> None:
        self._closed = True
        self._finalizer.detach()
        self.relay.release(timeout)


class Publisher(_Port):
    """The coupling script's producer on one channel (made by ``Coupling.publisher`` or ``Coupling.send``).

    **Across the loss of its relay's worker.** An actor that produces restarts from
    its checkpoint and sends again what came after it. The script does not restart,
    so its publisher keeps what it sent since the relay's last checkpoint (up to
    ``coupler.delivery.retain-bytes``, copied: the script may change its arrays)
    and numbers its messages itself. When the restarted relay resumes before the
    next number (``SequenceBehind``), the publisher sends what it kept from there
    on again, in order, under the same numbers, then its new message: consumers
    drop what they already had, and every send that returned a number arrives once.

    Args:
        channel: the channel.
        relay: the handle of its relay actor (an output port ``out`` on ``channel``).
        release: gives a relay back when an unclosed publisher is garbage collected.
        checkpointed: the sequence number at which the relay's last checkpoint resumes
            (``None``: none yet); what comes before it is not kept.
        keep_bytes: payload bytes kept for sending again, at most.
    """

    def __init__(
        self, channel: str, relay: ActorRef, release: Callable[[ActorRef], None],
        checkpointed: Callable[[], int | None] = lambda: None, keep_bytes: int = 256 << 20,
    ) -> None:
        super().__init__(channel, relay, release)
        self._resend = ResendLog(relay.name, channel, keep_bytes)
        self._checkpointed = checkpointed
        self._next: int | None = None  # the number of the script's next message (None: the relay's first)

    @property
    def source(self) -> str:
        """The source name its messages carry (its relay's name)."""
        return self.relay.name

    def send(
        self,
        data: Any,
        *,
        timestamp: float = 0.0,
        step: int = 0,
        meta: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> int:
        """Send one message; wait while a ``Queue`` consumer is full (like ``OutPort.send``).

        Args:
            data: pytree of arrays; must fit the channel's spec.
            timestamp: simulation time of the data.
            step: the sender's step counter.
            meta: small JSON-like metadata.
            timeout: seconds to wait for consumers and space (``None``: forever).

        Returns:
            The message's sequence number.

        Raises:
            SpecMismatch: the data does not fit the channel's spec (nothing is sent).
            ChannelClosed: the channel, or this publisher, is closed.
            ConsumerGone: a consumer left or its worker was lost.
            ChannelTimeout: no consumer or no space within ``timeout``.
            ValueError: a ``meta`` key of the runtime's own (``coupler.``), or a bad ``timeout``.
            TypeError: ``meta`` is not a dict with string keys.
        """
        return self._send_call(data, dict(timestamp=timestamp, step=step, meta=meta, timeout=timeout)).wait()

    async def asend(
        self,
        data: Any,
        *,
        timestamp: float = 0.0,
        step: int = 0,
        meta: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> int:
        """:meth:`send`, awaitable. A cancelled await does not withdraw the message."""
        return await self._send_call(data, dict(timestamp=timestamp, step=step, meta=meta, timeout=timeout)).await_()

    def _send_call(self, data: Any, kw: dict[str, Any]) -> _Call[int]:
        self._check_open()
        check_timeout(kw["timeout"])
        check_meta(kw["meta"])
        kept = self._resend.copy(data) if self._resend.keeps else None  # now: the script may change its arrays after
        return _Call(lambda: self._send_in_order(data, kept, kw), self._order, None, f"{self.relay.name}.send")

    def _send_in_order(self, data: Any, kept: Any, kw: dict[str, Any]) -> int:
        """Send one message under the next number, after what a restarted relay must send again (see the class)."""
        while True:
            try:
                seq = self.relay.call("send", data, expect=self._next, **kw)
            except SequenceBehind as e:
                self._send_again(e.next_seq)
                continue
            except PartiallyDelivered as e:  # sent, under e.seq, to some consumers: kept for the others
                self._sent(e.seq, kept, kw)
                raise
            self._sent(seq, kept, kw)
            return seq

    def _send_again(self, start: int) -> None:
        """Send what was kept from ``start`` on again, under the same numbers (the relay resumed at ``start``).

        If the log was full, the messages it did not keep are lost: the relay skips their
        numbers (a consumer must not take a later message under one of them), with a warning.
        """
        kept = self._resend.since(start)
        for item in kept:
            got = self.relay.call("send", item.data, expect=item.seq, **item.kwargs)
            if got != item.seq:
                raise RuntimeError(f"driver relay {self.relay.name!r} numbered a message sent again {got}, not {item.seq}")
        hole = start + len(kept)
        if self._next is not None and hole < self._next:
            logger.warning(
                "publisher %r on %r: its relay was restarted; messages %d to %d were not kept (retain-bytes) and are lost",
                self.relay.name, self.channel, hole, self._next - 1,
            )
            self.relay.call("skip_to", self._next)

    def _sent(self, seq: int, kept: Any, kw: dict[str, Any]) -> None:
        self._next = seq + 1
        self._resend.add(seq, kept, kw, self._checkpointed())

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every message sent was accepted by its consumers (sends are pipelined).

        Raises:
            ChannelTimeout: not all accepted within ``timeout``.
            ConsumerGone, ChannelClosed: a consumer failed to take them.
        """
        self._call("flush", timeout).wait()

    async def aflush(self, timeout: float | None = None) -> None:
        """:meth:`flush`, awaitable."""
        await self._call("flush", timeout).await_()

    def close(self, timeout: float = CLOSE_FLUSH_TIMEOUT, *, flush: bool = True) -> None:
        """Flush, then give the relay back; idempotent.

        Args:
            timeout: seconds to wait for what was sent to be accepted.
            flush: ``False`` gives the relay back at once, without waiting for
                what was sent (when it can no longer be accepted: the channel
                closed, its consumer left).

        Raises:
            ChannelTimeout, ConsumerGone, ChannelClosed: what was sent was not all
                accepted (the relay is given back all the same).
        """
        if self._closed:
            return
        try:
            if flush:
                self.flush(timeout)
        finally:
            self._release()

    async def aclose(self, timeout: float = CLOSE_FLUSH_TIMEOUT, *, flush: bool = True) -> None:
        """:meth:`close`, awaitable."""
        await asyncio.to_thread(lambda: self.close(timeout, flush=flush))

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Publisher({self.channel!r}, source={self.source!r}{', closed' if self._closed else ''})"


class Subscription(_Port):
    """The coupling script's consumer on one channel (made by ``Coupling.subscribe``).

    Iterating it yields messages as they arrive and ends when the channel is
    closed and drained. It stays attached, taking its share of every message
    (and, on a ``Queue``, holding up producers when it does not take), until it
    is closed: by :meth:`close` or a ``with`` block, at the end of a closed
    channel, when garbage collected (so ``for msg in cp.subscribe(...)`` ends
    it when the loop is left), or when the coupling closes.

    Args:
        channel: the channel.
        relay: the handle of its relay actor (an input port ``in`` on ``channel``).
        release: gives a relay back when an unclosed subscription is garbage collected.
        timeout: seconds each step of an iteration waits for a message (``None``: forever).

    **Across the loss of its relay's worker.** The restarted relay takes again what
    came after its checkpoint; the script, which does not restart, has had some of
    it. So a subscription drops a message numbered at or below the last one it gave
    the script from the same source: the script takes every message once, in order.
    Its relay keeps what it handed until the next call acknowledges it, so a reply
    lost with the relay's worker is handed again by the successor (``actors/relay.py``).
    """

    def __init__(self, channel: str, relay: ActorRef, release: Callable[[ActorRef], None], timeout: float | None = None) -> None:
        super().__init__(channel, relay, release)
        self.timeout = timeout
        self._kept: collections.deque[Message] = collections.deque()  # taken for a caller that gave up
        self._last: dict[str, int] = {}  # source -> the highest number the script was given
        self._ack = -1  # the relay's number of the last hand-out this subscription got

    @property
    def consumer(self) -> str:
        """Its consumer name on the channel."""
        return f"{self.relay.name}/in"

    def _receive_call(self, timeout: float | None) -> _Call[Message]:
        def run() -> Message:
            # Run with the port's order lock held: a kept message is older than anything still to come.
            if self._kept:
                return self._kept.popleft()
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                handed = self.relay.call("receive", left, self._ack)
                self._ack, m = handed.number, handed.message
                if m.seq > self._last.get(m.source, -1):
                    self._last[m.source] = m.seq
                    return m
                # else: a restarted relay's second delivery of what the script has had (see the class)

        self._check_open()
        check_timeout(timeout)
        return _Call(run, self._order, self._kept.append, f"{self.relay.name}.receive")

    def receive(self, timeout: float | None = None, default: Any = NO_DEFAULT) -> Message:
        """Take the next message (``Queue``: oldest; ``Latest``: newest not yet taken).

        Args:
            timeout: seconds to wait (``None``: forever; ``0``: do not wait).
            default: returned instead of raising when nothing arrives in time.

        Returns:
            The message.

        Raises:
            ChannelTimeout: nothing arrived in time and no ``default`` was given.
            ChannelClosed: the channel is closed and drained (the subscription
                then closes), or the subscription was closed.
            WrongPolicy: the channel is a replay buffer (use :meth:`sample`).
        """
        return self._ended_or_default(lambda: self._receive_call(timeout).wait(), default)

    async def areceive(self, timeout: float | None = None, default: Any = NO_DEFAULT) -> Message:
        """:meth:`receive`, awaitable. A message that arrives after a cancelled await is kept for the next."""
        try:
            return await self._receive_call(timeout).await_()
        except Exception as e:
            return self._after_error(e, default)

    def sample(self, n: int, timeout: float | None = None) -> Any:
        """Draw a mini-batch of ``n`` payloads from a ``Reservoir`` or ``Window`` channel.

        Returns:
            The payloads stacked along a new first axis (like ``InPort.sample``).

        Raises:
            WrongPolicy: on ``Queue`` and ``Latest`` channels.
            ChannelTimeout: if the buffer stays empty for ``timeout`` seconds.
        """
        return self._call("sample", n, timeout).wait()

    async def asample(self, n: int, timeout: float | None = None) -> Any:
        """:meth:`sample`, awaitable."""
        return await self._call("sample", n, timeout).await_()

    def latest(self) -> Message | None:
        """The newest message of a ``Latest`` channel without waiting, taken before or not.

        Raises:
            WrongPolicy: on other policies.
        """
        return self._call("latest").wait()

    def close(self) -> None:
        """Detach from the channel and give the relay back; idempotent.

        A message taken for a caller that gave up waiting and not received since is dropped.
        """
        if not self._closed:
            self._release()

    async def aclose(self) -> None:
        """:meth:`close`, awaitable."""
        await asyncio.to_thread(self.close)

    # -- iteration -------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Message]:
        return self

    def __next__(self) -> Message:
        if self._closed:
            raise StopIteration
        m = self._next_or_end()
        if m is None:
            raise StopIteration
        return m

    def __aiter__(self) -> AsyncIterator[Message]:
        return self

    async def __anext__(self) -> Message:
        if self._closed:
            raise StopAsyncIteration
        try:
            return await self._receive_call(self.timeout).await_()
        except (ChannelClosed, Interrupted, ActorReleased):
            self._end()
            raise StopAsyncIteration from None

    def _next_or_end(self) -> Message | None:
        try:
            return self._receive_call(self.timeout).wait()
        except (ChannelClosed, Interrupted, ActorReleased):
            self._end()  # the channel ended, or the subscription was closed meanwhile
            return None

    # -- ends --------------------------------------------------------------------------------------
    def _ended_or_default(self, take: Callable[[], Message], default: Any) -> Message:
        try:
            return take()
        except Exception as e:
            return self._after_error(e, default)

    def _after_error(self, e: Exception, default: Any) -> Any:
        if isinstance(e, ChannelTimeout) and default is not NO_DEFAULT:
            return default
        if isinstance(e, ChannelClosed):
            self._end()  # drained and closed: detach, so the broker can forget the channel
        raise e

    def _end(self) -> None:
        try:
            self.close()
        except Exception as e:  # its worker may be gone with the channel: nothing is left to give back
            logger.info("subscription %r on %r: could not give its relay back: %r", self.relay.name, self.channel, e)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"Subscription({self.channel!r}, consumer={self.consumer!r}{', closed' if self._closed else ''})"


class DriverPorts:
    """The driver's publishers and subscriptions in one coupling: it makes them and ends them all.

    Args:
        spawn: spawns a relay actor from its spec and returns its handle (the coupling's supervisor).
        checkpoint: the last checkpoint the supervisor holds of a relay, by name (``None``: none yet).
    """

    def __init__(self, spawn: SpawnRelay, checkpoint: Callable[[str], dict[str, Any] | None] = lambda name: None) -> None:
        self._spawn = spawn
        self._checkpoint = checkpoint
        self._count = itertools.count()
        self._token = secrets.token_hex(4)
        # Re-entrant: a garbage collection in a thread that holds it may run a port's finalizer, which takes it.
        self._lock = threading.RLock()
        self._open: weakref.WeakSet[_Port] = weakref.WeakSet()
        self._publishers: dict[str, Publisher] = {}  # the one Coupling.send uses, per channel
        self._inboxes: dict[str, Subscription] = {}  # the one Coupling.receive uses, per channel
        self._releasing: set[threading.Thread] = set()

    def _name(self, kind: str, channel: str) -> str:
        # The token tells apart the ports of two scripts on one cluster: both count from 0, and
        # alike-named publishers would be one source (the consumer drops the second's messages
        # as duplicates), alike-named subscriptions one consumer.
        return check_name("actor", f"driver-{kind}{next(self._count)}-{self._token}:{channel}"[:200])

    def publisher(self, channel: str) -> Publisher:
        """A new producer on ``channel``, under a source name of its own.

        Raises:
            UnknownChannel: if ``channel`` was never declared.
        """
        relay = self._spawn(relay_spec(self._name("pub", channel), outputs={"out": channel}))

        def checkpointed() -> int | None:
            ck = self._checkpoint(relay.name)
            return None if ck is None else int(ck["outputs"]["out"]["next_seq"])

        delivery = delivery_config()
        keep = delivery.retain_bytes if delivery.retain else 0
        return self._track(Publisher(channel, relay, self._release_soon, checkpointed, keep))

    def subscribe(self, channel: str, timeout: float | None = None) -> Subscription:
        """A new consumer on ``channel``, attached from now on.

        Raises:
            UnknownChannel: if ``channel`` was never declared.
        """
        relay = self._spawn(relay_spec(self._name("sub", channel), inputs={"in": channel}))
        return self._track(Subscription(channel, relay, self._release_soon, timeout))

    def default_publisher(self, channel: str) -> Publisher:
        """The publisher ``Coupling.send`` uses on ``channel`` (made on first use, until closed)."""
        return self._kept(self._publishers, channel, self.publisher)

    def inbox(self, channel: str) -> Subscription:
        """The subscription ``Coupling.receive`` uses on ``channel`` (made on first use, until it ends)."""
        return self._kept(self._inboxes, channel, self.subscribe)

    def _kept(self, table: dict[str, T], channel: str, make: Callable[[str], T]) -> T:
        """``table``'s open port on ``channel``, or a new one from ``make`` (made outside the lock: it spawns)."""
        with self._lock:
            port = table.get(channel)
        if port is None or port.closed:  # type: ignore[attr-defined]
            port = make(channel)
            with self._lock:
                table[channel] = port
        return port

    def _track(self, port: T) -> T:
        with self._lock:
            self._open.add(port)  # type: ignore[arg-type]
        return port

    def _release_soon(self, relay: ActorRef) -> None:
        """Give back the relay of a port collected unclosed, in a thread (see ``_Port``)."""

        def run() -> None:
            try:
                relay.release(RELEASE_TIMEOUT)
            except Exception as e:  # the coupling may be closing: it releases what is left
                logger.info("could not give back driver relay %r: %r", relay.name, e)
            finally:
                with self._lock:
                    self._releasing.discard(threading.current_thread())

        t = threading.Thread(target=run, name=f"coupler-driver-release-{relay.name}", daemon=True)
        with self._lock:
            self._releasing.add(t)
        t.start()

    def close_channel(self, channel: str, flush_timeout: float = 5.0) -> tuple[Publisher | None, Subscription | None]:
        """Give back the ports ``Coupling.send`` and ``Coupling.receive`` made on ``channel``, which is closing.

        The publisher flushes first (what the script sent goes out before the end) and is
        closed now; the inbox is returned, to be closed once the channel is (it drains first).

        Returns:
            ``(publisher, inbox)`` taken off the channel, each ``None`` if there was none.
        """
        with self._lock:
            pub, inbox = self._publishers.pop(channel, None), self._inboxes.pop(channel, None)
        if pub is not None and not pub.closed:
            try:
                pub.close(flush_timeout)
            except Exception as e:  # the close goes on: the channel ends all the same
                logger.info("could not close %r: %r", pub, e)
        return pub, inbox

    def close(self, flush_timeout: float = 5.0) -> None:
        """Close every port still open (publishers flush first, for up to ``flush_timeout`` s each).

        Errors are logged, not raised: a lost worker must not stop the coupling's teardown.
        """
        with self._lock:
            ports, releasing = list(self._open), list(self._releasing)
            self._publishers.clear()
            self._inboxes.clear()
        for t in releasing:
            t.join(RELEASE_TIMEOUT)
        for port in ports:
            try:
                if isinstance(port, Publisher):
                    port.close(flush_timeout)
                elif isinstance(port, Subscription):
                    port.close()
            except Exception as e:
                logger.info("could not close %r: %r", port, e)

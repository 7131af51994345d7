"""An actor host's ports: inputs that give way to its control requests, outputs that carry its takes.

Both are the runtime's :class:`InPort` and :class:`OutPort` with the host's
concerns added, and behave exactly like them outside the host's run loop.
:func:`give_back` is what the ports hold on the worker, returned when the
host's loop has ended for good.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Mapping

from distributed.core import Status

from coupler.runtime import ChannelTimeout, InPort, Message, OutPort
from coupler.runtime.dataplane.endpoint import Endpoint
from coupler.runtime.errors import UnknownPort
from coupler.runtime.message import check_meta
from coupler.runtime.dataplane import waits
from coupler.runtime.dataplane.lineage import META_KEY
from coupler.runtime.dataplane.waits import WaitKind
from coupler.actors.run_loop import RunLoop, StepYielded
from coupler.actors.take_order import TakeOrder

logger = logging.getLogger(__name__)

# How long a step waits in receive()/sample() before it looks for pending requests.
YIELD_SLICE = 0.1
_MISSING: Any = object()


class Ports(dict):
    """An actor's input or output ports by name (a ``dict``).

    A name it does not have raises :class:`~coupler.runtime.errors.UnknownPort`,
    a ``KeyError`` that says which ports it has, instead of a bare ``KeyError: 'x'``
    from inside the step.

    Args:
        actor: the actor's name.
        kind: ``"input"`` or ``"output"``.
        ports: port name -> port.
    """

    def __init__(self, actor: str, kind: str, ports: Mapping[str, Any]) -> None:
        super().__init__(ports)
        self.actor, self.kind = actor, kind

    def __missing__(self, name: Any) -> Any:
        raise UnknownPort(
            f"actor {self.actor!r} has no {self.kind} port {name!r}; its {self.kind}s are {sorted(self)} "
            f"(the {self.kind}s={{port: channel}} of its spawn)"
        )


class HostInPort(InPort):
    """An :class:`InPort` whose waits give way to its host's control requests.

    In the host's run-loop thread, ``receive`` and ``sample`` wait in short
    slices; between slices a pending checkpoint, pause, stop or hand-over makes
    the step end early (nothing was taken), and the loop retries it afterwards.
    Elsewhere (a remote method) they behave exactly like :class:`InPort`.

    Args:
        endpoint: the worker's endpoint.
        channel: channel name.
        consumer: unique consumer name.
        loop: the host's run loop.
        takes: the host's take order (takes are recorded when ``logs_takes`` is set).
    """

    def __init__(self, endpoint: Endpoint, channel: str, consumer: str, loop: RunLoop, takes: TakeOrder) -> None:
        super().__init__(endpoint, channel, consumer)
        self._loop, self._takes = loop, takes
        self.logs_takes = False  # set by the host: a Queue input of an actor that sends (runtime/dataplane/lineage.py)

    def receive(self, timeout: float | None = None, default: Any = _MISSING) -> Message:
        m = self._receive(timeout, default)
        if self.logs_takes and isinstance(m, Message):
            self._takes.record(self.channel, m)
        return m

    def _receive(self, timeout: float | None, default: Any) -> Message:
        buf = self.buffer
        if buf.has_message():  # one is held: no wait, so nothing to give way to (and a stream's hot path)
            try:
                return buf.get(0)
            except ChannelTimeout:
                pass  # another thread of this actor took it meanwhile
        return self._yielding(lambda t: InPort.receive(self, t), timeout, default, "message")

    def sample(self, n: int, timeout: float | None = None) -> Any:
        return self._yielding(lambda t: InPort.sample(self, n, t), timeout, _MISSING, "message to sample")

    def _yielding(self, op: Callable[[float], Any], timeout: float | None, default: Any, what: str) -> Any:
        if not self._loop.in_loop_thread():
            return op(timeout) if default is _MISSING else InPort.receive(self, timeout, default)
        deadline = None if timeout is None else time.monotonic() + timeout
        started, noted, outer = time.time(), False, None
        try:
            while True:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                wait = YIELD_SLICE if remaining is None else min(YIELD_SLICE, remaining)
                try:
                    return op(wait)
                except ChannelTimeout:
                    if remaining is not None and remaining <= wait:
                        if default is not _MISSING:
                            return default
                        raise ChannelTimeout(f"channel {self.channel!r}: no {what} within {timeout} s") from None
                if not noted:
                    # One wait over the slices, from the receive's start: each slice's own note would
                    # start again, and the status would say "waits 0 s" however long it waited.
                    outer, noted = waits.begin(WaitKind.INPUT, self.channel, self.consumer, since=started), True
                if self._loop.boundary_wanted():
                    raise StepYielded()
        finally:
            if noted:
                waits.end(outer)


class HostOutPort(OutPort):
    """An :class:`OutPort` whose messages carry their actor's takes since the last one (runtime/dataplane/lineage.py).

    Args:
        endpoint: the worker's endpoint.
        channel: channel name.
        loop: the host's run loop (its name is the source; its cancel event wakes a blocked send).
        takes: the host's take order.
    """

    def __init__(self, endpoint: Endpoint, channel: str, loop: RunLoop, takes: TakeOrder) -> None:
        super().__init__(endpoint, channel, loop.name, loop.cancel)
        self._takes = takes

    def send(
        self,
        data: Any,
        *,
        timestamp: float = 0.0,
        step: int = 0,
        meta: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> int:
        check_meta(meta)  # the user's: the takes note below is the runtime's own key
        note = self._takes.note_for(self.channel)
        if note is not None:
            meta = {**(meta or {}), META_KEY: note.to_wire()}
        seq = self._send(data, timestamp, step, meta, timeout)
        if note is not None:
            self._takes.noted(self.channel, note)
        return seq

    send.__doc__ = OutPort.send.__doc__


_CLOSING = (Status.closing, Status.closing_gracefully, Status.closed, Status.failed)


def worker_closing(endpoint: Endpoint) -> bool:
    """Whether the endpoint's worker is shutting down (the cluster closes, Ctrl-C): a failed call to the
    broker then says nothing about the actor, and a warning per actor would bury why everything ends."""
    return getattr(getattr(endpoint, "worker", None), "status", None) in _CLOSING


def give_back(
    name: str, endpoint: Endpoint, inputs: Mapping[str, InPort], outputs: Mapping[str, OutPort], why: str = ""
) -> None:
    """Give back what actor ``name``'s ports hold on its worker; its loop has ended for good.

    Its inputs detach, so that producers no longer wait for room in its
    buffers (they get :class:`ConsumerGone`, saying ``why``, or wait for a successor
    after a hand-over). Once no producer of a channel is left on the worker, that
    channel's links (threads, sockets, shared-memory arenas) are given back
    (``Endpoint.release_producer``).
    """
    for port in inputs.values():
        try:
            port.close(detail=why)  # after a hand-over already closed (idempotent)
        except Exception as e:  # a worker closing, the scheduler gone: nothing left to tell
            log = logger.debug if worker_closing(endpoint) else logger.warning
            log("actor %r: could not detach input %r: %r", name, port.channel, e)
    for port in outputs.values():
        endpoint.release_producer(port.channel, port.source)

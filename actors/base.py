"""The actor host: a Dask actor that owns its run loop in its own thread.

Dask runs every synchronous method of every actor on one worker in ONE thread
(``worker.executors["actor"]``), so a run loop inside a method call would block
every other actor there. An :class:`ActorHost` therefore runs its loop in a
thread of its own; its remote methods (``start``, ``pause``, ``resume``,
``stop``, ``status``) only flip flags and return at once.

Subclasses implement ``step`` (one iteration; return ``False`` when done) and
optionally ``setup`` and ``teardown``, which all run in the loop's thread. Ports
are declared by name when the actor is built::

    class Doubler(ActorHost):
        def step(self):
            msg = self.inputs["x"].receive()
            self.outputs["y"].send({"v": 2 * msg.data["v"]})
            return True

    cp.spawn(Doubler, name="d", inputs={"x": "numbers"}, outputs={"y": "doubled"})

Checkpoints. ``checkpoint()`` returns the actor's state as plain data (numpy
arrays, numbers, strings, lists and dicts): its step counter and status, the
subclass's ``state_dict()``, the next sequence number of each output port
(taken after what the outputs sent was accepted), for each ``Queue`` input the
highest sequence number per source it took (``"delivered"``), and -- when the
actor hands over to a new instance (``retire``) -- the messages still waiting
in its ``Queue`` inputs. Once the supervisor holds a checkpoint it calls
``commit`` with its ``"delivered"`` marks: producers stop keeping those
messages for a replay (see docs/reliability.md). ``restore(checkpoint)`` on a fresh
instance (before ``start``) makes it continue exactly where the old one was.
The state is always taken at a step boundary, by the loop's own thread: the
remote call posts a request and waits for it. A step waiting in ``receive`` or
``sample`` is abandoned and retried after the request (it has taken nothing),
so steps must take their inputs before they change the actor's state.

Ends. When the loop ends for good (finished, stopped, failed, or handed over)
the actor gives back what it holds on its worker: its inputs detach, the links
of channels no other actor there produces on close, and the broker keeps its
final status (see ``_release`` and docs/reliability.md, "Lifecycle"). The
instance itself goes when the driver releases it (``ActorRef.release``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
import traceback
from typing import Any, Callable

from coupler.runtime import ChannelClosed, ChannelTimeout, InPort, Interrupted, Message, OutPort, local_endpoint
from coupler.runtime.dataplane import waits
from coupler.runtime.dataplane.buffers import QueueBuffer
from coupler.runtime.dataplane.cancel import Cancel
from coupler.runtime.dataplane.endpoint import Endpoint
from coupler.runtime.dataplane.settings import delivery_config
from coupler.runtime.dataplane.lineage import META_KEY, ReplayOrder, TakeLog, TakesNote, replay_order
from coupler.runtime.control.status import ActorStatus, MetricLog, describe_device

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
# How long a step waits in receive()/sample() before it looks for pending requests.
YIELD_SLICE = 0.1
# How long a hand-over waits for the actor's sent messages to be accepted.
HANDOVER_FLUSH_TIMEOUT = 30.0
# How long a periodic checkpoint waits for the actor's sent messages to be accepted.
CHECKPOINT_FLUSH_TIMEOUT = 5.0
_MISSING: Any = object()
_LIVE_STATES = ("running", "paused")


class _StepYielded(BaseException):
    """Raised in a step waiting for input when the host must reach a step boundary.

    A ``BaseException`` so that a step's own ``except Exception`` does not swallow it.
    """


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
        host: the actor host that owns the port.
    """

    def __init__(self, endpoint: Endpoint, channel: str, consumer: str, host: ActorHost) -> None:
        super().__init__(endpoint, channel, consumer)
        self._host = host
        self.logs_takes = False  # set by the host: a Queue input of an actor that sends (runtime/dataplane/lineage.py)

    def receive(self, timeout: float | None = None, default: Any = _MISSING) -> Message:
        m = self._receive(timeout, default)
        if self.logs_takes and isinstance(m, Message):
            self._host._record_take(self.channel, m)
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
        if threading.current_thread() is not self._host._thread:
            return op(timeout) if default is _MISSING else InPort.receive(self, timeout, default)
        deadline = None if timeout is None else time.monotonic() + timeout
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
            if self._host._boundary_wanted():
                raise _StepYielded()


class HostOutPort(OutPort):
    """An :class:`OutPort` whose messages carry their actor's takes since the last one (runtime/dataplane/lineage.py).

    Args:
        endpoint: the worker's endpoint.
        channel: channel name.
        host: the actor host that owns the port (its name is the source).
    """

    def __init__(self, endpoint: Endpoint, channel: str, host: ActorHost) -> None:
        super().__init__(endpoint, channel, host.name, host._stop)
        self._host = host

    def send(
        self,
        data: Any,
        *,
        timestamp: float = 0.0,
        step: int = 0,
        meta: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> int:
        note = self._host._note_for(self.channel)
        if note is not None:
            meta = {**(meta or {}), META_KEY: note.to_wire()}
        seq = super().send(data, timestamp=timestamp, step=step, meta=meta, timeout=timeout)
        if note is not None:
            self._host._noted(self.channel, note)
        return seq

    send.__doc__ = OutPort.send.__doc__


def encode_message(m: Message) -> dict[str, Any]:
    """A message as plain data for a checkpoint: ``{"header": {...}, "data": pytree}``."""
    return {"header": m.header(), "data": m.data}


def decode_message(d: dict[str, Any]) -> Message:
    """The inverse of :func:`encode_message`."""
    return Message.from_header(d["header"], d["data"])


class ActorHost:
    """Base class of every coupler actor.

    Args:
        name: the actor's name (unique in its coupling; sources and consumers are named after it).
        inputs: port name -> channel name, for channels this actor consumes.
        outputs: port name -> channel name, for channels this actor produces on.

    Raises:
        UnknownChannel: if a port names a channel that was not declared.
    """

    def __init__(self, *, name: str, inputs: dict[str, str] | None = None, outputs: dict[str, str] | None = None) -> None:
        self.name = name
        # Captured here, in a task context, because get_worker() from the
        # run-loop thread cannot be trusted to find this actor's worker.
        self.endpoint = local_endpoint()
        self._stop = Cancel()  # wakes a blocked send at once when raised
        self._thread: threading.Thread | None = None
        self.inputs: dict[str, InPort] = {
            p: HostInPort(self.endpoint, ch, f"{name}/{p}", self) for p, ch in (inputs or {}).items()
        }
        self.outputs: dict[str, OutPort] = {p: HostOutPort(self.endpoint, ch, self) for p, ch in (outputs or {}).items()}
        # Input-order logging: the Queue takes of an actor that sends, numbered, for its consumers to keep.
        self._takes = TakeLog()
        self._takes_lock = threading.Lock()  # the loop records and sends; commit() comes from Dask's actor thread
        for port in self.inputs.values():
            port.logs_takes = bool(self.outputs) and isinstance(port.buffer, QueueBuffer)
        self._state = "created"
        self._steps = 0
        self._error = ""
        self._started_at = 0.0
        self._stopped_at = 0.0
        # Guards the control flags and the request list; the loop parks on it while paused.
        self._cond = threading.Condition()
        self._pause_requested = False
        self._loop_live = False  # True while the loop thread can still serve requests
        self._requests: list[tuple[str, concurrent.futures.Future[Any], Any]] = []
        self._retired = False
        # Set once the actor has given back its ports (its loop ended for good, see _release);
        # the outputs' sequence numbers are kept here from then on, for a last checkpoint.
        self._released = False
        self._ended_seq: dict[tuple[str, str], int] = {}
        self._metric_log = MetricLog()  # what report_metric() keeps for the broker's dashboard and /metrics
        self.endpoint.register_actor(name, self)

    # -- hooks for subclasses (run in the loop's thread) ------------------------------------
    def setup(self) -> None:
        """Prepare before the first step (compile, allocate)."""

    def step(self) -> bool:
        """One iteration of the run loop; return ``False`` to end it."""
        raise NotImplementedError(f"{type(self).__name__} must implement step()")

    def teardown(self) -> None:
        """Clean up after the last step (also after a failure)."""

    def info(self) -> dict[str, Any]:
        """Actor-specific figures for ``status().info`` (keep it small and cheap)."""
        return {}

    def report_metric(self, metric: str, value: float, step: int | None = None) -> None:
        """Report a metric point (e.g. ``report_metric("loss", 0.01)``) to the dashboard and ``/metrics``.

        Args:
            metric: the series' name.
            value: a real number.
            step: its x coordinate (default: the steps completed so far).

        Raises:
            TypeError: if ``value`` is not a real number.
        """
        self._metric_log.record(metric, self._steps if step is None else step, value)

    def state_dict(self) -> dict[str, Any]:
        """The subclass's state as plain data (numpy arrays, numbers, strings, lists, dicts).

        Called at a step boundary (or with the loop not running); must return
        copies or values the loop will not mutate later. The default: no state.
        """
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take over ``state`` from :meth:`state_dict` of another instance (before ``start``).

        Raises:
            ValueError: if ``state`` does not fit this actor.
        """
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, got a state with keys {sorted(state)}")

    @property
    def stopping(self) -> bool:
        """Whether ``stop`` was asked; long steps should check it."""
        return self._stop.is_set()

    # -- remote control (short; run in Dask's actor thread) ------------------------------------
    def start(self) -> dict[str, Any]:
        """Start the run loop in its own thread; idempotent.

        After ``pause()`` on a created actor, the loop starts parked (paused).
        """
        with self._cond:
            if self._thread is None and self._state == "created":
                self._state = "paused" if self._pause_requested else "running"
                self._started_at = time.time()
                self._loop_live = True
                self._thread = threading.Thread(target=self._run, name=f"coupler-actor-{self.name}", daemon=True)
                self._thread.start()
        return self.status()

    def pause(self) -> dict[str, Any]:
        """Pause between two steps (a step waiting for input gives way at once)."""
        with self._cond:
            if self._state in ("running", "created"):
                self._pause_requested = True
                if self._state == "running":
                    self._state = "paused"
                self._cond.notify_all()
        return self.status()

    def resume(self) -> dict[str, Any]:
        """Resume a paused loop."""
        with self._cond:
            self._pause_requested = False
            if self._state == "paused":
                self._state = "running"
            self._cond.notify_all()
        return self.status()

    def stop(self, timeout: float = 30.0) -> dict[str, Any]:
        """Ask the loop to end after the current step; wait up to ``timeout`` seconds."""
        with self._cond:
            self._stop.set()
            self._cond.notify_all()
            never_started = self._thread is None and self._state == "created"
            if never_started:
                self._state = "stopped"
        if never_started:
            self._release()
        for port in self.inputs.values():
            port.buffer.interrupt()  # wake a run loop blocked in receive()/sample()
        if self._thread is not None:
            self._thread.join(timeout)
        return self.status()

    def status(self) -> dict[str, Any]:
        """The current :class:`ActorStatus`, as a dict (it travels over the network)."""
        return self.status_dict()

    def status_dict(self) -> dict[str, Any]:
        st = ActorStatus(
            name=self.name,
            cls=type(self).__name__,
            state=self._state,
            steps=self._steps,
            worker=self.endpoint.address,
            error=self._error,
            started_at=self._started_at,
            stopped_at=self._stopped_at,
            info=self.info(),
            device=describe_device(),
            waiting=waits.current(self._thread),
        )
        # The broker keeps the metric points (reports carry the recent ones) and drops them from the status.
        return {**st.to_dict(), "metrics": self._metric_log.recent()}

    async def checkpoint(self, timeout: float | None = 30.0) -> dict[str, Any]:
        """The actor's state at a step boundary, as plain data (see the module docstring).

        Runs on the worker's event loop and waits for the run-loop thread to
        take the state at its next step boundary (at once when it is paused or
        waiting for input); with no loop running it is taken directly. Messages
        waiting in input buffers stay there and are not part of it.

        Args:
            timeout: seconds to wait for a step boundary (``None``: forever).

        Returns:
            ``{"format", "name", "cls", "time", "status", "state", "outputs", "inputs"}``.

        Raises:
            TimeoutError: if the current step did not end within ``timeout``
                (e.g. a send held up by back-pressure).
        """
        return await self._ask("checkpoint", None, timeout)

    async def retire(self, timeout: float | None = 30.0, force: bool = False) -> dict[str, Any]:
        """Hand over to a successor: end the loop at a step boundary, detach, return the final checkpoint.

        At the next step boundary the run loop detaches the input ports (so
        producers stop sending here), removes the messages still held in
        ``Queue`` input buffers into the checkpoint's ``"inputs"``, takes the
        state and ends. The actor's state then reads ``migrated``; the
        checkpoint's status keeps the state it had before (``running``,
        ``paused``, ``finished``...), for the successor to resume in.

        Args:
            timeout: seconds to wait for a step boundary (``None``: forever).
            force: also stop the loop at once, interrupting a step blocked in a
                send; that step is abandoned (its message may or may not have
                been delivered).

        Returns:
            The final checkpoint (see :meth:`checkpoint`), with ``"inputs"``.

        Raises:
            TimeoutError: if no step boundary was reached within ``timeout``.
        """
        before = self._state
        if force:
            with self._cond:
                self._stop.set()  # interrupts a blocked send through the ports' cancel event
                self._cond.notify_all()
        return await self._ask("retire", before, timeout)

    def commit(self, delivered: dict[str, dict[str, int]], takes: int | None = None) -> None:
        """A checkpoint with these ``"delivered"`` marks (port -> source -> seq) is stored safely.

        The producers of this actor's ``Queue`` inputs stop keeping the messages
        the marks cover (they would otherwise send them again to a successor),
        and this actor's consumers may forget its takes before the checkpoint's.

        Args:
            delivered: the checkpoint's ``"delivered"`` marks.
            takes: the checkpoint's ``"takes"`` (the number of its next take), if it has one.

        Raises:
            ValueError: for a port this actor does not have, or a take count beyond its takes.
        """
        unknown = sorted(set(delivered) - set(self.inputs))
        if unknown:
            raise ValueError(f"actor {self.name!r} has inputs {sorted(self.inputs)}, got marks for {unknown}")
        if takes is not None:
            with self._takes_lock:
                self._takes.commit(int(takes))
        for port, marks in delivered.items():
            inp = self.inputs[port]
            self.endpoint.commit_consumer(inp.channel, inp.consumer, marks)

    def restore(self, checkpoint: dict[str, Any]) -> dict[str, Any]:
        """Continue from ``checkpoint`` (from :meth:`checkpoint` or :meth:`retire` of an instance of this class).

        Sets the step counter and the subclass state, resumes each output's
        sequence numbers, and puts the checkpoint's pending input messages in
        front of the input buffers. A checkpoint of an ended actor (finished,
        stopped, failed) leaves this one ended in the same state.

        Args:
            checkpoint: the checkpoint dict.

        Returns:
            The status after restoring.

        Raises:
            RuntimeError: if this instance has already started.
            ValueError: if the checkpoint is of another format, class or set of ports.
        """
        fmt, cls = checkpoint.get("format"), checkpoint.get("cls")
        if fmt != CHECKPOINT_FORMAT or cls != type(self).__qualname__:
            raise ValueError(
                f"actor {self.name!r} expects a checkpoint of format {CHECKPOINT_FORMAT} for class "
                f"{type(self).__qualname__}, got format {fmt!r} for class {cls!r}"
            )
        with self._cond:
            if self._state != "created" or self._thread is not None:
                raise RuntimeError(f"actor {self.name!r} can only be restored before it starts; it is {self._state}")
        outputs, inputs = checkpoint.get("outputs", {}), checkpoint.get("inputs", {})
        unknown = sorted(set(outputs) - set(self.outputs)) + sorted(set(inputs) - set(self.inputs))
        if unknown:
            raise ValueError(
                f"actor {self.name!r} has inputs {sorted(self.inputs)} and outputs {sorted(self.outputs)}; "
                f"the checkpoint names ports {unknown} it does not have"
            )
        self.load_state_dict(checkpoint["state"])
        st = checkpoint["status"]
        self._steps = int(st["steps"])
        for port, seq in outputs.items():
            self._resume_seq(self.outputs[port], int(seq["next_seq"]))
        delivered = checkpoint.get("delivered", {})
        for port, inp in self.inputs.items():
            messages = [decode_message(m) for m in inputs.get(port, [])]
            if isinstance(inp.buffer, QueueBuffer):
                # Keeps the carried messages first; drops what producers replayed and the checkpoint covers.
                inp.buffer.resume(delivered.get(port, {}), messages)
            elif messages:
                inp.buffer.preload(messages)
        self._follow_predecessor(int(checkpoint.get("takes", 0)))
        if st["state"] in ("finished", "stopped", "failed"):
            self._state, self._error = st["state"], st["error"]
            self._started_at, self._stopped_at = st["started_at"], st["stopped_at"]
            self._release()  # it will never run: its ports must not hold up its producers
        return self.status()

    # -- input-order logging (runtime/dataplane/lineage.py) ---------------------------------------------
    def _record_take(self, channel: str, m: Message) -> None:
        with self._takes_lock:
            self._takes.record(channel, m.source, m.seq)

    def _take_count(self) -> int:
        with self._takes_lock:  # a commit moves the base and the list together
            return self._takes.count

    def _note_for(self, channel: str) -> TakesNote | None:
        with self._takes_lock:
            return self._takes.note_for(channel)

    def _noted(self, channel: str, note: TakesNote) -> None:
        with self._takes_lock:
            self._takes.sent(channel, note)

    def _follow_predecessor(self, since: int) -> None:
        """Take the replayed inputs in the order the predecessor took them, as its consumers recorded it.

        Only an actor that sends and takes from ``Queue`` inputs needs it: what it
        sends may depend on the order of its takes. Its consumers hold the takes
        that its messages carried; joined, from the checkpoint's first take on,
        they are the order to repeat (see runtime/dataplane/lineage.py).

        Args:
            since: the checkpoint's ``"takes"``: the number of its next take.
        """
        self._takes = TakeLog(since)
        logging_inputs = [p for p in self.inputs.values() if getattr(p, "logs_takes", False)]
        delivery = delivery_config()
        if not logging_inputs or not delivery.retain:
            return  # without retention the replayed inputs may not come again: nothing to wait for
        channels = sorted({p.channel for p in self.outputs.values()})
        order = replay_order(self.endpoint.gather_takes(channels, self.name, since), since)
        shared = ReplayOrder(order)  # one order across inputs: their interleaving is repeated too
        for port in logging_inputs:
            port.buffer.follow(shared, delivery.replay_order_wait)
        if order:
            logger.info("actor %r repeats %d takes in its predecessor's order", self.name, len(order))

    # -- requests served by the loop thread ------------------------------------------------------
    async def _ask(self, kind: str, arg: Any, timeout: float | None) -> dict[str, Any]:
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._cond:
            served_by_loop = self._loop_live
            if served_by_loop:
                self._requests.append((kind, fut, arg))
                self._cond.notify_all()
        if not served_by_loop:
            # No loop to wait for; detaching ports blocks, so not on the event loop.
            await asyncio.to_thread(self._serve, kind, fut, arg)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(fut), timeout)
        except (asyncio.TimeoutError, TimeoutError):
            raise TimeoutError(
                f"actor {self.name!r} did not reach a step boundary within {timeout} s for {kind} "
                f"(state {self._state}; a send may be held up by back-pressure)"
            ) from None

    def _boundary_wanted(self) -> bool:
        return bool(self._requests) or self._pause_requested or self._stop.is_set()

    def _serve(self, kind: str, fut: concurrent.futures.Future[Any], arg: Any) -> None:
        if not fut.set_running_or_notify_cancel():
            return  # the caller gave up waiting
        try:
            if kind == "checkpoint":
                # What the outputs sent must be accepted before next_seq is recorded: a
                # successor resumes there and would not send the unaccepted ones again.
                for port in self.outputs.values():
                    port.flush(timeout=CHECKPOINT_FLUSH_TIMEOUT)
                result = self._snapshot(None)
            elif kind == "retire":
                result = self._hand_over(arg)
            else:
                raise ValueError(f"unknown request {kind!r}")
        except BaseException as e:
            fut.set_exception(e)
        else:
            fut.set_result(result)

    def _snapshot(self, state: str | None) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "name": self.name,
            "cls": type(self).__qualname__,
            "time": time.time(),
            "status": {
                "state": state or self._state,
                "steps": self._steps,
                "error": self._error,
                "started_at": self._started_at,
                "stopped_at": self._stopped_at,
            },
            "state": self.state_dict(),
            "outputs": {p: {"next_seq": self._next_seq(port)} for p, port in self.outputs.items()},
            "inputs": {},
            "delivered": {p: port.buffer.taken_marks() for p, port in self.inputs.items() if isinstance(port.buffer, QueueBuffer)},
            "takes": self._take_count(),
        }

    def _hand_over(self, before: str) -> dict[str, Any]:
        if self._retired:
            raise RuntimeError(f"actor {self.name!r} has already handed over to a successor")
        for port in self.outputs.values():
            self._flush(port)
        pending = {p: [encode_message(m) for m in self._detach_for_handover(port)] for p, port in self.inputs.items()}
        # Resume as the actor was when asked, unless its loop has ended by itself since.
        ended_by_itself = self._state in ("finished", "failed")
        ck = self._snapshot(None if ended_by_itself or before not in ("running", "paused", "created") else before)
        # "delivered" stays what was taken: producers keep the carried messages for a replay
        # until the successor commits past them, so a crash of the successor before it takes
        # them loses nothing (and covered by the marks, the successor would drop them).
        ck["inputs"] = {p: ms for p, ms in pending.items() if ms}
        self._retired = True
        self._stop.set()
        self._state = "migrated"
        # Before the successor exists: it may land on this worker and continue these sequences.
        self._release()
        return ck

    def _flush(self, port: OutPort) -> None:
        """Wait until what this port sent was accepted (sends are pipelined), before the worker goes."""
        try:
            port.flush(timeout=HANDOVER_FLUSH_TIMEOUT)
        except Exception as e:  # a forced hand-over interrupts it; say so, and go on
            logger.warning("actor %r: messages sent on %r may be lost in the hand-over: %s", self.name, port.channel, e)

    @staticmethod
    def _detach_for_handover(port: InPort) -> list[Message]:
        """Detach ``port`` so that producers wait for the successor; return what it held and had not taken."""
        return port.close(handover=True)

    # -- output sequence numbers -------------------------------------------------------------
    # Sequence numbers live in the endpoint, per (channel, source). A successor on
    # another worker must continue them, or its consumers would see the sequence restart.
    def _next_seq(self, port: OutPort) -> int:
        if self._released:  # the endpoint has forgotten this producer
            return self._ended_seq[(port.channel, port.source)]
        return self.endpoint.sender.next_seq(port.channel, port.source)

    def _resume_seq(self, port: OutPort, next_seq: int) -> None:
        self.endpoint.sender.resume_seq(port.channel, port.source, next_seq)

    # -- the loop --------------------------------------------------------------------------------
    def _at_boundary(self) -> bool:
        """Serve pending requests; park while paused. Returns whether the loop must end."""
        # Nothing asked, the common case, without the lock: this runs before every step. A request
        # queued a moment later is served at the next boundary (or while a receive waits).
        if not (self._requests or self._pause_requested or self._retired or self._stop.is_set()):
            return False
        while True:
            with self._cond:
                requests, self._requests = self._requests, []
                if not requests:
                    if self._retired or self._stop.is_set():
                        return True
                    if not self._pause_requested:
                        return False
                    self._cond.wait(0.5)
                    continue
            for kind, fut, arg in requests:
                self._serve(kind, fut, arg)

    def _run(self) -> None:
        try:
            self.setup()
            while True:
                if self._at_boundary():
                    break
                try:
                    more = self.step()
                except _StepYielded:
                    continue
                if not more:
                    # Sends are pipelined: "finished" means what was sent was accepted.
                    for port in self.outputs.values():
                        port.flush()
                    self._state = "finished"
                    break
                self._steps += 1
        except ChannelClosed:
            self._state = "finished"  # an input ended: a normal end of stream
        except Interrupted:
            self._state = "stopped"
        except BaseException:
            self._error = traceback.format_exc()
            self._state = "failed"
        finally:
            try:
                self.teardown()
            except BaseException:
                self._error += traceback.format_exc()
                self._state = "failed"
            self._stopped_at = time.time()
            if self._state in _LIVE_STATES:
                self._state = "stopped"
            with self._cond:
                self._loop_live = False
                leftovers, self._requests = self._requests, []
            for kind, fut, arg in leftovers:  # e.g. a forced hand-over: the loop has ended now
                self._serve(kind, fut, arg)
            self._release()

    # -- the end ---------------------------------------------------------------------------------
    def _release(self) -> None:
        """Give back what the actor holds on its worker; its loop has ended for good. Idempotent.

        Its inputs detach, so that producers no longer wait for room in its
        buffers (they get :class:`ConsumerGone`, or wait for a successor after a
        hand-over). Once no producer of a channel is left on the worker, that
        channel's links (threads, sockets, shared-memory arenas) are given back
        (``Endpoint.release_producer``). The final status goes to the broker,
        which keeps it, and the endpoint stops reporting the actor. The object
        itself stays until Dask releases it (the driver's ``ActorRef.release``),
        so its results remain readable.
        """
        with self._cond:
            if self._released:
                return
            # Before the flag: from then on a checkpoint reads the sequence numbers here.
            self._ended_seq = {(p.channel, p.source): self.endpoint.sender.next_seq(p.channel, p.source) for p in self.outputs.values()}
            self._released = True
        for port in self.inputs.values():
            try:
                port.close()  # after a hand-over already closed (idempotent)
            except Exception as e:  # a worker closing, the scheduler gone: nothing left to tell
                logger.warning("actor %r: could not detach input %r: %r", self.name, port.channel, e)
        for port in self.outputs.values():
            self.endpoint.release_producer(port.channel, port.source)
        try:
            self.endpoint.actor_ended(self.name, self.status_dict())
        except Exception as e:
            logger.warning("actor %r: could not report its end to the broker: %r", self.name, e)

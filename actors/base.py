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

The host is composed of parts with one job each:

- :mod:`coupler.actors.run_loop`: the loop's thread, its control flags, and the
  requests it serves at step boundaries (:class:`~coupler.actors.run_loop.RunLoop`);
- :mod:`coupler.actors.ports`: inputs that give way to those requests, outputs
  that carry the actor's takes, and what the ports give back at the end;
- :mod:`coupler.actors.take_order`: the ``Queue`` takes an actor that sends logs
  for its consumers, and repeats in order after a restart;
- :mod:`coupler.actors.checkpointing`: the checkpoint's content, and a fresh
  instance restored from one.

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

import functools
import logging
import threading
import traceback
from typing import Any

from coupler.runtime import InPort, OutPort, local_endpoint
from coupler.runtime.dataplane import waits
from coupler.runtime.dataplane.buffers import QueueBuffer
from coupler.runtime.control.status import ActorStatus, MetricLog, WeightsInUse, describe_device
from coupler.actors.checkpointing import Checkpointer
from coupler.actors.ports import HostInPort, HostOutPort, Ports, give_back, worker_closing
from coupler.actors.run_loop import ENDED_STATES, RunLoop
from coupler.actors.take_order import TakeOrder

logger = logging.getLogger(__name__)


class ActorHost:
    """Base class of every coupler actor.

    Args:
        name: the actor's name (unique in its coupling; sources and consumers are named after it).
        inputs: port name -> channel name, for channels this actor consumes.
        outputs: port name -> channel name, for channels this actor produces on.

    Raises:
        UnknownChannel: if an input names a channel that was not declared (an output's
            channel may be declared later: its sends raise until it is).
        ChannelClosed: if an input names a channel that was closed and forgotten.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Guard each subclass's constructor: one that raises after the base made the ports gives them back."""
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None or getattr(init, "_coupler_guarded", False):  # (a class rebuilt by cloudpickle has it)
            return

        @functools.wraps(init)
        def guarded(self: ActorHost, *args: Any, **kw: Any) -> None:
            try:
                init(self, *args, **kw)
            except BaseException as e:
                # The spawn fails and Dask keeps no instance: what the ports attached (a consumer buffer,
                # the broker's record of it, which keeps a closed channel from being forgotten) and
                # the endpoint's report of the actor would otherwise stay for the worker's life.
                self._abandon(e)
                raise

        guarded._coupler_guarded = True  # type: ignore[attr-defined]
        cls.__init__ = guarded  # type: ignore[method-assign]

    def __init__(self, *, name: str, inputs: dict[str, str] | None = None, outputs: dict[str, str] | None = None) -> None:
        self.name = name
        # Captured here, in a task context, because get_worker() from the
        # run-loop thread cannot be trusted to find this actor's worker.
        self.endpoint = local_endpoint()
        self._loop = RunLoop(name, self, self._serve, self._flush_outputs, self._release)
        self._life = self._loop.record
        # Input-order logging: the Queue takes of an actor that sends, numbered, for its consumers to keep.
        self._takes = TakeOrder()
        made: dict[str, InPort] = {}
        try:  # a later input's channel may be unknown: the ones attached before it are given back
            for p, ch in (inputs or {}).items():
                made[p] = HostInPort(self.endpoint, ch, f"{name}/{p}", self._loop, self._takes)
            self.inputs: dict[str, InPort] = Ports(name, "input", made)
        except BaseException:
            give_back(name, self.endpoint, made, {})
            raise
        self.outputs: dict[str, OutPort] = Ports(name, "output", {
            p: HostOutPort(self.endpoint, ch, self._loop, self._takes) for p, ch in (outputs or {}).items()
        })
        # Without retention nothing is replayed after a restart, so there is no order to repeat.
        logs_takes = bool(self.outputs) and self.endpoint.delivery.retain
        for port in self.inputs.values():
            port.logs_takes = logs_takes and isinstance(port.buffer, QueueBuffer)
        self._checkpoints = Checkpointer(
            name, type(self).__qualname__, self.endpoint, self.inputs, self.outputs, self._life, self._takes,
            self.state_dict, self.load_state_dict,
        )
        # Set once the actor has given back its ports (its loop ended for good, see _release).
        self._released = False
        self._release_lock = threading.Lock()
        self._metric_log = MetricLog()  # what report_metric() keeps for the broker's dashboard and /metrics
        self.endpoint.register_actor(name, self)

    @property
    def _steps(self) -> int:
        """Steps completed (subclasses read it, e.g. to label what they send)."""
        return self._life.steps

    # -- hooks for subclasses (run in the loop's thread) ------------------------------------
    def setup(self) -> None:
        """Prepare before the first step (compile, allocate)."""

    def step(self) -> bool:
        """One iteration of the run loop; return ``False`` to end it.

        Raises:
            NotImplementedError: a host that does not override it.
        """
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
        self._metric_log.record(metric, self._life.steps if step is None else step, value)

    def weights_in_use(self) -> WeightsInUse | None:
        """The learned weights this actor computes with, for its status and the dashboard.

        Actors that install a learner's weights (``actors/hybrid.py``) say which and
        how old; the default: none.
        """
        return None

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
        return self._loop.cancel.is_set()

    # -- remote control (short; run in Dask's actor thread) ------------------------------------
    def start(self) -> dict[str, Any]:
        """Start the run loop in its own thread; idempotent.

        After ``pause()`` on a created actor, the loop starts parked (paused).
        """
        self._loop.start()
        return self.status()

    def pause(self) -> dict[str, Any]:
        """Pause between two steps (a step waiting for input gives way at once)."""
        self._loop.pause()
        return self.status()

    def resume(self) -> dict[str, Any]:
        """Resume a paused loop."""
        self._loop.resume()
        return self.status()

    def stop(self, timeout: float = 30.0) -> dict[str, Any]:
        """Ask the loop to end; wait up to ``timeout`` seconds.

        A step that is computing ends first; one blocked in a send or a receive is
        woken at once (``Interrupted``) and abandoned part-way, so a step should take
        its inputs before it changes its state (see the module's docstring).
        """
        if self._loop.request_stop():  # it never started: nothing else will give back its ports
            self._release()
        for port in self.inputs.values():
            port.buffer.interrupt()  # wake a run loop blocked in receive()/sample()
        self._loop.join(timeout)
        return self.status()

    def status(self) -> dict[str, Any]:
        """The current :class:`ActorStatus`, as a dict (it travels over the network)."""
        return self.status_dict()

    def status_dict(self) -> dict[str, Any]:
        """:meth:`status`, called locally (the endpoint's reports, the final one at the end)."""
        life = self._life
        st = ActorStatus(
            name=self.name,
            cls=type(self).__name__,
            state=life.state,
            steps=life.steps,
            worker=self.endpoint.address,
            error=life.error,
            started_at=life.started_at,
            stopped_at=life.stopped_at,
            info=self.info(),
            device=describe_device(),
            waiting=waits.current(self._loop.thread),
            weights=self.weights_in_use(),
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
            ``{"format", "name", "cls", "time", "status", "state", "outputs", "inputs",
            "delivered", "takes"}``: ``"delivered"`` the highest sequence number taken
            per ``Queue`` input and source, ``"takes"`` the number of the next take
            (see :mod:`coupler.actors.checkpointing`).

        Raises:
            TimeoutError: if the current step did not end within ``timeout``.
            ChannelTimeout: if the outputs sent so far were not accepted within
                ``checkpointing.CHECKPOINT_FLUSH_TIMEOUT`` (5 s, e.g. back-pressure),
                whatever ``timeout`` is.
            ConsumerGone, ChannelClosed: from that flush.
        """
        return await self._loop.ask("checkpoint", None, timeout)

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
            The final checkpoint (see :meth:`checkpoint`), with ``"inputs"``, and
            ``"incomplete"``: why a successor must not resume from it (a step was
            abandoned, or what an output sent was not accepted), ``""`` if it may.

        Raises:
            TimeoutError: if no step boundary was reached within ``timeout``.
        """
        before = self._life.state
        if force:
            self._loop.abort()  # interrupts a blocked send through the ports' cancel event
        return await self._loop.ask("retire", before, timeout)

    def commit(
        self, delivered: dict[str, dict[str, int]], takes: int | None = None, outputs: dict[str, dict[str, int]] | None = None,
    ) -> None:
        """A checkpoint with these ``"delivered"`` marks (port -> source -> seq) is stored safely.

        The producers of this actor's ``Queue`` inputs stop keeping the messages
        the marks cover (they would otherwise send them again to a successor),
        this actor's consumers may forget its takes before the checkpoint's, and
        the members of its work-sharing outputs their receipts before the
        checkpoint's next numbers (a restart never sends those again).

        Args:
            delivered: the checkpoint's ``"delivered"`` marks.
            takes: the checkpoint's ``"takes"`` (the number of its next take), if it has one.
            outputs: the checkpoint's ``"outputs"`` (port -> ``{"next_seq": n}``), if it has them.

        Raises:
            ValueError: for a port this actor does not have, or a take count beyond its takes.
        """
        unknown = sorted(set(delivered) - set(self.inputs)) + sorted(set(outputs or {}) - set(self.outputs))
        if unknown:
            raise ValueError(
                f"actor {self.name!r} has inputs {sorted(self.inputs)} and outputs {sorted(self.outputs)}, "
                f"got marks for {unknown}"
            )
        for port, rec in (outputs or {}).items():
            out = self.outputs[port]
            self.endpoint.sender.committed(out.channel, out.source, int(rec["next_seq"]))
        if takes is not None:
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
        self._checkpoints.check(checkpoint)
        if self._life.state != "created" or self._loop.thread is not None:
            raise RuntimeError(f"actor {self.name!r} can only be restored before it starts; it is {self._life.state}")
        self._checkpoints.restore(checkpoint)
        if self._life.state in ENDED_STATES:
            self._release()  # it will never run: its ports must not hold up its producers
        return self.status()

    # -- requests served by the loop thread, at a step boundary ------------------------------------
    def _serve(self, kind: str, arg: Any) -> dict[str, Any]:
        if kind == "checkpoint":
            return self._checkpoints.take_after_flush()
        if kind == "retire":
            if self._loop.retired:
                raise RuntimeError(f"actor {self.name!r} has already handed over to a successor")
            ck = self._checkpoints.hand_over(arg, abandoned=self._loop.aborted)
            self._loop.retire()
            # Before the successor exists: it may land on this worker and continue these sequences.
            self._release()
            return ck
        raise ValueError(f"unknown request {kind!r}")

    def _flush_outputs(self) -> None:
        """Wait until what the outputs sent was accepted: "finished" means it was (sends are pipelined)."""
        for port in self.outputs.values():
            port.flush()

    # -- the end ---------------------------------------------------------------------------------
    def _abandon(self, error: BaseException) -> None:
        """A subclass's constructor raised: give back what the base made, and let the broker keep a failure.

        Args:
            error: what the constructor raised (the final status's error).
        """
        if getattr(self, "_release_lock", None) is None:
            return  # the base constructor itself raised: it gave back what it had made
        self._life.state = "failed"
        self._life.error = "".join(traceback.format_exception(error))
        try:
            self._release()
        except Exception as e:  # the constructor's error is the one to see
            logger.warning("actor %r: could not give back what its failed constructor made: %r", self.name, e)

    def _release(self) -> None:
        """Give back what the actor holds on its worker; its loop has ended for good. Idempotent.

        Its ports give back what they hold (:func:`~coupler.actors.ports.give_back`),
        the final status goes to the broker, which keeps it, and the endpoint stops
        reporting the actor. The object itself stays until Dask releases it (the
        driver's ``ActorRef.release``), so its results remain readable.
        """
        with self._release_lock:
            if self._released:
                return
            # Before the flag: from then on a checkpoint reads the sequence numbers kept here.
            self._checkpoints.keep_sequences()
            self._released = True
        life = self._life  # a failed consumer's producers hear that it failed, not only that it detached
        why = f"its actor {life.state}" + (f": {ActorStatus(name=self.name, error=life.error).last_error}" if life.error else "")
        give_back(self.name, self.endpoint, self.inputs, self.outputs, why)
        try:
            self.endpoint.actor_ended(self.name, self.status_dict())
        except Exception as e:
            # A worker that is closing (the cluster shuts down, Ctrl-C) has closed its connections:
            # the broker is going too, and a warning per actor would bury the reason for the end.
            log = logger.debug if worker_closing(self.endpoint) else logger.warning
            log("actor %r: could not report its end to the broker: %r", self.name, e)

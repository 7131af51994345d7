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
"""

from __future__ import annotations

import threading
import time
import traceback
from typing import Any

from coupler.runtime import ChannelClosed, InPort, Interrupted, OutPort, local_endpoint
from coupler.runtime.status import ActorStatus


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
        self._stop = threading.Event()
        self.inputs: dict[str, InPort] = {p: InPort(self.endpoint, ch, f"{name}/{p}") for p, ch in (inputs or {}).items()}
        self.outputs: dict[str, OutPort] = {p: OutPort(self.endpoint, ch, name, self._stop) for p, ch in (outputs or {}).items()}
        self._state = "created"
        self._steps = 0
        self._error = ""
        self._started_at = 0.0
        self._stopped_at = 0.0
        self._running = threading.Event()  # cleared while paused
        self._running.set()
        self._thread: threading.Thread | None = None
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

    @property
    def stopping(self) -> bool:
        """Whether ``stop`` was asked; long steps should check it."""
        return self._stop.is_set()

    # -- remote control (short; run in Dask's actor thread) ------------------------------------
    def start(self) -> dict[str, Any]:
        """Start the run loop in its own thread; idempotent."""
        if self._thread is None:
            self._state = "running"
            self._started_at = time.time()
            self._thread = threading.Thread(target=self._run, name=f"coupler-actor-{self.name}", daemon=True)
            self._thread.start()
        return self.status()

    def pause(self) -> dict[str, Any]:
        """Pause between two steps."""
        if self._state == "running":
            self._running.clear()
            self._state = "paused"
        return self.status()

    def resume(self) -> dict[str, Any]:
        """Resume a paused loop."""
        if self._state == "paused":
            self._state = "running"
            self._running.set()
        return self.status()

    def stop(self, timeout: float = 30.0) -> dict[str, Any]:
        """Ask the loop to end after the current step; wait up to ``timeout`` seconds."""
        self._stop.set()
        self._running.set()
        for port in self.inputs.values():
            port.buffer.interrupt()  # wake a run loop blocked in receive()/sample()
        if self._thread is not None:
            self._thread.join(timeout)
        elif self._state == "created":
            self._state = "stopped"
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
        )
        return st.__dict__.copy()

    # -- the loop --------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self.setup()
            while not self._stop.is_set():
                self._running.wait()
                if self._stop.is_set():
                    break
                if not self.step():
                    self._state = "finished"
                    break
                self._steps += 1
            else:
                self._state = "stopped"
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
            if self._state == "running":
                self._state = "stopped"

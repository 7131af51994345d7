"""A typed handle on a spawned actor (instead of Dask's dynamic ``Actor`` proxy).

The handle outlives the actor instance behind it: when the coupling's
supervisor moves an actor to another worker (its worker retires) or restarts it
(its worker was lost), the handle follows the new instance. Calls made while a
move is under way wait for it to finish.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Protocol

from distributed.actor import Actor

from coupler.runtime.errors import ActorFailed
from coupler.runtime.control.status import ActorStatus


class Follower(Protocol):
    """What an :class:`ActorRef` asks its supervisor when a call fails."""

    def should_retry(self, ref: ActorRef, generation: int, error: BaseException) -> bool:
        """Whether ``error`` came from a lost or moving instance that a successor replaces."""
        ...


class ActorRef:
    """Control an actor host from the coupling script.

    Every call goes straight to the actor's worker (the coupling's client uses
    ``direct_to_workers=True``) and returns quickly: the actor's run loop lives
    in its own thread.

    Args:
        name: the actor's name in the coupling.
        actor: the Dask actor proxy.
        move_timeout: seconds a call waits for a move or restart to finish.
        call_timeout: seconds a call waits for its answer (``None``: forever).
    """

    def __init__(self, name: str, actor: Actor, move_timeout: float = 600.0, call_timeout: float | None = None) -> None:
        self.name = name
        self.move_timeout = move_timeout
        self.call_timeout = call_timeout
        self._actor = actor
        self._cond = threading.Condition()
        self._generation = 0
        self._moving = False
        self._failure: ActorFailed | None = None
        self._follower: Follower | None = None
        self.intent = "created"  # what the user last asked: created, running, paused or stopped

    def __repr__(self) -> str:
        return f"ActorRef({self.name!r})"

    # -- following the instance (used by the supervisor) -------------------------------------
    @property
    def proxy(self) -> Actor:
        """The Dask actor proxy of the current instance."""
        with self._cond:
            return self._actor

    @property
    def generation(self) -> int:
        """How many times the actor was moved or restarted."""
        return self._generation

    def begin_move(self) -> None:
        """Make calls wait until :meth:`rebind` or :meth:`end_move` (a move is under way)."""
        with self._cond:
            self._moving = True

    def end_move(self) -> None:
        """Let calls go to the current instance again (a move that did not happen)."""
        with self._cond:
            self._moving = False
            self._cond.notify_all()

    def rebind(self, actor: Actor) -> None:
        """Point this handle at a new instance and release waiting calls."""
        with self._cond:
            self._actor = actor
            self._generation += 1
            self._moving = False
            self._cond.notify_all()

    def fail(self, error: ActorFailed) -> None:
        """Make every call raise ``error`` from now on (the actor cannot be brought back)."""
        with self._cond:
            self._failure = error
            self._moving = False
            self._cond.notify_all()

    def follow(self, follower: Follower) -> None:
        """Ask ``follower`` whether to wait and retry when a call fails."""
        self._follower = follower

    def _current(self, deadline: float) -> tuple[Actor, int]:
        with self._cond:
            while self._moving and self._failure is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"actor {self.name!r} is still being moved after {self.move_timeout} s")
                self._cond.wait(left)
            if self._failure is not None:
                raise self._failure
            return self._actor, self._generation

    def _wait_for_successor(self, generation: int, deadline: float) -> bool:
        with self._cond:
            while self._generation == generation and self._failure is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def _invoke(self, method: str, *args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + self.move_timeout
        while True:
            actor, generation = self._current(deadline)
            try:
                return getattr(actor, method)(*args, **kwargs).result(timeout=self.call_timeout)
            except Exception as e:
                follower = self._follower
                if follower is None or not follower.should_retry(self, generation, e):
                    raise
                if not self._wait_for_successor(generation, deadline):
                    raise

    def _control(self, method: str, *args: Any) -> ActorStatus:
        return ActorStatus.from_dict(self._invoke(method, *args))

    # -- control ---------------------------------------------------------------------------------
    def start(self) -> ActorStatus:
        """Start the run loop (idempotent while it runs)."""
        st = self._control("start")
        self.intent = "running"
        return st

    def pause(self) -> ActorStatus:
        """Pause the run loop between two steps."""
        st = self._control("pause")
        self.intent = "paused"
        return st

    def resume(self) -> ActorStatus:
        """Resume a paused run loop."""
        st = self._control("resume")
        self.intent = "running"
        return st

    def stop(self, timeout: float = 30.0) -> ActorStatus:
        """Ask the run loop to end after its current step and wait up to ``timeout`` s."""
        self.intent = "stopped"
        return self._control("stop", timeout)

    def status(self) -> ActorStatus:
        """The actor's current status."""
        return self._control("status")

    def checkpoint(self, timeout: float = 30.0) -> dict[str, Any]:
        """The actor's state at a step boundary, as plain data (see ``ActorHost.checkpoint``).

        Raises:
            TimeoutError: if its current step did not end within ``timeout`` seconds.
        """
        return self._invoke("checkpoint", timeout)

    def wait(self, timeout: float | None = None, poll: float = 0.1) -> ActorStatus:
        """Wait for the run loop to end.

        Args:
            timeout: seconds to wait (``None``: forever).
            poll: seconds between status calls.

        Returns:
            The final status.

        Raises:
            ActorFailed: if the run loop raised (the message holds its traceback), or
                the actor was lost and could not be restarted.
            TimeoutError: if it is still running after ``timeout``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            st = self.status()
            if st.state == "failed":
                raise ActorFailed(f"actor {self.name!r} on {st.worker} failed:\n{st.error}")
            if st.done:
                return st
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"actor {self.name!r} still {st.state} after {timeout} s ({st.steps} steps)")
            time.sleep(poll)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call one of the actor's own remote methods (e.g. ``"weights"``) and return its result."""
        return self._invoke(method, *args, **kwargs)

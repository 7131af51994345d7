"""A typed handle on a spawned actor (instead of Dask's dynamic ``Actor`` proxy).

The handle outlives the actor instance behind it: when the coupling's
supervisor moves an actor to another worker (its worker retires) or restarts it
(its worker was lost), the handle follows the new instance. Calls made while a
move is under way wait for it to finish.

When its loop has ended (finished, stopped or failed) the actor has already
given back its ports, threads and links on its worker; :meth:`ActorRef.release`
gives back the instance itself (Dask's actor, with its state) and keeps its
final status, which :meth:`ActorRef.status` and :meth:`ActorRef.wait` still
answer.
"""

from __future__ import annotations

import enum
import threading
import time
from typing import Any, Protocol

from distributed.actor import Actor

from coupler.runtime.control.status import ActorStatus
from coupler.runtime.dataplane.waits import WaitKind
from coupler.runtime.errors import ActorEnded, ActorFailed, ActorReleased


class Ending(enum.Enum):
    """How a released actor's loop ended (as opposed to a lost one, which its supervisor restarts)."""

    FINISHED = "finished"
    STOPPED = "stopped"
    FAILED = "failed"

    @classmethod
    def of(cls, status: ActorStatus) -> Ending:
        """The ending of a status whose loop has ended.

        Raises:
            ValueError: for a status whose loop has not ended.
        """
        try:
            return cls(status.state)
        except ValueError:
            raise ValueError(
                f"actor {status.name!r}: expected an ended state ({', '.join(e.value for e in cls)}), got {status.state!r}"
            ) from None


class Follower(Protocol):
    """What an :class:`ActorRef` asks its supervisor when a call fails, and tells it on release."""

    def should_retry(self, ref: ActorRef, generation: int, error: BaseException) -> bool:
        """Whether ``error`` came from a lost or moving instance that a successor replaces."""
        ...

    def release(self, ref: ActorRef) -> None:
        """Stop supervising ``ref``'s actor and drop what holds its instance (it has ended)."""
        ...

    def describe_producers(self, channel: str) -> str:
        """Who sends on ``channel`` among the supervised actors, and in what state, in words."""
        ...


class ActorRef:
    """Control an actor host from the coupling script.

    Every call goes straight to the actor's worker (the coupling's client uses
    ``direct_to_workers=True``) and returns quickly: the actor's run loop lives
    in its own thread.

    Args:
        name: the actor's name in the coupling.
        actor: the Dask actor proxy.
        move_timeout: seconds a call waits for a move or restart to finish; a call
            with a timeout of its own (``stop``, ``checkpoint``, ``wait``) waits at
            most that, the move included.
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
        self._final: ActorStatus | None = None  # set by release(): the instance is gone
        self._follower: Follower | None = None
        self.intent = "created"  # what the user last asked: created, running, paused or stopped

    def __repr__(self) -> str:
        return f"ActorRef({self.name!r})"

    # -- following the instance (used by the supervisor) -------------------------------------
    @property
    def proxy(self) -> Actor:
        """The Dask actor proxy of the current instance.

        Raises:
            ActorReleased: after :meth:`release`.
        """
        with self._cond:
            if self._final is not None:
                raise self._released_error()
            return self._actor

    @property
    def ending(self) -> Ending | None:
        """How the actor ended, once released (``None``: not released)."""
        with self._cond:
            return None if self._final is None else Ending.of(self._final)

    def _released_error(self) -> ActorReleased:
        st = self._final
        assert st is not None
        return ActorReleased(f"actor {self.name!r} {st.state} and was released; only status() and wait() answer")

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

    def _current(self, deadline: float, budget: float) -> tuple[Actor, int]:
        with self._cond:
            while self._moving and self._failure is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"actor {self.name!r} is still being moved or restarted after {budget:g} s")
                self._cond.wait(left)
            if self._failure is not None:
                raise self._failure
            if self._final is not None:
                raise self._released_error()
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
        return self._call(method, args, kwargs, self.move_timeout, timed=False)

    def _call(self, method: str, args: tuple, kwargs: dict[str, Any], budget: float, timed: bool) -> Any:
        """``method`` on the current instance, ``budget`` s at most in all; waits for a move or restart
        ``move_timeout`` at most within it. ``timed``: its first argument is the time left of the
        budget (a ``stop(timeout)`` waiting for a move must not then wait ``timeout`` again)."""
        start = time.monotonic()
        deadline = start + budget
        moving = min(self.move_timeout, budget)
        move_deadline = start + moving
        while True:
            actor, generation = self._current(move_deadline, moving)
            given = (max(0.0, deadline - time.monotonic()), *args) if timed else args
            try:
                return getattr(actor, method)(*given, **kwargs).result(timeout=self.call_timeout)
            except Exception as e:
                follower = self._follower
                if follower is None or not follower.should_retry(self, generation, e):
                    raise
                if not self._wait_for_successor(generation, move_deadline):
                    raise TimeoutError(
                        f"actor {self.name!r} is being moved or restarted and no successor answered within {moving:g} s: {e!r}"
                    ) from e

    def _control(self, method: str, *args: Any) -> ActorStatus:
        return ActorStatus.from_dict(self._invoke(method, *args))

    def _within(self, method: str, timeout: float | None) -> Any:
        """``method(time left)``, ``timeout`` s at most in all, a move or restart included
        (``None``: the instance waits as long as it takes, a move ``move_timeout`` at most)."""
        if timeout is None:
            return self._call(method, (None,), {}, self.move_timeout, timed=False)
        return self._call(method, (), {}, timeout, timed=True)

    # -- control ---------------------------------------------------------------------------------
    def start(self) -> ActorStatus:
        """Start the run loop (idempotent while it runs). It does not resume a paused loop
        (:meth:`resume` does); after :meth:`pause` on a created actor the loop starts paused.

        Raises:
            ActorEnded: its run loop has already ended (stopped, finished or failed).
            ActorReleased: after :meth:`release`.
        """
        self._refuse_if_ended("start")
        st = self._control("start")
        # What the loop is now, not what was asked: a successor after a restart is brought to it.
        self.intent = "paused" if st.state == "paused" else "running"
        return st

    def pause(self) -> ActorStatus:
        """Pause the run loop between two steps."""
        st = self._control("pause")
        self.intent = "paused"
        return st

    def resume(self) -> ActorStatus:
        """Resume a paused run loop.

        An actor that ended meanwhile (a pause that came after its last step) stays ended:
        its final status is returned, and nothing restarts it.

        Raises:
            ActorReleased: after :meth:`release`.
        """
        st = self._control("resume")
        if not st.done:
            self.intent = "running"
        return st

    def _refuse_if_ended(self, what: str) -> None:
        # Asked before the call, not read from its reply: a loop may end on its own right after
        # it started (nothing to do), which is no misuse. An ended loop never runs again.
        with self._cond:
            if self._final is not None:
                raise self._released_error()
        st = self._control("status")
        if st.done:
            raise ActorEnded(
                f"cannot {what} actor {self.name!r}: its run loop {st.state} and runs only once; "
                "spawn a new actor (release() this one first to reuse its name)"
            )

    def stop(self, timeout: float = 30.0) -> ActorStatus:
        """Ask the run loop to end and wait up to ``timeout`` s (a move or restart under way included).

        A step that is computing ends first; one blocked in a send or a receive is
        woken and abandoned (see ``ActorHost.stop``). The ended actor gives back its ports, threads and links on its worker;
        its instance stays, for calls that read its results, until :meth:`release`.
        """
        if self._final is not None:
            return self._final
        self.intent = "stopped"
        return ActorStatus.from_dict(self._within("stop", timeout))

    def release(self, timeout: float = 30.0) -> ActorStatus:
        """Stop the actor if it runs, then give back its instance (Dask's actor and its state).

        Afterwards :meth:`status` and :meth:`wait` return the final status kept
        here; every other call raises :class:`ActorReleased`. Idempotent. An actor
        its supervisor gave up on (lost more than ``max-restarts`` times) has nothing
        running: it is released at once, its final status ``failed`` with the reason.

        Args:
            timeout: seconds to wait for the loop to end.

        Returns:
            The final status.

        Raises:
            TimeoutError: if the loop did not end within ``timeout`` (nothing is released).
        """
        with self._cond:
            if self._final is not None:
                return self._final
            failure = self._failure
        if failure is not None:  # given up by its supervisor: nothing runs, nothing to stop
            return self._released(ActorStatus(name=self.name, state="failed", error=str(failure)))
        st = self.stop(timeout)
        if not st.done:
            raise TimeoutError(f"actor {self.name!r} is still {st.state} {timeout} s after stop(); not released")
        return self._released(st)

    def _released(self, st: ActorStatus) -> ActorStatus:
        """Keep ``st`` as the final status, drop the instance, and tell the supervisor."""
        with self._cond:
            self._final = st
            self._actor = None  # the proxy holds a future of the instance: dropping it lets Dask release it
            self._cond.notify_all()
        if self._follower is not None:
            self._follower.release(self)
        return st

    def status(self, timeout: float | None = None) -> ActorStatus:
        """The actor's current status (after :meth:`release`, its final one).

        Args:
            timeout: seconds to wait at most while it is moved or restarted (``None``: ``move_timeout``).

        Raises:
            TimeoutError: if no instance answered within ``timeout`` (a move or restart under way).
        """
        with self._cond:
            if self._final is not None:
                return self._final
        if timeout is None:
            return self._control("status")
        return ActorStatus.from_dict(self._call("status", (), {}, timeout, timed=False))

    def checkpoint(self, timeout: float = 30.0) -> dict[str, Any]:
        """The actor's state at a step boundary, as plain data (see ``ActorHost.checkpoint``).

        Raises:
            TimeoutError: if its current step did not end within ``timeout`` seconds
                (a move or restart under way included).
            ChannelTimeout: if its outputs were not accepted within 5 s (see ``ActorHost.checkpoint``).
        """
        return self._within("checkpoint", timeout)

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
            TimeoutError: if it is still running after ``timeout``, or is still
                being moved or restarted then; for an actor waiting for input, the message
                also says who sends on its channel and in what state (a producer that failed).
            RuntimeError: at once, for an actor this handle never started (it would wait for ever).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._cond:
                final = self._final
            if final is not None:
                st = final
            elif deadline is None:
                st = self._control("status")
            else:  # a status call waits for a move or restart, but not past the deadline
                left = max(0.0, deadline - time.monotonic())
                st = ActorStatus.from_dict(self._call("status", (), {}, left, timed=False))
            if st.state == "failed":
                raise ActorFailed(f"actor {self.name!r} on {st.worker} failed:\n{st.error}")
            if st.done:
                return st
            if st.state == "created" and self.intent == "created":
                raise RuntimeError(f"actor {self.name!r} was never started: call start() before wait(), which would wait for ever")
            if deadline is not None and time.monotonic() > deadline:
                why = st.explanation
                if st.waiting is not None and st.waiting.kind is WaitKind.INPUT and self._follower is not None:
                    why += "; " + self._follower.describe_producers(st.waiting.channel)
                raise TimeoutError(
                    f"actor {self.name!r} still {st.state} after {timeout} s ({st.steps} steps)" + (f": {why}" if why else "")
                )
            time.sleep(poll)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call one of the actor's own remote methods (e.g. ``"weights"``) and return its result."""
        return self._invoke(method, *args, **kwargs)

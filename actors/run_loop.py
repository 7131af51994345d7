"""An actor host's run loop: its own thread, its control flags, and the requests it serves at step boundaries.

Dask runs every synchronous method of every actor on one worker in one thread,
so the loop runs in a thread of its own and the remote methods only flip
flags here. Requests that need the actor still (a checkpoint, a hand-over)
are queued and served by the loop's thread between two steps, where the
actor's state is consistent; with no loop running they are served at once.
A step waiting for input gives way to a request (its port raises
:class:`StepYielded`) and is retried after it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from coupler.runtime import ChannelClosed, Interrupted
from coupler.runtime.dataplane.cancel import Cancel

ENDED_STATES = ("finished", "stopped", "failed")
_LIVE_STATES = ("running", "paused")


class StepYielded(BaseException):
    """Raised in a step waiting for input when the host must reach a step boundary.

    A ``BaseException`` so that a step's own ``except Exception`` does not swallow it.
    """


@dataclass
class LoopRecord:
    """Where an actor's loop is; its status and its checkpoints read it.

    Attributes:
        state: ``created``, ``running``, ``paused``, ``finished``, ``stopped``,
            ``failed`` or ``migrated``.
        steps: steps completed.
        error: the traceback of a failure (``""``: none).
        started_at: when the loop started (``time.time()``; 0: not yet).
        stopped_at: when it ended (0: not yet).
    """

    state: str = "created"
    steps: int = 0
    error: str = ""
    started_at: float = 0.0
    stopped_at: float = 0.0


class LoopBody(Protocol):
    """What the loop runs: the actor host's hooks (see ``ActorHost``)."""

    def setup(self) -> None: ...

    def step(self) -> bool: ...

    def teardown(self) -> None: ...


class RunLoop:
    """The thread that runs an actor's steps, and the control requests it serves between them.

    Args:
        name: the actor's name (for its thread and errors).
        body: the hooks to run.
        serve: answers a request ``(kind, arg)`` at a step boundary (or with no loop running).
        finished: called when ``step`` returned ``False``, before the state reads ``finished``.
        release: called once the loop has ended for good.
    """

    def __init__(
        self, name: str, body: LoopBody, serve: Callable[[str, Any], Any], finished: Callable[[], None], release: Callable[[], None]
    ) -> None:
        self.name = name
        self.record = LoopRecord()
        self.cancel = Cancel()  # raised by stop: wakes a blocked send at once
        self.thread: threading.Thread | None = None
        self.retired = False  # handed over: the loop ends at its next boundary
        self.aborted = False  # abort() interrupted a live loop: a step may have been abandoned mid-send
        self._body, self._serve_fn, self._finished, self._release = body, serve, finished, release
        # Guards the flags and the request list; the loop parks on it while paused.
        self._cond = threading.Condition()
        self._pause_requested = False
        self._live = False  # True while the loop thread can still serve requests
        self._requests: list[tuple[str, concurrent.futures.Future[Any], Any]] = []

    # -- control (Dask's actor thread) -----------------------------------------------------------
    def start(self) -> None:
        """Start the loop thread once; after :meth:`pause` on a created loop it starts parked."""
        with self._cond:
            if self.thread is None and self.record.state == "created":
                self.record.state = "paused" if self._pause_requested else "running"
                self.record.started_at = time.time()
                self._live = True
                self.thread = threading.Thread(target=self._run, name=f"coupler-actor-{self.name}", daemon=True)
                self.thread.start()

    def pause(self) -> None:
        """Park between two steps."""
        with self._cond:
            if self.record.state in ("running", "created"):
                self._pause_requested = True
                if self.record.state == "running":
                    self.record.state = "paused"
                self._cond.notify_all()

    def resume(self) -> None:
        """Go on after :meth:`pause`."""
        with self._cond:
            self._pause_requested = False
            if self.record.state == "paused":
                self.record.state = "running"
            self._cond.notify_all()

    def request_stop(self) -> bool:
        """End after the current step; whether the loop never started (then it reads ``stopped`` now)."""
        with self._cond:
            self.cancel.set()
            self._cond.notify_all()
            never_started = self.thread is None and self.record.state == "created"
            if never_started:
                self.record.state = "stopped"
        return never_started

    def abort(self) -> None:
        """Raise the cancel event without a state change: a step blocked in a send ends at once."""
        with self._cond:
            self.cancel.set()
            self.aborted = self.aborted or self._live
            self._cond.notify_all()

    def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the loop thread to end (if it started)."""
        if self.thread is not None:
            self.thread.join(timeout)

    def retire(self) -> None:
        """The actor handed over (at a boundary, in the loop's thread): the loop ends and never serves again."""
        self.retired = True
        self.cancel.set()
        self.record.state = "migrated"

    # -- requests --------------------------------------------------------------------------------
    async def ask(self, kind: str, arg: Any, timeout: float | None) -> Any:
        """Have request ``(kind, arg)`` served at the next step boundary; its answer.

        Raises:
            TimeoutError: if no boundary was reached within ``timeout`` seconds.
            Exception: what serving it raised.
        """
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._cond:
            served_by_loop = self._live
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
                f"(state {self.record.state}; its step may be computing, or blocked in a send or a receive: see its status)"
            ) from None

    def boundary_wanted(self) -> bool:
        """Whether a step waiting for input should give way (a request, a pause or a stop is pending)."""
        return bool(self._requests) or self._pause_requested or self.cancel.is_set()

    def in_loop_thread(self) -> bool:
        """Whether the caller is the loop's thread."""
        return threading.current_thread() is self.thread

    def _serve(self, kind: str, fut: concurrent.futures.Future[Any], arg: Any) -> None:
        if not fut.set_running_or_notify_cancel():
            return  # the caller gave up waiting
        try:
            result = self._serve_fn(kind, arg)
        except BaseException as e:
            fut.set_exception(e)
        else:
            fut.set_result(result)

    # -- the loop --------------------------------------------------------------------------------
    def _at_boundary(self) -> bool:
        """Serve pending requests; park while paused. Returns whether the loop must end."""
        # Nothing asked, the common case, without the lock: this runs before every step. A request
        # queued a moment later is served at the next boundary (or while a receive waits).
        if not (self._requests or self._pause_requested or self.retired or self.cancel.is_set()):
            return False
        while True:
            with self._cond:
                requests, self._requests = self._requests, []
                if not requests:
                    if self.retired or self.cancel.is_set():
                        return True
                    if not self._pause_requested:
                        return False
                    self._cond.wait()  # resume, a request, stop and abort notify: no need to look in slices
                    continue
            for kind, fut, arg in requests:
                self._serve(kind, fut, arg)

    def _run(self) -> None:
        rec = self.record
        try:
            self._body.setup()
            while True:
                if self._at_boundary():
                    break
                try:
                    more = self._body.step()
                except StepYielded:
                    continue
                if not more:
                    self._finished()
                    rec.state = "finished"
                    break
                rec.steps += 1
        except ChannelClosed:
            rec.state = "finished"  # an input ended: a normal end of stream
        except Interrupted:
            rec.state = "stopped"
        except BaseException:
            rec.error = traceback.format_exc()
            rec.state = "failed"
        finally:
            try:
                self._body.teardown()
            except BaseException:
                rec.error += traceback.format_exc()
                rec.state = "failed"
            rec.stopped_at = time.time()
            if rec.state in _LIVE_STATES:
                rec.state = "stopped"
            with self._cond:
                self._live = False
                leftovers, self._requests = self._requests, []
            for kind, fut, arg in leftovers:  # e.g. a forced hand-over: the loop has ended now
                self._serve(kind, fut, arg)
            self._release()

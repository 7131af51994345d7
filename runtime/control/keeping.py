"""Checkpoint keeping: the newest checkpoint of each supervised actor, held, stored and committed.

The supervisor restarts a lost actor from the last checkpoint it holds. This
module owns that checkpoint: taking it (periodically, or when asked), holding
it in the driver's memory, writing it to the durable
:class:`~coupler.runtime.control.checkpoints.CheckpointStore` when there is
one, and then committing it (``ActorHost.commit``) so that producers forget
the messages it covers. The order is the point: producers may forget messages
only once the checkpoint that covers them is held (and stored, when there is
a store). When to restart, and from what, stays the supervisor's.

Periodic checkpoints never make the supervisor's poll wait. A poll *requests*
one (the actor call returns a future at once; Dask runs it on the client's
event loop) and a later poll *collects* it when its future is done: holds it,
stores it, and requests its commit, whose answer again a later poll reads.
One cycle is in flight per actor at a time. A checkpoint that comes back after
a newer one was held (a hand-over's final one, or ``checkpoint_now``) is
dropped: holding it would go back to before what the newer one committed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from coupler.runtime.control.actor_ref import ActorRef
from coupler.runtime.control.checkpoints import CheckpointError, CheckpointStore, first_not_plain
from coupler.runtime.control.spawning import CALL_SLACK

logger = logging.getLogger(__name__)

# An actor in one of these states does not change any more: its checkpoint stays as it is.
ENDED_STATES = ("finished", "stopped", "failed")

# Called with (actor name, its worker, why) when a checkpoint could not be taken or written.
FailureFn = Callable[[str, str, str], None]


@dataclass
class _InFlight:
    """A periodic checkpoint cycle under way: the checkpoint asked for, then its commit.

    Attributes:
        future: the actor call's future (``done()``, ``result()``).
        worker: the actor's worker, for a failure report.
        deadline: ``time.monotonic()`` after which the answer is given up.
        version: the keeper's version of the actor when the checkpoint was asked.
        committing: whether ``future`` is the commit's (else the checkpoint's).
    """

    future: Any
    worker: str
    deadline: float
    version: int
    committing: bool = False


class CheckpointKeeper:
    """The newest checkpoint of every supervised actor, and when it was last taken or tried.

    Actors are known by their :class:`ActorRef` (one per supervised actor: a
    name released and spawned again is a new actor).

    Args:
        store: where every checkpoint is also written (``None``: in memory only).
        clock: wall-clock time source (``time.time``).
        failed: told about each checkpoint that could not be taken or written.
    """

    def __init__(self, store: CheckpointStore | None, clock: Callable[[], float], failed: FailureFn) -> None:
        self.store = store
        self.clock = clock
        self._failed = failed
        self._held: dict[ActorRef, dict[str, Any] | None] = {}
        self._at: dict[ActorRef, float] = {}
        # Bumped whenever a checkpoint is held: a periodic one asked before is then stale.
        self._version: dict[ActorRef, int] = {}
        self._in_flight: dict[ActorRef, _InFlight] = {}
        self._looked_at: set[ActorRef] = set()  # without a store: actors whose first checkpoint was encoded once

    def _hold(self, ref: ActorRef, ck: dict[str, Any] | None) -> None:
        self._held[ref], self._at[ref] = ck, self.clock()
        self._version[ref] = self._version.get(ref, 0) + 1
        if self.store is None and ck is not None and ref not in self._looked_at:
            self._looked_at.add(ref)
            self._warn_unless_plain(ref, ck)

    @staticmethod
    def _warn_unless_plain(ref: ActorRef, ck: dict[str, Any]) -> None:
        # In memory any picklable state works; a store holds plain data only. Found once per actor here,
        # the mistake does not wait for the day a checkpoint-dir is set (once: a state's structure stays).
        # A walk, not an encoding: a learner's state may be large, and nothing needs its bytes.
        found = first_not_plain(ck)
        if found is not None:
            where, value = found
            logger.warning(
                "actor %r: its checkpoint is not plain data (got %s at %s); it is kept in memory, but a "
                "coupler.supervision.checkpoint-dir could not store it", ref.name, type(value).__name__, where or "the top",
            )

    def begin(self, ref: ActorRef, checkpoint: dict[str, Any] | None = None) -> None:
        """Keep ``ref``'s checkpoints from ``checkpoint`` (``None``: none yet); the interval counts from now."""
        self._hold(ref, checkpoint)

    def forget(self, ref: ActorRef) -> None:
        """Drop what is kept of ``ref`` (its actor ended and was released)."""
        self._held.pop(ref, None)
        self._at.pop(ref, None)
        self._version.pop(ref, None)
        self._in_flight.pop(ref, None)
        self._looked_at.discard(ref)

    def abandon(self, ref: ActorRef) -> None:
        """Stop waiting for ``ref``'s periodic checkpoint or commit (its instance is being replaced)."""
        self._in_flight.pop(ref, None)

    def stored(self, name: str) -> dict[str, Any] | None:
        """Actor ``name``'s checkpoint in the store (``None``: none, or no store)."""
        return self.store.load(name) if self.store is not None else None

    def where(self, name: str) -> str:
        """Where actor ``name``'s checkpoint is stored (``""``: no store)."""
        return str(self.store.path(name)) if self.store is not None else ""

    def held(self, ref: ActorRef) -> dict[str, Any] | None:
        """The newest checkpoint held of ``ref`` (``None``: none yet)."""
        return self._held.get(ref)

    def due(self, ref: ActorRef, interval: float) -> bool:
        """Whether ``interval`` seconds (0: never) went by since ``ref``'s checkpoint was last taken or tried."""
        return bool(interval) and self.clock() - self._at.get(ref, self.clock()) >= interval

    def reset_interval(self, ref: ActorRef) -> None:
        """Count the interval from now (a new instance starts from what is held)."""
        self._at[ref] = self.clock()

    def take(self, ref: ActorRef, worker: str, timeout: float) -> dict[str, Any]:
        """Checkpoint ``ref``'s actor now, hold it, write it to the store, then commit its deliveries.

        Raises:
            TimeoutError: if the actor did not reach a step boundary within ``timeout``.
            CheckpointError: if the checkpoint could not be written (it is held, not committed).
        """
        ck = ref.proxy.checkpoint(timeout).result(timeout=timeout + CALL_SLACK)
        self._hold(ref, ck)
        if self.store is not None:
            self.store.save(ref.name, ck)
        if _commits(ck):
            ref.proxy.commit(ck.get("delivered", {}), ck.get("takes"), ck.get("outputs")).result(timeout=CALL_SLACK)
        return ck

    def hold_final(self, ref: ActorRef, ck: dict[str, Any]) -> None:
        """Hold and store the checkpoint a handed-over actor left; its successor's restore commits it."""
        self._hold(ref, ck)
        if self.store is not None:
            try:
                self.store.save(ref.name, ck)
            except CheckpointError as e:  # the successor still gets it from memory
                logger.warning("coupler supervisor: %s", e)

    def periodic(self, ref: ActorRef, worker: str, interval: float) -> None:
        """Advance ``ref``'s periodic checkpoint cycle without waiting: collect what came back, ask when due.

        A checkpoint that came back is held, stored and its commit asked for; a
        failure (a step held up by back-pressure, no answer in time, a store that
        fails) is reported and the checkpoint tried again at the next interval.

        Args:
            ref: a running actor.
            worker: its worker, for failure reports.
            interval: seconds between its checkpoints (0: none).
        """
        if ref in self._in_flight:
            self._collect(ref)
        if ref in self._in_flight or not self.due(ref, interval):
            return
        held = self._held.get(ref)
        if held is not None and held["status"]["state"] in ENDED_STATES:
            return  # an ended actor does not change any more
        timeout = min(5.0, interval)
        self._at[ref] = self.clock()
        try:
            future = ref.proxy.checkpoint(timeout)
        except Exception as e:  # e.g. released meanwhile
            self._report(ref, worker, e)
            return
        deadline = time.monotonic() + timeout + CALL_SLACK
        self._in_flight[ref] = _InFlight(future, worker, deadline, self._version.get(ref, 0))

    def _collect(self, ref: ActorRef) -> None:
        """Take the answer of ``ref``'s cycle if it came: hold and store a checkpoint, then ask its commit."""
        cycle = self._in_flight[ref]
        if not cycle.future.done():
            if time.monotonic() > cycle.deadline:
                del self._in_flight[ref]
                self._report(ref, cycle.worker, TimeoutError(f"no answer to its {_what(cycle)} in time"))
            return
        del self._in_flight[ref]
        try:
            result = cycle.future.result()
        except Exception as e:
            self._report(ref, cycle.worker, e)
            return
        if cycle.committing:
            return
        if self._version.get(ref, 0) != cycle.version:
            return  # a newer checkpoint was held meanwhile, and maybe committed
        self._hold(ref, result)
        if self.store is not None:
            try:
                self.store.save(ref.name, result)
            except CheckpointError as e:
                # Not committed: a run resumed from the store would start from the older
                # checkpoint there, and producers must still hold what came after it.
                self._report(ref, cycle.worker, e)
                return
        if _commits(result):
            try:
                future = ref.proxy.commit(result.get("delivered", {}), result.get("takes"), result.get("outputs"))
            except Exception as e:
                self._report(ref, cycle.worker, e)
                return
            deadline = time.monotonic() + CALL_SLACK
            self._in_flight[ref] = _InFlight(future, cycle.worker, deadline, self._version[ref], committing=True)

    def _report(self, ref: ActorRef, worker: str, error: BaseException) -> None:
        self._failed(ref.name, worker, str(error) if isinstance(error, CheckpointError) else repr(error))
        logger.info("coupler supervisor: checkpoint of %r failed: %r", ref.name, error)


def _commits(ck: dict[str, Any]) -> bool:
    """Whether committing ``ck`` tells its actor anything (it took from a ``Queue``, logs its takes, or sent)."""
    return bool(ck.get("delivered") or ck.get("takes") or ck.get("outputs"))


def _what(cycle: _InFlight) -> str:
    return "commit" if cycle.committing else "checkpoint request"

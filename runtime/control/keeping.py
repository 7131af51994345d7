"""Checkpoint keeping: the newest checkpoint of each supervised actor, held, stored and committed.

The supervisor restarts a lost actor from the last checkpoint it holds. This
module owns that checkpoint: taking it (periodically, or when asked), holding
it in the driver's memory, writing it to the durable
:class:`~coupler.runtime.control.checkpoints.CheckpointStore` when there is
one, and then committing it (``ActorHost.commit``) so that producers forget
the messages it covers. The order is the point: producers may forget messages
only once the checkpoint that covers them is held (and stored, when there is
a store). When to restart, and from what, stays the supervisor's.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from coupler.runtime.control.actor_ref import ActorRef
from coupler.runtime.control.checkpoints import CheckpointError, CheckpointStore
from coupler.runtime.control.spawning import CALL_SLACK

logger = logging.getLogger(__name__)

# An actor in one of these states does not change any more: its checkpoint stays as it is.
ENDED_STATES = ("finished", "stopped", "failed")

# Called with (actor name, its worker, why) when a checkpoint could not be taken or written.
FailureFn = Callable[[str, str, str], None]


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

    def begin(self, ref: ActorRef, checkpoint: dict[str, Any] | None = None) -> None:
        """Keep ``ref``'s checkpoints from ``checkpoint`` (``None``: none yet); the interval counts from now."""
        self._held[ref], self._at[ref] = checkpoint, self.clock()

    def forget(self, ref: ActorRef) -> None:
        """Drop what is kept of ``ref`` (its actor ended and was released)."""
        self._held.pop(ref, None)
        self._at.pop(ref, None)

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
        """Checkpoint ``ref``'s actor now, then :meth:`keep` it; a store that fails raises.

        Raises:
            TimeoutError: if the actor did not reach a step boundary within ``timeout``.
            CheckpointError: if the checkpoint could not be written.
        """
        ck = ref.proxy.checkpoint(timeout).result(timeout=timeout + CALL_SLACK)
        self.keep(ref, worker, ck, strict=True)
        return ck

    def keep(self, ref: ActorRef, worker: str, ck: dict[str, Any], strict: bool = False) -> None:
        """Hold ``ck`` as the actor's last checkpoint, write it to the store, then commit its deliveries.

        Args:
            ref: the actor.
            worker: its worker, for the failure report.
            ck: its checkpoint.
            strict: raise a store's failure instead of reporting it.

        Raises:
            CheckpointError: if ``strict`` and the store could not write it.
        """
        self._held[ref], self._at[ref] = ck, self.clock()
        if self.store is not None:
            try:
                self.store.save(ref.name, ck)
            except CheckpointError as e:
                if strict:
                    raise
                self._failed(ref.name, worker, str(e))
                logger.warning("coupler supervisor: %s", e)
        if ck.get("delivered") or ck.get("takes"):
            ref.proxy.commit(ck.get("delivered", {}), ck.get("takes")).result(timeout=CALL_SLACK)

    def hold_final(self, ref: ActorRef, ck: dict[str, Any]) -> None:
        """Hold and store the checkpoint a handed-over actor left; its successor's restore commits it."""
        self._held[ref], self._at[ref] = ck, self.clock()
        if self.store is not None:
            try:
                self.store.save(ref.name, ck)
            except CheckpointError as e:  # the successor still gets it from memory
                logger.warning("coupler supervisor: %s", e)

    def periodic(self, ref: ActorRef, worker: str, interval: float) -> None:
        """Take and keep a periodic checkpoint of a running actor; a failure is reported, then retried next time."""
        held = self._held.get(ref)
        if held is not None and held["status"]["state"] in ENDED_STATES:
            return  # an ended actor does not change any more
        try:
            timeout = min(5.0, interval)
            ck = ref.proxy.checkpoint(timeout).result(timeout=timeout + CALL_SLACK)
            self.keep(ref, worker, ck)
        except Exception as e:  # a step held up by back-pressure: try again next time
            self._failed(ref.name, worker, repr(e))
            logger.info("coupler supervisor: checkpoint of %r failed: %r", ref.name, e)
        self._at[ref] = self.clock()

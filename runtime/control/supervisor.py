"""The supervisor: keeps a coupling's actors alive while workers come and go.

Dask actors live and die with their worker. On HPC machines workers end with
their batch job's walltime (Dask's ``--lifetime`` closes them gracefully a
little before), and sometimes die without warning. The supervisor runs in the
driver, in a thread of its own, next to the :class:`~coupler.runtime.Coupling`
that started it. It remembers how every actor was spawned and every few
seconds (``coupler.supervision.poll-interval``) it:

- **moves** each actor off a worker that retires within
  ``coupler.supervision.retire-margin`` seconds: the actor ends its loop at a
  step boundary and hands over (its ``Queue`` inputs detach, so producers wait,
  and the messages it had not taken travel in its checkpoint); a new instance
  with the same name is spawned on a worker that does not retire soon (and has
  the actor's resources), restored and resumed as the old one was;
- **restarts** an actor whose worker was lost, from its last periodic
  checkpoint (every ``coupler.supervision.checkpoint-interval`` seconds), after
  a back-off; after ``coupler.supervision.max-restarts`` losses the actor's
  :class:`~coupler.runtime.ActorRef` raises :class:`ActorFailed` naming it and
  its last error. On its ``Queue`` inputs, the producers send again what it
  received after that checkpoint and it drops what the checkpoint covers, so
  nothing is lost or processed twice (see docs/reliability.md): once the
  supervisor holds a checkpoint it *commits* it (``ActorHost.commit``), and
  producers stop keeping what it covers.

The user's :class:`ActorRef` follows every move: calls made during a move wait
for it. Workers' retirement times come from the broker's snapshot (the
endpoints report them); for a worker that has not reported yet the supervisor
asks the worker itself.

Threads, and what waits for what. The watch thread (``coupler-supervisor``)
runs :meth:`Supervisor.poll`; ``move`` and ``checkpoint_now`` run in their
callers' threads. One of them acts on the actors at a time (``_acting``);
``_lock`` guards the records, briefly. Calls to actors go through Dask's actor
proxies, which run them on the client's event loop and return futures.

- A poll handles lost and retiring workers first, then places waiting actors,
  then advances each actor's periodic checkpoint: it *asks* for a checkpoint
  when one is due and *collects* the answer on a later poll, once its future
  is done (:meth:`CheckpointKeeper.periodic`); the commit that follows is
  asked and read the same way. So an actor whose checkpoint is slow (a large
  state, a step held up by back-pressure) never delays the handling of
  another actor's lost worker or walltime move. Holding and storing a
  checkpoint that came back happens in the poll (a slow ``checkpoint-dir``
  does delay it).
- A hand-over (``retire``), a placement and ``checkpoint_now`` wait for their
  answers, bounded by ``handover-timeout``, ``placement-timeout`` and the
  caller's timeout: the poll needs their outcome before it goes on.
- An actor whose instance is replaced (lost, moved) has its periodic cycle in
  flight abandoned; an answer that comes after a newer checkpoint was held is
  dropped, never held over it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from dask.utils import parse_timedelta
from distributed import Client, Future

from coupler.runtime import config
from coupler.runtime.control.actor_ref import ActorRef
from coupler.runtime.control.checkpoints import CheckpointStore
from coupler.runtime.control.journal import Journal, SupervisionEvent
from coupler.runtime.control.keeping import ENDED_STATES, CheckpointKeeper
from coupler.runtime.control.roster import WorkerRoster
from coupler.runtime.control.spawning import HandOverIncomplete, SpawnSpec, Spawner
from coupler.runtime.errors import ActorFailed, CheckpointError, CouplerError

logger = logging.getLogger(__name__)

# Seconds a failed call waits for the scheduler to confirm that the actor's worker is gone.
LOSS_CONFIRMATION = 10.0


@dataclass(frozen=True)
class SupervisionPolicy:
    """The supervisor's settings (``coupler.supervision.*``; durations in seconds).

    Attributes:
        poll_interval: seconds between looks at the workers and actors.
        retire_margin: move an actor when its worker retires within this many seconds.
        handover_timeout: seconds an actor may take to reach a step boundary for a
            hand-over before its loop is stopped by force.
        placement_timeout: seconds to wait for a worker that can host a moved or
            restarted actor.
        checkpoint_interval: seconds between periodic checkpoints of each running
            actor (0: none; a lost actor then restarts from scratch).
        max_restarts: restarts after lost workers before an actor is given up.
        restart_backoff: seconds before the first restart; doubled for each further one.
        checkpoint_dir: also write every checkpoint there (a directory or an fsspec URL;
            ``None``: keep them in memory only).
        resume: restore each actor spawned from its checkpoint in ``checkpoint_dir``, if
            there is one (a run resumed after its whole cluster was gone).
    """

    poll_interval: float = 1.0
    retire_margin: float = 60.0
    handover_timeout: float = 10.0
    placement_timeout: float = 600.0
    checkpoint_interval: float = 30.0
    max_restarts: int = 3
    restart_backoff: float = 1.0
    checkpoint_dir: str | None = None
    resume: bool = False

    @classmethod
    def from_config(cls) -> SupervisionPolicy:
        """Read ``coupler.supervision`` from ``dask.config`` (defaults where a key is missing).

        Raises:
            ValueError: for negative durations or a negative ``max-restarts``, or ``resume``
                without a ``checkpoint-dir``.
        """
        defaults = cls()
        section = config.section("supervision")

        def seconds(key: str, default: float) -> float:
            value = section.get(key, default)
            try:
                if value is None:
                    s = 0.0
                elif isinstance(value, (int, float)):
                    s = float(value)
                else:
                    s = float(parse_timedelta(value, default="seconds"))
            except (TypeError, ValueError, KeyError, IndexError, OverflowError):
                raise ValueError(f"coupler.supervision.{key} must be a duration (seconds or e.g. '2 minutes'), got {value!r}") from None
            if s < 0:
                raise ValueError(f"coupler.supervision.{key} must be a duration >= 0, got {value!r}")
            return s

        given = section.get("max-restarts", defaults.max_restarts)
        if isinstance(given, bool) or not isinstance(given, (int, str)):
            given = None  # floats, lists...: not a count
        try:
            max_restarts = int(given)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ValueError(f"coupler.supervision.max-restarts must be an integer >= 0, got {section.get('max-restarts')!r}") from None
        if max_restarts < 0:
            raise ValueError(f"coupler.supervision.max-restarts must be >= 0, got {max_restarts}")
        resume = config.flag("supervision", section, "resume", False)
        if resume and not section.get("checkpoint-dir"):
            # Without a store there is nothing to resume from: the run would start afresh, silently.
            raise ValueError("coupler.supervision.resume needs coupler.supervision.checkpoint-dir (where the checkpoints are), got none")
        return cls(
            poll_interval=max(0.05, seconds("poll-interval", defaults.poll_interval)),
            retire_margin=seconds("retire-margin", defaults.retire_margin),
            handover_timeout=seconds("handover-timeout", defaults.handover_timeout),
            placement_timeout=seconds("placement-timeout", defaults.placement_timeout),
            checkpoint_interval=seconds("checkpoint-interval", defaults.checkpoint_interval),
            max_restarts=max_restarts,
            restart_backoff=seconds("restart-backoff", defaults.restart_backoff),
            checkpoint_dir=str(section["checkpoint-dir"]) if section.get("checkpoint-dir") else None,
            resume=resume,
        )


@dataclass
class _Supervised:
    """The supervisor's record of one actor."""

    spec: SpawnSpec
    ref: ActorRef
    future: Future | None
    worker: str
    generation: int = 0
    restarts: int = 0
    last_error: str = ""
    given_up: bool = False
    # Set while the actor waits for a worker to host its successor:
    awaiting: str = ""  # "moved" or "restarted"
    resume: dict[str, Any] | None = None  # the checkpoint to restore (None: start afresh)
    resume_state: str = "created"  # running, paused, created or an ended state
    awaiting_since: float = 0.0
    retry_at: float = 0.0
    left: str = ""  # the worker it left or lost
    move_reason: str = ""  # why it is being moved, for its event
    restart_reason: str = ""  # why it is being restarted, when its worker was not lost (for its event)

    def await_successor(self, kind: str, resume: dict[str, Any] | None, state: str, retry_at: float) -> Future | None:
        """Wait for a worker to host a successor (call with the supervisor's lock).

        Returns:
            The old instance's future, for the caller to release (``None``: none held).
        """
        self.awaiting, self.resume, self.resume_state = kind, resume, state
        self.awaiting_since = time.monotonic()
        self.retry_at = retry_at
        self.left = self.worker
        old, self.future = self.future, None
        return old

    def succeeded(self, future: Future, worker: str) -> None:
        """A successor runs on ``worker`` (call with the supervisor's lock)."""
        if self.awaiting == "restarted":
            self.last_error = ""
        self.future, self.worker, self.generation = future, worker, self.generation + 1
        self.awaiting, self.left = "", ""


def _producers_first(records: list[_Supervised]) -> list[_Supervised]:
    """``records`` ordered so that an actor comes before the actors that consume its channels.

    Hand-overs go in this order: a producer reaches its step boundary while its
    consumers still run and take what it sends; a consumer handed over first
    would leave a producer on the same retiring worker blocked in a send.
    Cycles are broken in the given order.
    """

    def channels(rec: _Supervised, ports: str) -> set[str]:
        return set((rec.spec.kwargs.get(ports) or {}).values())

    produced_by = {r.spec.name: channels(r, "outputs") for r in records}
    ordered: list[_Supervised] = []
    left = list(records)
    while left:
        feeding = set().union(*(produced_by[r.spec.name] for r in left))
        ready = [r for r in left if not channels(r, "inputs") & (feeding - produced_by[r.spec.name])]
        pick = ready[0] if ready else left[0]
        ordered.append(pick)
        left.remove(pick)
    return ordered


def _restart_state(checkpoint: dict[str, Any] | None, intent: str) -> str:
    """The state a lost actor's successor is brought to: an ended actor's, else what its user asked for last
    (``created`` where its user had asked it to stop and it had not ended yet: the successor is not started)."""
    ended = checkpoint is not None and checkpoint["status"]["state"] in ENDED_STATES
    state = checkpoint["status"]["state"] if ended and checkpoint is not None else intent
    return "created" if state == "stopped" and not ended else state


def _looks_lost(future: Future | None, error: BaseException) -> bool:
    """Whether a call's ``error`` looks like the loss of the worker that holds ``future``'s actor."""
    # Dask's actor proxy fails calls once the actor's future is no longer "finished" (its
    # worker was lost): read that state, not the error's text; comm errors are OSErrors.
    future_gone = future is not None and future.status not in ("finished", "pending")
    return future_gone or (isinstance(error, OSError) and not isinstance(error, (TimeoutError, CouplerError)))


def _confirmed(check: Callable[[], bool], within: float, closing: threading.Event) -> bool:
    """Whether ``check()`` comes true within ``within`` seconds (asked every 0.2 s; no longer once ``closing``)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and not closing.is_set():
        if check():
            return True
        time.sleep(0.2)
    return False


def _placement_detail(
    kind: str, resume: dict[str, Any] | None, awaiting_since: float, move_reason: str, restart_reason: str = ""
) -> str:
    """Why and from what a successor was placed, for its event."""
    cause = restart_reason or "worker lost"
    if kind == "moved":
        detail = move_reason
    elif resume is not None:
        detail = f"{cause}; from its checkpoint of {time.ctime(resume['time'])}"
    else:
        detail = f"{cause}; from scratch (no checkpoint yet)"
    return detail + f"; {time.monotonic() - awaiting_since:.1f} s without an instance"


class Supervisor:
    """Spawn actors and keep them alive across retiring and lost workers.

    Args:
        client: the coupling's client.
        key_prefix: Dask key prefix for the actors' tasks (unique per coupling).
        policy: settings (default: ``SupervisionPolicy.from_config()``).
        clock: wall-clock time source (``time.time``), for retirement deadlines.
        on_release: called with an actor's name once it was released (its name is free again).
    """

    def __init__(
        self,
        client: Client,
        key_prefix: str,
        policy: SupervisionPolicy | None = None,
        clock: Callable[[], float] = time.time,
        on_release: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self.on_release = on_release
        self.policy = policy or SupervisionPolicy.from_config()
        self.clock = clock
        self.spawner = Spawner(client, key_prefix)
        self.roster = WorkerRoster(client, self.policy.retire_margin, clock)
        self._records: dict[str, _Supervised] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._acting = threading.RLock()  # one of poll() and move() acts on the actors at a time
        try:
            store = CheckpointStore(self.policy.checkpoint_dir) if self.policy.checkpoint_dir else None
        except CheckpointError as e:
            raise CheckpointError(f"coupler.supervision.checkpoint-dir: {e}") from None
        self.journal = Journal(clock)
        self.keeper = CheckpointKeeper(store, clock, self.journal.checkpoint_failed)

    # -- life cycle -----------------------------------------------------------------------
    def start(self) -> None:
        """Start watching in a daemon thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="coupler-supervisor", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Stop watching; a move under way is finished first (up to ``timeout`` s)."""
        self._closing.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._lock:
            waiting = [r for r in self._records.values() if r.awaiting]
        for rec in waiting:  # nothing will place them now: release the calls that wait for them
            rec.ref.fail(ActorFailed(f"actor {rec.spec.name!r} was waiting for a worker when its coupling closed"))

    @property
    def events(self) -> list[SupervisionEvent]:
        """What the supervisor did so far, oldest first (a copy; the newest ``journal.EVENTS_KEPT``)."""
        return self.journal.events()

    def last_checkpoint(self, name: str) -> dict[str, Any] | None:
        """The newest checkpoint the supervisor holds of actor ``name`` (``None``: none yet).

        Raises:
            KeyError: for an actor this supervisor does not know.
        """
        with self._lock:
            return self.keeper.held(self._records[name].ref)

    # -- spawning -------------------------------------------------------------------------
    def spawn(self, spec: SpawnSpec) -> ActorRef:
        """Create the actor on a worker and supervise it.

        Returns:
            Its handle, which follows it across moves and restarts.

        Raises:
            CouplerError: it was pinned to workers (``spec.workers``) that all left before it started.
        """
        pinned = list(spec.workers) if spec.workers else None
        fut = self.spawner.submit(spec, pinned, 0)
        try:
            actor = self.spawner.actor(fut, workers=pinned)
        except Exception:
            fut.release()
            raise
        stored = self.keeper.stored(spec.name) if self.policy.resume else None
        if self.policy.resume and stored is None:  # a new actor, or a mistyped checkpoint-dir: say so
            logger.warning(
                "actor %r: coupler.supervision.resume is on, but %s holds no checkpoint of it; it starts afresh",
                spec.name, self.keeper.where(spec.name) or self.policy.checkpoint_dir,
            )
        self.spawner.restore(actor, stored)
        ref = ActorRef(spec.name, actor)
        ref.follow(self)
        worker = self.spawner.worker_of(fut)
        with self._lock:
            self._records[spec.name] = _Supervised(spec, ref, fut, worker)
            self.keeper.begin(ref, stored)
        if stored is not None:
            detail = f"from its stored checkpoint of {time.ctime(stored['time'])} ({self.keeper.where(spec.name)})"
            self.journal.add(spec.name, "resumed", "", worker, detail)
        self.start()
        return ref

    def checkpoint_now(self, names: list[str] | None = None, timeout: float = 30.0) -> dict[str, dict[str, Any]]:
        """Checkpoint actors now (all, or ``names``), keep the checkpoints and write them to the store.

        Args:
            names: the actors (default: every supervised actor that is not given up).
            timeout: seconds each may take to reach a step boundary.

        Returns:
            Actor name -> its checkpoint.

        Raises:
            KeyError: for an actor this supervisor does not know.
            TimeoutError: if an actor did not reach a step boundary in time.
            CheckpointError: if a checkpoint could not be written.
        """
        with self._lock:
            records = [self._records[n] for n in names] if names is not None else self._active()
        with self._acting:
            return {rec.spec.name: self.keeper.take(rec.ref, rec.worker, timeout) for rec in records}

    # -- what ActorRef asks -------------------------------------------------------------------
    def should_retry(self, ref: ActorRef, generation: int, error: BaseException) -> bool:
        """Whether a failed call on ``ref`` should wait for a successor instance.

        Yes when the actor moved or is being moved or restarted, and when it was
        given up: the retry then raises the :class:`ActorFailed` set on the
        handle, not the comm error of the lost worker. For an error that looks
        like a lost worker (a comm error, Dask's "Worker holding Actor was
        lost"), wait a few seconds for the scheduler to confirm the loss. Errors
        the actor's method raised itself (timeouts included) are the caller's.
        """
        with self._lock:
            rec = self._records.get(ref.name)
        if rec is None or self._closing.is_set():
            return False
        if ref.generation != generation or rec.awaiting or rec.given_up:
            return True
        if not _looks_lost(rec.future, error):
            return False
        gone = lambda: ref.generation != generation or bool(rec.awaiting) or rec.given_up or self._lost(rec, fresh=True)  # noqa: E731
        return _confirmed(gone, LOSS_CONFIRMATION, self._closing)

    def release(self, ref: ActorRef) -> None:
        """Stop supervising ``ref``'s actor, which ended, and drop its spawn's future.

        Dask releases the instance: its worker's actor table no longer holds it.
        The record goes, so a new actor may take the name.
        """
        with self._lock:
            rec = self._records.get(ref.name)
            if rec is None or rec.ref is not ref:
                return
            del self._records[ref.name]
            self.keeper.forget(ref)
        if rec.future is not None:
            # Cancelled, not just released: the handle's proxy holds a future of the same key, which
            # the garbage collector may free much later (a reference cycle); the instance goes now.
            self.client.cancel([rec.future], force=True)
            rec.future = None
        if self.on_release is not None:
            self.on_release(ref.name)

    def describe_producers(self, channel: str) -> str:
        """Which supervised actors send on ``channel`` and their states, in words (for a wait's timeout).

        A consumer that waits for input long after its only producer failed is the
        usual sign of a bug in the producer: the text says so where the user looks.
        """
        with self._lock:
            recs = [r for r in self._records.values() if channel in (r.spec.kwargs.get("outputs") or {}).values()]
        if not recs:
            return f"no actor of this coupling sends on {channel!r}"
        parts, ended = [], 0
        for r in recs:
            try:
                st = r.ref.status(timeout=2.0)  # an error message: not worth a wait for a move
            except Exception as e:  # lost, moving: say what is known
                parts.append(f"{r.spec.name} (unknown: {type(e).__name__})")
                continue
            ended += st.done
            parts.append(f"{r.spec.name} ({st.state}" + (f": {st.last_error}" if st.last_error else "") + ")")
        return ("every producer has ended: " if ended == len(recs) else "producers: ") + ", ".join(parts)

    # -- the watch loop -------------------------------------------------------------------
    def _watch(self) -> None:
        while not self._closing.wait(self.policy.poll_interval):
            try:
                self.poll()
            except Exception:  # the supervisor must outlive a bad poll (e.g. a scheduler hiccup)
                logger.exception("coupler supervisor: poll failed")

    def poll(self) -> None:
        """One look at the workers and actors: hand over, restart, place and checkpoint as needed.

        Hand-overs come first, for every actor on a retiring worker, so that no
        actor waits behind another one that waits for a worker.
        """
        with self._acting:
            self.roster.refresh()
            with self._lock:
                records = self._active()
            for rec in _producers_first(records):
                if self._closing.is_set():
                    return
                if rec.awaiting:
                    continue
                if self._lost(rec):
                    self._lose(rec, f"worker {rec.worker} was lost")
                elif self.roster.retiring(rec.worker, self.clock()):
                    self._hand_over(rec)
            for rec in records:
                if rec.awaiting and not self._closing.is_set() and self.clock() >= rec.retry_at:
                    self._try_place(rec)
            for rec in records:  # asks or collects, never waits (see the module docstring)
                if not rec.awaiting and not rec.given_up:
                    self.keeper.periodic(rec.ref, rec.worker, self.policy.checkpoint_interval)

    def _active(self) -> list[_Supervised]:
        """The records of actors neither given up nor ended (call with the lock): a released actor
        ended (an Ending, not a loss), so there is nothing to move, restart or checkpoint."""
        return [r for r in self._records.values() if not r.given_up and r.ref.ending is None]

    def _lost(self, rec: _Supervised, fresh: bool = False) -> bool:
        return (rec.future is not None and rec.future.status == "error") or self.roster.gone(rec.worker, fresh)

    # -- moves and restarts ---------------------------------------------------------------
    def _try_place(self, rec: _Supervised) -> bool:
        """Spawn a successor of an awaiting actor, restore it and bring it to its state.

        Returns:
            Whether it was placed (else it waits for the next poll, or is given up
            after the placement timeout).
        """
        spec = rec.spec
        candidates = self.roster.candidates(spec)
        logger.debug("coupler supervisor: candidates for %r: %s (retire times %s)", spec.name, candidates, self.roster.retire_times())
        if candidates:
            try:
                fut, actor, worker = self.spawner.place(spec, candidates, rec.generation + 1, rec.resume, rec.resume_state)
            except Exception as e:  # e.g. the chosen worker went away meanwhile: next poll
                rec.last_error = f"placing it on {candidates} failed: {e!r}"
                logger.warning("coupler supervisor: %r: %s", spec.name, rec.last_error)
            else:
                kind, left = rec.awaiting, rec.left
                with self._lock:
                    rec.succeeded(fut, worker)
                self.keeper.reset_interval(rec.ref)
                rec.ref.rebind(actor)
                detail = _placement_detail(kind, rec.resume, rec.awaiting_since, rec.move_reason, rec.restart_reason)
                self.journal.add(spec.name, kind, left, worker, detail)
                logger.warning("coupler supervisor: %s %r from %s to %s (%s)", kind, spec.name, left, worker, detail)
                return True
        if time.monotonic() - rec.awaiting_since > self.policy.placement_timeout:
            why = rec.last_error or f"no live worker has its resources {spec.resources} and does not retire soon"
            self._give_up(rec, f"no worker could host it within {self.policy.placement_timeout} s ({why})")
        return False

    def move(self, name: str, timeout: float | None = None) -> str:
        """Move the actor ``name`` to another worker now (what happens when its worker retires).

        Args:
            name: the actor's name.
            timeout: seconds to wait for a worker to host it (default: the placement timeout).

        Returns:
            The new worker's address.

        An actor whose hand-over is incomplete (it had to be stopped by force, or a
        consumer did not accept what it sent) restarts from its last stored
        checkpoint on the new worker, as after a lost worker: a successor resuming
        from its final checkpoint would lose what its link still held.

        Raises:
            KeyError: for an actor this supervisor does not know.
            CouplerError: if it could not hand over, or no other worker could host it in time.
        """
        with self._acting:
            with self._lock:
                rec = self._records[name]
            self.roster.refresh()
            avoid = rec.worker
            self._hand_over(rec, "asked for (supervisor.move)")
            # "restarted": its hand-over was incomplete (a step abandoned, or a consumer that did not
            # accept what it sent), so it restarts from its last stored checkpoint instead.
            if rec.awaiting not in ("moved", "restarted"):
                raise CouplerError(f"actor {name!r} could not hand over on {avoid}: {rec.last_error}")
            deadline = time.monotonic() + (self.policy.placement_timeout if timeout is None else timeout)
            while True:
                self.roster.refresh()
                self.roster.live.pop(avoid, None)  # asked to move: somewhere else
                if self._try_place(rec):
                    return rec.worker
                if rec.given_up or time.monotonic() > deadline:
                    raise CouplerError(f"actor {name!r} was handed over but not placed: {rec.last_error or 'no worker'}")
                time.sleep(self.policy.poll_interval)

    def _await(self, rec: _Supervised, kind: str, resume: dict[str, Any] | None, state: str, delay: float) -> None:
        self.keeper.abandon(rec.ref)  # a periodic checkpoint of the old instance comes too late now
        with self._lock:
            old = rec.await_successor(kind, resume, state, self.clock() + delay)
        if old is not None:
            old.release()  # the old instance is done with; its worker may retire cleanly

    def _hand_over(self, rec: _Supervised, why: str = "its worker retires") -> None:
        """End the actor's loop at a step boundary and keep its final checkpoint for its successor.

        Args:
            rec: the actor's record.
            why: the move's reason, for its event.
        """
        rec.move_reason = why
        rec.ref.begin_move()
        try:
            ck = self.spawner.retire(rec.spec.name, rec.ref.proxy, self.policy.handover_timeout)
        except HandOverIncomplete as e:
            self._restart_from_stored(rec, f"hand-over on worker {rec.worker} ({why}) was incomplete: {e}")
            return
        except Exception as e:  # its worker went first: restart from the last checkpoint instead
            rec.ref.end_move()
            logger.warning("coupler supervisor: %r could not hand over on %s: %r", rec.spec.name, rec.worker, e)
            self._lose(rec, f"hand-over on worker {rec.worker} ({why}) failed: {e!r}")
            return
        self.keeper.hold_final(rec.ref, ck)
        self._await(rec, "moved", ck, ck["status"]["state"], 0.0)

    def _restart_from_stored(self, rec: _Supervised, why: str) -> None:
        """Its loop ended, but its final checkpoint ran past messages its worker still holds: restart it
        from its last stored checkpoint (as after a lost worker, without counting a loss), and fence the
        old instance's outputs, whose worker lives on (their successor gets the next epoch)."""
        logger.warning("coupler supervisor: %s; restarting %r from its last stored checkpoint", why, rec.spec.name)
        rec.last_error = why
        outputs = [[ch, rec.spec.name] for ch in sorted(set((rec.spec.kwargs.get("outputs") or {}).values()))]
        if outputs and self.client is not None:
            try:
                self.client.sync(self.client.scheduler.coupler_producers_replaced, producers=outputs)
            except Exception as e:  # the cluster may be going away
                logger.warning("coupler supervisor: could not fence %r's old instance: %r", rec.spec.name, e)
        rec.restart_reason = f"hand-over ({rec.move_reason}) incomplete"
        ck = self.keeper.held(rec.ref)
        self._await(rec, "restarted", ck, _restart_state(ck, rec.ref.intent), 0.0)

    def _lose(self, rec: _Supervised, why: str) -> None:
        """The actor's worker is gone: schedule a restart from its last checkpoint, or give up."""
        rec.last_error = why
        rec.restart_reason = ""
        if rec.restarts >= self.policy.max_restarts:
            self._give_up(rec, f"lost {rec.restarts + 1} times, max-restarts={self.policy.max_restarts}")
            return
        rec.restarts += 1
        rec.ref.begin_move()
        ck = self.keeper.held(rec.ref)
        delay = self.policy.restart_backoff * 2 ** (rec.restarts - 1)
        self._await(rec, "restarted", ck, _restart_state(ck, rec.ref.intent), delay)

    def _give_up(self, rec: _Supervised, why: str) -> None:
        error = ActorFailed(f"actor {rec.spec.name!r} cannot be kept alive: {why}; last error: {rec.last_error or 'none'}")
        with self._lock:
            rec.given_up = True
            rec.awaiting = ""
        rec.ref.fail(error)
        self.journal.add(rec.spec.name, "gave-up", rec.left or rec.worker, "", str(error))
        logger.error("coupler supervisor: %s", error)
        self._inputs_gone_for_good(rec, f"actor {rec.spec.name!r} was lost and will not be restarted ({why})")

    def _inputs_gone_for_good(self, rec: _Supervised, detail: str) -> None:
        """Tell the broker that a given-up actor's inputs will not come back.

        Its ``Queue`` producers waited for it as for a lost consumer that its supervisor
        restarts (``lost-consumer-wait``); now they fail with ``ConsumerGone`` at once.
        """
        consumers = [[ch, f"{rec.spec.name}/{port}"] for port, ch in sorted((rec.spec.kwargs.get("inputs") or {}).items())]
        if not consumers or self.client is None:
            return
        try:
            self.client.sync(self.client.scheduler.coupler_consumers_given_up, consumers=consumers, detail=detail)
        except Exception as e:  # the cluster may be going away; producers then end with it
            logger.warning("coupler supervisor: could not tell the broker that %r's inputs are gone: %r", rec.spec.name, e)

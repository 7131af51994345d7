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
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import psutil
from dask.utils import parse_timedelta
from distributed import Actor, Client, Future

from coupler.runtime import config
from coupler.runtime.control.actor_ref import ActorRef
from coupler.runtime.control.checkpoints import CheckpointError, CheckpointStore
from coupler.runtime.errors import ActorFailed, CouplerError

logger = logging.getLogger(__name__)

# Seconds allowed for a control call's round trip on top of the wait it asks for.
CALL_SLACK = 30.0
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
            ValueError: for negative durations or a negative ``max-restarts``.
        """
        defaults = cls()
        try:
            section = config.get("supervision") or {}
        except KeyError:
            section = {}

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
        return cls(
            poll_interval=max(0.05, seconds("poll-interval", defaults.poll_interval)),
            retire_margin=seconds("retire-margin", defaults.retire_margin),
            handover_timeout=seconds("handover-timeout", defaults.handover_timeout),
            placement_timeout=seconds("placement-timeout", defaults.placement_timeout),
            checkpoint_interval=seconds("checkpoint-interval", defaults.checkpoint_interval),
            max_restarts=max_restarts,
            restart_backoff=seconds("restart-backoff", defaults.restart_backoff),
            checkpoint_dir=str(section["checkpoint-dir"]) if section.get("checkpoint-dir") else None,
            resume=bool(section.get("resume", False)),
        )


@dataclass(frozen=True)
class SpawnSpec:
    """How an actor was spawned: enough to spawn it again elsewhere.

    Attributes:
        cls: the actor host class.
        args: its positional arguments.
        kwargs: its keyword arguments (without ``name``).
        name: the actor's name.
        workers: the workers it was restricted to (``None``: any).
        resources: the Dask resources it needs.
    """

    cls: type
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    name: str
    workers: tuple[str, ...] | None = None
    resources: dict[str, float] | None = None


@dataclass(frozen=True)
class SupervisionEvent:
    """Something the supervisor did.

    Attributes:
        time: wall-clock time (``time.time()``).
        actor: the actor's name.
        kind: ``moved``, ``restarted``, ``resumed`` (from a stored checkpoint), ``gave-up``
            or ``checkpoint-failed``.
        source: the worker it left (or lost).
        target: the worker it went to (``""`` if none).
        detail: a human-readable reason.
    """

    time: float
    actor: str
    kind: str
    source: str
    target: str = ""
    detail: str = ""


@dataclass
class _Supervised:
    """The supervisor's record of one actor."""

    spec: SpawnSpec
    ref: ActorRef
    future: Future | None
    worker: str
    generation: int = 0
    checkpoint: dict[str, Any] | None = None
    checkpoint_at: float = field(default_factory=time.time)
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


def worker_retire_at(dask_worker: Any) -> float | None:
    """When ``dask_worker`` closes itself at its lifetime, as epoch seconds (``None``: never).

    Run on the worker (``client.run``). Dask counts the lifetime from the
    worker's construction, a moment after its process started; the process
    start time gives a slightly early, hence safe, estimate.
    """
    lifetime = getattr(dask_worker, "lifetime", None)
    if not lifetime:
        return None
    return psutil.Process().create_time() + float(lifetime)


class Supervisor:
    """Spawn actors and keep them alive across retiring and lost workers.

    Args:
        client: the coupling's client.
        key_prefix: Dask key prefix for the actors' tasks (unique per coupling).
        policy: settings (default: ``SupervisionPolicy.from_config()``).
        clock: wall-clock time source (``time.time``), for retirement deadlines.
    """

    def __init__(
        self, client: Client, key_prefix: str, policy: SupervisionPolicy | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.client = client
        self.key_prefix = key_prefix
        self.policy = policy or SupervisionPolicy.from_config()
        self.clock = clock
        self._records: dict[str, _Supervised] = {}
        self._lock = threading.Lock()
        self._events: list[SupervisionEvent] = []
        self._retire_cache: dict[str, float | None] = {}
        self._live: dict[str, dict[str, Any]] = {}
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._attempts = itertools.count()
        self._acting = threading.RLock()  # one of poll() and move() acts on the actors at a time
        self.store = CheckpointStore(self.policy.checkpoint_dir) if self.policy.checkpoint_dir else None

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
        """What the supervisor did so far, oldest first (a copy)."""
        with self._lock:
            return list(self._events)

    def last_checkpoint(self, name: str) -> dict[str, Any] | None:
        """The newest checkpoint the supervisor holds of actor ``name`` (``None``: none yet).

        Raises:
            KeyError: for an actor this supervisor does not know.
        """
        with self._lock:
            return self._records[name].checkpoint

    # -- spawning -------------------------------------------------------------------------
    def spawn(self, spec: SpawnSpec) -> ActorRef:
        """Create the actor on a worker and supervise it.

        Returns:
            Its handle, which follows it across moves and restarts.
        """
        fut = self._submit(spec, list(spec.workers) if spec.workers else None, 0)
        actor = self._actor(fut)
        stored = self.store.load(spec.name) if self.store is not None and self.policy.resume else None
        if stored is not None:
            actor.restore(stored).result(timeout=CALL_SLACK)
            actor.commit(stored.get("delivered", {}), stored.get("takes")).result(timeout=CALL_SLACK)
        ref = ActorRef(spec.name, actor)
        ref.follow(self)
        worker = self._worker_of(fut)
        with self._lock:
            self._records[spec.name] = _Supervised(spec, ref, fut, worker, checkpoint=stored)
        if stored is not None:
            detail = f"from its stored checkpoint of {time.ctime(stored['time'])} ({self.store.path(spec.name)})"  # type: ignore[union-attr]
            self._record(SupervisionEvent(self.clock(), spec.name, "resumed", "", worker, detail))
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
            records = [self._records[n] for n in names] if names is not None else [
                r for r in self._records.values() if not r.given_up and r.ref.ending is None
            ]
        out = {}
        with self._acting:
            for rec in records:
                ck = rec.ref.proxy.checkpoint(timeout).result(timeout=timeout + CALL_SLACK)
                self._keep(rec, ck, strict=True)
                out[rec.spec.name] = ck
        return out

    def _keep(self, rec: _Supervised, ck: dict[str, Any], strict: bool = False) -> None:
        """Hold ``ck`` as the actor's last checkpoint, write it to the store, then commit its deliveries.

        The commit comes last: producers may forget messages only once the checkpoint
        that covers them is held (and stored, when there is a store).
        """
        rec.checkpoint, rec.checkpoint_at = ck, self.clock()
        if self.store is not None:
            try:
                self.store.save(rec.spec.name, ck)
            except CheckpointError as e:
                if strict:
                    raise
                self._record(SupervisionEvent(self.clock(), rec.spec.name, "checkpoint-failed", rec.worker, "", str(e)))
                logger.warning("coupler supervisor: %s", e)
        if ck.get("delivered") or ck.get("takes"):
            rec.ref.proxy.commit(ck.get("delivered", {}), ck.get("takes")).result(timeout=CALL_SLACK)

    def _submit(self, spec: SpawnSpec, workers: list[str] | None, generation: int) -> Future:
        # Every attempt gets a fresh key: a released key may linger on the scheduler for a moment.
        key = f"{self.key_prefix}-{spec.name}" + (f"-g{generation}-{next(self._attempts)}" if generation else "")
        return self.client.submit(
            spec.cls,
            *spec.args,
            name=spec.name,
            actor=True,
            workers=workers,
            resources=spec.resources,
            allow_other_workers=False,
            key=key,
            **spec.kwargs,
        )

    def _actor(self, fut: Future, timeout: float | None = None) -> Actor:
        """The actor of a spawn, bound to this coupling's client.

        distributed binds an Actor handle to the client current where it is
        deserialized: without ``as_current``, the newest Client alive in the
        process, which need not be ours. A Client whose connection failed stays
        that default until it is garbage collected; an actor bound to it sends
        its calls to a stopped event loop and waits for ever (a CI hang after
        the TLS tests, one run in two).
        """
        with self.client.as_current():
            return fut.result(timeout=timeout)

    def _worker_of(self, fut: Future) -> str:
        addrs = self.client.who_has([fut]).get(fut.key) or []
        if addrs:
            return addrs[0]
        return str(self._actor(fut).status().result(timeout=CALL_SLACK)["worker"])

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
        # Dask's actor proxy fails calls once the actor's future is no longer "finished" (its
        # worker was lost): read that state, not the error's text; comm errors are OSErrors.
        future_gone = rec.future is not None and rec.future.status not in ("finished", "pending")
        looks_lost = future_gone or (isinstance(error, OSError) and not isinstance(error, (TimeoutError, CouplerError)))
        if not looks_lost:
            return False
        deadline = time.monotonic() + LOSS_CONFIRMATION
        while time.monotonic() < deadline and not self._closing.is_set():
            if ref.generation != generation or rec.awaiting or rec.given_up or self._lost(rec, fresh=True):
                return True
            time.sleep(0.2)
        return False

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
        if rec.future is not None:
            # Cancelled, not just released: the handle's proxy holds a future of the same key, which
            # the garbage collector may free much later (a reference cycle); the instance goes now.
            self.client.cancel([rec.future], force=True)
            rec.future = None

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
            self._refresh_workers()
            with self._lock:
                # A released actor ended (an Ending, not a loss): nothing to move, restart or checkpoint.
                records = [r for r in self._records.values() if not r.given_up and r.ref.ending is None]
            for rec in _producers_first(records):
                if self._closing.is_set():
                    return
                if rec.awaiting:
                    continue
                if self._lost(rec):
                    self._lose(rec, f"worker {rec.worker} was lost")
                elif self._retiring(rec.worker, self.clock()):
                    self._hand_over(rec)
            for rec in records:
                if rec.awaiting and not self._closing.is_set() and self.clock() >= rec.retry_at:
                    self._try_place(rec)
            interval = self.policy.checkpoint_interval
            for rec in records:
                if interval and not rec.awaiting and not rec.given_up and self.clock() - rec.checkpoint_at >= interval:
                    self._periodic_checkpoint(rec)

    def _lost(self, rec: _Supervised, fresh: bool = False) -> bool:
        if rec.future is not None and rec.future.status == "error":
            return True
        live = self.client.scheduler_info(n_workers=-1)["workers"] if fresh else self._live
        return bool(live) and rec.worker not in live

    def _refresh_workers(self) -> None:
        self._live = dict(self.client.scheduler_info(n_workers=-1)["workers"])
        reported: dict[str, Any] = {}
        try:
            reported = self.client.sync(self.client.scheduler.coupler_snapshot).get("workers", {})
        except Exception as e:  # a broker without worker reports: ask the workers below
            logger.debug("coupler supervisor: no worker reports from the broker: %s", e)
        for addr, w in reported.items():
            if addr in self._live and "retire_at" in w:
                self._retire_cache[addr] = w["retire_at"]
        unknown = [a for a in self._live if a not in self._retire_cache]
        if unknown:
            answers = self.client.run(worker_retire_at, workers=unknown, on_error="return")
            for addr, value in answers.items():
                if not isinstance(value, BaseException):
                    self._retire_cache[addr] = value
        for addr in list(self._retire_cache):
            if addr not in self._live:
                del self._retire_cache[addr]

    def retire_times(self) -> dict[str, float | None]:
        """Each live worker's retirement time (epoch seconds; ``None``: no lifetime), as last seen."""
        return {a: self._retire_cache.get(a) for a in self._live}

    def _retiring(self, worker: str, now: float, margin: float | None = None) -> bool:
        at = self._retire_cache.get(worker)
        return at is not None and at - now < (self.policy.retire_margin if margin is None else margin)

    # -- placement ------------------------------------------------------------------------
    def _candidates(self, spec: SpawnSpec) -> list[str]:
        """Live workers with the actor's resources (and among its pinned workers if any are left)
        that do not retire within the margin; those that stay for two margins if there are any."""
        now = self.clock()
        ok = []
        for addr, info in self._live.items():
            if self._retiring(addr, now):
                continue
            have = info.get("resources", {}) or {}
            if spec.resources and any(have.get(r, 0) < q for r, q in spec.resources.items()):
                continue
            ok.append(addr)
        if spec.workers:
            pinned = [a for a in ok if a in spec.workers]
            ok = pinned or ok  # pinned workers that are gone must not strand the actor
        lasting = [a for a in ok if not self._retiring(a, now, 2 * self.policy.retire_margin)]
        return lasting or ok  # a worker that stays longer spares the actor a second move soon

    def _try_place(self, rec: _Supervised) -> bool:
        """Spawn a successor of an awaiting actor, restore it and bring it to its state.

        Returns:
            Whether it was placed (else it waits for the next poll, or is given up
            after the placement timeout).
        """
        spec = rec.spec
        candidates = self._candidates(spec)
        logger.debug("coupler supervisor: candidates for %r: %s (retire times %s)", spec.name, candidates, self._retire_cache)
        if candidates:
            fut = self._submit(spec, candidates, rec.generation + 1)
            try:
                actor = self._actor(fut, CALL_SLACK)
                if rec.resume is not None:
                    actor.restore(rec.resume).result(timeout=CALL_SLACK)
                    actor.commit(rec.resume.get("delivered", {}), rec.resume.get("takes")).result(timeout=CALL_SLACK)
                if rec.resume_state == "paused":
                    actor.pause().result(timeout=CALL_SLACK)
                if rec.resume_state in ("running", "paused"):
                    actor.start().result(timeout=CALL_SLACK)
                worker = self._worker_of(fut)
            except Exception as e:  # e.g. the chosen worker went away meanwhile: next poll
                rec.last_error = f"placing it on {candidates} failed: {e!r}"
                logger.warning("coupler supervisor: %r: %s", spec.name, rec.last_error)
                fut.release()
            else:
                kind, left = rec.awaiting, rec.left
                with self._lock:
                    rec.future, rec.worker, rec.generation = fut, worker, rec.generation + 1
                    rec.awaiting, rec.left = "", ""
                    if kind == "restarted":
                        rec.last_error = ""
                rec.checkpoint_at = self.clock()
                rec.ref.rebind(actor)
                if kind == "moved":
                    detail = "its worker retires"
                elif rec.resume is not None:
                    detail = f"worker lost; from its checkpoint of {time.ctime(rec.resume['time'])}"
                else:
                    detail = "worker lost; from scratch (no checkpoint yet)"
                detail += f"; {time.monotonic() - rec.awaiting_since:.1f} s without an instance"
                self._record(SupervisionEvent(self.clock(), spec.name, kind, left, worker, detail))
                logger.warning("coupler supervisor: %s %r from %s to %s (%s)", kind, spec.name, left, worker, detail)
                return True
        if time.monotonic() - rec.awaiting_since > self.policy.placement_timeout:
            why = rec.last_error or f"no live worker has its resources {spec.resources} and does not retire soon"
            self._give_up(rec, f"no worker could host it within {self.policy.placement_timeout} s ({why})")
        return False

    # -- moves, restarts, checkpoints ---------------------------------------------------------
    def move(self, name: str, timeout: float | None = None) -> str:
        """Move the actor ``name`` to another worker now (what happens when its worker retires).

        Args:
            name: the actor's name.
            timeout: seconds to wait for a worker to host it (default: the placement timeout).

        Returns:
            The new worker's address.

        Raises:
            KeyError: for an actor this supervisor does not know.
            CouplerError: if it could not hand over, or no other worker could host it in time.
        """
        with self._acting:
            with self._lock:
                rec = self._records[name]
            self._refresh_workers()
            avoid = rec.worker
            self._hand_over(rec)
            if rec.awaiting != "moved":
                raise CouplerError(f"actor {name!r} could not hand over on {avoid}: {rec.last_error}")
            deadline = time.monotonic() + (self.policy.placement_timeout if timeout is None else timeout)
            while True:
                self._refresh_workers()
                self._live.pop(avoid, None)  # asked to move: somewhere else
                if self._try_place(rec):
                    return rec.worker
                if rec.given_up or time.monotonic() > deadline:
                    raise CouplerError(f"actor {name!r} was handed over but not placed: {rec.last_error or 'no worker'}")
                time.sleep(self.policy.poll_interval)

    def _await(self, rec: _Supervised, kind: str, resume: dict[str, Any] | None, state: str, delay: float) -> None:
        with self._lock:
            rec.awaiting, rec.resume, rec.resume_state = kind, resume, state
            rec.awaiting_since = time.monotonic()
            rec.retry_at = self.clock() + delay
            rec.left = rec.worker
        if rec.future is not None:
            rec.future.release()  # the old instance is done with; its worker may retire cleanly
            rec.future = None

    def _hand_over(self, rec: _Supervised) -> None:
        """End the actor's loop at a step boundary and keep its final checkpoint for its successor."""
        name = rec.spec.name
        rec.ref.begin_move()
        old = rec.ref.proxy
        wait = self.policy.handover_timeout
        try:
            try:
                ck = old.retire(wait).result(timeout=wait + CALL_SLACK)
            except TimeoutError as e:
                logger.warning("coupler supervisor: %r did not reach a step boundary (%s); stopping it by force", name, e)
                ck = old.retire(wait, True).result(timeout=wait + CALL_SLACK)
        except Exception as e:  # its worker went first: restart from the last checkpoint instead
            rec.ref.end_move()
            logger.warning("coupler supervisor: %r could not hand over on %s: %r", name, rec.worker, e)
            self._lose(rec, f"hand-over on retiring worker {rec.worker} failed: {e!r}")
            return
        rec.checkpoint, rec.checkpoint_at = ck, self.clock()
        if self.store is not None:
            try:
                self.store.save(rec.spec.name, ck)
            except CheckpointError as e:  # the successor still gets it from memory
                logger.warning("coupler supervisor: %s", e)
        self._await(rec, "moved", ck, ck["status"]["state"], 0.0)

    def _lose(self, rec: _Supervised, why: str) -> None:
        """The actor's worker is gone: schedule a restart from its last checkpoint, or give up."""
        rec.last_error = why
        if rec.restarts >= self.policy.max_restarts:
            self._give_up(rec, f"lost {rec.restarts + 1} times, max-restarts={self.policy.max_restarts}")
            return
        rec.restarts += 1
        rec.ref.begin_move()
        ck = rec.checkpoint
        ended = ck is not None and ck["status"]["state"] in ("finished", "stopped", "failed")
        state = ck["status"]["state"] if ended and ck is not None else rec.ref.intent
        state = "created" if state == "stopped" and not ended else state
        self._await(rec, "restarted", ck, state, self.policy.restart_backoff * 2 ** (rec.restarts - 1))

    def _give_up(self, rec: _Supervised, why: str) -> None:
        error = ActorFailed(f"actor {rec.spec.name!r} cannot be kept alive: {why}; last error: {rec.last_error or 'none'}")
        with self._lock:
            rec.given_up = True
            rec.awaiting = ""
        rec.ref.fail(error)
        self._record(SupervisionEvent(self.clock(), rec.spec.name, "gave-up", rec.left or rec.worker, "", str(error)))
        logger.error("coupler supervisor: %s", error)

    def _periodic_checkpoint(self, rec: _Supervised) -> None:
        if rec.checkpoint is not None and rec.checkpoint["status"]["state"] in ("finished", "stopped", "failed"):
            return  # an ended actor does not change any more
        try:
            timeout = min(5.0, self.policy.checkpoint_interval)
            ck = rec.ref.proxy.checkpoint(timeout).result(timeout=timeout + CALL_SLACK)
            self._keep(rec, ck)
        except Exception as e:  # a step held up by back-pressure: try again next time
            self._record(SupervisionEvent(self.clock(), rec.spec.name, "checkpoint-failed", rec.worker, "", repr(e)))
            logger.info("coupler supervisor: checkpoint of %r failed: %r", rec.spec.name, e)
        rec.checkpoint_at = self.clock()

    def _record(self, event: SupervisionEvent) -> None:
        with self._lock:
            self._events.append(event)

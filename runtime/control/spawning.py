"""Actor instances: how an actor is spawned, and putting an instance on a worker in a given state.

The supervisor spawns every actor of a coupling, and spawns it again when its
worker retires or is lost. This module owns the mechanics of one spawn: the
recipe (:class:`SpawnSpec`), the Dask task that holds the instance (a fresh key
per attempt), the handle bound to the coupling's client, the worker it landed
on, and bringing a new instance to a checkpointed state (restore, commit,
pause, start). Which worker to choose, and when, is the supervisor's.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass
from typing import Any

from distributed import Actor, Client, Future

from coupler.runtime.errors import CouplerError
from coupler.runtime.launch.cluster import workers_with

logger = logging.getLogger(__name__)

# Seconds allowed for a control call's round trip on top of the wait it asks for.
CALL_SLACK = 30.0
# Seconds between looks at whether the workers a spawn is pinned to are still there.
PINNED_CHECK_S = 1.0
# Seconds a spawn waits before it says that the cluster has no worker at all.
NO_WORKER_WARN_S = 5.0


class HandOverIncomplete(RuntimeError):
    """A retired actor's final checkpoint cannot be resumed from (see ``ActorHost.retire``)."""


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


# What the supervisor calls on every actor host (coupler.actors.ActorHost, which the runtime does not import).
_HOST_METHODS = ("start", "stop", "status", "checkpoint", "restore", "retire")


def check_actor_class(cls: Any) -> None:
    """Refuse, at spawn, what is not an actor host class (it would fail later, on the worker).

    Raises:
        TypeError: naming what came.
    """
    if not isinstance(cls, type) or not all(callable(getattr(cls, m, None)) for m in _HOST_METHODS):
        raise TypeError(f"spawn expects an actor host class (a subclass of coupler.actors.ActorHost), got {cls!r}")


def check_ports(kind: str, ports: Any) -> None:
    """Refuse ports that are not a dict of port names to channel names.

    Args:
        kind: ``"inputs"`` or ``"outputs"``.
        ports: what was given (``None``: no ports).

    Raises:
        TypeError: naming what came.
    """
    if ports is None:
        return
    if not isinstance(ports, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in ports.items()):
        raise TypeError(f"{kind} must be a dict {{port name: channel name}}, got {ports!r:.120}")


class Spawner:
    """Spawn actor instances for one coupling.

    Args:
        client: the coupling's client.
        key_prefix: Dask key prefix for the actors' tasks (unique per coupling).
    """

    def __init__(self, client: Client, key_prefix: str) -> None:
        self.client = client
        self.key_prefix = key_prefix
        self._attempts = itertools.count()

    def submit(self, spec: SpawnSpec, workers: list[str] | None, generation: int) -> Future:
        """Submit the task that creates generation ``generation`` of the actor on one of ``workers``."""
        # Every attempt gets a fresh key, a first instance too: a released key may linger on the
        # scheduler for a moment, and a name spawned again after its release (its first instance
        # on a worker that was lost) would get the old task's "Worker holding Actor was lost".
        key = f"{self.key_prefix}-{spec.name}-g{generation}-{next(self._attempts)}"
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

    def actor(self, fut: Future, timeout: float | None = None, workers: list[str] | None = None) -> Actor:
        """The actor of a spawn, bound to this coupling's client.

        distributed binds an Actor handle to the client current where it is
        deserialized: without ``as_current``, the newest Client alive in the
        process, which need not be ours. A Client whose connection failed stays
        that default until it is garbage collected; an actor bound to it sends
        its calls to a stopped event loop and waits for ever (a CI hang after
        the TLS tests, one run in two).

        Args:
            fut: the spawn's future.
            timeout: seconds to wait for the instance.
            workers: the workers the spawn is pinned to: once none of them is
                alive, it can never start (the scheduler does not move a pinned
                task), so the wait ends then instead of at ``timeout``.

        Raises:
            TimeoutError: no instance within ``timeout``.
            CouplerError: every worker it was pinned to left first.
        """
        start = time.monotonic()
        deadline = None if timeout is None else start + timeout
        warned = False
        with self.client.as_current():
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                step = PINNED_CHECK_S if left is None else max(0.0, min(left, PINNED_CHECK_S))
                try:
                    return fut.result(timeout=step)
                except TimeoutError:
                    if deadline is not None and time.monotonic() >= deadline:
                        raise
                # A cluster with no worker (batch jobs still queued, or none asked for) holds the
                # spawn until one joins: legitimate, but say so rather than wait in silence.
                if not warned and time.monotonic() - start >= NO_WORKER_WARN_S and not workers_with(self.client):
                    logger.warning("spawn of %s waits for a worker: the cluster has none yet", fut.key)
                    warned = True
                # Only the scheduler knows whether they left: ask it (a cheap call, once a second).
                if workers and not workers_with(self.client, None, workers):
                    raise CouplerError(f"every worker it was placed on left before it started: {sorted(workers)}")

    def worker_of(self, fut: Future) -> str:
        """The address of the worker that holds the spawn's instance."""
        addrs = self.client.who_has([fut]).get(fut.key) or []
        if addrs:
            return addrs[0]
        return str(self.actor(fut).status().result(timeout=CALL_SLACK)["worker"])

    def place(
        self, spec: SpawnSpec, workers: list[str], generation: int, checkpoint: dict[str, Any] | None, state: str
    ) -> tuple[Future, Actor, str]:
        """Spawn generation ``generation`` of an actor on one of ``workers``, restored to ``checkpoint`` and ``state``.

        Returns:
            The spawn's future, the new instance, and its worker.

        Raises:
            Exception: whatever failed (the chosen worker went away meanwhile, say); the spawn is released.
        """
        fut = self.submit(spec, workers, generation)
        try:
            actor = self.actor(fut, CALL_SLACK, workers)
            self.restore(actor, checkpoint, state)
            return fut, actor, self.worker_of(fut)
        except Exception:
            fut.release()
            raise

    @staticmethod
    def restore(actor: Actor, checkpoint: dict[str, Any] | None, state: str = "created") -> None:
        """Bring a new instance to ``checkpoint`` (if any), then to ``state``.

        Args:
            actor: the new instance.
            checkpoint: what to restore; its deliveries are committed too (``None``: start afresh).
            state: ``running`` or ``paused`` start its loop (paused first); any other state leaves it as built.
        """
        if checkpoint is not None:
            actor.restore(checkpoint).result(timeout=CALL_SLACK)
            actor.commit(checkpoint.get("delivered", {}), checkpoint.get("takes"), checkpoint.get("outputs")).result(timeout=CALL_SLACK)
        if state == "paused":
            actor.pause().result(timeout=CALL_SLACK)
        if state in ("running", "paused"):
            actor.start().result(timeout=CALL_SLACK)

    @staticmethod
    def retire(name: str, actor: Actor, wait: float) -> dict[str, Any]:
        """End actor ``name``'s loop at a step boundary (by force after ``wait`` s) and return its final checkpoint.

        Raises:
            HandOverIncomplete: the loop ended, but a successor must not resume from its
                final checkpoint (see ``ActorHost.retire``): restart it from the last
                stored checkpoint instead, as for a lost worker.
            Exception: whatever the call raised (its worker went first, say).
        """
        try:
            ck = actor.retire(wait).result(timeout=wait + CALL_SLACK)
        except TimeoutError as e:
            logger.warning("coupler supervisor: %r did not reach a step boundary (%s); stopping it by force", name, e)
            ck = actor.retire(wait, True).result(timeout=wait + CALL_SLACK)
        if ck.get("incomplete"):
            # A move during a cut of a consumer's host lost the messages its link still held (they
            # leave with the worker) and, by force, the step it abandoned: 5 messages in 4 runs of 4.
            raise HandOverIncomplete(f"actor {name!r} handed over incompletely: {ck['incomplete']}")
        return ck

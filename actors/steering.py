"""Steering on a cluster: the actor that hosts a :class:`~coupler.learners.steerer.Steerer`.

:class:`SteeringActor` runs a :class:`~coupler.learners.steerer.Steerer` (the
decisions, free of the runtime, in :mod:`coupler.learners.steerer`) as an actor:
it sends tasks on a work-sharing channel, takes results from a result channel
as they arrive, refits after each arrival, proposes a new batch as soon as the
pool has room (there is no barrier between rounds: simulations keep running
while it fits and proposes) and broadcasts cancellations of running tasks the
strategy no longer needs. It finishes when ``budget`` tasks were issued and all
are answered.

The decisions come from an acquisition strategy with a surrogate, or from any
ask/tell optimiser (:class:`~coupler.learners.ask_tell.Generator`, e.g. an
Optuna study behind ten lines of glue; see docs/modulation.md). A generator's
suggestion may ask for resources (``{"GPU": 1}``): ``routes`` sends such tasks
to their own work-sharing channel, read by the pool members spawned with those
Dask worker resources (``coupling.spawn(..., resources={"GPU": 1})``).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from coupler.actors.base import ActorHost
from coupler.actors.pool import cancel_message, task_message
from coupler.learners.acquisition import ParameterSpace, Strategy
from coupler.learners.ask_tell import AskTellSteerer, Generator
from coupler.learners.steerer import Steerer as Steerer
from coupler.learners.steerer import SteeringSurrogate
from coupler.learners.steerer import TaskRecord as TaskRecord
from coupler.learners.steerer import overlap_seconds as overlap_seconds


class SteeringActor(ActorHost):
    """Runs a :class:`Steerer` against a pool of :class:`~coupler.actors.pool.SimulatorPoolActor`.

    Args:
        space: the parameter box.
        strategy: an acquisition strategy, or an ask/tell :class:`Generator` (then
            ``ensemble`` must be ``None``: the generator models what it likes).
        name: actor name.
        budget: tasks to issue in total.
        in_flight: most tasks outstanding at once (keep it about the pool's size
            times one plus its per-member prefetch, so sends do not block).
        batch: tasks proposed at a time, at most ``in_flight`` (a larger one is
            taken as ``in_flight``): the steerer waits for that many free slots,
            so one fit serves a batch, unless the budget ends first.
        ensemble: surrogate settings (``EnsembleConfig`` or ``GPConfig``; ``None``: no model, for sweeps).
        seed: seed of the surrogate.
        reissue_on_restore: after :meth:`restore`, send again the tasks that were
            pending at the checkpoint. A resume after the whole cluster was lost needs
            it (the messages in flight are in no checkpoint, and without them the sweep
            would wait forever); after a restart with the pool alive, the channel's
            replay already delivers them and a re-issued task may run twice -- its
            second answer is counted in ``answers`` and ignored.
        routes: ``{resource: output port}``: a task whose suggestion asks for a
            positive amount of ``resource`` goes to that port instead of ``tasks``
            (the first matching route in this order); ``None``: every task to ``tasks``.
            A task that asks for a resource no route names is refused (the actor
            fails saying so): its pool could not honour it.
        inputs: ``{"results": <channel>}``.
        outputs: ``{"tasks": <shared Queue>}``, one more shared Queue per route, and
            optionally ``{"cancel": <Queue>}``.
        **kwargs: passed to :class:`ActorHost`.

    Raises:
        ValueError: for missing ports, a route to a port not in ``outputs``,
            non-positive sizes, or a generator with a surrogate.
    """

    def __init__(
        self,
        space: ParameterSpace,
        strategy: Strategy | Generator,
        *,
        name: str,
        budget: int,
        in_flight: int = 4,
        batch: int = 2,
        ensemble: SteeringSurrogate | None = None,
        seed: int = 0,
        reissue_on_restore: bool = True,
        routes: dict[str, str] | None = None,
        inputs: dict[str, str] | None = None,
        outputs: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        if "results" not in (inputs or {}) or "tasks" not in (outputs or {}):
            raise ValueError(
                f"SteeringActor needs inputs={{'results': ...}} and outputs={{'tasks': ...}}, "
                f"got inputs={inputs!r}, outputs={outputs!r}"
            )
        if budget < 1 or in_flight < 1 or batch < 1:
            raise ValueError(f"budget, in_flight and batch must be >= 1, got {budget}, {in_flight}, {batch}")
        unrouted = sorted(set((routes or {}).values()) - set(outputs or {}))
        if unrouted:
            raise ValueError(f"routes name output ports {unrouted} that are not in outputs {sorted(outputs or {})}")
        super().__init__(name=name, inputs=inputs, outputs=outputs, **kwargs)
        if isinstance(strategy, Generator):
            if ensemble is not None:
                raise ValueError(f"a generator steers without a surrogate; got ensemble={ensemble!r}")
            self.steerer: Steerer = AskTellSteerer(space, strategy)
        else:
            self.steerer = Steerer(space, strategy, ensemble, seed)
        self.routes = dict(routes or {})
        # A batch larger than the slots would wait for free slots that never come (in_flight=1
        # with the default batch of 2 hung without a word).
        self.budget, self.in_flight, self.batch = budget, in_flight, min(batch, in_flight)
        self.activity: list[tuple[str, float, float]] = []  # (what, start, end), wall clock
        self.exhausted = False
        self.reissue_on_restore = reissue_on_restore
        self._reissue: list[int] = []  # pending at the checkpoint restored from; sent at the first step
        self.reissued = 0

    def _send(self, task: int) -> None:
        """Send a task on its route: the port of the first resource it needs, else ``tasks``."""
        need = self.steerer.resources(task)
        unrouted = sorted(r for r, amount in need.items() if amount > 0 and r not in self.routes)
        if unrouted:
            # Sent to "tasks", it would run on whatever members read it, GPU or not, without a word.
            raise ValueError(
                f"task {task} asks for {need} but routes={self.routes} names no output port for {unrouted}: "
                f"add routes={{{unrouted[0]!r}: '<port>'}} and a pool with those resources reading it"
            )
        port = next((p for r, p in self.routes.items() if need.get(r, 0) > 0), "tasks")
        self.outputs[port].send(task_message(task, self.steerer.tasks[task].x))

    def step(self) -> bool:
        if self._reissue:
            for t in self._reissue:
                self._send(t)
            self.reissued += len(self._reissue)
            self._reissue = []
        arrived = self._take_results(wait=0.0)
        if arrived:
            self._learn()
        proposed = self._propose()
        issued = len(self.steerer.tasks)
        if (issued >= self.budget or self.exhausted) and not self.steerer.pending():
            return False
        if not arrived and not proposed and self._take_results(wait=0.5):  # idle until a result comes
            self._learn()
        return True

    def _learn(self) -> None:
        """After results: refit the surrogate, then cancel what it makes pointless."""
        t0 = time.time()
        if self.steerer.refit() is not None:
            self.activity.append(("fit", t0, time.time()))
        self._cancel_pointless()

    def _take_results(self, wait: float) -> int:
        port, n = self.inputs["results"], 0
        while (m := port.receive(timeout=wait if n == 0 else 0, default=None)) is not None:
            d = m.data
            self.steerer.record(
                int(d["task"]), int(d["status"]), float(d["qoi"]), x=np.asarray(d["x"], np.float32),
                member=str(m.meta.get("member", "")),
                error=str(m.meta.get("error", "")), started=float(d["started"]), finished=float(d["finished"]),
            )  # fmt: skip
            n += 1
        return n

    def _cancel_pointless(self) -> None:
        port = self.outputs.get("cancel")
        if port is None:
            return
        for t in self.steerer.pointless():
            port.send(cancel_message(t))
            self.steerer.tasks[t].cancel_sent = True

    def _propose(self) -> int:
        free = self.in_flight - len(self.steerer.pending())
        left = self.budget - len(self.steerer.tasks)
        n = min(self.batch, free, left)
        # Wait for a whole batch of free slots (one fit per batch), unless the budget ends first.
        if n <= 0 or self.exhausted or (n < self.batch and n < left):
            return 0
        t0 = time.time()
        new = self.steerer.propose(n)
        if not new:
            self.exhausted = True  # a finite sweep has no more points
            return 0
        # The deciding is steering; the sends after it may wait for a free pool member (the
        # tasks queue's backpressure) and are not.
        self.activity.append(("propose", t0, time.time()))
        for rec in new:
            self._send(rec.task)
        return len(new)

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The steerer (tasks, surrogate, strategy), its activity log and whether the sweep ran out.

        Tasks still to re-issue from an earlier restore that have not been sent yet are
        pending tasks, so they are re-issued again by the next restore.
        """
        return {
            "steerer": self.steerer.state_dict(),
            "activity": [tuple(a) for a in self.activity],
            "exhausted": self.exhausted,
            "reissued": self.reissued,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` of a steering actor built with the same arguments.

        Raises:
            ValueError: if keys are missing or the steerer's state does not fit.
        """
        missing = sorted({"steerer", "activity", "exhausted", "reissued"} - set(state))
        if missing:
            raise ValueError(f"SteeringActor {self.name!r}: checkpoint state lacks {missing}; got keys {sorted(state)}")
        self.steerer.load_state_dict(state["steerer"])
        self.activity = [(str(w), float(a), float(b)) for w, a, b in state["activity"]]
        self.exhausted, self.reissued = bool(state["exhausted"]), int(state["reissued"])
        pending = [t for t in self.steerer.pending() if not self.steerer.tasks[t].cancel_sent]
        self._reissue = pending if self.reissue_on_restore else []

    # -- remote reads (short) ------------------------------------------------------------
    def history(self) -> list[dict[str, Any]]:
        """Every task as plain data, in proposal order."""
        return [
            {"task": r.task, "x": r.x.tolist(), "status": r.status, "qoi": r.qoi, "member": r.member, "error": r.error,
             "proposed_at": r.proposed_at, "started": r.started, "finished": r.finished, "cancel_sent": r.cancel_sent,
             "answers": r.answers}
            for r in list(self.steerer.tasks.values())
        ]  # fmt: skip

    def steering_activity(self) -> list[tuple[str, float, float]]:
        """``(what, start, end)`` of every fit and proposal, wall clock."""
        return list(self.activity)

    def generator(self) -> Generator | None:
        """The ask/tell generator as it is now (a copy comes back to the caller); ``None`` with a strategy."""
        return self.steerer.generator if isinstance(self.steerer, AskTellSteerer) else None

    def info(self) -> dict[str, Any]:
        best = self.steerer.best()
        return {
            "issued": len(self.steerer.tasks),
            "pending": len(self.steerer.pending()),
            "fits": self.steerer.fits,
            "reissued": self.reissued,
            "best_qoi": None if best is None else best.qoi,
            "best_x": None if best is None else best.x.tolist(),
        }

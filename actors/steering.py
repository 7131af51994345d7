"""Steering: a learner that decides which simulations a pool runs next.

:class:`Steerer` is the decision-maker, free of the runtime (the benchmark drives
it in-process): it keeps every task (proposed, running, answered, failed,
cancelled), fits a :class:`~coupler.learners.ensemble.DeepEnsemble` to the
answered ones and asks an acquisition strategy for the next batch.

:class:`SteeringActor` runs a :class:`Steerer` as an actor: it sends tasks on a
work-sharing channel, takes results from a result channel as they arrive,
refits after each arrival, proposes a new batch as soon as the pool has room
(there is no barrier between rounds: simulations keep running while it fits and
proposes) and broadcasts cancellations of running tasks the strategy no longer
needs. It finishes when ``budget`` tasks were issued and all are answered.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coupler.actors.base import ActorHost
from coupler.actors.pool import TaskStatus, cancel_message, task_message
from coupler.learners.acquisition import ParameterSpace, SearchData, Strategy
from coupler.learners.ensemble import DeepEnsemble, EnsembleConfig

PENDING = -1
"""Status of a task proposed and not yet answered (the others are :class:`TaskStatus`)."""


@dataclass
class TaskRecord:
    """One task's life: what was asked, when, and what came back."""

    task: int
    x: np.ndarray
    proposed_at: float
    status: int = PENDING
    qoi: float = float("nan")
    member: str = ""
    error: str = ""
    started: float = 0.0
    finished: float = 0.0
    cancel_sent: bool = False
    answers: int = 0  # results received for it: exactly one when the pool works as it should


@dataclass
class Steerer:
    """Proposes parameter batches from a surrogate fitted to the results so far.

    Args:
        space: the parameter box.
        strategy: the acquisition strategy (grid and random sweeps work too).
        ensemble: surrogate hyperparameters; ``None`` fits no model (sweeps).
        seed: seed of the surrogate.
    """

    space: ParameterSpace
    strategy: Strategy
    ensemble: EnsembleConfig | None = None
    seed: int = 0
    tasks: dict[int, TaskRecord] = field(default_factory=dict)
    fits: int = 0

    def __post_init__(self) -> None:
        self.model = DeepEnsemble(self.ensemble, self.space.dim, self.seed) if self.ensemble is not None else None
        self._fitted_on = 0

    # -- bookkeeping ---------------------------------------------------------------------
    def pending(self) -> list[int]:
        """Ids of tasks proposed and not yet answered."""
        return [t for t, r in list(self.tasks.items()) if r.status == PENDING]

    def answered(self) -> list[TaskRecord]:
        """Tasks with a successful result, in order of arrival."""
        done = [r for r in list(self.tasks.values()) if r.status == TaskStatus.OK]
        return sorted(done, key=lambda r: r.finished)

    def data(self) -> SearchData:
        """What the strategy decides from; failed points count as pending so they are not retried."""
        done = self.answered()
        x = np.array([self.space.to_unit(r.x[None])[0] for r in done], np.float32).reshape(-1, self.space.dim)
        y = np.array([r.qoi for r in done], np.float32)
        avoid = [r.x for r in self.tasks.values() if r.status in (PENDING, TaskStatus.FAILED)]
        pend = self.space.to_unit(np.array(avoid).reshape(-1, self.space.dim))
        fitted = self.model is not None and self._fitted_on > 0
        return SearchData(x=x, y=y, pending=pend, predict=self.model.predict if fitted else None)

    def best(self) -> TaskRecord | None:
        """The answered task with the largest quantity of interest."""
        done = self.answered()
        return max(done, key=lambda r: r.qoi) if done else None

    # -- decisions -----------------------------------------------------------------------
    def propose(self, n: int) -> list[TaskRecord]:
        """Register and return up to ``n`` new tasks (fewer when a finite sweep runs out)."""
        now = time.time()
        xs = self.space.from_unit(self.strategy.propose(n, self.data()))
        out = []
        for x in xs:
            # Not len(tasks): tasks adopted from an earlier incarnation may leave gaps.
            rec = TaskRecord(task=max(self.tasks, default=-1) + 1, x=np.asarray(x, np.float32), proposed_at=now)
            self.tasks[rec.task] = rec
            out.append(rec)
        return out

    def record(self, task: int, status: int, qoi: float, *, x: np.ndarray | None = None, member: str = "",
               error: str = "", started: float = 0.0, finished: float = 0.0) -> None:  # fmt: skip
        """Take a result; a second result for the same task is counted (``answers``) and ignored.

        With ``x`` (the parameters the pool actually ran), the result is the truth about
        that task id: after a restore from a checkpoint, the pool may answer tasks an
        earlier incarnation sent after that checkpoint -- an id this steerer has not
        proposed yet (adopted as a task) or one it proposed again with other parameters
        (the channel kept the first version of that message, so ``x`` is replaced).

        Raises:
            KeyError: for a task this steerer never proposed, when ``x`` is not given.
        """
        if task not in self.tasks:
            if x is None:
                raise KeyError(f"result for task {task}, but only tasks {sorted(self.tasks)} were proposed")
            self.tasks[task] = TaskRecord(task=task, x=np.asarray(x, np.float32), proposed_at=started)
        rec = self.tasks[task]
        rec.answers += 1
        if rec.answers > 1:
            return
        if x is not None:
            rec.x = np.asarray(x, np.float32).reshape(rec.x.shape)
        rec.status, rec.qoi, rec.member, rec.error = int(status), float(qoi), member, error
        rec.started, rec.finished = started, finished or time.time()

    def refit(self) -> float | None:
        """Fit the surrogate if results arrived since the last fit; returns the loss (``None``: no fit)."""
        done = self.answered()
        if self.model is None or len(done) == self._fitted_on or not done:
            return None
        x = self.space.to_unit(np.array([r.x for r in done]))
        loss = self.model.fit(x, np.array([r.qoi for r in done], np.float32))
        self._fitted_on = len(done)
        self.fits += 1
        return loss

    def state_dict(self) -> dict[str, Any]:
        """Every task, the fit count, the surrogate and the strategy, as plain data.

        The strategy's state (generator, initial design) is included when it offers
        ``state_dict``; one that does not starts over from its construction.
        """
        fields = ("status", "qoi", "member", "error", "proposed_at", "started", "finished", "cancel_sent", "answers")
        tasks = [{"task": r.task, "x": r.x.copy(), **{f: getattr(r, f) for f in fields}} for r in list(self.tasks.values())]
        save = getattr(self.strategy, "state_dict", None)
        return {
            "tasks": tasks,
            "fits": self.fits,
            "fitted_on": self._fitted_on,
            "model": None if self.model is None else self.model.state_dict(),
            "strategy": None if save is None else save(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` of a steerer built with the same arguments.

        Raises:
            ValueError: if the state has a surrogate and this steerer none, or the other way round.
        """
        if (state["model"] is None) != (self.model is None):
            raise ValueError(
                f"the state {'has no' if state['model'] is None else 'has a'} surrogate, this steerer "
                f"{'has one' if self.model is not None else 'has none'}"
            )
        self.tasks = {}
        for t in state["tasks"]:
            rec = TaskRecord(task=int(t["task"]), x=np.asarray(t["x"], np.float32), proposed_at=float(t["proposed_at"]))
            rec.status, rec.qoi, rec.member, rec.error = int(t["status"]), float(t["qoi"]), str(t["member"]), str(t["error"])
            rec.started, rec.finished = float(t["started"]), float(t["finished"])
            rec.cancel_sent, rec.answers = bool(t["cancel_sent"]), int(t["answers"])
            self.tasks[rec.task] = rec
        self.fits, self._fitted_on = int(state["fits"]), int(state["fitted_on"])
        if self.model is not None:
            self.model.load_state_dict(state["model"])
        load = getattr(self.strategy, "load_state_dict", None)
        if load is not None and state["strategy"] is not None:
            load(state["strategy"])

    def pointless(self) -> list[int]:
        """Pending tasks the strategy no longer needs (not already cancelled)."""
        ids = [t for t in self.pending() if not self.tasks[t].cancel_sent]
        if not ids:
            return []
        units = self.space.to_unit(np.array([self.tasks[t].x for t in ids]))
        mask = self.strategy.pointless(units, self.data())
        return [t for t, drop in zip(ids, mask) if drop]


def overlap_seconds(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    """Total time during which some interval of ``a`` and some interval of ``b`` both hold.

    Args:
        a: ``(start, end)`` intervals (e.g. the steerer fitting and proposing).
        b: ``(start, end)`` intervals (e.g. simulations running).

    Returns:
        The measure of ``union(a) & union(b)``, in the intervals' units.
    """

    def union(iv: list[tuple[float, float]]) -> list[tuple[float, float]]:
        out: list[tuple[float, float]] = []
        for s, e in sorted((s, e) for s, e in iv if e > s):
            if out and s <= out[-1][1]:
                out[-1] = (out[-1][0], max(out[-1][1], e))
            else:
                out.append((s, e))
        return out

    total, ua, ub = 0.0, union(a), union(b)
    for s1, e1 in ua:
        for s2, e2 in ub:
            total += max(0.0, min(e1, e2) - max(s1, s2))
    return total


class SteeringActor(ActorHost):
    """Runs a :class:`Steerer` against a pool of :class:`~coupler.actors.pool.SimulatorPoolActor`.

    Args:
        space: the parameter box.
        strategy: acquisition strategy.
        name: actor name.
        budget: tasks to issue in total.
        in_flight: most tasks outstanding at once (keep it about the pool's size
            times one plus its per-member prefetch, so sends do not block).
        batch: tasks proposed at a time (fewer when fewer slots are free).
        ensemble: surrogate hyperparameters (``None``: no model, for sweeps).
        seed: seed of the surrogate.
        reissue_on_restore: after :meth:`restore`, send again the tasks that were
            pending at the checkpoint. A resume after the whole cluster was lost needs
            it (the messages in flight are in no checkpoint, and without them the sweep
            would wait forever); after a restart with the pool alive, the channel's
            replay already delivers them and a re-issued task may run twice -- its
            second answer is counted in ``answers`` and ignored.
        inputs: ``{"results": <channel>}``.
        outputs: ``{"tasks": <shared Queue>}`` and optionally ``{"cancel": <Queue>}``.
        **kwargs: passed to :class:`ActorHost`.

    Raises:
        ValueError: for missing ports or non-positive sizes.
    """

    def __init__(
        self,
        space: ParameterSpace,
        strategy: Strategy,
        *,
        name: str,
        budget: int,
        in_flight: int = 4,
        batch: int = 2,
        ensemble: EnsembleConfig | None = None,
        seed: int = 0,
        reissue_on_restore: bool = True,
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
        super().__init__(name=name, inputs=inputs, outputs=outputs, **kwargs)
        self.steerer = Steerer(space, strategy, ensemble, seed)
        self.budget, self.in_flight, self.batch = budget, in_flight, batch
        self.activity: list[tuple[str, float, float]] = []  # (what, start, end), wall clock
        self.exhausted = False
        self.reissue_on_restore = reissue_on_restore
        self._reissue: list[int] = []  # pending at the checkpoint restored from; sent at the first step
        self.reissued = 0

    def step(self) -> bool:
        if self._reissue:
            for t in self._reissue:
                self.outputs["tasks"].send(task_message(t, self.steerer.tasks[t].x))
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
        for rec in new:
            self.outputs["tasks"].send(task_message(rec.task, rec.x))
        self.activity.append(("propose", t0, time.time()))
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

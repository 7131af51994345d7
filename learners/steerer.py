"""Steering's decision-maker, free of the runtime: which simulations to run next.

:class:`Steerer` keeps every task (proposed, running, answered, failed,
cancelled), fits a :class:`~coupler.learners.ensemble.DeepEnsemble` to the
answered ones and asks an acquisition strategy (:mod:`coupler.learners.acquisition`)
for the next batch. It runs in-process (the benchmark drives it directly) and is
hosted on a cluster by the steering actor host (``actors/``, which this package
never imports): the host only moves its tasks and results over channels.

Results may arrive in any order and while later batches run: :meth:`Steerer.data`
treats every proposed, unanswered point as pending, so a strategy keeps new
proposals away from them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np

from coupler.learners.acquisition import ParameterSpace, SearchData, Strategy
from coupler.learners.ensemble import DeepEnsemble, EnsembleConfig
from coupler.learners.gp import GaussianProcess, GPConfig

SteeringSurrogate = EnsembleConfig | GPConfig
"""What a steerer fits: a deep ensemble (many points, cheap batched fits) or a GP (few dimensions, few points)."""


class TaskStatus(IntEnum):
    """Outcome of a task, as carried in a result's ``status`` field."""

    OK = 0
    FAILED = 1
    CANCELLED = 2


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
        ensemble: the surrogate's settings: an :class:`EnsembleConfig` (a
            :class:`DeepEnsemble`) or a :class:`GPConfig` (a :class:`GaussianProcess`);
            ``None`` fits no model (sweeps).
        seed: seed of the surrogate.
    """

    space: ParameterSpace
    strategy: Strategy
    ensemble: SteeringSurrogate | None = None
    seed: int = 0
    tasks: dict[int, TaskRecord] = field(default_factory=dict)
    fits: int = 0

    def __post_init__(self) -> None:
        self.model: DeepEnsemble | GaussianProcess | None = None
        if isinstance(self.ensemble, GPConfig):
            self.model = GaussianProcess(self.ensemble, self.space.dim, self.seed)
        elif self.ensemble is not None:
            self.model = DeepEnsemble(self.ensemble, self.space.dim, self.seed)
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
        joint = getattr(self.model, "joint", None) if fitted else None
        loo = getattr(self.model, "leave_one_out", None) if fitted else None
        lengths = getattr(self.model, "length_scales", None) if fitted else None
        return SearchData(x=x, y=y, pending=pend, predict=self.model.predict if fitted else None, covariance=joint,
                          leave_one_out=loo, length_scales=lengths)  # fmt: skip

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

    def resources(self, task: int) -> dict[str, float]:
        """What a task needs of the pool member that runs it: nothing (any member); an
        :class:`~coupler.learners.ask_tell.AskTellSteerer` passes on its generator's requests."""
        del task
        return {}

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

"""Bring your own optimiser: any ask/tell generator steers the simulations.

Optimisation libraries converge on one interface (Optuna's ``study.ask`` /
``study.tell``, Xopt, Optimas and libEnsemble's generator standard, BoTorch
loops): a *generator* is asked for ``n`` points and told their results. A class
with these two methods is a :class:`Generator`::

    class Generator(Protocol):
        def ask(self, n: int) -> list[Suggestion]: ...
        def tell(self, results: list[Outcome]) -> None: ...

and :class:`AskTellSteerer` runs it wherever a
:class:`~coupler.learners.steerer.Steerer` runs: in-process, or hosted by the steering
actor host (``actors/``) in front of a pool of simulator
actors (pass the generator where a strategy goes). Results are told as they
arrive, one :class:`Outcome` per task, in any order and while other points run.

Optional methods a generator may offer:

- ``pointless(running: list[Suggestion]) -> list[bool]``: running points whose
  result it no longer needs; the host cancels them and they come back as
  ``CANCELLED`` outcomes.
- ``state_dict() -> dict`` / ``load_state_dict(state)``: its state as plain
  data, stored in the steerer's checkpoint (a generator without them must
  persist itself, e.g. an Optuna study on an RDB storage).

A :class:`Suggestion` names each parameter of the
:class:`~coupler.learners.acquisition.ParameterSpace`, may ask for resources for
its task (``{"GPU": 1}``; the host routes the task to the pool members that
have them, see ``SteeringActor(routes=...)``) and carries the generator's own
handle (an Optuna trial number, say: plain data, so checkpoints keep it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from coupler.learners.acquisition import ParameterSpace, SearchData
from coupler.learners.steerer import Steerer, TaskRecord, TaskStatus


@dataclass(frozen=True)
class Suggestion:
    """One point a generator asks to simulate.

    Attributes:
        params: a value for every parameter of the space, by name.
        resources: what its task needs, e.g. ``{"GPU": 1}`` (empty: any pool member).
        handle: the generator's own id for it (plain data: ``int`` or ``str``).
    """

    params: dict[str, float]
    resources: dict[str, float] = field(default_factory=dict)
    handle: int | str = ""


@dataclass(frozen=True)
class Outcome:
    """What became of a suggestion.

    Attributes:
        suggestion: the point, as the generator suggested it.
        task: the steerer's task id.
        status: ``OK``, ``FAILED`` or ``CANCELLED``.
        value: the quantity of interest (NaN unless ``OK``).
        error: the failure's text (empty unless ``FAILED``).
    """

    suggestion: Suggestion
    task: int
    status: TaskStatus
    value: float
    error: str = ""


@runtime_checkable
class Generator(Protocol):
    """What a third-party optimiser offers to steer simulations."""

    def ask(self, n: int) -> list[Suggestion]:
        """Up to ``n`` points to simulate next (fewer, or none, when it has no more), inside the space's bounds."""
        ...

    def tell(self, results: list[Outcome]) -> None:
        """Results of earlier suggestions, in the order they arrived."""
        ...


@dataclass
class _Asked:
    """The Strategy face of a generator: ``propose`` is ``ask``; the suggestions wait for their task ids."""

    space: ParameterSpace
    generator: Generator
    uses_model: bool = field(default=False, init=False)
    waiting: list[Suggestion] = field(default_factory=list)

    def propose(self, n: int, data: SearchData) -> np.ndarray:
        asked = self.generator.ask(n)
        if asked is None or isinstance(asked, (str, bytes, Suggestion, dict)):
            raise TypeError(f"generator.ask({n}) must return a list of up to {n} Suggestion, got {asked!r}")
        got = list(asked)
        if len(got) > n:
            raise ValueError(f"the generator was asked for {n} points and gave {len(got)}")
        rows = []
        for s in got:
            _check_suggestion(s)
            missing = sorted(set(self.space.names) - set(s.params))
            extra = sorted(set(s.params) - set(self.space.names))
            if missing or extra:
                raise ValueError(f"a suggestion must name exactly the parameters {list(self.space.names)}; "
                                 f"got {sorted(s.params)} (missing {missing}, unknown {extra})")  # fmt: skip
            row = [float(s.params[name]) for name in self.space.names]
            for name, v, lo, hi in zip(self.space.names, row, self.space.lower, self.space.upper):
                # The pool would simulate it as given: a typo'd bound or a unit slip runs meaningless cases.
                if not lo <= v <= hi:
                    raise ValueError(f"a suggestion's {name} must lie in the space's [{lo:g}, {hi:g}]; got {v!r}")
            rows.append(row)
        self.waiting = got
        return self.space.to_unit(np.array(rows, np.float64).reshape(-1, self.space.dim))

    def pointless(self, pending: np.ndarray, data: SearchData) -> np.ndarray:
        return np.zeros(len(pending), bool)  # the steerer asks the generator itself, by task


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _check_suggestion(s: Any) -> None:
    """Refuse what a checkpoint or the pool could not take as it was meant.

    Raises:
        TypeError: for something that is not a :class:`Suggestion`, a parameter
            or resource amount that is not a number (``"0.5"`` would be read as
            0.5 by ``float``), or a handle that is not an ``int`` or a ``str`` (a
            tuple broke the restore, 2.5 came back as 2).
        ValueError: for a negative or NaN resource amount.
    """
    if not isinstance(s, Suggestion):
        raise TypeError(f"generator.ask() must give Suggestion objects, got {type(s).__name__}: {s!r}")
    bad = {k: v for k, v in dict(s.params).items() if not _is_number(v)}
    if bad:
        raise TypeError(f"a suggestion's parameters must be numbers, got {bad!r}")
    bad = {k: v for k, v in dict(s.resources).items() if not _is_number(v) or not isinstance(k, str)}
    if bad:
        raise TypeError(f"a suggestion's resources must map names to amounts, got {bad!r}")
    if any(not v >= 0 for v in s.resources.values()):
        raise ValueError(f"a suggestion's resource amounts must be >= 0, got {dict(s.resources)!r}")
    if isinstance(s.handle, bool) or not isinstance(s.handle, (int, np.integer, str)):
        raise TypeError(f"a suggestion's handle must be an int or a str (plain data a checkpoint keeps), got {s.handle!r}")


def _suggestion_state(s: Suggestion) -> dict[str, Any]:
    handle = s.handle if isinstance(s.handle, str) else int(s.handle)
    return {"params": dict(s.params), "resources": dict(s.resources), "handle": handle}


def _suggestion_from(state: dict[str, Any]) -> Suggestion:
    handle = state["handle"]
    return Suggestion({str(k): float(v) for k, v in state["params"].items()},
                      {str(k): float(v) for k, v in state["resources"].items()},
                      handle if isinstance(handle, str) else int(handle))  # fmt: skip


class AskTellSteerer(Steerer):
    """A :class:`Steerer` whose decisions come from an ask/tell :class:`Generator`.

    It keeps the steerer's task book (so the host, checkpoints and the
    exactly-once accounting work unchanged) and fits no surrogate: the generator
    models what it likes. Each task's first answer is told to the generator at
    once; a duplicate answer is not told again.

    Args:
        space: the parameter box (the names the suggestions use).
        generator: the optimiser.

    Raises:
        TypeError: if ``generator`` lacks ``ask`` or ``tell``.
    """

    def __init__(self, space: ParameterSpace, generator: Generator) -> None:
        if not isinstance(generator, Generator):
            raise TypeError(f"a generator needs ask(n) and tell(results); got {type(generator).__name__}")
        super().__init__(space, _Asked(space, generator), None, 0)
        self.generator = generator
        self.suggestions: dict[int, Suggestion] = {}
        self.told = 0

    def propose(self, n: int) -> list[TaskRecord]:
        """Ask the generator for up to ``n`` points and register them as tasks."""
        asked = self.strategy
        assert isinstance(asked, _Asked)
        out = super().propose(n)
        for rec, s in zip(out, asked.waiting, strict=True):
            self.suggestions[rec.task] = s
        return out

    def record(self, task: int, status: int, qoi: float, *, x: np.ndarray | None = None, member: str = "",
               error: str = "", started: float = 0.0, finished: float = 0.0) -> None:  # fmt: skip
        """Take a result (see :meth:`Steerer.record`) and tell the generator its first answer.

        A task adopted from an earlier incarnation (no suggestion of this one) is told
        as a suggestion of the parameters the pool ran, with no handle.
        """
        super().record(task, status, qoi, x=x, member=member, error=error, started=started, finished=finished)
        rec = self.tasks[task]
        if rec.answers != 1:
            return
        if task not in self.suggestions:
            self.suggestions[task] = Suggestion({n: float(v) for n, v in zip(self.space.names, rec.x)})
        st = TaskStatus(rec.status)
        value = rec.qoi if st == TaskStatus.OK else float("nan")
        self.generator.tell([Outcome(self.suggestions[task], task, st, value, rec.error)])
        self.told += 1

    def refit(self) -> None:
        """Nothing to fit: the generator learns from what it is told."""
        return None

    def resources(self, task: int) -> dict[str, float]:
        """What the task's suggestion asked for (empty: any pool member)."""
        s = self.suggestions.get(task)
        return {} if s is None else dict(s.resources)

    def pointless(self) -> list[int]:
        """Running tasks the generator no longer needs (when it offers ``pointless``).

        Raises:
            ValueError: the generator answers for another number of tasks than are running.
        """
        ask = getattr(self.generator, "pointless", None)
        ids = [t for t in self.pending() if not self.tasks[t].cancel_sent]
        if ask is None or not ids:
            return []
        mask = list(ask([self.suggestions[t] for t in ids]))
        if len(mask) != len(ids):
            raise ValueError(f"generator.pointless gave {len(mask)} answers for {len(ids)} running suggestions")
        return [t for t, drop in zip(ids, mask) if drop]

    def state_dict(self) -> dict[str, Any]:
        """The task book, every suggestion, and the generator's state when it offers ``state_dict``."""
        save = getattr(self.generator, "state_dict", None)
        return {
            **super().state_dict(),
            "suggestions": [{"task": t, **_suggestion_state(s)} for t, s in self.suggestions.items()],
            "told": self.told,
            "generator": None if save is None else save(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`; the generator's state is loaded when both sides have one.

        Raises:
            ValueError: if the state lacks the suggestions.
        """
        if "suggestions" not in state:
            raise ValueError(f"not the state of an AskTellSteerer: no 'suggestions' among {sorted(state)}")
        super().load_state_dict(state)
        self.suggestions = {int(s["task"]): _suggestion_from(s) for s in state["suggestions"]}
        self.told = int(state["told"])
        load = getattr(self.generator, "load_state_dict", None)
        if load is not None and state["generator"] is not None:
            load(state["generator"])

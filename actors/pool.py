"""A member of a simulator pool: takes tasks from a work-sharing channel, returns results.

Channels (the message layouts are fixed, so every channel's spec is too):

- ``tasks`` (input, ``Queue(maxsize, shared=True)``): ``{"task": int64, "x": float32 (d,)}``;
  the work-sharing queue hands each task to exactly one member.
- ``cancel`` (optional input, a broadcast ``Queue``): ``{"task": int64}``; every
  member sees every cancellation. A member skips a cancelled task it has not
  started and abandons one it is running at the next chunk boundary.
- ``results`` (output): ``{"task", "x", "qoi": float32, "status": int32,
  "started": float64, "finished": float64}`` (wall-clock seconds), with
  ``meta = {"member": name, "error": text}``.

Cancellation travels as a channel rather than a remote method because the
steerer that decides it is itself an actor, and an actor's own thread cannot
call another actor's handle (see DESIGN, "Threads and loops").

A simulation that raises, or whose quantity of interest is not finite, comes
back as a ``FAILED`` result with the error text; the member goes on with the
next task. The loop ends normally when the tasks channel is closed and drained.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import jax
import numpy as np

from coupler.actors.base import ActorHost
from coupler.learners.steerer import TaskStatus as TaskStatus
from coupler.physics.base import Simulator


def task_message(task: int, x: np.ndarray) -> dict[str, np.ndarray]:
    """The payload of a task: its id and its parameter vector."""
    return {"task": np.int64(task), "x": np.asarray(x, np.float32)}


def cancel_message(task: int) -> dict[str, np.ndarray]:
    """The payload of a cancellation."""
    return {"task": np.int64(task)}


class Study(Protocol):
    """What a pool member runs for a parameter vector (pure JAX pieces, picklable)."""

    simulator: Simulator
    steps: int

    def params(self, x: np.ndarray) -> Any:
        """Simulator parameters from a proposed vector; raises ``ValueError`` for a bad one."""
        ...

    def qoi(self, state: Any) -> Any:
        """The scalar quantity of interest of a final state."""
        ...


@dataclass(frozen=True)
class SimulationStudy:
    """A :class:`Study` from a simulator and two functions.

    Args:
        simulator: any ``coupler.physics`` simulator.
        to_params: vector -> simulator parameters (picklable: a module-level function).
        quantity: final state -> scalar (picklable).
        steps: simulator steps per run.
        bounds: ``(lower, upper)`` per component; a vector outside raises ``ValueError``
            (``None``: no check).
        seed: PRNG seed passed to ``simulator.init``.
    """

    simulator: Simulator
    to_params: Callable[[Any], Any]
    quantity: Callable[[Any], Any]
    steps: int
    bounds: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    seed: int = 0

    def params(self, x: np.ndarray) -> Any:
        x = np.asarray(x, np.float32)
        if not np.all(np.isfinite(x)):
            raise ValueError(f"parameters must be finite, got {x.tolist()}")
        if self.bounds is not None:
            lo, hi = (np.asarray(b, np.float32) for b in self.bounds)
            if x.shape != lo.shape or np.any(x < lo) or np.any(x > hi):
                raise ValueError(f"parameters must lie in [{lo.tolist()}, {hi.tolist()}], got {x.tolist()}")
        return self.to_params(x)

    def qoi(self, state: Any) -> Any:
        return self.quantity(state)


class SimulatorPoolActor(ActorHost):
    """One member of a pool of simulators fed by a work-sharing channel.

    Each step takes one task, runs ``study.steps`` simulator steps in chunks of
    ``chunk_steps`` (one jitted ``fori_loop`` each; cancellation is checked
    between chunks) and sends one result.

    Args:
        study: what to run (pickled to the worker).
        name: actor name.
        chunk_steps: steps per jitted chunk (the cancellation latency).
        inputs: ``{"tasks": <shared Queue>}`` and optionally ``{"cancel": <Queue>}``.
        outputs: ``{"results": <channel>}``.
        **kwargs: passed to :class:`ActorHost`.

    Raises:
        ValueError: for missing ports or ``chunk_steps < 1``.
    """

    def __init__(
        self,
        study: Study,
        *,
        name: str,
        chunk_steps: int = 500,
        inputs: dict[str, str] | None = None,
        outputs: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        if "tasks" not in (inputs or {}) or "results" not in (outputs or {}):
            raise ValueError(
                f"SimulatorPoolActor needs inputs={{'tasks': ...}} and outputs={{'results': ...}}, "
                f"got inputs={inputs!r}, outputs={outputs!r}"
            )
        if chunk_steps < 1:
            raise ValueError(f"chunk_steps must be >= 1, got {chunk_steps}")
        super().__init__(name=name, inputs=inputs, outputs=outputs, **kwargs)
        self.study = study
        self.chunk_steps = chunk_steps
        self.cancelled: set[int] = set()
        self.counts = {s.name.lower(): 0 for s in TaskStatus}
        self.current = -1

    def setup(self) -> None:
        sim = self.study.simulator

        def chunk(state: Any, params: Any, steps: Any) -> Any:
            return jax.lax.fori_loop(0, steps, lambda _, s: sim.step(s, params), state)

        # steps is traced (not static): the last, shorter chunk does not recompile.
        self._chunk = jax.jit(chunk)
        self._init = jax.jit(sim.init)
        self._qoi = jax.jit(self.study.qoi)
        self._key = jax.random.key(getattr(self.study, "seed", 0))

    def _poll_cancellations(self) -> None:
        port = self.inputs.get("cancel")
        if port is None:
            return
        while (m := port.receive(timeout=0, default=None)) is not None:
            self.cancelled.add(int(m.data["task"]))

    def step(self) -> bool:
        m = self.inputs["tasks"].receive()  # ChannelClosed at the end ends the loop normally
        task, x = int(m.data["task"]), np.asarray(m.data["x"], np.float32)
        started = time.time()
        self.current = task
        status, qoi, error = self._simulate(task, x)
        self.current = -1
        self.counts[status.name.lower()] += 1
        payload = {
            "task": np.int64(task),
            "x": x,
            "qoi": np.float32(qoi),
            "status": np.int32(status),
            "started": np.float64(started),
            "finished": np.float64(time.time()),
        }
        self.outputs["results"].send(payload, step=self._steps, meta={"member": self.name, "error": error})
        return True

    def _simulate(self, task: int, x: np.ndarray) -> tuple[TaskStatus, float, str]:
        """Run one task; a bad parameter or a blown-up run is a result, not a crash."""
        self._poll_cancellations()
        if task in self.cancelled:
            return TaskStatus.CANCELLED, float("nan"), ""
        try:
            params = self.study.params(x)
            state = self._init(self._key, params)
            done = 0
            while done < self.study.steps:
                n = min(self.chunk_steps, self.study.steps - done)
                state = jax.block_until_ready(self._chunk(state, params, n))
                done += n
                self._poll_cancellations()
                if task in self.cancelled:
                    return TaskStatus.CANCELLED, float("nan"), ""
                if self.stopping:
                    return TaskStatus.CANCELLED, float("nan"), "member stopped"
            qoi = float(self._qoi(state))
        except Exception as e:  # noqa: BLE001 - any failure of one run is reported, and the pool goes on
            return TaskStatus.FAILED, float("nan"), f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"
        if not np.isfinite(qoi):
            return TaskStatus.FAILED, qoi, f"quantity of interest is not finite ({qoi}) at x={x.tolist()}"
        return TaskStatus.OK, qoi, ""

    def info(self) -> dict[str, Any]:
        return {**self.counts, "current": self.current}

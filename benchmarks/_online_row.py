"""Shared pieces of the online-vs-offline benchmarks: the paced learner and the online result row.

The online side's stream is a budget in samples, not in seconds: the benchmark
launches simulations until ``stream_samples`` have been produced, and the
learner's step ``i`` waits until :func:`samples_due` of them have arrived. So
the unique samples online sees, and how many of them have arrived by each
step, are the same on an idle and on a loaded machine; only the wall time
changes. (Without the pacing, a learner on a quiet machine trains faster than
the simulations stream and sees fewer fresh samples per step than on a busy one.)
"""

from __future__ import annotations

import time
from typing import Any, Callable

import jax
import numpy as np

from coupler.actors.learner import LearnerActor, Trainer

from _runtime_training import stream_while_training  # a sibling module of these scripts


def samples_due(step: int, *, min_samples: int, stream_samples: int, max_steps: int) -> int:
    """Samples that must have arrived before training step ``step`` (0-based) of a paced stream.

    Linear from ``min_samples`` before the first step to the whole stream,
    ``stream_samples``, before the last, so every step sees the same number of
    fresh samples (``(stream_samples - min_samples) / (max_steps - 1)``).

    Raises:
        ValueError: if the stream is smaller than ``min_samples`` or ``max_steps < 1``.
    """
    if max_steps < 1 or stream_samples < min_samples:
        raise ValueError(f"need max_steps >= 1 and stream_samples >= min_samples; got {max_steps}, {stream_samples} < {min_samples}")
    if max_steps == 1:
        return min_samples
    frac = min(max(step, 0), max_steps - 1) / (max_steps - 1)
    return min_samples + int(round(frac * (stream_samples - min_samples)))


class PacedLearnerActor(LearnerActor):
    """A ``LearnerActor`` whose step ``i`` waits until :func:`samples_due` samples have arrived.

    Args:
        make_trainer: as for ``LearnerActor``.
        stream_samples: the online stream's size (the simulation budget, in samples).
        **kwargs: as for ``LearnerActor``; ``max_steps`` is required.

    Raises:
        ValueError: without ``max_steps``, or for a stream smaller than ``min_samples``.
    """

    def __init__(self, make_trainer: Callable[[], Trainer], *, stream_samples: int, **kwargs: Any) -> None:
        super().__init__(make_trainer, **kwargs)
        if self.max_steps is None:
            raise ValueError(f"PacedLearnerActor {self.name!r} needs max_steps (the stream is paced over them)")
        samples_due(0, min_samples=self.min_samples, stream_samples=stream_samples, max_steps=self.max_steps)
        self.stream_samples = stream_samples

    def due(self, step: int) -> int:
        """Samples due before training step ``step``."""
        assert self.max_steps is not None
        return samples_due(step, min_samples=self.min_samples, stream_samples=self.stream_samples, max_steps=self.max_steps)

    def step(self) -> bool:
        if self.max_steps is not None and self.train_steps < self.max_steps:
            if self.inputs["data"].stats.received < self.due(self.train_steps):
                time.sleep(0.01)
                return True
        return super().step()

    def info(self) -> dict[str, Any]:
        return {**super().info(), "stream_samples": self.stream_samples}


def may_launch(launched_samples: int, stream_samples: int, due_now: int, run_samples: int) -> bool:
    """Whether the driver may launch another simulation run of ``run_samples`` samples.

    Only while the stream budget is not yet launched in full, and while what
    is launched exceeds what the learner waits for by less than one run (so
    the reservoir at step ``i`` holds :func:`samples_due` ``(i)`` fresh samples
    plus at most about a run's, not whatever a fast simulator produced ahead
    of it).
    """
    return launched_samples < stream_samples and launched_samples < due_now + run_samples


def stream_until_trained(
    learner: Any, launch: Callable[[int], Any], *, run_samples: int, stream_samples: int, max_steps: int,
    min_samples: int, sim_actors: int = 1, label: str = "online", progress: bool = True,
) -> int:
    """Launch simulator actors into the learner's channel, paced by :func:`may_launch`, until it has trained.

    The loop and the actors' ownership are ``_runtime_training.stream_while_training``'s.

    Args:
        learner: the ``PacedLearnerActor``'s handle (started).
        launch: ``launch(i)`` spawns and starts the ``i``-th simulator actor and returns its handle.
        run_samples: samples one simulator actor produces (members x blocks).
        stream_samples, max_steps, min_samples: the learner's (see :func:`samples_due`).
        sim_actors: simulator actors running at once, at most.
        label: prefix of the progress lines.
        progress: print a line every 15 s.

    Returns:
        The simulator actors launched.
    """

    def paced(launched: int, status: Any) -> bool:
        step = int(status.info.get("train_steps", 0))
        due = samples_due(step, min_samples=min_samples, stream_samples=stream_samples, max_steps=max_steps)
        return may_launch(launched * run_samples, stream_samples, due, run_samples)

    return stream_while_training(learner, launch, actors=sim_actors, label=label, progress=progress, may_launch=paced)


def online_row(
    history: list[tuple[float, int, Any, int]], train_steps: int, heldout_rel_l2: float, *, simulations: int,
    stored_samples: int, batch_size: int, learner_cpu_cores: float | None,
) -> dict[str, Any]:
    """A result row of the online run.

    Args:
        history: the learner's ``history``: ``(time, step, loss, samples received)`` per training step.
        train_steps: the steps its final status counts.
        heldout_rel_l2: the trained model's error on the held-out runs.
        simulations: simulations launched.
        stored_samples: the replay channel's capacity.
        batch_size: samples per training step.
        learner_cpu_cores: CPU seconds of the learner's process per wall second, where measured.

    Returns:
        The row, with the same keys as the offline one.

    Raises:
        ValueError: for an empty history (the learner never trained).
    """
    if not history:
        raise ValueError("expected the learner's history of training steps, got none: it never trained")
    (t_first, *_), (t_last, steps, _, received) = history[0], history[-1]
    wall = max(t_last - t_first, 1e-9)
    return {
        "mode": "online",
        "heldout_rel_l2": heldout_rel_l2,
        "validation_rel_l2": None,
        "simulations": simulations,
        "unique_samples": int(received),
        "stored_samples": stored_samples,
        "train_steps": int(train_steps),
        "best_step": int(steps),
        "epochs": None,
        "early_stopped": False,
        "train_seconds": wall,
        "arrival_samples_per_s": (received - history[0][3]) / wall,
        "batch_samples_per_s": steps * batch_size / wall,
        "learner_cpu_cores": learner_cpu_cores,
    }


def keep_blocks(data: dict[str, np.ndarray], per_run: int, key: jax.Array) -> dict[str, np.ndarray]:
    """``per_run`` of each run's blocks, drawn at random without replacement (a thinned offline store).

    The other way an offline user can fill the same memory: simulate more runs
    and keep a few samples of each, for a store that covers the parameter space
    better at the cost of more simulation.

    Args:
        data: arrays shaped ``(runs, blocks, ...)``, all with the same ``runs`` and ``blocks``.
        per_run: blocks kept of each run.
        key: the draw's key.

    Returns:
        The same arrays shaped ``(runs, per_run, ...)``.

    Raises:
        ValueError: unless ``0 < per_run <= blocks``.
    """
    runs, blocks = next(iter(data.values())).shape[:2]
    if not 0 < per_run <= blocks:
        raise ValueError(f"expected 0 < samples per run <= blocks={blocks}, got {per_run}")
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())
    keep = np.stack([rng.choice(blocks, per_run, replace=False) for _ in range(runs)])
    return {k: np.take_along_axis(v, keep.reshape(keep.shape + (1,) * (v.ndim - 2)), 1) for k, v in data.items()}


def mean_and_se(values: list[float]) -> tuple[float, float]:
    """The mean and its standard error (``std / sqrt(n)``, ``ddof=1``; 0 for one value)."""
    x = np.asarray(values, float)
    return float(x.mean()), float(np.std(x, ddof=1) / np.sqrt(len(x))) if len(x) > 1 else 0.0

"""The online row of an online-vs-offline benchmark, from what the learner actor recorded."""

from __future__ import annotations

from typing import Any


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

"""The learner host: trains a model online from a replay channel while data arrives."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Protocol

import numpy as np

from coupler.actors.base import ActorHost
from coupler.actors.busy import BusyMeter


BUSY_REPORT_S = 1.0
"""Seconds between the learner's ``busy_share`` metric points (dashboard, ``/metrics``)."""


class Trainer(Protocol):
    """What a learner host needs of its trainer (``coupler.learners.OnlineTrainer`` fits)."""

    def step(self, batch: dict[str, Any]) -> float:
        """One optimisation step on a numpy mini-batch; returns the loss."""
        ...

    def get_weights(self) -> dict[str, Any]:
        """The model's weights as a nested dict of numpy arrays."""
        ...

    def warmup(self, batch: dict[str, Any]) -> None:
        """Compile the training step for ``batch``'s shapes without changing the model."""
        ...

    def checkpoint(self) -> dict[str, Any]:
        """Model, optimiser state and loss history as plain numpy data."""
        ...

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Continue from ``checkpoint()`` output of a trainer built the same way."""
        ...


class LearnerActor(ActorHost):
    """Train online: draw mini-batches from the input port ``"data"`` (a ``Reservoir``
    or ``Window`` channel) while producers keep filling it.

    Each loop iteration is one training step once ``min_samples`` messages have
    arrived (before that it waits briefly). It records the metrics ``loss`` (every
    step) and ``busy_share`` (every ``BUSY_REPORT_S``: the share of its time inside
    training steps, as ``status().info["busy_share"]``), shown on the dashboard's
    coupler page and under ``/metrics``. With an output port ``"weights"``
    (a ``Latest`` channel) it publishes the weights every ``publish_every`` steps,
    for hybrid simulators to pick up.

    Args:
        make_trainer: picklable zero-argument callable that builds the trainer on
            the worker (e.g. a config object with ``__call__``); JAX compiles there.
        name: actor name.
        batch_size: mini-batch size.
        min_samples: messages to wait for before the first step.
        max_steps: training steps after which the loop ends (``None``: until stopped).
        publish_every: steps between weight publications (0: never).
        lineage_keys: payload keys recorded for every sample of every training
            step (e.g. ``("params", "weights_version")`` from simulators started
            with ``lineage=True``); ``lineage()`` returns them.
        warmup: an example batch (shapes and dtypes of real ones); when given, the
            training step is compiled in ``setup``, before data arrives, and
            ``status().info["ready"]`` turns true once that is done.
        inputs: must map ``"data"`` to a channel.
        outputs: may map ``"weights"`` to a channel.
        **kwargs: passed to :class:`ActorHost`.

    Raises:
        ValueError: for ``inputs`` without ``"data"`` or a non-positive batch size.
    """

    def __init__(
        self,
        make_trainer: Callable[[], Trainer],
        *,
        name: str,
        batch_size: int = 32,
        min_samples: int = 64,
        max_steps: int | None = None,
        publish_every: int = 0,
        lineage_keys: tuple[str, ...] = (),
        warmup: dict[str, Any] | None = None,
        inputs: dict[str, str] | None = None,
        outputs: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        if "data" not in (inputs or {}):
            raise ValueError(f"LearnerActor needs inputs={{'data': <channel>}}, got inputs={inputs!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        super().__init__(name=name, inputs=inputs, outputs=outputs, **kwargs)
        self.make_trainer = make_trainer
        self.batch_size = batch_size
        self.min_samples = min_samples
        self.max_steps = max_steps
        self.publish_every = publish_every
        self.warmup_batch = warmup
        self.lineage_keys = tuple(lineage_keys)
        # (training step, {key: per-sample values}) for every step, when lineage_keys is set
        self.lineage_rows: list[tuple[int, dict[str, Any]]] = []
        self.ready = False
        self.trainer: Trainer | None = None
        self.train_steps = 0
        # (wall time, step, loss, messages received so far) per training step
        self.history_rows: list[tuple[float, int, float, int]] = []
        # time inside training steps over the span of them: how busy the learner keeps its device
        # (not checkpointed: a restarted learner measures its own run)
        self.busy = BusyMeter()
        self._next_busy_report = 0.0  # time.monotonic() after which the share is reported again
        self._lock = threading.Lock()  # the trainer is used by the loop and by remote calls
        self._restored: dict[str, Any] | None = None

    def setup(self) -> None:
        self.trainer = self.make_trainer()
        restored, self._restored = self._restored, None
        if restored is not None and restored["trainer"] is not None:
            self.trainer.restore(restored["trainer"])
        if self.warmup_batch is not None:
            self.trainer.warmup(self.warmup_batch)
        self.ready = True

    def step(self) -> bool:
        if self.max_steps is not None and self.train_steps >= self.max_steps:
            return False
        data = self.inputs["data"]
        if data.stats.received < self.min_samples:
            time.sleep(0.01)
            return True
        batch = data.sample(self.batch_size)
        assert self.trainer is not None
        with self._lock:
            # the step returns a Python float, so the device has finished the step when it returns
            t0 = time.perf_counter()
            loss = self.trainer.step(batch)
            self.busy.add(t0, time.perf_counter())
            self.train_steps += 1
        self.history_rows.append((time.time(), self.train_steps, loss, data.stats.received))
        if self.lineage_keys:
            missing = [k for k in self.lineage_keys if k not in batch]
            if missing:
                raise KeyError(f"learner {self.name!r}: lineage keys {missing} are not in the batch (keys {sorted(batch)})")
            self.lineage_rows.append((self.train_steps, {k: np.asarray(batch[k]) for k in self.lineage_keys}))
        self.report_metric("loss", loss, step=self.train_steps)  # the dashboard's loss curve
        now = time.monotonic()
        if now >= self._next_busy_report:  # once a second: a fast learner's loss points keep their room in the log
            self.report_metric("busy_share", self.busy.share() or 0.0, step=self.train_steps)
            self._next_busy_report = now + BUSY_REPORT_S
        if self.publish_every and "weights" in self.outputs and self.train_steps % self.publish_every == 0:
            self.outputs["weights"].send(self.weights(), step=self.train_steps)
        return True

    def state_dict(self) -> dict[str, Any]:
        """Trainer checkpoint (model, optimiser, loss history), training steps and history rows.

        The replay buffer is not part of it: a restored learner refills it from its channel.
        """
        if self.trainer is None:
            return {} if self._restored is None else self._restored
        with self._lock:
            return {
                "trainer": self.trainer.checkpoint(),
                "train_steps": self.train_steps,
                "history": [tuple(r) for r in self.history_rows],
            }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state_dict()`` of another instance; the trainer is restored when it is built.

        Raises:
            ValueError: if keys are missing.
        """
        if not state:
            return
        missing = sorted({"trainer", "train_steps", "history"} - set(state))
        if missing:
            raise ValueError(f"LearnerActor {self.name!r}: checkpoint state lacks {missing}; got keys {sorted(state)}")
        self._restored = state
        self.train_steps = int(state["train_steps"])
        self.history_rows = [(float(t), int(k), float(loss), int(n)) for t, k, loss, n in state["history"]]

    # -- remote methods ----------------------------------------------------------------------
    def weights(self) -> dict[str, Any]:
        """The current weights (a consistent snapshot: never taken mid-step).

        Raises:
            RuntimeError: before the trainer is built (the loop has not started).
        """
        if self.trainer is None:
            raise RuntimeError(f"learner {self.name!r} has not built its trainer yet; start it first")
        with self._lock:
            return self.trainer.get_weights()

    def lineage(self) -> list[tuple[int, dict[str, Any]]]:
        """``(training step, {key: values of the batch's samples})`` for every step (see ``lineage_keys``)."""
        return list(self.lineage_rows)

    def history(self) -> list[tuple[float, int, float, int]]:
        """``(wall time, step, loss, messages received)`` for every training step so far."""
        return list(self.history_rows)

    def info(self) -> dict[str, Any]:
        last = self.history_rows[-1] if self.history_rows else None
        return {
            "ready": self.ready,
            "train_steps": self.train_steps,
            "received": self.inputs["data"].stats.received,
            "loss": None if last is None else last[2],
            "busy_share": self.busy.share(),
        }

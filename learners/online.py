"""Online training of a field surrogate: the object a learner actor hosts.

``OnlineTrainer`` owns a model and its optimiser and trains on mini-batches
that arrive while the simulations that produce them keep running. It speaks
numpy at its boundary (batches in, losses and weights out) so that the runtime
can move everything over the network without JAX on the other side.

It is built from small picklable pieces -- a ``SurrogateConfig`` (or any model
factory) and an ``OptimizerConfig`` -- because the runtime constructs it inside
a Dask worker from pickled arguments.

Example:
    >>> trainer = OnlineTrainer(SurrogateConfig(width=8, depth=2), seed=0)
    >>> batch = {"input": np.ones((4, 16, 16), np.float32),
    ...          "target": np.ones((4, 16, 16), np.float32),
    ...          "params": np.ones((4, 1), np.float32)}
    >>> loss = trainer.step(batch)
    >>> trainer.steps_taken
    1
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from coupler.learners.surrogate import ConvSurrogate
from coupler.learners.training import eval_step, make_optimizer, predict, train_step

BATCH_KEYS = ("input", "target", "params")

Weights = dict[str, Any]
"""A nested dict (string keys; integer keys accepted on input) of numpy arrays: a model's variables."""


@runtime_checkable
class ModelFactory(Protocol):
    """Anything that builds a fresh model from an integer seed (``SurrogateConfig`` does)."""

    def build(self, seed: int) -> nnx.Module:
        """Return a newly initialised model."""
        ...


@dataclass(frozen=True)
class SurrogateConfig:
    """Hyperparameters of a ``ConvSurrogate``; small, hashable and picklable.

    The defaults are tuned for ``Heat2D(n=32)`` K-step-ahead prediction (see the
    ``ConvSurrogate`` docstring for the meaning of each field).
    """

    width: int = 16
    depth: int = 4
    kernel_size: int = 3
    patch: int = 2
    n_params: int = 1
    hidden: int = 32
    activation: str | None = None
    params_shift: float = 0.0
    params_scale: float = 1.0

    def build(self, seed: int = 0) -> ConvSurrogate:
        """Initialise a ``ConvSurrogate`` with these hyperparameters from ``seed``."""
        return ConvSurrogate(**asdict(self), rngs=nnx.Rngs(seed))


@dataclass(frozen=True)
class OptimizerConfig:
    """Arguments of ``make_optimizer`` (Adam(W), warm-up, cosine decay, clipping)."""

    learning_rate: float = 3e-3
    warmup_steps: int = 20
    decay_steps: int | None = 1500
    final_learning_rate_factor: float = 0.1
    clip_norm: float | None = 1.0
    weight_decay: float = 0.0

    def build(self, model: nnx.Module) -> nnx.Optimizer:
        """Return an ``nnx.Optimizer`` over ``model``'s parameters."""
        return make_optimizer(model, **asdict(self))


def to_numpy(tree: Any) -> Any:
    """A pytree of host numpy copies (weights and checkpoints leave JAX's buffers behind)."""
    return jax.tree.map(lambda x: np.array(x), tree)


def _string_keys(tree: Any) -> Any:
    """Dict keys as strings (channel messages and msgpack need them), leaves unchanged."""
    if isinstance(tree, Mapping):
        return {str(k): _string_keys(v) for k, v in tree.items()}
    return tree


def _batch_to_device(batch: Mapping[str, Any]) -> dict[str, jax.Array]:
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
        raise KeyError(f"batch is missing {missing}; expected keys {list(BATCH_KEYS)}, got {sorted(batch)}")
    u, target, params = (np.asarray(batch[k], np.float32) for k in BATCH_KEYS)
    if u.ndim != 3 or target.shape != u.shape or params.ndim != 2 or params.shape[0] != u.shape[0]:
        raise ValueError(
            "expected input (B, H, W), target (B, H, W) and params (B, P); "
            f"got input {u.shape}, target {target.shape}, params {params.shape}"
        )
    return {"input": jnp.asarray(u), "target": jnp.asarray(target), "params": jnp.asarray(params)}


def _fill_batch(batch: Mapping[str, Any], batch_size: int) -> dict[str, np.ndarray]:
    """Repeat (or cut) rows to exactly ``batch_size`` so the jitted step never recompiles."""
    n = len(batch["input"])
    if n == 0:
        raise ValueError("the sampler returned an empty batch")
    if n == batch_size:
        return dict(batch)
    rows = np.resize(np.arange(n), batch_size)
    return {k: np.asarray(batch[k])[rows] for k in BATCH_KEYS}


def replace_checked(state: nnx.State, pure: Mapping[str, Any], what: str) -> None:
    """Copy ``pure`` into ``state`` after checking that paths and shapes match exactly.

    Raises:
        ValueError: a path is missing or unexpected, or a shape differs (the message names it).
    """
    flat = dict(nnx.to_flat_state(state))
    given = dict(nnx.traversals.flatten_mapping(nnx.restore_int_paths(dict(pure))))
    if set(given) != set(flat):
        missing = sorted(map(str, set(flat) - set(given)))
        extra = sorted(map(str, set(given) - set(flat)))
        raise ValueError(f"{what} do not match the model: missing {missing}, unexpected {extra}")
    for path, var in flat.items():
        value = np.asarray(given[path])
        expected = np.shape(var.get_value())
        if value.shape != expected:
            raise ValueError(f"{what}: {'/'.join(map(str, path))} has shape {value.shape}, expected {expected}")
        var.set_value(jnp.asarray(value, dtype=var.get_value().dtype))


class TrainerState:
    """The half of a trainer that is its state: weights to publish, checkpoints to resume from.

    A trainer that has ``model`` and ``optimizer`` (Flax NNX), a ``_lock``
    guarding them and a ``_history`` of ``(step, loss)`` pairs gets these
    methods and properties; :class:`OnlineTrainer`, the solver-correction
    trainer and the a-priori subgrid fit share them.
    """

    model: nnx.Module
    optimizer: nnx.Optimizer
    _lock: threading.Lock
    _history: list[tuple[int, float]]

    @property
    def steps_taken(self) -> int:
        """Optimiser steps taken so far (restored by ``restore``)."""
        with self._lock:
            return int(self.optimizer.step.get_value())

    @property
    def loss_history(self) -> list[tuple[int, float]]:
        """``(step, loss)`` for every step taken, oldest first (a copy)."""
        with self._lock:
            return list(self._history)

    def get_weights(self) -> Weights:
        """The model's variables as a nested dict of numpy arrays (copies).

        Pure data: picklable, msgpack-able, independent of JAX devices, and a
        valid channel message (a learner publishes it for hybrid simulators).
        Keys are strings: attribute names, and digit strings for list entries
        (``blocks/"0"``), which ``set_weights`` maps back.
        """
        with self._lock:
            return _string_keys(to_numpy(nnx.to_pure_dict(nnx.state(self.model))))

    def set_weights(self, weights: Mapping[str, Any]) -> None:
        """Replace the model's variables by ``weights`` (from ``get_weights``).

        The optimiser state is kept (weights broadcast from another learner are
        a warm start, not a checkpoint; use ``restore`` for that). String keys
        for integer paths (as msgpack produces) are accepted.

        Raises:
            ValueError: if a path is missing or unexpected, or a shape differs.
        """
        with self._lock:
            replace_checked(nnx.state(self.model), weights, "weights")

    def checkpoint(self) -> dict[str, Any]:
        """Everything needed to resume: weights, optimiser state and loss history (numpy)."""
        with self._lock:
            return {
                "model": to_numpy(nnx.to_pure_dict(nnx.state(self.model))),
                "optimizer": to_numpy(nnx.to_pure_dict(nnx.state(self.optimizer))),
                "loss_history": list(self._history),
            }

    def restore(self, checkpoint: Mapping[str, Any]) -> None:
        """Resume from ``checkpoint()`` output: training continues exactly as it would have.

        Raises:
            ValueError: if the checkpoint does not fit this model and optimiser.
        """
        with self._lock:
            replace_checked(nnx.state(self.model), checkpoint["model"], "checkpoint model")
            replace_checked(nnx.state(self.optimizer), checkpoint["optimizer"], "checkpoint optimizer")
            self._history = [(int(s), float(v)) for s, v in checkpoint["loss_history"]]


class OnlineTrainer(TrainerState):
    """Train a surrogate on a stream of mini-batches (numpy in, numpy out).

    Every public method is thread-safe: a run loop may call ``step``/``fit``
    while remote calls read ``get_weights`` or ``loss_history``.

    The first ``step`` (and the first ``predict``/``evaluate`` per batch shape)
    compiles with XLA, a few seconds on a CPU; call ``warmup`` beforehand to pay
    it when convenient. Keep the batch shape fixed afterwards: a new shape
    compiles again (``fit`` pads short batches for that reason).

    Args:
        model: a ``ModelFactory`` (e.g. ``SurrogateConfig()``), a callable
            ``seed -> nnx.Module``, or an already built ``nnx.Module`` (not
            picklable across processes; use a factory there).
        optimizer: optimiser hyperparameters.
        seed: seed of the model initialisation when ``model`` is a factory.

    Raises:
        TypeError: if ``model`` is none of the accepted kinds.
    """

    def __init__(
        self,
        model: ModelFactory | Callable[[int], nnx.Module] | nnx.Module,
        optimizer: OptimizerConfig = OptimizerConfig(),
        *,
        seed: int = 0,
    ):
        if isinstance(model, nnx.Module):
            built = model
        elif isinstance(model, ModelFactory):
            built = model.build(seed)
        elif callable(model):
            built = model(seed)
        else:
            raise TypeError(f"model must be an nnx.Module, a ModelFactory or a callable seed -> Module, got {model!r}")
        if not isinstance(built, nnx.Module):
            raise TypeError(f"the model factory returned {type(built).__name__}, expected an nnx.Module")
        self.model = built
        self.optimizer_config = optimizer
        self.optimizer = optimizer.build(self.model)
        self._lock = threading.RLock()
        self._history: list[tuple[int, float]] = []

    def step(self, batch: Mapping[str, np.ndarray]) -> float:
        """Take one optimiser step on ``batch`` and return its loss.

        Args:
            batch: ``{"input": (B, H, W), "target": (B, H, W), "params": (B, P)}``.

        Returns:
            The batch loss before the update (mean squared relative L2 error).

        Raises:
            KeyError: if a key is missing.
            ValueError: if the shapes do not fit together.
        """
        arrays = _batch_to_device(batch)
        with self._lock:
            loss = float(train_step(self.model, self.optimizer, arrays))
            self._history.append((int(self.optimizer.step.get_value()), loss))
        return loss

    def fit(
        self,
        sample: Callable[[int], Mapping[str, np.ndarray]],
        steps: int,
        batch_size: int = 32,
    ) -> list[float]:
        """Take ``steps`` steps, drawing a fresh mini-batch from ``sample`` for each.

        ``sample(batch_size)`` is called once per step, so it may return batches
        from a population that grows or changes while training runs (a replay
        buffer being filled by simulations). A batch with fewer rows than
        ``batch_size`` (a buffer still filling) is padded by repeating its rows,
        and a longer one is cut, so that every step has the same shape.

        Args:
            sample: ``batch_size -> batch`` (the layout of ``step``).
            steps: how many steps to take.
            batch_size: rows per step.

        Returns:
            The loss of every step taken, in order.

        Raises:
            ValueError: for ``steps < 0``, ``batch_size < 1`` or an empty batch.
        """
        if steps < 0 or batch_size < 1:
            raise ValueError(f"need steps >= 0 and batch_size >= 1, got steps={steps}, batch_size={batch_size}")
        return [self.step(_fill_batch(sample(batch_size), batch_size)) for _ in range(steps)]

    def warmup(self, batch: Mapping[str, np.ndarray]) -> None:
        """Compile ``step`` and ``evaluate`` for ``batch``'s shapes without training.

        Runs one step on throw-away copies of the model and optimiser, so the
        weights, the step count and the history are unchanged.
        """
        arrays = _batch_to_device(batch)
        with self._lock:
            model, optimizer = nnx.clone(self.model), nnx.clone(self.optimizer)
        jax.block_until_ready(train_step(model, optimizer, arrays))
        jax.block_until_ready(eval_step(model, arrays))

    def evaluate(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        """Per-sample relative L2 error ``(B,)`` of the current model on ``batch``."""
        arrays = _batch_to_device(batch)
        with self._lock:
            return np.asarray(eval_step(self.model, arrays))

    def predict(self, u: np.ndarray, params: np.ndarray) -> np.ndarray:
        """Predict the field ``K`` steps ahead.

        Args:
            u: ``(B, H, W)`` fields, or one ``(H, W)`` field.
            params: ``(B, P)`` parameters, or ``(P,)`` for one field.

        Returns:
            float32 numpy array with the shape of ``u``.
        """
        u = np.asarray(u, np.float32)
        params = np.asarray(params, np.float32)
        single = u.ndim == 2
        if single:
            u, params = u[None], params[None]
        with self._lock:
            out = np.asarray(predict(self.model, jnp.asarray(u), jnp.asarray(params)))
        return out[0] if single else out

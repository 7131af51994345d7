"""A learned model-error correction for a periodic gridded model (Lorenz-96, a 2-D field) and its online trainer.

The forecast model is imperfect (a wrong forcing, a missing term). Data
assimilation reveals its error at every cycle: the analysis increment
``x_a - M(x_a_prev)`` (analysis mean minus the model's uncorrected forecast
mean) is a noisy sample of the one-interval model error at the forecast
state. :class:`CorrectionNet` regresses that increment on the forecast state
with a small network that is *local and translation invariant*: each output
``dx_i`` depends on the stencil ``x_{i-r} .. x_{i+r}`` through weights shared by
every grid point (a periodic 1-D convolution), as the model's own tendency does.
On a 2-D grid (``CorrectionConfig(grid=(ny, nx))``, the state being the flat
field) the stencil is the ``(2r+1) x (2r+1)`` periodic neighbourhood.
The forecast ensemble then uses ``x_f = M(x) + c(M(x))``.

:class:`CorrectionTrainer` fits the ``Trainer`` protocol of
the learner actor (``LearnerActor``) (numpy batches in, numpy weights out),
and :func:`correction_function` turns weights into a pure JAX function that a
jitted forecast can take as an argument, so new weights need no recompilation.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from coupler.learners.online import Weights, replace_checked, to_numpy

BATCH_KEYS = ("forecast", "increment")


class CorrectionNet(nnx.Module):
    """Per-grid-point MLP over a periodic stencil: ``(..., n) -> (..., n)``.

    Args:
        radius: the stencil reaches ``radius`` points to each side.
        hidden: width of the two hidden layers.
        shift: subtracted from the input before the network (its climatological mean).
        scale: the input is divided by it after the shift (its climatological std).
        grid: the periodic grid of the flat state (``None``: a ring, the last axis).
        rngs: random streams for the initialisation (keyword-only).
    """

    def __init__(
        self, radius: int = 2, hidden: int = 32, shift: float = 0.0, scale: float = 1.0,
        grid: tuple[int, ...] | None = None, *, rngs: nnx.Rngs,
    ) -> None:
        self.radius = radius
        self.shift = shift
        self.scale = scale
        self.grid = None if grid is None else tuple(int(g) for g in grid)
        dims = 1 if self.grid is None else len(self.grid)
        # Every offset of the periodic neighbourhood, one per input feature.
        self.offsets = tuple(itertools.product(range(-radius, radius + 1), repeat=dims))
        width = len(self.offsets)
        self.inp = nnx.Linear(width, hidden, rngs=rngs)
        self.mid = nnx.Linear(hidden, hidden, rngs=rngs)
        # Zero output layer: an untrained correction is exactly no correction.
        self.out = nnx.Linear(hidden, 1, kernel_init=nnx.initializers.zeros, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        z = (x - self.shift) / self.scale
        grid = (x.shape[-1],) if self.grid is None else self.grid
        z = z.reshape(*x.shape[:-1], *grid)
        axes = tuple(range(-len(grid), 0))
        stencil = jnp.stack([jnp.roll(z, tuple(-o for o in off), axis=axes) for off in self.offsets], axis=-1)
        h = jnp.tanh(self.inp(stencil))
        h = jnp.tanh(self.mid(h))
        return self.out(h)[..., 0].reshape(x.shape)


@dataclass(frozen=True)
class CorrectionConfig:
    """Hyperparameters of a :class:`CorrectionNet` and its optimiser (hashable, picklable).

    The defaults suit Lorenz-96 at ``F = 8`` (mean about 2.3, std about 3.6);
    for another model set ``shift``/``scale`` to its climatological mean/std and
    ``grid`` to its grid shape when it has more than one dimension.
    """

    radius: int = 2
    hidden: int = 32
    shift: float = 2.3
    scale: float = 3.6
    learning_rate: float = 1e-3
    grid: tuple[int, ...] | None = None

    def build(self, seed: int = 0) -> CorrectionNet:
        """A freshly initialised network from ``seed``."""
        args = {k: v for k, v in asdict(self).items() if k != "learning_rate"}
        return CorrectionNet(**args, rngs=nnx.Rngs(seed))


def _mse(model: CorrectionNet, forecast: jax.Array, increment: jax.Array) -> jax.Array:
    return jnp.mean((model(forecast) - increment) ** 2)


@nnx.jit
def _train_step(model: CorrectionNet, optimizer: nnx.Optimizer, forecast: jax.Array, increment: jax.Array) -> jax.Array:
    loss, grads = nnx.value_and_grad(_mse)(model, forecast, increment)
    optimizer.update(model, grads)
    return loss


def _arrays(batch: Mapping[str, Any]) -> tuple[jax.Array, jax.Array]:
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
        raise KeyError(f"batch is missing {missing}; expected keys {list(BATCH_KEYS)}, got {sorted(batch)}")
    f, d = (np.asarray(batch[k], np.float32) for k in BATCH_KEYS)
    if f.ndim != 2 or d.shape != f.shape:
        raise ValueError(f"expected forecast (B, n) and increment (B, n), got {f.shape} and {d.shape}")
    return jnp.asarray(f), jnp.asarray(d)


class CorrectionTrainer:
    """Train a :class:`CorrectionNet` online on ``{"forecast": (B, n), "increment": (B, n)}`` batches.

    Thread-safe (a learner's run loop trains while remote calls read weights).
    The loss is the mean squared error of the predicted increment.

    Args:
        config: network and optimiser hyperparameters.
        seed: initialisation seed.
    """

    def __init__(self, config: CorrectionConfig = CorrectionConfig(), *, seed: int = 0) -> None:
        self.config = config
        self.model = config.build(seed)
        self.optimizer = nnx.Optimizer(self.model, optax.adam(config.learning_rate), wrt=nnx.Param)
        self._lock = threading.RLock()
        self._history: list[tuple[int, float]] = []

    def step(self, batch: Mapping[str, Any]) -> float:
        """One Adam step on ``batch``; returns the loss before the update.

        Raises:
            KeyError: if a key is missing.
            ValueError: if the shapes do not fit.
        """
        f, d = _arrays(batch)
        with self._lock:
            loss = float(_train_step(self.model, self.optimizer, f, d))
            self._history.append((len(self._history) + 1, loss))
        return loss

    def warmup(self, batch: Mapping[str, Any]) -> None:
        """Compile ``step`` for ``batch``'s shapes on throw-away copies (weights unchanged)."""
        f, d = _arrays(batch)
        with self._lock:
            model, optimizer = nnx.clone(self.model), nnx.clone(self.optimizer)
        jax.block_until_ready(_train_step(model, optimizer, f, d))

    def get_weights(self) -> Weights:
        """The network's parameters as a nested dict of numpy arrays."""
        with self._lock:
            return to_numpy(nnx.to_pure_dict(nnx.state(self.model, nnx.Param)))

    def set_weights(self, weights: Mapping[str, Any]) -> None:
        """Replace the parameters by ``weights`` (from ``get_weights``); the optimiser state is kept.

        Raises:
            ValueError: if a path is missing or unexpected, or a shape differs.
        """
        with self._lock:
            replace_checked(nnx.state(self.model, nnx.Param), weights, "correction weights")

    @property
    def loss_history(self) -> list[tuple[int, float]]:
        """``(step, loss)`` of every step so far."""
        with self._lock:
            return list(self._history)

    def checkpoint(self) -> dict[str, Any]:
        """Parameters, optimiser state and loss history as numpy data."""
        with self._lock:
            return {
                "model": self.get_weights(),
                "optimizer": to_numpy(nnx.to_pure_dict(nnx.state(self.optimizer))),
                "loss_history": list(self._history),
            }

    def restore(self, checkpoint: Mapping[str, Any]) -> None:
        """Continue from ``checkpoint()`` output of a trainer with the same config.

        Raises:
            ValueError: if the checkpoint does not fit.
        """
        with self._lock:
            self.set_weights(checkpoint["model"])
            replace_checked(nnx.state(self.optimizer), checkpoint["optimizer"], "correction optimizer")
            self._history = [(int(s), float(v)) for s, v in checkpoint["loss_history"]]


@dataclass(frozen=True)
class MakeCorrectionTrainer:
    """Picklable factory of a :class:`CorrectionTrainer` (what ``LearnerActor`` builds on its worker)."""

    config: CorrectionConfig = CorrectionConfig()
    seed: int = 0

    def __call__(self) -> CorrectionTrainer:
        return CorrectionTrainer(self.config, seed=self.seed)


def correction_function(config: CorrectionConfig) -> tuple[Callable[[Weights, jax.Array], jax.Array], Weights]:
    """A pure ``apply(weights, x) -> dx`` for jitted forecasts, and the initial (zero-output) weights.

    The weights are an argument, not a constant, so a jitted caller compiles
    once and takes every new set of weights as data.

    Returns:
        ``(apply, weights)``; ``apply`` works on any leading batch axes.
    """
    graphdef, params, rest = nnx.split(config.build(0), nnx.Param, ...)

    def apply(weights: Weights, x: jax.Array) -> jax.Array:
        p = jax.tree.map(lambda a: a, params)
        nnx.replace_by_pure_dict(p, jax.tree.map(lambda w, v: jnp.asarray(w, x.dtype), weights, nnx.to_pure_dict(params)))
        return nnx.merge(graphdef, p, rest)(x)

    return apply, to_numpy(nnx.to_pure_dict(params))

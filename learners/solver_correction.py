"""A learned per-step correction inside a coarse ``NavierStokes2D`` solver (solver in the loop).

The corrected coarse solver advances the vorticity by one coarse step ``S`` and
adds a small convolutional network's correction of the result,

    w_{n+1} = S(w_n) + N_theta(S(w_n), nu, A),

as in the "learned correction" of Kochkov et al., *Machine learning-accelerated
computational fluid dynamics*, PNAS 2021, and Um et al., *Solver-in-the-Loop*,
NeurIPS 2020. The targets are fine-grid trajectories restricted to the coarse
grid (``physics.navier_stokes.spectral_resample``) at the coarse time step.

Training minimises the relative squared error of the corrected trajectory
against the target window. With ``unroll=1`` every consecutive pair of the
window is an independent one-step sample; with ``unroll=K`` the corrected
solver runs ``K`` steps from the window's first frame and the gradient flows
back through every solver step (the coarse solver is pure JAX, so it is
differentiable). Both see the same windows, so they cost the same data.

A training batch is ``{"field": (B, K+1, n, n), "params": (B, 3)}``: a window
of ``K+1`` coarse frames and the run's physical parameters
``(viscosity, forcing_amplitude, drag)`` (what a ``CoarseGrainedTrajectory``
simulator publishes). The network sees ``log(viscosity)`` and the amplitude.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from coupler.learners.online import OptimizerConfig, TrainerState
from coupler.physics.navier_stokes import NavierStokes2D, NavierStokesParams, NavierStokesState

PARAMS_WIDTH = 3
"""Columns of a batch's ``"params"``: viscosity, forcing amplitude, drag."""


def field_and_params(batch: Mapping[str, Any], check_field: Callable[[np.ndarray], None]) -> tuple[jax.Array, jax.Array]:
    """A training batch's ``"field"`` and ``"params"`` as float32 device arrays, checked.

    Args:
        batch: ``{"field": (B, ...), "params": (B, 3)}``.
        check_field: raises ``ValueError`` for a field its trainer cannot take.

    Returns:
        ``(field, params)``.

    Raises:
        KeyError: if either key is missing.
        ValueError: from ``check_field``, or for params that are not ``(B, 3)``.
    """
    missing = [k for k in ("field", "params") if k not in batch]
    if missing:
        raise KeyError(f"batch is missing {missing}; expected keys ['field', 'params'], got {sorted(batch)}")
    f = np.asarray(batch["field"], np.float32)
    p = np.asarray(batch["params"], np.float32)
    check_field(f)
    if p.shape != (f.shape[0], PARAMS_WIDTH):
        raise ValueError(f"expected params ({f.shape[0]}, {PARAMS_WIDTH}) (viscosity, amplitude, drag), got {p.shape}")
    return jnp.asarray(f), jnp.asarray(p)


def check_conv_stack(width: int, depth: int, kernel_size: int, field_scale: float) -> None:
    """Check the shape of a stack of same-size convolutions over a scaled vorticity field.

    Args:
        width: channels of the hidden layers.
        depth: convolutions.
        kernel_size: kernel size (odd: the stack keeps the grid's size).
        field_scale: typical vorticity magnitude.

    Raises:
        ValueError: for ``depth < 2``, an even kernel, or a non-positive width or scale.
    """
    if depth < 2 or kernel_size % 2 == 0 or width < 1 or not field_scale > 0:
        raise ValueError(
            f"need depth >= 2, an odd kernel_size, width >= 1 and field_scale > 0; got depth={depth}, "
            f"kernel_size={kernel_size}, width={width}, field_scale={field_scale}"
        )


class CoarseCorrectionNet(nnx.Module):
    """A small periodic CNN: coarse vorticity and run parameters in, a vorticity correction out.

    ``depth`` circular-padded convolutions of ``width`` channels with GELU between
    them. The input channels are the vorticity divided by ``field_scale`` and two
    constant channels, ``(log(nu) - log_nu_center)`` and the forcing amplitude.
    The last layer starts at zero, so an untrained net leaves the coarse solver
    unchanged (and unrolled training starts from a stable rollout). Its output is
    the correction in vorticity units, with its spatial mean removed (the mean
    vorticity of a periodic flow is zero and must stay so).

    Args:
        width: channels of the hidden layers.
        depth: convolutions (>= 2).
        kernel_size: odd kernel size.
        field_scale: typical vorticity magnitude (inputs are divided, outputs multiplied by it).
        log_nu_center: centre of the ``log(viscosity)`` feature.
        rngs: flax random streams (keyword-only, as in flax NNX).

    Raises:
        ValueError: for ``depth < 2``, an even kernel or a non-positive width/scale.
    """

    def __init__(
        self,
        *,
        width: int = 16,
        depth: int = 3,
        kernel_size: int = 3,
        field_scale: float = 4.0,
        log_nu_center: float = -6.0,
        rngs: nnx.Rngs,
    ) -> None:
        check_conv_stack(width, depth, kernel_size, field_scale)
        self.field_scale = field_scale
        self.log_nu_center = log_nu_center
        sizes = [3] + [width] * (depth - 1) + [1]
        k = (kernel_size, kernel_size)
        self.layers = nnx.List(
            [nnx.Conv(a, b, k, padding="CIRCULAR", rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])]
        )
        last = self.layers[-1]
        last.kernel.set_value(jnp.zeros_like(last.kernel.get_value()))

    def __call__(self, w: jax.Array, params: jax.Array) -> jax.Array:
        """The correction ``(B, n, n)`` for vorticity ``w`` ``(B, n, n)`` and params ``(B, 3)``."""
        b, n, _ = w.shape
        log_nu = jnp.log(params[:, 0]) - self.log_nu_center
        consts = jnp.stack([log_nu, params[:, 1]], axis=-1)[:, None, None, :]
        x = jnp.concatenate([w[..., None] / self.field_scale, jnp.broadcast_to(consts, (b, n, n, 2))], axis=-1)
        for layer in self.layers[:-1]:
            x = jax.nn.gelu(layer(x))
        out = self.layers[-1](x)[..., 0] * self.field_scale
        return out - jnp.mean(out, axis=(-2, -1), keepdims=True)

    def one_step(self, coarse: NavierStokes2D, w: jax.Array, params: jax.Array) -> jax.Array:
        """One corrected coarse step ``S(w) + N(S(w))`` of a batch (shapes as ``coarse_step``)."""
        w1 = coarse_step(coarse, w, params)
        return w1 + self(w1, params)

    def rollout(self, coarse: NavierStokes2D, w0: jax.Array, params: jax.Array, steps: int) -> jax.Array:
        """``steps`` corrected steps from ``w0`` inside one ``lax.scan``; ``(steps, B, n, n)``."""

        def body(w: jax.Array, _: Any) -> tuple[jax.Array, jax.Array]:
            w = self.one_step(coarse, w, params)
            return w, w

        return jax.lax.scan(body, w0, None, length=steps)[1]


class CorrectionModel(Protocol):
    """What a learned coarse-solver model offers: a batched step and a rollout.

    ``CoarseCorrectionNet`` (an additive CNN) and
    ``learners.spectral_closure.SpectralClosureNet`` (a learned eddy viscosity) fit it.
    """

    def one_step(self, coarse: NavierStokes2D, w: jax.Array, params: jax.Array) -> jax.Array: ...

    def rollout(self, coarse: NavierStokes2D, w0: jax.Array, params: jax.Array, steps: int) -> jax.Array: ...


class CorrectionModelConfig(Protocol):
    """A picklable factory of a ``CorrectionModel`` (``CoarseCorrectionConfig``, ``SpectralClosureConfig``)."""

    def build(self, seed: int = 0) -> Any: ...


@dataclass(frozen=True)
class CoarseCorrectionConfig:
    """Hyperparameters of a ``CoarseCorrectionNet``; hashable and picklable (a model factory)."""

    width: int = 16
    depth: int = 3
    kernel_size: int = 3
    field_scale: float = 4.0
    log_nu_center: float = -6.0

    def build(self, seed: int = 0) -> CoarseCorrectionNet:
        """Initialise a ``CoarseCorrectionNet`` from ``seed``."""
        return CoarseCorrectionNet(**vars(self), rngs=nnx.Rngs(seed))  # every field is a constructor argument


def coarse_step(coarse: NavierStokes2D, w: jax.Array, params: jax.Array) -> jax.Array:
    """One plain coarse step of a batch: ``(B, n, n)`` vorticity, ``(B, 3)`` params -> ``(B, n, n)``."""

    def one(w1: jax.Array, p: jax.Array) -> jax.Array:
        state = NavierStokesState(w1, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
        return coarse.step(state, NavierStokesParams(p[0], p[1], p[2])).w

    return jax.vmap(one)(w, params)


def corrected_step(coarse: NavierStokes2D, model: CorrectionModel, w: jax.Array, params: jax.Array) -> jax.Array:
    """One corrected coarse step of a batch (shapes as ``coarse_step``): ``model.one_step``."""
    return model.one_step(coarse, w, params)


def corrected_rollout(
    coarse: NavierStokes2D, model: CorrectionModel | None, w0: jax.Array, params: jax.Array, steps: int
) -> jax.Array:
    """``steps`` corrected steps from ``w0`` inside one ``lax.scan``; ``model=None`` is the plain solver.

    Returns:
        The trajectory ``(steps, B, n, n)`` (the frames after each step, ``w0`` excluded).
    """
    if model is not None:
        return model.rollout(coarse, w0, params, steps)

    def body(w: jax.Array, _: Any) -> tuple[jax.Array, jax.Array]:
        w = coarse_step(coarse, w, params)
        return w, w

    return jax.lax.scan(body, w0, None, length=steps)[1]


def _relative_sq(pred: jax.Array, target: jax.Array) -> jax.Array:
    num = jnp.sum((pred - target) ** 2, axis=(-2, -1))
    return num / jnp.maximum(jnp.sum(target**2, axis=(-2, -1)), 1e-12)


def trajectory_loss(
    model: CorrectionModel, coarse: NavierStokes2D, field: jax.Array, params: jax.Array, unroll: int
) -> jax.Array:
    """Mean relative squared error of the corrected solver on windows ``field`` ``(B, K+1, n, n)``.

    ``unroll=1``: every pair ``(field[:, i], field[:, i+1])`` is a one-step sample.
    ``unroll=K``: ``K`` corrected steps from ``field[:, 0]``, compared with
    ``field[:, 1:K+1]``, gradients through the solver (solver-in-the-loop).
    """
    if unroll == 1:
        b, k1, n, _ = field.shape
        w = field[:, :-1].reshape(-1, n, n)
        p = jnp.repeat(params, k1 - 1, axis=0)
        return jnp.mean(_relative_sq(corrected_step(coarse, model, w, p), field[:, 1:].reshape(-1, n, n)))
    traj = corrected_rollout(coarse, model, field[:, 0], params, unroll)  # (K, B, n, n)
    return jnp.mean(_relative_sq(jnp.swapaxes(traj, 0, 1), field[:, 1 : unroll + 1]))


@nnx.jit(static_argnames=("coarse", "unroll"))
def _train_step(
    model: Any,
    optimizer: nnx.Optimizer,
    field: jax.Array,
    params: jax.Array,
    coarse: NavierStokes2D,
    unroll: int,
) -> jax.Array:
    loss, grads = nnx.value_and_grad(trajectory_loss)(model, coarse, field, params, unroll)
    optimizer.update(model, grads)
    return loss


@dataclass(frozen=True)
class SolverCorrectionConfig:
    """Everything a learner worker needs to build a ``SolverCorrectionTrainer`` (picklable).

    Attributes:
        coarse: the coarse solver the correction lives in.
        model: the correction model's hyperparameters (``CoarseCorrectionConfig``: an additive
            CNN; ``SpectralClosureConfig``: a learned spectral eddy viscosity).
        optimizer: optimiser hyperparameters.
        unroll: steps of the training rollout (1: one-step training).
        seed: initialisation seed.
    """

    coarse: NavierStokes2D
    model: CorrectionModelConfig = field(default_factory=CoarseCorrectionConfig)
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(learning_rate=1e-3, decay_steps=2000))
    unroll: int = 1
    seed: int = 0

    def __call__(self) -> SolverCorrectionTrainer:
        """Build the trainer (a ``LearnerActor``'s ``make_trainer``)."""
        return SolverCorrectionTrainer(self)


class SolverCorrectionTrainer(TrainerState):
    """Trains a ``CoarseCorrectionNet`` on coarse-grained fine trajectories (numpy in, numpy out).

    Fits the ``LearnerActor`` trainer protocol (``step``, ``warmup``,
    ``get_weights``, ``checkpoint``, ``restore``); thread-safe.

    Args:
        config: coarse solver, network, optimiser, unroll length and seed.

    Raises:
        ValueError: for ``unroll < 1``.

    Example:
        >>> cfg = SolverCorrectionConfig(NavierStokes2D(n=16, dt=0.04), CoarseCorrectionConfig(width=4))
        >>> trainer = cfg()
        >>> batch = {"field": np.zeros((2, 3, 16, 16), np.float32),
        ...          "params": np.tile(np.float32([2e-3, 1.0, 0.1]), (2, 1))}
        >>> _ = trainer.step(batch)
        >>> trainer.steps_taken
        1
    """

    def __init__(self, config: SolverCorrectionConfig) -> None:
        if config.unroll < 1:
            raise ValueError(f"unroll must be >= 1, got {config.unroll}")
        self.config = config
        self.model = config.model.build(config.seed)
        self.optimizer = config.optimizer.build(self.model)
        self._lock = threading.RLock()
        self._history: list[tuple[int, float]] = []

    def _arrays(self, batch: Mapping[str, Any]) -> tuple[jax.Array, jax.Array]:
        n, unroll = self.config.coarse.n, self.config.unroll

        def check(f: np.ndarray) -> None:
            if f.ndim != 4 or f.shape[2:] != (n, n) or f.shape[1] < unroll + 1:
                raise ValueError(f"expected field (B, K+1, {n}, {n}) with K >= unroll={unroll}, got {f.shape}")

        return field_and_params(batch, check)

    def set_unroll(self, unroll: int) -> None:
        """Train on ``unroll``-step rollouts from the next step on (a curriculum of unroll lengths).

        The model, the optimiser state and the loss history carry over.

        Raises:
            ValueError: for ``unroll < 1``.
        """
        if unroll < 1:
            raise ValueError(f"unroll must be >= 1, got {unroll}")
        with self._lock:
            self.config = replace(self.config, unroll=unroll)

    def step(self, batch: Mapping[str, Any]) -> float:
        """One optimiser step on ``batch``; returns its loss before the update.

        Raises:
            KeyError: if ``"field"`` or ``"params"`` is missing.
            ValueError: if the shapes do not fit the coarse solver or the unroll length.
        """
        f, p = self._arrays(batch)
        with self._lock:
            loss = float(_train_step(self.model, self.optimizer, f, p, self.config.coarse, self.config.unroll))
            self._history.append((int(self.optimizer.step.get_value()), loss))
        return loss

    def warmup(self, batch: Mapping[str, Any]) -> None:
        """Compile ``step`` for ``batch``'s shapes on throw-away copies (nothing changes)."""
        f, p = self._arrays(batch)
        with self._lock:
            model, optimizer = nnx.clone(self.model), nnx.clone(self.optimizer)
        jax.block_until_ready(_train_step(model, optimizer, f, p, self.config.coarse, self.config.unroll))

"""A learned subgrid tendency inside a coarse ``NavierStokes2D`` solver: a periodic CNN of the coarse state.

A coarse solver misses the subgrid tendency ``s = P[N(w)] - N_c(P w)`` (the
restricted fine advection minus the coarse one). ``benchmarks/subgrid_apriori.py
--cnn`` measured, a priori, that a periodic CNN of the coarse vorticity explains
most of it where per-shell features explain a third. This model puts that CNN
inside the solver as an extra right-hand side:

    dw^/dt = -(u . grad w)^ - nu |k|^2 w^ - alpha w^ + f^ + s_theta(w, nu, A)^,

with ``s_theta`` evaluated once per step at its start and held over the
Runge-Kutta stages (``NavierStokes2D.step_with_closure(..., tendency=)``). The
network is ``learners.solver_correction.CoarseCorrectionNet`` (its last layer
starts at zero, so an untrained model is the plain solver); its output is read
as the tendency in units of ``tendency_scale``. It exposes ``one_step`` and
``rollout`` like the other correction models, so the trainer
(``SolverCorrectionConfig``) and the benchmark take it.

It can also be fitted *a priori*, as LES closures usually are:
``SubgridFitConfig``/``SubgridFitTrainer`` regress the CNN's tendency on the
exact subgrid tendency of fine runs seen on the coarse grid (the ``"subgrid"``
observation of ``physics.coarse_graining.CoarseGrainedNavierStokes``), with no
solver in the loop. :func:`tendency_error` scores such a fit.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from coupler.learners.online import OptimizerConfig, TrainerState
from coupler.learners.solver_correction import PARAMS_WIDTH, CoarseCorrectionNet, field_and_params
from coupler.physics.navier_stokes import NavierStokes2D, NavierStokesParams, NavierStokesState


class SubgridTendencyNet(nnx.Module):
    """A periodic CNN's subgrid tendency added to every coarse step.

    Args:
        width: hidden channels.
        depth: convolutions (>= 2).
        kernel_size: odd kernel size.
        field_scale: typical vorticity magnitude (the CNN's input scale).
        tendency_scale: typical subgrid tendency magnitude (the CNN's output scale).
        log_nu_center: centre of the ``log(viscosity)`` input.
        rngs: flax random streams (keyword-only, as in flax NNX).

    Raises:
        ValueError: for ``depth < 2``, an even kernel, or a non-positive width or scale.
    """

    def __init__(
        self,
        *,
        width: int = 32,
        depth: int = 5,
        kernel_size: int = 3,
        field_scale: float = 2.8,
        tendency_scale: float = 0.5,
        log_nu_center: float = -3.5,
        rngs: nnx.Rngs,
    ) -> None:
        if not tendency_scale > 0:
            raise ValueError(f"tendency_scale must be > 0, got {tendency_scale}")
        self.tendency_scale = tendency_scale
        self.net = CoarseCorrectionNet(
            width=width, depth=depth, kernel_size=kernel_size, field_scale=field_scale,
            log_nu_center=log_nu_center, rngs=rngs,
        )

    def tendency(self, w: jax.Array, params: jax.Array) -> jax.Array:
        """The predicted subgrid tendency on the grid, ``(B, n, n)``, of vorticity ``(B, n, n)`` and params ``(B, 3)``."""
        # The net's output is in vorticity units (times field_scale); rescale it to tendency units.
        return self.net(w, params) * (self.tendency_scale / self.net.field_scale)

    def one_step(self, coarse: NavierStokes2D, w: jax.Array, params: jax.Array) -> jax.Array:
        """One coarse step of a batch with the predicted tendency: ``(B, n, n)`` vorticity, ``(B, 3)`` params."""
        t_hat = jnp.fft.rfft2(self.tendency(w, params))

        def one(w1: jax.Array, p: jax.Array, t1: jax.Array) -> jax.Array:
            state = NavierStokesState(w1, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
            zero = jnp.zeros((), jnp.float32)
            return coarse.step_with_closure(state, NavierStokesParams(p[0], p[1], p[2]), zero, zero + 1, t1).w

        return jax.vmap(one)(w, params, t_hat)

    def rollout(self, coarse: NavierStokes2D, w0: jax.Array, params: jax.Array, steps: int) -> jax.Array:
        """``steps`` steps from ``w0`` inside one ``lax.scan``; ``(steps, B, n, n)``."""

        def body(w: jax.Array, _: Any) -> tuple[jax.Array, jax.Array]:
            w = self.one_step(coarse, w, params)
            return w, w

        return jax.lax.scan(body, w0, None, length=steps)[1]


@dataclass(frozen=True)
class SubgridTendencyConfig:
    """Hyperparameters of a ``SubgridTendencyNet``; hashable and picklable (a model factory).

    The defaults' scales are the ``--quick16`` regime's (64^2 runs seen on 16^2, viscosity
    0.02-0.04): vorticity rms 2.8, subgrid tendency rms 0.53.
    """

    width: int = 32
    depth: int = 5
    kernel_size: int = 3
    field_scale: float = 2.8
    tendency_scale: float = 0.5
    log_nu_center: float = -3.5

    def build(self, seed: int = 0) -> SubgridTendencyNet:
        """Initialise a ``SubgridTendencyNet`` from ``seed``."""
        return SubgridTendencyNet(**vars(self), rngs=nnx.Rngs(seed))  # every field is a constructor argument


def _reflect(key: jax.Array, w: jax.Array, s: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Each sample mirrored in x and/or y at random, vorticity and tendency negated with it.

    The advection term commutes with a mirror image that negates the vorticity
    (a pseudo-scalar): ``N(R w) = R N(w)`` for ``R w(x, y) = -w(-x, y)``, and
    likewise in y. The forcing does not enter ``s``, so ``(R w, R s)`` is an
    exact sample of the same map from coarse field to subgrid tendency.
    """
    k_x, k_y = jax.random.split(key)
    flip_x = jax.random.bernoulli(k_x, 0.5, (w.shape[0], 1, 1))
    flip_y = jax.random.bernoulli(k_y, 0.5, (w.shape[0], 1, 1))
    w, s = jnp.where(flip_x, -jnp.flip(w, 1), w), jnp.where(flip_x, -jnp.flip(s, 1), s)
    return jnp.where(flip_y, -jnp.flip(w, 2), w), jnp.where(flip_y, -jnp.flip(s, 2), s)


def _fit_loss(model: SubgridTendencyNet, w: jax.Array, params: jax.Array, s: jax.Array) -> jax.Array:
    return jnp.mean((model.tendency(w, params) - s) ** 2) / model.tendency_scale**2


@nnx.jit(static_argnames=("reflect",))
def _fit_step(
    model: SubgridTendencyNet, optimizer: nnx.Optimizer, pair: jax.Array, params: jax.Array, key: jax.Array, reflect: bool
) -> jax.Array:
    w, s = pair[:, 0], pair[:, 1]
    if reflect:
        w, s = _reflect(key, w, s)
    loss, grads = nnx.value_and_grad(_fit_loss)(model, w, params, s)
    optimizer.update(model, grads)
    return loss


@dataclass(frozen=True)
class SubgridFitConfig:
    """Everything a learner worker needs to build a ``SubgridFitTrainer`` (picklable).

    Attributes:
        n: the coarse grid's size (batches are checked against it).
        model: the network's hyperparameters.
        optimizer: optimiser hyperparameters.
        reflect: draw each sample's mirror images in x and y (exact data; see ``_reflect``).
        seed: initialisation and reflection seed.
    """

    n: int
    model: SubgridTendencyConfig = field(default_factory=SubgridTendencyConfig)
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(learning_rate=1e-3, decay_steps=2000))
    reflect: bool = True
    seed: int = 0

    def __call__(self) -> SubgridFitTrainer:
        """Build the trainer (a ``LearnerActor``'s ``make_trainer``)."""
        return SubgridFitTrainer(self)


class SubgridFitTrainer(TrainerState):
    """Fits a ``SubgridTendencyNet`` a priori to exact subgrid tendencies (numpy in, numpy out).

    The loss is the mean squared error of the predicted tendency in units of
    ``tendency_scale``. Fits the ``LearnerActor`` trainer protocol (``step``,
    ``warmup``, ``get_weights``, ``checkpoint``, ``restore``); thread-safe. The
    reflections of step ``i`` come from ``fold_in(key(seed), i)``, so a
    restored checkpoint continues exactly.

    A batch is ``{"field": (B, 2, n, n), "params": (B, 3)}``: channel 0 the
    coarse vorticity, channel 1 the subgrid tendency there (what a simulator
    actor publishing ``CoarseGrainedNavierStokes``'s ``"subgrid"`` sends), and
    the runs' ``(viscosity, forcing_amplitude, drag)``.

    Args:
        config: grid, network, optimiser, reflections and seed.

    Example:
        >>> trainer = SubgridFitConfig(16, SubgridTendencyConfig(width=4, depth=2))()
        >>> batch = {"field": np.zeros((2, 2, 16, 16), np.float32),
        ...          "params": np.tile(np.float32([0.03, 1.0, 0.1]), (2, 1))}
        >>> _ = trainer.step(batch)
        >>> trainer.steps_taken
        1
    """

    def __init__(self, config: SubgridFitConfig) -> None:
        self.config = config
        self.model = config.model.build(config.seed)
        self.optimizer = config.optimizer.build(self.model)
        self._key = jax.random.key(config.seed)
        self._lock = threading.RLock()
        self._history: list[tuple[int, float]] = []

    def _arrays(self, batch: Mapping[str, Any]) -> tuple[jax.Array, jax.Array]:
        n = self.config.n

        def check(f: np.ndarray) -> None:
            if f.shape[1:] != (2, n, n):
                raise ValueError(f"expected field (B, 2, {n}, {n}) (vorticity, subgrid tendency), got {f.shape}")

        return field_and_params(batch, check)

    def step(self, batch: Mapping[str, Any]) -> float:
        """One optimiser step on ``batch``; returns its loss before the update.

        Raises:
            KeyError: if ``"field"`` or ``"params"`` is missing.
            ValueError: if the shapes do not fit the grid.
        """
        f, p = self._arrays(batch)
        with self._lock:
            key = jax.random.fold_in(self._key, int(self.optimizer.step.get_value()))
            loss = float(_fit_step(self.model, self.optimizer, f, p, key, self.config.reflect))
            self._history.append((int(self.optimizer.step.get_value()), loss))
        return loss

    def warmup(self, batch: Mapping[str, Any]) -> None:
        """Compile ``step`` for ``batch``'s shapes on throw-away copies (nothing changes)."""
        f, p = self._arrays(batch)
        with self._lock:
            model, optimizer = nnx.clone(self.model), nnx.clone(self.optimizer)
        jax.block_until_ready(_fit_step(model, optimizer, f, p, self._key, self.config.reflect))


@nnx.jit
def _tendency_errors(model: SubgridTendencyNet, pair: jax.Array, params: jax.Array) -> jax.Array:
    s = pair[:, 1]
    num = jnp.sum((model.tendency(pair[:, 0], params) - s) ** 2, axis=(-2, -1))
    return jnp.sqrt(num / jnp.maximum(jnp.sum(s**2, axis=(-2, -1)), 1e-12))


def tendency_error(model: SubgridTendencyNet | None, pair: np.ndarray, params: np.ndarray, chunk: int = 256) -> float:
    """Mean over samples of the predicted tendency's relative L2 error, ``|s_pred - s| / |s|``.

    Args:
        model: the fitted model; ``None`` predicts no tendency (the plain coarse solver: error 1).
        pair: ``(N, 2, n, n)`` coarse vorticity and exact subgrid tendency.
        params: ``(N, 3)`` the runs' parameters.
        chunk: samples per device call.

    Returns:
        The mean relative error.

    Raises:
        ValueError: for an empty set or shapes that do not pair up.
    """
    pair, params = np.asarray(pair, np.float32), np.asarray(params, np.float32)
    if pair.ndim != 4 or pair.shape[1] != 2 or len(pair) == 0 or params.shape != (len(pair), PARAMS_WIDTH):
        raise ValueError(f"expected pair (N > 0, 2, n, n) and params (N, {PARAMS_WIDTH}), got {pair.shape} and {params.shape}")
    if model is None:
        return 1.0
    errs = [np.asarray(_tendency_errors(model, jnp.asarray(pair[i : i + chunk]), jnp.asarray(params[i : i + chunk])))
            for i in range(0, len(pair), chunk)]
    return float(np.mean(np.concatenate(errs)))

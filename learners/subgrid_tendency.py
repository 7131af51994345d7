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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from coupler.learners.solver_correction import CoarseCorrectionNet
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

"""A learned mixed closure of a coarse ``NavierStokes2D`` solver: subgrid models scaled per wavenumber.

``learners.spectral_closure`` learns an eddy viscosity ``nu_t(k)`` that depends on
the run's parameters only: it drains enstrophy at the cutoff on average, but it
cannot say *where* the unresolved scales act in a given state. Classical LES
models built from the resolved field can: the scale-similarity model (Bardina et
al. 1980; ``NavierStokes2D.similarity_tendency``: the advection due to the top
band of resolved modes) and the gradient model (Clark et al. 1979;
``NavierStokes2D.gradient_model_tendency``). Alone they are inaccurate or
unstable; mixed with an eddy viscosity, and here with a learned coefficient per
wavenumber for every term, they form a state-dependent closure with a few
parameters per wavenumber shell:

    dw^/dt = -(1 + g(k)) (u . grad w)^ - (nu + nu_t(k)) |k|^2 w^ + sum_i c_i(k) F_i(w)^ - alpha w^ + f^,

with ``F_i`` the chosen models' tendencies, evaluated once per step at its start
and held over the Runge-Kutta stages, and ``nu_t, g, c_i`` from a small MLP of
``|k|``, ``max(|kx|, |ky|)`` (relative to the cutoff), ``log(nu)`` and the forcing
amplitude, computed once per run. Its last layer starts at zero: an untrained
model is the plain solver. It trains through the solver
(``learners.solver_correction.trajectory_loss``) like the other models.

Measured a priori (32^2 pad solver, fine 128^2 Kolmogorov runs, viscosity
0.008-0.016; docs/augmentation.md): in the shell next to the cutoff, where most
of the subgrid tendency is, its correlation with the similarity term is -0.59,
with ``k^2 w`` (an eddy viscosity) -0.46, with the gradient model 0.27.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from coupler.physics.navier_stokes import NavierStokes2D, NavierStokesParams, NavierStokesState


FEATURES = ("similarity", "gradient")
"""The subgrid models a ``MixedClosureNet`` can scale."""


class MixedClosureNet(nnx.Module):
    """Learned per-wavenumber coefficients ``nu_t(k)``, ``g(k)`` and ``c_i(k)`` of a mixed closure.

    Args:
        hidden: width of the MLP's hidden layers.
        depth: hidden layers (>= 1).
        viscosity_scale: ``nu_t`` is the MLP's first output times this.
        features: the subgrid models (of ``FEATURES``), one learned coefficient ``c_i(k)`` each.
        feature_scale: every ``c_i`` is an MLP output times this.
        log_nu_center: centre of the ``log(viscosity)`` feature.
        rngs: flax random streams (keyword-only, as in flax NNX).

    Raises:
        ValueError: for ``depth < 1``, a non-positive width or scale, or an unknown feature.
    """

    def __init__(
        self,
        *,
        hidden: int = 32,
        depth: int = 2,
        viscosity_scale: float = 0.01,
        features: tuple[str, ...] = ("similarity",),
        feature_scale: float = 1.0,
        log_nu_center: float = -4.0,
        rngs: nnx.Rngs,
    ) -> None:
        if depth < 1 or hidden < 1 or not (viscosity_scale > 0 and feature_scale > 0):
            raise ValueError(
                f"need depth >= 1, hidden >= 1 and positive scales; got {depth}, {hidden}, {viscosity_scale}, {feature_scale}"
            )
        if not set(features) <= set(FEATURES):
            raise ValueError(f"features must be among {FEATURES}, got {features}")
        self.viscosity_scale = viscosity_scale
        self.features = tuple(features)
        self.feature_scale = feature_scale
        self.log_nu_center = log_nu_center
        sizes = [4] + [hidden] * depth
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
        self.out = nnx.Linear(hidden, 2 + len(self.features), kernel_init=nnx.initializers.zeros, rngs=rngs)

    def coefficients(self, coarse: NavierStokes2D, params: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``(nu_t, 1 + g, c)`` of a batch: ``(B, n, n//2 + 1)`` twice (the ``rfft2`` layout), ``c`` ``(B, F, n, n//2 + 1)``.

        Args:
            coarse: the coarse solver (its grid sets the wavenumbers and the cutoff).
            params: ``(B, 3)`` viscosity, forcing amplitude, drag.
        """
        kx, ky = coarse.wavenumbers()
        cut = coarse.n / 2
        k = jnp.sqrt(kx**2 + ky**2) / cut
        kmax = jnp.maximum(jnp.abs(kx), jnp.abs(ky)) / cut
        shape = (params.shape[0],) + k.shape
        log_nu = jnp.log(params[:, 0]) - self.log_nu_center
        x = jnp.stack(
            [
                jnp.broadcast_to(k, shape),
                jnp.broadcast_to(kmax, shape),
                jnp.broadcast_to(log_nu[:, None, None], shape),
                jnp.broadcast_to(params[:, 1, None, None] - 1.0, shape),
            ],
            axis=-1,
        )
        for layer in self.layers:
            x = jax.nn.gelu(layer(x))
        out = self.out(x)
        c = jnp.moveaxis(out[..., 2:], -1, 1) * self.feature_scale
        return out[..., 0] * self.viscosity_scale, 1.0 + out[..., 1], c

    def one_step(self, coarse: NavierStokes2D, w: jax.Array, params: jax.Array) -> jax.Array:
        """One closed coarse step of a batch: ``(B, n, n)`` vorticity, ``(B, 3)`` params."""
        return mixed_step(coarse, self.features, w, params, *self.coefficients(coarse, params))

    def rollout(self, coarse: NavierStokes2D, w0: jax.Array, params: jax.Array, steps: int) -> jax.Array:
        """``steps`` closed steps from ``w0`` inside one ``lax.scan``; ``(steps, B, n, n)`` (coefficients once)."""
        coeffs = self.coefficients(coarse, params)

        def body(w: jax.Array, _: Any) -> tuple[jax.Array, jax.Array]:
            w = mixed_step(coarse, self.features, w, params, *coeffs)
            return w, w

        return jax.lax.scan(body, w0, None, length=steps)[1]


def mixed_step(
    coarse: NavierStokes2D,
    features: tuple[str, ...],
    w: jax.Array,
    params: jax.Array,
    nu_t: jax.Array,
    gain: jax.Array,
    c: jax.Array,
) -> jax.Array:
    """One step of a batch with the closure's coefficients: ``c`` is ``(B, len(features), n, n//2 + 1)``."""

    def one(w1: jax.Array, p: jax.Array, nt: jax.Array, g: jax.Array, c1: jax.Array) -> jax.Array:
        state = NavierStokesState(w1, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
        w_hat = jnp.fft.rfft2(w1)
        models = {"similarity": coarse.similarity_tendency, "gradient": coarse.gradient_model_tendency}
        tendency = sum((c1[i] * models[f](w_hat) for i, f in enumerate(features)), jnp.zeros_like(w_hat))
        return coarse.step_with_closure(state, NavierStokesParams(p[0], p[1], p[2]), nt, g, tendency).w

    return jax.vmap(one)(w, params, nu_t, gain, c)


@dataclass(frozen=True)
class MixedClosureConfig:
    """Hyperparameters of a ``MixedClosureNet``; hashable and picklable (a model factory)."""

    hidden: int = 32
    depth: int = 2
    viscosity_scale: float = 0.01
    features: tuple[str, ...] = ("similarity",)
    feature_scale: float = 1.0
    log_nu_center: float = -4.0

    def build(self, seed: int = 0) -> MixedClosureNet:
        """Initialise a ``MixedClosureNet`` from ``seed``."""
        return MixedClosureNet(**vars(self), rngs=nnx.Rngs(seed))  # every field is a constructor argument

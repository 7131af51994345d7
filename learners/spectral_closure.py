"""A learned spectral closure of a coarse ``NavierStokes2D`` solver: eddy viscosity and advection gain per wavenumber.

A coarse pseudo-spectral solver misses the effect of the scales its grid cannot
hold. Classical closures model it as an eddy viscosity: Smagorinsky's in
physical space, Kraichnan's (*Eddy viscosity in two and three dimensions*, J.
Atmos. Sci. 1976) in spectral space, where ``nu_t(k)`` rises towards the grid's
cutoff. This module learns such a closure from coarse-grained fine runs:

    dw^/dt = -(1 + g(k)) (u . grad w)^ - (nu + nu_t(k)) |k|^2 w^ - alpha w^ + f^,

with ``nu_t(k)`` and ``g(k)`` given, for every wavenumber, by a small MLP of
``|k|`` (relative to the grid's cutoff), ``log(nu)`` and the forcing amplitude.
The closure is diagonal in Fourier space and depends on the run's parameters,
not on its state, so it is computed once per run and a step costs what a plain
step costs (``NavierStokes2D.step_with_closure``). Its last layer starts at
zero: an untrained closure is the plain solver. It has a few hundred weights,
so it trains from few windows, and it is trained through the solver
(``learners.solver_correction.trajectory_loss``, one-step or unrolled).

The model exposes ``one_step``/``rollout`` like ``CoarseCorrectionNet``, so the
trainer, the corrected simulator actor and the benchmark take either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from coupler.learners.solver_correction import CoarseCorrectionConfig
from coupler.physics.navier_stokes import NavierStokes2D, NavierStokesParams, NavierStokesState


class SpectralClosureNet(nnx.Module):
    """A learned, parameter-dependent eddy viscosity ``nu_t(k)`` and advection gain ``g(k)``.

    Args:
        hidden: width of the MLP's hidden layers.
        depth: hidden layers (>= 1).
        viscosity_scale: ``nu_t`` is the MLP's first output times this.
        log_nu_center: centre of the ``log(viscosity)`` feature.
        state_features: also feed the MLP the state's spectrum at every step: the log energy of
            the mode and of the band next to the cutoff (``|k| > 3/4`` of it), as the
            Chollet-Lesieur spectral eddy viscosity scales with the energy at the cutoff. The
            coefficients are then recomputed every step (a small cost).
        rngs: flax random streams (keyword-only, as in flax NNX).

    Raises:
        ValueError: for ``depth < 1`` or a non-positive width or scale.
    """

    def __init__(
        self,
        *,
        hidden: int = 16,
        depth: int = 2,
        viscosity_scale: float = 0.01,
        log_nu_center: float = -4.0,
        state_features: bool = False,
        rngs: nnx.Rngs,
    ) -> None:
        if depth < 1 or hidden < 1 or not viscosity_scale > 0:
            raise ValueError(
                f"need depth >= 1, hidden >= 1 and viscosity_scale > 0; got {depth}, {hidden}, {viscosity_scale}"
            )
        self.viscosity_scale = viscosity_scale
        self.log_nu_center = log_nu_center
        self.state_features = state_features
        sizes = [6 if state_features else 4] + [hidden] * depth
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
        self.out = nnx.Linear(hidden, 2, kernel_init=nnx.initializers.zeros, rngs=rngs)

    def coefficients(
        self, coarse: NavierStokes2D, params: jax.Array, w: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """``(nu_t, 1 + g)`` of a batch, each ``(B, n, n//2 + 1)`` in the ``rfft2`` layout.

        Args:
            coarse: the coarse solver (its grid sets the wavenumbers and the cutoff).
            params: ``(B, 3)`` viscosity, forcing amplitude, drag.
            w: ``(B, n, n)`` the current vorticity (needed with ``state_features``, else unused).

        Raises:
            ValueError: with ``state_features`` and no ``w``.
        """
        kx, ky = coarse.wavenumbers()
        cut = coarse.n / 2
        k = jnp.sqrt(kx**2 + ky**2) / cut
        kmax = jnp.maximum(jnp.abs(kx), jnp.abs(ky)) / cut
        b = params.shape[0]
        shape = (b,) + k.shape
        log_nu = jnp.log(params[:, 0]) - self.log_nu_center
        features = [
            jnp.broadcast_to(k, shape),
            jnp.broadcast_to(kmax, shape),
            jnp.broadcast_to(log_nu[:, None, None], shape),
            jnp.broadcast_to(params[:, 1, None, None] - 1.0, shape),
        ]
        if self.state_features:
            if w is None:
                raise ValueError("a closure with state_features needs the state w")
            # Energy per mode, normalised so that a field of unit rms has modes of order 1.
            e = jnp.abs(jnp.fft.rfft2(w)) ** 2 / coarse.n**2
            band = (k > 0.75) & (k < 1.0)
            e_band = jnp.sum(e * band, axis=(-2, -1)) / jnp.sum(band)
            features += [jnp.log(e + 1e-6) / 4.0, jnp.broadcast_to(jnp.log(e_band + 1e-6)[:, None, None] / 4.0, shape)]
        x = jnp.stack(features, axis=-1)
        for layer in self.layers:
            x = jax.nn.gelu(layer(x))
        out = self.out(x)
        return out[..., 0] * self.viscosity_scale, 1.0 + out[..., 1]

    def one_step(self, coarse: NavierStokes2D, w: jax.Array, params: jax.Array) -> jax.Array:
        """One closed coarse step of a batch: ``(B, n, n)`` vorticity, ``(B, 3)`` params."""
        return _closed_step(coarse, w, params, *self.coefficients(coarse, params, w))

    def rollout(self, coarse: NavierStokes2D, w0: jax.Array, params: jax.Array, steps: int) -> jax.Array:
        """``steps`` closed steps from ``w0`` inside one ``lax.scan``; ``(steps, B, n, n)``.

        Without ``state_features`` the coefficients are computed once, outside the loop.
        """
        fixed = None if self.state_features else self.coefficients(coarse, params)

        def body(w: jax.Array, _: Any) -> tuple[jax.Array, jax.Array]:
            coeffs = fixed if fixed is not None else self.coefficients(coarse, params, w)
            w = _closed_step(coarse, w, params, *coeffs)
            return w, w

        return jax.lax.scan(body, w0, None, length=steps)[1]


def _closed_step(coarse: NavierStokes2D, w: jax.Array, params: jax.Array, nu_t: jax.Array, gain: jax.Array) -> jax.Array:
    def one(w1: jax.Array, p: jax.Array, nt: jax.Array, g: jax.Array) -> jax.Array:
        state = NavierStokesState(w1, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
        return coarse.step_with_closure(state, NavierStokesParams(p[0], p[1], p[2]), nt, g).w

    return jax.vmap(one)(w, params, nu_t, gain)


@dataclass(frozen=True)
class SpectralClosureConfig:
    """Hyperparameters of a ``SpectralClosureNet``; hashable and picklable (a model factory)."""

    hidden: int = 16
    depth: int = 2
    viscosity_scale: float = 0.01
    log_nu_center: float = -4.0
    state_features: bool = False

    def build(self, seed: int = 0) -> SpectralClosureNet:
        """Initialise a ``SpectralClosureNet`` from ``seed``."""
        return SpectralClosureNet(**vars(self), rngs=nnx.Rngs(seed))  # every field is a constructor argument


class ClosureWithCorrection(nnx.Module):
    """A spectral closure with an additive CNN on top: ``w <- C(w) + N(C(w), nu, A)``.

    ``C`` is a ``SpectralClosureNet`` step, ``N`` a ``CoarseCorrectionNet``; both
    start as the identity, so an untrained model is the plain solver.

    Args:
        closure: the closure's hyperparameters.
        correction: the CNN's hyperparameters.
        seed: initialisation seed.
    """

    def __init__(self, closure: SpectralClosureConfig, correction: CoarseCorrectionConfig, seed: int = 0) -> None:
        self.closure = closure.build(seed)
        self.correction = correction.build(seed + 1)

    def one_step(self, coarse: NavierStokes2D, w: jax.Array, params: jax.Array) -> jax.Array:
        """One step of a batch: the closed step, then the CNN's correction of it."""
        w1 = self.closure.one_step(coarse, w, params)
        return w1 + self.correction(w1, params)

    def rollout(self, coarse: NavierStokes2D, w0: jax.Array, params: jax.Array, steps: int) -> jax.Array:
        """``steps`` steps from ``w0`` inside one ``lax.scan``; ``(steps, B, n, n)``."""
        fixed = None if self.closure.state_features else self.closure.coefficients(coarse, params)

        def body(w: jax.Array, _: Any) -> tuple[jax.Array, jax.Array]:
            coeffs = fixed if fixed is not None else self.closure.coefficients(coarse, params, w)
            w = _closed_step(coarse, w, params, *coeffs)
            w = w + self.correction(w, params)
            return w, w

        return jax.lax.scan(body, w0, None, length=steps)[1]


@dataclass(frozen=True)
class ClosureWithCorrectionConfig:
    """Hyperparameters of a ``ClosureWithCorrection``; hashable and picklable (a model factory)."""

    closure: SpectralClosureConfig = SpectralClosureConfig(hidden=32)
    correction: CoarseCorrectionConfig | None = None

    def build(self, seed: int = 0) -> ClosureWithCorrection:
        """Initialise a ``ClosureWithCorrection`` from ``seed`` (the CNN defaults to 8 channels, 3 layers)."""
        return ClosureWithCorrection(self.closure, self.correction or CoarseCorrectionConfig(width=8, depth=3, log_nu_center=-3.5), seed)

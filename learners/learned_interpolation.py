"""Learned interpolation of the advected vorticity to cell faces, inside a coarse spectral ``NavierStokes2D`` solver.

Kochkov et al., *Machine learning-accelerated computational fluid dynamics*,
PNAS 2021, let a CNN choose, per cell face, the coefficients of the stencil
that interpolates the advected field to the face for the finite-volume flux
``u_face * w_face``. The coefficients are constrained so the interpolation stays
accurate to a stated polynomial order whatever the network outputs: they are a
fixed interpolating stencil plus a learned vector in the null space of the
moment conditions. Here the base scheme is the spectral solver itself, so the
learned part is the correction of the face value,

    delta w_{i+1/2} = sum_s (N theta_{i+1/2})_s w_{i+s},   sum_s (N theta)_s (s - 1/2)^m = 0  for m <= order,

which vanishes on any polynomial of degree ``order`` (a smooth, resolved field
is left to the spectral scheme) and is non-zero on what the coarse grid holds
near its cutoff. The correction enters the vorticity equation as the
divergence of the flux ``u_face delta w``,

    dw/dt += -(F_{i+1/2,j} - F_{i-1/2,j}) / dx - (G_{i,j+1/2} - G_{i,j-1/2}) / dx,

conservative (the mean vorticity does not move) and proportional to the
local velocity, as the unresolved transport is. The face velocities are the
spectral velocity shifted half a cell (exact for the resolved field). The
tendency is evaluated once per step, at its start, and held over the
Runge-Kutta stages (``NavierStokes2D.step_with_closure``), so a step costs one
CNN pass and five FFTs more than a plain step. The CNN sees the vorticity, the
face velocities, the forcing's phase ``cos(k_f y), sin(k_f y)`` and the run's
``log(nu)`` and amplitude; its last layer starts at zero, so an untrained
model is the plain solver. Train it through the solver
(``learners.solver_correction.trajectory_loss``) like the other models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from coupler.learners.solver_correction import check_conv_stack
from coupler.physics.navier_stokes import NavierStokes2D, NavierStokesParams, NavierStokesState


def stencil_offsets(width: int) -> np.ndarray:
    """Cell offsets ``s`` of a face stencil of ``width`` cells: ``-(width/2 - 1) .. width/2`` (face between 0 and 1).

    Raises:
        ValueError: for an odd or non-positive ``width``.
    """
    if width < 2 or width % 2:
        raise ValueError(f"a face stencil needs an even width >= 2, got {width}")
    return np.arange(-(width // 2 - 1), width // 2 + 1)


def lagrange_face_stencil(width: int) -> np.ndarray:
    """Coefficients of the interpolating polynomial through ``width`` cells, evaluated at the face (``s = 1/2``).

    Exact for polynomials of degree ``width - 1`` (for 4 cells: ``(-1, 9, 9, -1) / 16``).
    """
    p = stencil_offsets(width) - 0.5
    c = np.ones(width)
    for i in range(width):
        for j in range(width):
            if i != j:
                c[i] *= (0.0 - p[j]) / (p[i] - p[j])
    return c


def null_space_basis(width: int, order: int) -> np.ndarray:
    """``(width, width - order - 1)``: an orthonormal basis of the stencils that vanish on polynomials of degree ``order``.

    A vector ``d`` in its span has ``sum_s d_s (s - 1/2)^m = 0`` for ``m = 0 .. order``: added to
    any stencil, it leaves the stencil's accuracy on those polynomials unchanged.

    Raises:
        ValueError: for an ``order`` that leaves no free coefficient.
    """
    if not 0 <= order < width - 1:
        raise ValueError(f"order must be in [0, width - 2 = {width - 2}] to leave a free coefficient, got {order}")
    p = stencil_offsets(width) - 0.5
    moments = np.stack([p**m for m in range(order + 1)])  # (order + 1, width)
    _, _, vt = np.linalg.svd(moments)
    return vt[order + 1 :].T


def face_values(w: jax.Array, coefficients: jax.Array, axis: int) -> jax.Array:
    """``sum_s c_s w_{i+s}`` at the faces ``i + 1/2`` along ``axis`` of a periodic field.

    Args:
        w: ``(..., n, n)``.
        coefficients: ``(..., n, n, width)``, the stencil of each face (indexed by the cell on its left).
        axis: ``-2`` (x, the first grid axis) or ``-1`` (y).

    Returns:
        ``(..., n, n)``: the value at the face between cell ``i`` and ``i + 1``.
    """
    offsets = stencil_offsets(coefficients.shape[-1])
    shifted = jnp.stack([jnp.roll(w, -int(s), axis=axis) for s in offsets], axis=-1)
    return jnp.sum(coefficients * shifted, axis=-1)


class LearnedInterpolationNet(nnx.Module):
    """A CNN that corrects the face values of the advected vorticity with constrained stencils (see the module).

    Args:
        width: channels of the hidden layers.
        depth: convolutions (>= 2).
        kernel_size: odd kernel size.
        stencil: cells per face stencil (even).
        order: the correction vanishes on polynomials up to this degree (``0``: constants only,
            Kochkov's first-order constraint; ``1``: linear fields too).
        field_scale: typical vorticity magnitude (inputs are divided by it).
        log_nu_center: centre of the ``log(viscosity)`` feature.
        rngs: flax random streams (keyword-only, as in flax NNX).

    Raises:
        ValueError: for ``depth < 2``, an even kernel, a non-positive width or scale, or a stencil
            and order that leave no free coefficient.
    """

    def __init__(
        self,
        *,
        width: int = 8,
        depth: int = 3,
        kernel_size: int = 3,
        stencil: int = 4,
        order: int = 1,
        field_scale: float = 4.0,
        log_nu_center: float = -3.5,
        rngs: nnx.Rngs,
    ) -> None:
        check_conv_stack(width, depth, kernel_size, field_scale)
        free = null_space_basis(stencil, order).shape[1]  # refuses a stencil and order with no free coefficient
        self.stencil, self.order = stencil, order
        self.field_scale = field_scale
        self.log_nu_center = log_nu_center
        sizes = [7] + [width] * (depth - 1) + [2 * free]
        k = (kernel_size, kernel_size)
        self.layers = nnx.List([nnx.Conv(a, b, k, padding="CIRCULAR", rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
        last = self.layers[-1]
        last.kernel.set_value(jnp.zeros_like(last.kernel.get_value()))

    def stencils(self, coarse: NavierStokes2D, w: jax.Array, params: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """The learned stencil corrections and face velocities of a batch.

        Args:
            coarse: the coarse solver (grid, forcing wavenumber).
            w: ``(B, n, n)`` vorticity.
            params: ``(B, 3)`` viscosity, forcing amplitude, drag.

        Returns:
            ``(dx_stencil, dy_stencil, u_face, v_face)``: the stencils ``(B, n, n, width)`` (in the null
            space) of the x- and y-faces, and ``u`` at the x-faces, ``v`` at the y-faces ``(B, n, n)``.
        """
        b, n, _ = w.shape
        u_face, v_face = face_velocities(coarse, w)
        _, y = coarse.grid()
        kf = coarse.forcing_wavenumber
        phase = jnp.broadcast_to(jnp.stack([jnp.cos(kf * y), jnp.sin(kf * y)], -1), (b, n, n, 2))
        log_nu = jnp.log(params[:, 0]) - self.log_nu_center
        consts = jnp.broadcast_to(jnp.stack([log_nu, params[:, 1] - 1.0], -1)[:, None, None, :], (b, n, n, 2))
        s = self.field_scale
        x = jnp.concatenate([jnp.stack([w / s, u_face, v_face], -1), phase, consts], axis=-1)
        for layer in self.layers[:-1]:
            x = jax.nn.gelu(layer(x))
        theta = self.layers[-1](x)
        basis = jnp.asarray(null_space_basis(self.stencil, self.order), jnp.float32)  # a constant of the trace
        free = basis.shape[1]
        return theta[..., :free] @ basis.T, theta[..., free:] @ basis.T, u_face, v_face

    def tendency(self, coarse: NavierStokes2D, w: jax.Array, params: jax.Array) -> jax.Array:
        """The correction's spectral tendency ``-(div F)^`` of a batch, ``(B, n, n//2 + 1)``, on the dealiased modes."""
        dx_st, dy_st, u_face, v_face = self.stencils(coarse, w, params)
        flux_x = u_face * face_values(w, dx_st, axis=-2)
        flux_y = v_face * face_values(w, dy_st, axis=-1)
        return flux_divergence_hat(coarse, flux_x, flux_y)

    def one_step(self, coarse: NavierStokes2D, w: jax.Array, params: jax.Array) -> jax.Array:
        """One corrected coarse step of a batch: ``(B, n, n)`` vorticity, ``(B, 3)`` params."""
        return _step_with_tendency(coarse, w, params, self.tendency(coarse, w, params))

    def rollout(self, coarse: NavierStokes2D, w0: jax.Array, params: jax.Array, steps: int) -> jax.Array:
        """``steps`` corrected steps from ``w0`` inside one ``lax.scan``; ``(steps, B, n, n)``."""

        def body(w: jax.Array, _: Any) -> tuple[jax.Array, jax.Array]:
            w = self.one_step(coarse, w, params)
            return w, w

        return jax.lax.scan(body, w0, None, length=steps)[1]


def face_velocities(coarse: NavierStokes2D, w: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``u`` at the x-faces ``(i + 1/2, j)`` and ``v`` at the y-faces ``(i, j + 1/2)`` of a batch ``(B, n, n)``.

    The resolved velocity evaluated half a cell over (a phase shift of its Fourier modes):
    exact trigonometric interpolation.
    """
    kx, ky = coarse.wavenumbers()
    w_hat = jnp.fft.rfft2(w)
    k2 = kx**2 + ky**2
    psi_hat = w_hat / jnp.where(k2 == 0, 1.0, k2)
    half = coarse.dx / 2
    u = jnp.fft.irfft2(1j * ky * psi_hat * jnp.exp(1j * kx * half), s=(coarse.n, coarse.n))
    v = jnp.fft.irfft2(-1j * kx * psi_hat * jnp.exp(1j * ky * half), s=(coarse.n, coarse.n))
    return u, v


def flux_divergence_hat(coarse: NavierStokes2D, flux_x: jax.Array, flux_y: jax.Array) -> jax.Array:
    """``-(div F)^`` of face fluxes (``flux_x`` at ``(i + 1/2, j)``, ``flux_y`` at ``(i, j + 1/2)``), dealiased.

    The finite-volume divergence ``(F_{i+1/2} - F_{i-1/2}) / dx``: its sum over the grid is zero,
    so the mean vorticity is conserved.
    """
    div = (flux_x - jnp.roll(flux_x, 1, axis=-2) + flux_y - jnp.roll(flux_y, 1, axis=-1)) / coarse.dx
    return -coarse.dealias_mask() * jnp.fft.rfft2(div)


def _step_with_tendency(coarse: NavierStokes2D, w: jax.Array, params: jax.Array, tendency: jax.Array) -> jax.Array:
    zero, one = jnp.zeros((), jnp.float32), jnp.ones((), jnp.float32)

    def step(w1: jax.Array, p: jax.Array, t: jax.Array) -> jax.Array:
        state = NavierStokesState(w1, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
        return coarse.step_with_closure(state, NavierStokesParams(p[0], p[1], p[2]), zero, one, t).w

    return jax.vmap(step)(w, params, tendency)


@dataclass(frozen=True)
class LearnedInterpolationConfig:
    """Hyperparameters of a ``LearnedInterpolationNet``; hashable and picklable (a model factory)."""

    width: int = 8
    depth: int = 3
    kernel_size: int = 3
    stencil: int = 4
    order: int = 1
    field_scale: float = 4.0
    log_nu_center: float = -3.5

    def build(self, seed: int = 0) -> LearnedInterpolationNet:
        """Initialise a ``LearnedInterpolationNet`` from ``seed``."""
        return LearnedInterpolationNet(**vars(self), rngs=nnx.Rngs(seed))  # every field is a constructor argument


class ClosedLearnedInterpolation(nnx.Module):
    """A learned spectral closure and a learned interpolation in one step.

    The closure (``learners.spectral_closure.SpectralClosureNet``) adds the mean, parameter-dependent
    drain at the cutoff (an eddy viscosity and advection gain per wavenumber, integrated with the
    linear terms); the interpolation adds the state-dependent transport. Both start as the identity,
    so an untrained model is the plain solver; a step costs what a ``LearnedInterpolationNet`` step does.

    Args:
        closure: the closure's hyperparameters (a ``SpectralClosureConfig`` without state features).
        interpolation: the interpolation's hyperparameters.
        seed: initialisation seed.
    """

    def __init__(self, closure: Any, interpolation: LearnedInterpolationConfig, seed: int = 0) -> None:
        self.closure = closure.build(seed)
        self.interpolation = interpolation.build(seed + 1)

    def one_step(self, coarse: NavierStokes2D, w: jax.Array, params: jax.Array) -> jax.Array:
        """One step of a batch: ``(B, n, n)`` vorticity, ``(B, 3)`` params."""
        nu_t, gain = self.closure.coefficients(coarse, params)
        return _closed_step_with_tendency(coarse, w, params, nu_t, gain, self.interpolation.tendency(coarse, w, params))

    def rollout(self, coarse: NavierStokes2D, w0: jax.Array, params: jax.Array, steps: int) -> jax.Array:
        """``steps`` steps from ``w0`` inside one ``lax.scan`` (the closure's coefficients once); ``(steps, B, n, n)``."""
        nu_t, gain = self.closure.coefficients(coarse, params)

        def body(w: jax.Array, _: Any) -> tuple[jax.Array, jax.Array]:
            w = _closed_step_with_tendency(coarse, w, params, nu_t, gain, self.interpolation.tendency(coarse, w, params))
            return w, w

        return jax.lax.scan(body, w0, None, length=steps)[1]


def _closed_step_with_tendency(
    coarse: NavierStokes2D, w: jax.Array, params: jax.Array, nu_t: jax.Array, gain: jax.Array, tendency: jax.Array
) -> jax.Array:
    def step(w1: jax.Array, p: jax.Array, nt: jax.Array, g: jax.Array, t: jax.Array) -> jax.Array:
        state = NavierStokesState(w1, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
        return coarse.step_with_closure(state, NavierStokesParams(p[0], p[1], p[2]), nt, g, t).w

    return jax.vmap(step)(w, params, nu_t, gain, tendency)


@dataclass(frozen=True)
class ClosedLearnedInterpolationConfig:
    """Hyperparameters of a ``ClosedLearnedInterpolation``; hashable and picklable (a model factory)."""

    closure: Any = None
    interpolation: LearnedInterpolationConfig = LearnedInterpolationConfig()

    def build(self, seed: int = 0) -> ClosedLearnedInterpolation:
        """Initialise from ``seed`` (the closure defaults to ``SpectralClosureConfig(hidden=32, depth=2)``)."""
        from coupler.learners.spectral_closure import SpectralClosureConfig  # the closure's module imports no model of this one

        return ClosedLearnedInterpolation(self.closure or SpectralClosureConfig(hidden=32, depth=2), self.interpolation, seed)

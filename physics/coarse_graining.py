"""A fine ``NavierStokes2D`` run seen on a coarse grid: the training data of a coarse-solver correction.

``CoarseGrainedNavierStokes`` is itself a simulator (pure ``init``/``step``/
``observe``). One of its steps is one *coarse* time step: the fine solver takes
``substeps`` steps, and the vorticity is restricted to the ``coarse_n`` grid by
the sharp spectral filter (``spectral_resample``). The state keeps the last
``window`` coarse frames, so ``observe`` returns a trajectory window that a
solver-in-the-loop learner can unroll over; a simulator actor publishing it
every ``window - 1`` steps streams non-overlapping windows. ``observe`` also
returns the newest coarse frame with the subgrid tendency the coarse solver
misses there (:func:`subgrid_tendency`): the data of a model fitted a priori.

Example:
    >>> cg = CoarseGrainedNavierStokes(NavierStokes2D(n=32, dt=0.02), coarse_n=16, substeps=2, window=3)
    >>> p = cg.fine.random_params(jax.random.key(0))
    >>> s = cg.step(cg.init(jax.random.key(1), p), p)
    >>> cg.observe(s)["window"].shape
    (3, 16, 16)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp

from coupler.physics.navier_stokes import NavierStokes2D, NavierStokesParams, NavierStokesState, spectral_resample


def subgrid_tendency(fine: NavierStokes2D, coarse: NavierStokes2D, w: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The subgrid tendency of a fine field on a coarse grid, and the coarse field, both spectral.

    ``s = P[N(w)] - N_c(P w)``: the restricted fine advection term minus the
    coarse solver's advection term of the restricted field (``P`` is the sharp
    spectral restriction, ``spectral_resample``). It is what the coarse
    solver's right-hand side lacks at ``P w``; it depends on the coarse
    solver's dealiasing rule.

    Args:
        fine: the fine solver (its ``nonlinear`` is the true advection term).
        coarse: the coarse solver whose advection term is subtracted.
        w: fine vorticity ``(fine.n, fine.n)``.

    Returns:
        ``(s, wc_hat)``: ``s`` and ``(P w)^``, each ``(n_c, n_c // 2 + 1)`` complex.
    """
    zero_f = jnp.zeros((fine.n, fine.n // 2 + 1), jnp.complex64)
    zero_c = jnp.zeros((coarse.n, coarse.n // 2 + 1), jnp.complex64)
    n_fine = jnp.fft.irfft2(fine.nonlinear(jnp.fft.rfft2(w), zero_f), s=(fine.n, fine.n))
    wc_hat = jnp.fft.rfft2(spectral_resample(w, coarse.n))
    return jnp.fft.rfft2(spectral_resample(n_fine, coarse.n)) - coarse.nonlinear(wc_hat, zero_c), wc_hat


class CoarseGrainedState(NamedTuple):
    """The fine state, the last ``window`` coarse frames (oldest first), the coarse time and step."""

    fine: NavierStokesState
    frames: jax.Array
    t: jax.Array
    step: jax.Array


@dataclass(frozen=True)
class CoarseGrainedNavierStokes:
    """A fine Navier-Stokes run observed as coarse-grid windows at the coarse time step.

    Args:
        fine: the fine solver.
        coarse_n: the coarse grid (even, at most ``fine.n``, above ``3 k_f``).
        substeps: fine steps per coarse step (the coarse ``dt`` is ``substeps * fine.dt``).
        window: coarse frames kept and observed (``>= 2``).
        spinup: fine steps taken in ``init`` before the first frame (lets turbulence develop).
        coarse_dealias: the dealiasing of the coarse solver ``coarse()`` returns
            (``NavierStokes2D.dealias``: ``"truncate"`` or ``"pad"``).

    Raises:
        ValueError: for a coarse grid finer than the fine one or that cannot hold the
            forcing, ``substeps < 1``, ``window < 2`` or ``spinup < 0``.
    """

    fine: NavierStokes2D
    coarse_n: int
    substeps: int
    window: int = 5
    spinup: int = 0
    coarse_dealias: str = "truncate"

    def __post_init__(self) -> None:
        if not (self.coarse_n <= self.fine.n and self.coarse_n % 2 == 0):
            raise ValueError(f"coarse_n must be even and <= fine n={self.fine.n}, got {self.coarse_n}")
        if self.substeps < 1 or self.window < 2 or self.spinup < 0:
            raise ValueError(
                f"need substeps >= 1, window >= 2, spinup >= 0; got {self.substeps}, {self.window}, {self.spinup}"
            )
        self.coarse()  # refuses a coarse grid that cannot resolve the forcing

    @property
    def dt(self) -> float:
        """The coarse time step."""
        return self.fine.dt * self.substeps

    def coarse(self) -> NavierStokes2D:
        """The plain coarse solver whose steps line up with this one's frames.

        Raises:
            ValueError: if ``coarse_n`` cannot resolve the forcing wavenumber (or cannot be padded).
        """
        f = self.fine
        return NavierStokes2D(
            n=self.coarse_n, dt=self.dt, forcing_wavenumber=f.forcing_wavenumber, init_peak=f.init_peak, init_rms=f.init_rms,
            dealias=self.coarse_dealias,
        )

    def init(self, key: jax.Array, params: NavierStokesParams) -> CoarseGrainedState:
        """A fine random state after ``spinup`` fine steps, its coarse frame repeated ``window`` times."""
        fine = self.fine.advance(self.fine.init(key, params), params, self.spinup)
        fine = fine._replace(t=jnp.zeros((), jnp.float32), step=jnp.zeros((), jnp.int32))
        frame = spectral_resample(fine.w, self.coarse_n)
        frames = jnp.broadcast_to(frame, (self.window, self.coarse_n, self.coarse_n))
        return CoarseGrainedState(fine, frames, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))

    def step(self, state: CoarseGrainedState, params: NavierStokesParams) -> CoarseGrainedState:
        """``substeps`` fine steps; the new coarse frame enters the window, the oldest leaves."""
        fine = self.fine.advance(state.fine, params, self.substeps)
        frame = spectral_resample(fine.w, self.coarse_n)
        frames = jnp.concatenate([state.frames[1:], frame[None]], axis=0)
        step = state.step + 1
        return CoarseGrainedState(fine, frames, (step * self.dt).astype(state.t.dtype), step)

    def observe(self, state: CoarseGrainedState) -> dict[str, jax.Array]:
        """The window, its newest frame, and that frame with the subgrid tendency the coarse solver misses there.

        Returns:
            ``{"window": (window, n_c, n_c), "w": (n_c, n_c), "subgrid": (2, n_c, n_c)}``. ``"subgrid"``
            stacks the newest frame ``P w`` (channel 0) and :func:`subgrid_tendency` at it, on the grid
            (channel 1), relative to ``coarse()``. A jitted observer that keeps one key pays only for it.
        """
        n = self.coarse_n
        s_hat, _ = subgrid_tendency(self.fine, self.coarse(), state.fine.w)
        pair = jnp.stack([state.frames[-1], jnp.fft.irfft2(s_hat, s=(n, n)).astype(state.frames.dtype)])
        return {"window": state.frames, "w": state.frames[-1], "subgrid": pair}

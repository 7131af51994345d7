"""Reference estimators an ensemble filter must beat: climatology and 3D-Var.

- Climatology: the estimate is the time mean of the climate, whatever is
  observed; its error is the climate's spread.
- 3D-Var: a single state is forecast and corrected each cycle with a *static*
  background covariance ``B``, here (as DAPPER's ``Var3D`` does, with
  ``B="clim"``) the climatological covariance scaled by ``xB``. With a linear
  ``H`` and Gaussian errors the variational minimiser is the Kalman update with
  the fixed gain ``K = B H^T (H B H^T + R)^-1``, computed once.

Both take their climate statistics from a long model run (DAPPER takes them
from the truth run of the experiment itself).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from coupler.physics.observation_operator import LinearObservation


class Climatology(NamedTuple):
    """The climate's mean ``(n,)`` and covariance ``(n, n)``."""

    mean: jax.Array
    covariance: jax.Array


def climatology(states: jax.Array) -> Climatology:
    """Mean and (unbiased) covariance of a ``(K, n)`` sequence of states.

    Raises:
        ValueError: for fewer than 2 states.
    """
    if states.ndim != 2 or states.shape[0] < 2:
        raise ValueError(f"expected (K >= 2, n) states, got shape {states.shape}")
    mean = jnp.mean(states, axis=0)
    anom = states - mean
    return Climatology(mean, anom.T @ anom / (states.shape[0] - 1))


def static_gain(background: jax.Array, obs: LinearObservation, obs_std: float) -> jax.Array:
    """``K = B H^T (H B H^T + R)^-1``, ``(n, p)``, for ``R = obs_std^2 I``."""
    idx = obs.index()
    bht = background[:, idx]
    s = bht[idx, :] + obs_std**2 * jnp.eye(obs.size, dtype=background.dtype)
    return jnp.linalg.solve(s, bht.T).T


def run_var3d(
    flow: Callable[[jax.Array], jax.Array],
    x0: jax.Array,
    observations: jax.Array,
    gain: jax.Array,
    obs: LinearObservation,
) -> tuple[jax.Array, jax.Array]:
    """Cycle 3D-Var: forecast the state one interval, then ``x_a = x_f + K (y - H x_f)``.

    Args:
        flow: the model over one observation interval, on ``(n,)``.
        x0: ``(n,)`` initial state.
        observations: ``(K, p)`` observations.
        gain: the static gain (:func:`static_gain`).
        obs: the observation operator.

    Returns:
        ``(forecasts, analyses)``, each ``(K, n)``.
    """

    def body(x: jax.Array, y: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        xf = flow(x)
        xa = xf + gain @ (y - obs(xf))
        return xa, (xf, xa)

    _, (forecasts, analyses) = jax.lax.scan(body, x0, observations)
    return forecasts, analyses

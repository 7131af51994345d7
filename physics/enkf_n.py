"""The finite-size ensemble Kalman filter, EnKF-N (Bocquet 2011; Bocquet, Raanes & Hannart 2015).

The EnKF-N treats the forecast covariance as unknown, with a Jeffreys
hyper-prior, and so estimates each cycle how much the forecast anomalies
should be inflated: no inflation to tune. In its *dual* form the inflation
``l1`` minimises a scalar cost (Bocquet et al. 2015, eq. 25; DAPPER
``EnKF_N(dual=True)``)::

    J(l1) = dy^T (l1^2 Y^T Y + N1 I)^-1 dy + eN / l1^2 + cL log(l1^2)

with ``Y`` and ``dy`` the ``R^(-1/2)``-scaled observation anomalies and
innovation. With ``Y Y^T = V diag(d) V^T`` and ``b = V^T Y dy`` the first term
is ``sum_i b_i^2 / (d_i (l1^2 d_i + N1))`` plus a constant. The hyper-prior constants ``eN = (N+1)/N``,
``cL = N/(N-1)`` get DAPPER's mode correction (``hyperprior_coeffs``: the prior
mode of ``l1`` moves towards 1 as observations weigh less) and are scaled by
``xN`` (:attr:`FilterConfig.prior_boost`). For a linear observation operator the
dual's minimiser is the primal's (DAPPER's default form) inflation. The
analysis is then the ETKF of the inflated forecast.

``dJ/dl1`` is negative near 0 and positive for large ``l1``, so the minimiser
is found by bisection of the derivative in ``log l1`` over ``[1e-3, 1e3]``:
robust, jit-able, fixed cost (DAPPER uses Newton from ``l1 = 1``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from coupler.physics.ensemble_filters import scaled_innovations
from coupler.physics.filter_config import FilterConfig
from coupler.physics.observation_operator import LinearObservation

_BISECTIONS = 60


def hyperprior(eigenvalues: jax.Array, members: int, prior_boost: float) -> tuple[jax.Array, jax.Array]:
    """The mode-corrected, boosted hyper-prior constants ``(eN, cL)``.

    Args:
        eigenvalues: the ``N`` eigenvalues ``d`` of ``Y Y^T``.
        members: ensemble size ``N``.
        prior_boost: ``xN``.
    """
    n1 = members - 1.0
    e_n = (members + 1.0) / members
    c_l = members / n1
    prior_mode = e_n / c_l
    i_kh = jnp.mean(1.0 / (eigenvalues + n1)) * n1  # about 1 / (1 + HBH^T/R)
    correction = jnp.sqrt(prior_mode**i_kh)
    return prior_boost * e_n / correction, prior_boost * c_l * correction


def dual_cost_derivative(l1: jax.Array, d: jax.Array, b: jax.Array, e_n: jax.Array, c_l: jax.Array, n1: float) -> jax.Array:
    """``dJ/dl1`` of the dual cost, with ``b = V^T Y dy``."""
    g = l1**2 * d + n1
    return -2.0 * l1 * jnp.sum(b**2 / g**2) - 2.0 * e_n / l1**3 + 2.0 * c_l / l1


def inflation_estimate(scaled_anom: jax.Array, innovation: jax.Array, prior_boost: float) -> jax.Array:
    """The EnKF-N's inflation ``l1`` of the forecast anomalies for this cycle.

    Args:
        scaled_anom: ``(N, p)`` scaled observation anomalies ``Y``.
        innovation: ``(p,)`` scaled innovation ``dy``.
        prior_boost: ``xN``.

    Returns:
        Scalar ``l1 > 0``.
    """
    members = scaled_anom.shape[0]
    n1 = members - 1.0
    d, v = jnp.linalg.eigh(scaled_anom @ scaled_anom.T)
    d = jnp.maximum(d, 0.0)
    b = v.T @ (scaled_anom @ innovation)
    e_n, c_l = hyperprior(d, members, prior_boost)

    def bisect(_: int, bracket: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        rising = dual_cost_derivative(jnp.exp(mid), d, b, e_n, c_l, n1) > 0
        return jnp.where(rising, lo, mid), jnp.where(rising, mid, hi)

    dtype = scaled_anom.dtype
    lo, hi = jax.lax.fori_loop(0, _BISECTIONS, bisect, (jnp.log(jnp.asarray(1e-3, dtype)), jnp.log(jnp.asarray(1e3, dtype))))
    return jnp.exp(0.5 * (lo + hi))


def finite_size_analysis(
    ensemble: jax.Array, y: jax.Array, key: jax.Array, obs: LinearObservation, config: FilterConfig
) -> jax.Array:
    """EnKF-N analysis: estimate ``l1``, inflate the forecast anomalies by it, then the ETKF update.

    Args:
        ensemble: ``(N, n)`` forecast ensemble.
        y: ``(p,)`` observation.
        key: unused (deterministic; part of the analysis signature).
        obs: the observation operator.
        config: ``obs_std`` and ``prior_boost`` are used.

    Returns:
        The ``(N, n)`` analysis ensemble.
    """
    del key
    mean, anom, yy, dy = scaled_innovations(ensemble, y, obs, config.obs_std)
    members = ensemble.shape[0]
    n1 = members - 1.0
    l1 = inflation_estimate(yy, dy, config.prior_boost).astype(ensemble.dtype)
    anom, yy = l1 * anom, l1 * yy
    d, v = jnp.linalg.eigh(yy @ yy.T + n1 * jnp.eye(members, dtype=yy.dtype))
    w = ((dy @ yy.T) @ v / d) @ v.T
    transform = (v / jnp.sqrt(d)) @ v.T * jnp.sqrt(n1)
    return mean + w @ anom + transform @ anom

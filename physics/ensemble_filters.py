"""Global ensemble Kalman analyses: perturbed-observation EnKF, DEnKF, ETKF and serial EnSRF.

Notation (as in DAPPER and Sakov & Oke 2008): ``E`` is the ``(N, n)`` forecast
ensemble, ``mu`` its mean, ``A = E - mu`` its anomalies, ``N1 = N - 1``;
``Y = H A / obs_std`` and ``dy = (y - H mu) / obs_std`` are the observation
anomalies and innovation scaled by ``R^(-1/2)``. Every analysis is a pure,
jit-able function ``(E, y, key, obs, config) -> E_a``; inflation and the
optional random rotation follow in :func:`post_process` (DAPPER's
``post_process``), so the spread they set is what the next forecast starts
from.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from coupler.physics.filter_config import FilterConfig
from coupler.physics.localization import taper
from coupler.physics.observation_operator import LinearObservation


def anomalies(ensemble: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(mean, ensemble - mean)`` over the member axis 0."""
    mean = jnp.mean(ensemble, axis=0)
    return mean, ensemble - mean


def scaled_innovations(
    ensemble: jax.Array, y: jax.Array, obs: LinearObservation, obs_std: float
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """``(mu, A, Y, dy)``: mean, anomalies, and the ``R^(-1/2)``-scaled ``(N, p)`` obs anomalies and ``(p,)`` innovation."""
    mean, anom = anomalies(ensemble)
    return mean, anom, obs(anom) / obs_std, (y - obs(mean)) / obs_std


def kalman_gain(anom: jax.Array, obs: LinearObservation, config: FilterConfig) -> jax.Array:
    """``K = P H^T (H P H^T + R)^-1`` (``(n, p)``) from the sample covariance, tapered when localised.

    ``P H^T`` and ``H P H^T`` are formed from the anomalies directly
    (``A^T H A / N1``), never the ``(n, n)`` covariance, so a 2-D field with
    thousands of variables costs ``O(n p N)``.
    """
    n1 = anom.shape[0] - 1
    hanom = obs(anom)
    pht = anom.T @ hanom / n1
    hpht = hanom.T @ hanom / n1
    if config.localization is not None:
        dist = obs.state_to_obs_distances()
        pht = pht * taper(dist, config.localization).astype(pht.dtype)
        hpht = hpht * taper(dist[obs.index()], config.localization).astype(pht.dtype)
    s = hpht + config.obs_std**2 * jnp.eye(obs.size, dtype=anom.dtype)
    # S is symmetric and >= R > 0, so its eigendecomposition is well
    # conditioned; on CPU XLA's eigh is 5-20x faster here than its triangular
    # or LU solves.
    evals, evecs = jnp.linalg.eigh(s)
    return ((pht @ evecs) / evals) @ evecs.T


def perturbed_obs_analysis(
    ensemble: jax.Array, y: jax.Array, key: jax.Array, obs: LinearObservation, config: FilterConfig
) -> jax.Array:
    """Stochastic EnKF: every member moves towards its own perturbed observation.

    The ``(N, p)`` perturbations are drawn from ``N(0, R)``, centred (so the
    mean update is exactly the Kalman update of the mean) and, with
    ``config.rescale_perturbations``, multiplied by ``sqrt(N / (N - 1))`` to
    restore their expected sample variance (DAPPER's ``mean0``).
    """
    members = ensemble.shape[0]
    _, anom = anomalies(ensemble)
    gain = kalman_gain(anom, obs, config)
    noise = config.obs_std * jax.random.normal(key, (members, obs.size), ensemble.dtype)
    noise = noise - jnp.mean(noise, axis=0)
    if config.rescale_perturbations:
        noise = noise * jnp.sqrt(members / (members - 1.0)).astype(ensemble.dtype)
    return ensemble + (y - noise - obs(ensemble)) @ gain.T


def deterministic_analysis(
    ensemble: jax.Array, y: jax.Array, key: jax.Array, obs: LinearObservation, config: FilterConfig
) -> jax.Array:
    """DEnKF (Sakov & Oke 2008): the mean gets the full gain, the anomalies half of it."""
    del key
    mean, anom = anomalies(ensemble)
    gain = kalman_gain(anom, obs, config)
    return mean + gain @ (y - obs(mean)) + anom - 0.5 * obs(anom) @ gain.T


def symmetric_transform(scaled_anom: jax.Array, innovation: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The ETKF's ensemble-space update: weights ``w`` of the mean and the transform ``T``.

    With ``G = Y Y^T + N1 I = V diag(d) V^T``: ``w = dy Y^T G^-1`` and
    ``T = sqrt(N1) G^(-1/2)`` (the symmetric square root, which keeps the
    analysis anomalies centred). The analysis is ``mu + w A + T A``.

    Args:
        scaled_anom: ``(N, p)`` ``R^(-1/2)``-scaled observation anomalies ``Y``.
        innovation: ``(p,)`` scaled innovation ``dy``.

    Returns:
        ``(w, T)`` of shapes ``(N,)`` and ``(N, N)``.
    """
    members = scaled_anom.shape[0]
    n1 = members - 1.0
    d, v = jnp.linalg.eigh(scaled_anom @ scaled_anom.T + n1 * jnp.eye(members, dtype=scaled_anom.dtype))
    w = ((innovation @ scaled_anom.T) @ v / d) @ v.T
    transform = (v / jnp.sqrt(d)) @ v.T * jnp.sqrt(n1)
    return w, transform


def sqrt_analysis(
    ensemble: jax.Array, y: jax.Array, key: jax.Array, obs: LinearObservation, config: FilterConfig
) -> jax.Array:
    """Square-root EnKF with the symmetric transform (the ETKF): deterministic, exact mean and covariance."""
    del key
    mean, anom, yy, dy = scaled_innovations(ensemble, y, obs, config.obs_std)
    w, transform = symmetric_transform(yy, dy)
    return mean + w @ anom + transform @ anom


def serial_analysis(
    ensemble: jax.Array, y: jax.Array, key: jax.Array, obs: LinearObservation, config: FilterConfig
) -> jax.Array:
    """Serial square-root EnKF: scalar observations one at a time, in a random order.

    Each scalar observation ``j`` multiplies the ensemble transform by
    ``I - Y_j Y_j^T / (C + sqrt(N1 C))`` with ``C = Y_j . Y_j + N1`` (Potter's
    form; Whitaker & Hamill 2002), and updates the remaining observation
    anomalies the same way. The mean follows from the final anomalies,
    ``w = dy Y_a^T T / N1`` (``K = P_a H^T R^-1``). Same mean and covariance as
    the batch ETKF with ``R`` diagonal, but not the same ensemble.
    """
    mean, anom, yy, dy = scaled_innovations(ensemble, y, obs, config.obs_std)
    members = ensemble.shape[0]
    n1 = members - 1.0
    order = jax.random.permutation(key, obs.size)

    def one(carry: tuple[jax.Array, jax.Array], j: jax.Array) -> tuple[tuple[jax.Array, jax.Array], None]:
        transform, yy = carry
        yj = yy[:, j]
        c = yj @ yj + n1
        tj = jnp.outer(yj, yj / (c + jnp.sqrt(n1 * c)))
        return (transform - tj @ transform, yy - tj @ yy), None

    (transform, yy), _ = jax.lax.scan(one, (jnp.eye(members, dtype=ensemble.dtype), yy), order)
    w = dy @ yy.T @ transform / n1
    return mean + w @ anom + transform @ anom


def _ones_first_basis(members: int) -> np.ndarray:
    """An orthonormal basis of R^N whose first vector is ``1 / sqrt(N)``."""
    q, _ = np.linalg.qr(np.column_stack([np.ones(members), np.eye(members)[:, : members - 1]]))
    return q * np.sign(q[0, 0])


def mean_preserving_rotation(key: jax.Array, members: int, dtype: jnp.dtype = jnp.float32) -> jax.Array:
    """A random ``(N, N)`` orthogonal matrix ``G`` with ``G 1 = 1`` (DAPPER's ``genOG_1``).

    ``G = V diag(1, Q) V^T`` with ``V`` an orthonormal basis starting with the
    ones direction and ``Q`` Haar-distributed on ``O(N - 1)``: applied to
    centred anomalies it keeps them centred and keeps their covariance.
    """
    basis = jnp.asarray(_ones_first_basis(members), dtype)
    q = jax.random.orthogonal(key, members - 1, dtype=dtype)
    block = jnp.zeros((members, members), dtype).at[0, 0].set(1.0).at[1:, 1:].set(q)
    return basis @ block @ basis.T


def post_process(ensemble: jax.Array, key: jax.Array, config: FilterConfig) -> jax.Array:
    """Inflate the analysis anomalies by ``config.inflation`` and, with ``config.rotation``, rotate them."""
    if config.inflation == 1.0 and not config.rotation:
        return ensemble
    mean, anom = anomalies(ensemble)
    anom = config.inflation * anom
    if config.rotation:
        anom = mean_preserving_rotation(key, ensemble.shape[0], ensemble.dtype) @ anom
    return mean + anom


def inflate(ensemble: jax.Array, factor: float) -> jax.Array:
    """Multiply the anomalies about the ensemble mean by ``factor``."""
    mean, anom = anomalies(ensemble)
    return mean + factor * anom

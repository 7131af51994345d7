"""The local ensemble transform Kalman filter (LETKF; Hunt, Kostelich & Szunyogh 2007).

The grid is cut into blocks (:func:`coupler.physics.localization.local_blocks`);
each block gets its own ETKF analysis in which observation ``j`` counts with
weight ``rho_j`` -- the Gaspari-Cohn taper of its mean distance to the block's
points -- i.e. ``R^-1`` is replaced by ``diag(rho) R^-1`` ("R-localisation").
Equivalently, the scaled ``Y`` and ``dy`` are multiplied by ``sqrt(rho)``, which
is how DAPPER's ``local_analyses`` does it. Blocks no observation reaches are
left as they are (``w = 0``, ``T = I``). All local analyses run as one ``vmap``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from coupler.physics.ensemble_filters import scaled_innovations, symmetric_transform
from coupler.physics.filter_config import FilterConfig
from coupler.physics.localization import local_blocks, taper
from coupler.physics.observation_operator import LinearObservation


def letkf_analysis(
    ensemble: jax.Array, y: jax.Array, key: jax.Array, obs: LinearObservation, config: FilterConfig
) -> jax.Array:
    """LETKF analysis of a ``(N, n)`` ensemble on the grid ``obs.shape``.

    Args:
        ensemble: ``(N, n)`` forecast ensemble.
        y: ``(p,)`` observation.
        key: unused (the LETKF is deterministic; part of the analysis signature).
        obs: the observation operator (its grid gives the distances).
        config: ``localization`` (radius) and ``local_block`` are used.

    Returns:
        The ``(N, n)`` analysis ensemble.
    """
    del key
    assert config.localization is not None  # FilterConfig refuses an LETKF without one
    mean, anom, yy, dy = scaled_innovations(ensemble, y, obs, config.obs_std)
    blocks = local_blocks(obs.shape, config.local_block)  # type: ignore[arg-type]
    block_distance = obs.state_to_obs_distances()[blocks].mean(axis=1)  # (blocks, p), DAPPER's batch mean
    weights = jnp.sqrt(taper(block_distance, config.localization)).astype(ensemble.dtype)
    idx = jnp.asarray(blocks)

    def local(sqrt_rho: jax.Array, points: jax.Array) -> jax.Array:
        w, transform = symmetric_transform(yy * sqrt_rho, dy * sqrt_rho)
        a = anom[:, points]
        return mean[points] + w @ a + transform @ a

    updated = jax.vmap(local)(weights, idx)  # (blocks, N, block size)
    members = ensemble.shape[0]
    flat = jnp.transpose(updated, (1, 0, 2)).reshape(members, -1)
    return jnp.zeros_like(ensemble).at[:, idx.reshape(-1)].set(flat)

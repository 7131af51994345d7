"""Initial fields and parameters of coarse Navier-Stokes runs, shared by the correction models' tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from coupler.physics.navier_stokes import NavierStokes2D


def coarse_runs(coarse: NavierStokes2D, seed: int, runs: int, viscosity: tuple[float, float]) -> tuple[jax.Array, jax.Array]:
    """``runs`` random runs of ``coarse``: initial vorticity ``(runs, n, n)`` and params ``(runs, 3)``.

    Args:
        coarse: the solver whose ``random_params`` and ``init`` draw the runs.
        seed: the key's seed.
        runs: how many.
        viscosity: the viscosity range.

    Returns:
        The initial vorticity, and (viscosity, forcing amplitude, drag) per run in float32.
    """
    keys = jax.random.split(jax.random.key(seed), runs)
    params = jax.vmap(lambda key: coarse.random_params(key, viscosity_range=viscosity))(keys)
    w0 = jax.vmap(coarse.init)(keys, params).w
    return w0, jnp.stack([params.viscosity, params.forcing_amplitude, params.drag], -1).astype(jnp.float32)

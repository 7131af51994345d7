"""Ensemble data assimilation: the analysis step and the forecast-analysis cycle, in pure JAX.

An ensemble is an ``(members, n)`` array. Observations are ``y = H x + e`` with
a linear :class:`LinearObservation` ``H`` (the identity or a subset of the
variables, on a periodic grid) and ``e ~ N(0, obs_std^2 I)``. The analysis
schemes (see :class:`FilterConfig` for the list and their references) live
one family per module:

- :mod:`coupler.physics.ensemble_filters`: stochastic EnKF, DEnKF, ETKF
  (square root), serial EnSRF, and the inflation/rotation post-processing;
- :mod:`coupler.physics.letkf`: the local ETKF;
- :mod:`coupler.physics.enkf_n`: the finite-size EnKF-N;
- :mod:`coupler.physics.assimilation_baselines`: 3D-Var and climatology.

This module dispatches on the method and cycles the filter (``lax.scan``).
Everything is jit-able; randomness comes from an explicit key, so a run is a
pure function of its seed and its observations.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from coupler.physics.enkf_n import finite_size_analysis
from coupler.physics.ensemble_filters import (
    anomalies,
    deterministic_analysis,
    inflate,
    perturbed_obs_analysis,
    post_process,
    serial_analysis,
    sqrt_analysis,
)
from coupler.physics.filter_config import FilterConfig, Method
from coupler.physics.letkf import letkf_analysis
from coupler.physics.localization import gaspari_cohn
from coupler.physics.observation_operator import LinearObservation

__all__ = [
    "analysis",
    "cycle",
    "cycle_key",
    "CycleOutput",
    "FilterConfig",
    "gaspari_cohn",
    "inflate",
    "initial_ensemble",
    "LinearObservation",
    "Method",
    "observation_noise",
    "rmse",
    "run_filter",
]

Analysis = Callable[[jax.Array, jax.Array, jax.Array, LinearObservation, FilterConfig], jax.Array]
_ANALYSES: dict[str, Analysis] = {
    "enkf": perturbed_obs_analysis,
    "denkf": deterministic_analysis,
    "etkf": sqrt_analysis,
    "serial": serial_analysis,
    "letkf": letkf_analysis,
    "enkf_n": finite_size_analysis,
}
# Independent sub-streams of one cycle's key: the update's own randomness
# (perturbations, serial order) and the post-processing rotation.
_UPDATE_STREAM, _ROTATION_STREAM = 0, 1


def analysis(
    ensemble: jax.Array, y: jax.Array, key: jax.Array, obs: LinearObservation, config: FilterConfig
) -> jax.Array:
    """One analysis: update the forecast ensemble with the observation ``y``, then inflate (and rotate).

    Args:
        ensemble: ``(members, n)`` forecast ensemble, ``members >= 2``.
        y: ``(p,)`` observation.
        key: PRNG key (perturbations, serial order, rotation).
        obs: the observation operator.
        config: the filter.

    Returns:
        The ``(members, n)`` analysis ensemble, dtype of ``ensemble``.

    Raises:
        ValueError: if the shapes do not fit ``obs``.
    """
    if ensemble.ndim != 2 or ensemble.shape[1] != obs.n or y.shape != (obs.size,) or ensemble.shape[0] < 2:
        raise ValueError(
            f"expected ensemble (members >= 2, {obs.n}) and y ({obs.size},), got {ensemble.shape} and {y.shape}"
        )
    y = y.astype(ensemble.dtype)
    updated = _ANALYSES[config.method](ensemble, y, jax.random.fold_in(key, _UPDATE_STREAM), obs, config)
    return post_process(updated, jax.random.fold_in(key, _ROTATION_STREAM), config)


class CycleOutput(NamedTuple):
    """What one forecast-analysis cycle reports (ensemble means and spread, ``(n,)``/scalar).

    ``raw_forecast`` is the model's forecast mean before any model correction;
    ``analysis - raw_forecast`` is what a model correction learns from.
    """

    forecast: jax.Array
    raw_forecast: jax.Array
    analysis: jax.Array
    spread: jax.Array


Flow = Callable[[jax.Array], jax.Array]
Correction = Callable[[jax.Array], jax.Array]


def cycle(
    flow: Flow,
    ensemble: jax.Array,
    y: jax.Array,
    observed: jax.Array,
    key: jax.Array,
    obs: LinearObservation,
    config: FilterConfig,
    correction: Correction | None = None,
) -> tuple[jax.Array, CycleOutput]:
    """Forecast the ensemble one observation interval, correct it, and assimilate ``y``.

    Args:
        flow: the model from one observation time to the next, on ``(members, n)``.
        ensemble: ``(members, n)`` analysis ensemble at the previous time.
        y: ``(p,)`` observation at the new time (ignored where not ``observed``).
        observed: scalar bool; ``False`` for a missing observation (forecast only).
        key: PRNG key of this cycle.
        obs: the observation operator.
        config: the filter.
        correction: optional model correction ``dx = c(x)`` added to each raw
            forecast member (a learned model-error term).

    Returns:
        ``(analysis ensemble, CycleOutput)``; without an observation the
        analysis is the (corrected) forecast.
    """
    raw = flow(ensemble)
    forecast = raw if correction is None else raw + correction(raw).astype(raw.dtype)
    updated = jax.lax.cond(observed, lambda f: analysis(f, y, key, obs, config), lambda f: f, forecast)
    _, anom = anomalies(updated)
    spread = jnp.sqrt(jnp.mean(jnp.sum(anom**2, axis=0) / (ensemble.shape[0] - 1)))
    out = CycleOutput(
        forecast=jnp.mean(forecast, axis=0),
        raw_forecast=jnp.mean(raw, axis=0),
        analysis=jnp.mean(updated, axis=0),
        spread=spread,
    )
    return updated, out


# Independent random streams of one twin experiment, all derived from its seed.
_FILTER_STREAM, _NOISE_STREAM, _ENSEMBLE_STREAM = 1, 2, 3


def _stream(seed: int | jax.Array, which: int) -> jax.Array:
    return jax.random.fold_in(jax.random.key(seed), which)


def cycle_key(seed: int | jax.Array, index: int | jax.Array) -> jax.Array:
    """The PRNG key of the filter at cycle ``index`` of a run with ``seed`` (the same in every runner)."""
    return jax.random.fold_in(_stream(seed, _FILTER_STREAM), index)


def observation_noise(seed: int | jax.Array, index: int | jax.Array, size: int, std: float) -> jax.Array:
    """The ``(size,)`` observation error of cycle ``index`` in a twin experiment with ``seed``."""
    return std * jax.random.normal(jax.random.fold_in(_stream(seed, _NOISE_STREAM), index), (size,))


def initial_ensemble(init: Callable[[jax.Array], jax.Array], members: int, seed: int | jax.Array) -> jax.Array:
    """``(members, n)`` initial ensemble: ``init(key)`` (one member's state vector) for ``members`` keys.

    Args:
        init: draws one member, e.g. ``lambda k: model.init(k, params).x``.
        members: ensemble size (>= 2).
        seed: run seed (its own stream, independent of the filter's and the noise's).

    Raises:
        ValueError: for fewer than 2 members.
    """
    if members < 2:
        raise ValueError(f"an ensemble needs >= 2 members, got {members}")
    return jax.vmap(init)(jax.random.split(_stream(seed, _ENSEMBLE_STREAM), members))


def run_filter(
    flow: Flow,
    ensemble: jax.Array,
    observations: jax.Array,
    observed: jax.Array,
    seed: int,
    obs: LinearObservation,
    config: FilterConfig,
    correction: Correction | None = None,
    first_cycle: int = 0,
) -> tuple[jax.Array, CycleOutput]:
    """Cycle the filter over a sequence of observations inside one ``lax.scan``.

    Args:
        flow: the model over one observation interval, on ``(members, n)``.
        ensemble: ``(members, n)`` initial ensemble.
        observations: ``(K, p)`` observations, one per cycle.
        observed: ``(K,)`` bools; ``False`` marks a missing observation.
        seed: run seed; cycle ``k`` uses ``cycle_key(seed, first_cycle + k)``.
        obs: the observation operator.
        config: the filter.
        correction: optional model correction (fixed for the run).
        first_cycle: index of the first cycle (to continue a run in pieces).

    Returns:
        ``(final ensemble, CycleOutput with a leading (K,) axis)``.

    Raises:
        ValueError: if ``ensemble`` is not ``(members >= 2, obs.n)``, ``observations``
            not ``(K, obs.size)``, ``observed`` not ``(K,)``, or an observed cycle's
            observation holds NaN or inf (mark it missing in ``observed`` instead).
    """
    if ensemble.ndim != 2 or ensemble.shape[0] < 2 or ensemble.shape[1] != obs.n:
        raise ValueError(f"expected an ensemble of shape (members >= 2, {obs.n}), got {ensemble.shape}")
    if observations.ndim != 2 or observations.shape[1] != obs.size or jnp.shape(observed) != (observations.shape[0],):
        raise ValueError(
            f"expected observations (K, {obs.size}) and observed (K,), got {observations.shape} and {jnp.shape(observed)}"
        )
    if not isinstance(observations, jax.core.Tracer) and not isinstance(observed, jax.core.Tracer):
        # One NaN assimilated turns every later analysis into NaN, without an error.
        bad = np.flatnonzero(np.asarray(observed, bool) & ~np.all(np.isfinite(np.asarray(observations)), axis=1))
        if bad.size:
            raise ValueError(
                f"the observations of cycles {bad[:10].tolist()} hold NaN or inf; mark them missing "
                "(observed[k] = False) instead"
            )

    def body(ens: jax.Array, inputs: tuple[jax.Array, jax.Array, jax.Array]) -> tuple[jax.Array, CycleOutput]:
        y, present, k = inputs
        return cycle(flow, ens, y, present, cycle_key(seed, k), obs, config, correction)

    ks = first_cycle + jnp.arange(observations.shape[0])
    return jax.lax.scan(body, ensemble, (observations, jnp.asarray(observed, bool), ks))


def rmse(estimate: jax.Array, truth: jax.Array) -> jax.Array:
    """Root-mean-square error over the last axis (one value per time)."""
    return jnp.sqrt(jnp.mean((estimate - truth) ** 2, axis=-1))

"""Ensemble Kalman filters against the Kalman filter's exact formulas and a short L96 twin run."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coupler.physics.assimilation import (
    FilterConfig,
    LinearObservation,
    analysis,
    cycle,
    gaspari_cohn,
    inflate,
    rmse,
    run_filter,
)
from coupler.physics.lorenz import Lorenz96, Lorenz96Params

OBS = LinearObservation.every(12, 3, offset=1)  # variables 1, 4, 7, 10


def _ensemble(members: int = 30, n: int = 12) -> jax.Array:
    base = jax.random.normal(jax.random.key(0), (members, n))
    mix = jax.random.normal(jax.random.key(1), (n, n)) / np.sqrt(n)
    return 1.5 + base @ mix  # correlated, so unobserved variables are updated too


def _kalman(ensemble: np.ndarray, y: np.ndarray, obs: LinearObservation, r: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Kalman filter's analysis from the ensemble's sample mean and covariance (float64)."""
    e = np.asarray(ensemble, np.float64)
    m, p = e.mean(0), np.cov(e.T)
    h = obs.matrix()
    k = p @ h.T @ np.linalg.inv(h @ p @ h.T + r * np.eye(obs.size))
    return m + k @ (y - h @ m), (np.eye(obs.n) - k @ h) @ p, k


def test_observation_operator_is_the_selection_matrix() -> None:
    x = jax.random.normal(jax.random.key(2), (5, 12))
    np.testing.assert_allclose(np.asarray(OBS(x)), np.asarray(x) @ OBS.matrix().T, rtol=1e-6)
    assert OBS.indices == (1, 4, 7, 10) and OBS.size == 4
    assert LinearObservation(12)(x) is x
    with pytest.raises(ValueError, match="distinct"):
        LinearObservation(4, (1, 1))


@pytest.mark.parametrize("method", ["enkf", "denkf", "etkf"])
def test_analysis_mean_is_the_kalman_mean(method: str) -> None:
    # Exact for every scheme here: the EnKF's observation perturbations are
    # centred, so its mean update is the Kalman update of the sample mean.
    e = _ensemble()
    y = jnp.asarray([0.5, -1.0, 2.0, 1.0])
    out = analysis(e, y, jax.random.key(9), OBS, FilterConfig(method, obs_std=0.7))
    mean, _, _ = _kalman(np.asarray(e), np.asarray(y), OBS, 0.49)
    np.testing.assert_allclose(np.asarray(out.mean(0)), mean, atol=2e-5)


def test_etkf_covariance_is_the_kalman_covariance() -> None:
    e = _ensemble()
    y = jnp.asarray([0.5, -1.0, 2.0, 1.0])
    out = analysis(e, y, jax.random.key(9), OBS, FilterConfig("etkf", obs_std=0.7))
    _, cov, _ = _kalman(np.asarray(e), np.asarray(y), OBS, 0.49)
    np.testing.assert_allclose(np.cov(np.asarray(out, np.float64).T), cov, atol=5e-5)


def test_denkf_covariance_has_sakov_oke_extra_term() -> None:
    # Sakov & Oke (2008), eq. (10): P_a = (I - KH) P + K H P H^T K^T / 4.
    e = _ensemble()
    y = jnp.asarray([0.5, -1.0, 2.0, 1.0])
    out = analysis(e, y, jax.random.key(9), OBS, FilterConfig("denkf", obs_std=0.7))
    _, cov, k = _kalman(np.asarray(e), np.asarray(y), OBS, 0.49)
    h, p = OBS.matrix(), np.cov(np.asarray(e, np.float64).T)
    np.testing.assert_allclose(np.cov(np.asarray(out, np.float64).T), cov + k @ h @ p @ h.T @ k.T / 4, atol=5e-5)


def test_inflation_scales_anomalies_only() -> None:
    e = _ensemble()
    out = inflate(e, 1.3)
    np.testing.assert_allclose(np.asarray(out.mean(0)), np.asarray(e.mean(0)), atol=1e-5)
    np.testing.assert_allclose(np.asarray(out.std(0)), 1.3 * np.asarray(e.std(0)), rtol=1e-5)


def test_gaspari_cohn_values() -> None:
    # Gaspari & Cohn (1999) eq. (4.10): 1 at 0, 5/24 at r = 1 from both pieces, 0 from 2 on.
    r = jnp.asarray([0.0, 1.0 - 1e-6, 1.0 + 1e-6, 2.0, 3.0])
    np.testing.assert_allclose(np.asarray(gaspari_cohn(r)), [1.0, 5 / 24, 5 / 24, 0.0, 0.0], atol=1e-5)


def test_wide_taper_changes_nothing_and_narrow_taper_decouples() -> None:
    e, y, key = _ensemble(), jnp.asarray([0.5, -1.0, 2.0, 1.0]), jax.random.key(3)
    plain = analysis(e, y, key, OBS, FilterConfig("denkf"))
    wide = analysis(e, y, key, OBS, FilterConfig("denkf", localization=1e6))
    np.testing.assert_allclose(np.asarray(wide), np.asarray(plain), atol=1e-4)
    # Half-width 0.5: support of one grid point, so an unobserved variable (0) is not updated.
    narrow = analysis(e, y, key, OBS, FilterConfig("denkf", localization=0.5))
    np.testing.assert_allclose(np.asarray(narrow[:, 0]), np.asarray(e[:, 0]), atol=1e-6)


def test_missing_observation_keeps_the_forecast() -> None:
    sim = Lorenz96(n=12)
    e = _ensemble()
    flow = lambda x: sim.flow(x, 8.0)  # noqa: E731
    out_e, out = cycle(flow, e, jnp.zeros(12), jnp.asarray(False), jax.random.key(0), LinearObservation(12), FilterConfig())
    np.testing.assert_allclose(np.asarray(out_e), np.asarray(flow(e)), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out.analysis), np.asarray(out.forecast), rtol=1e-6)


@pytest.mark.parametrize("method,inflation", [("enkf", 1.06), ("denkf", 1.01)])
def test_short_l96_twin_run_tracks_the_truth(method: str, inflation: float) -> None:
    # The Sakov & Oke (2008) setting, 600 cycles instead of 10^4 (the benchmark
    # runs the long ones). Published long-run means are 0.22 and 0.18; a short
    # run scatters more, so the bound is loose; a free run sits near 3.6.
    sim, obs = Lorenz96(), LinearObservation(40)
    x0 = sim.init(jax.random.key(0), Lorenz96Params(jnp.asarray(8.0))).x

    def body(x: jax.Array, _: None) -> tuple[jax.Array, jax.Array]:
        x = sim.flow(x, 8.0)
        return x, x

    _, truth = jax.lax.scan(body, x0, None, length=600)
    ys = truth + jax.random.normal(jax.random.key(1), truth.shape)
    ens = x0 + sim.spread * jax.random.normal(jax.random.key(2), (40, 40))
    flow = lambda x: sim.flow(x, 8.0)  # noqa: E731
    cfg = FilterConfig(method, inflation)
    _, out = jax.jit(lambda e, y: run_filter(flow, e, y, jnp.ones(600, bool), 0, obs, cfg))(ens, ys)
    err = float(rmse(out.analysis, truth)[200:].mean())
    assert err < 0.3
    _, free = jax.jit(lambda e, y: run_filter(flow, e, y, jnp.zeros(600, bool), 0, obs, cfg))(ens, ys)
    assert float(rmse(free.analysis, truth)[400:].mean()) > 2.5


def test_bad_filter_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="method"):
        FilterConfig("kf")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="etkf"):
        FilterConfig("etkf", localization=4.0)
    with pytest.raises(ValueError, match="expected ensemble"):
        analysis(jnp.zeros((5, 11)), jnp.zeros(4), jax.random.key(0), OBS, FilterConfig())

"""Every analysis scheme against an exact formula (Kalman update, published transforms, a scipy minimum) and a short L96 twin run."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize_scalar

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
from coupler.physics.assimilation_baselines import climatology, run_var3d, static_gain
from coupler.physics.assimilation_model import check_state, operator_for
from coupler.physics.enkf_n import inflation_estimate
from coupler.physics.ensemble_filters import mean_preserving_rotation
from coupler.physics.localization import local_blocks, taper
from coupler.physics.lorenz import Lorenz96, Lorenz96Params

OBS = LinearObservation.every(12, 3, offset=1)  # variables 1, 4, 7, 10
Y = jnp.asarray([0.5, -1.0, 2.0, 1.0])


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
    with pytest.raises(ValueError, match="expected n=12"):
        LinearObservation(12, shape=(3, 5))


def test_subgrid_observation_positions_and_periodic_distances() -> None:
    obs = LinearObservation.subgrid((8, 8), stride=4, offset=1)  # points (1,1), (1,5), (5,1), (5,5)
    assert obs.indices == (9, 13, 41, 45) and obs.shape == (8, 8)
    dist = obs.state_to_obs_distances()
    assert dist.shape == (64, 4)
    # Point (0, 0) to (1, 1): sqrt(2); to (1, 5) and (5, 5): 5 along an axis is 3 the periodic way round.
    np.testing.assert_allclose(dist[0], [np.sqrt(2), np.sqrt(1 + 9), np.sqrt(9 + 1), np.sqrt(18)])


def test_local_blocks_partition_the_grid() -> None:
    blocks = local_blocks((4, 6), 2)
    assert blocks.shape == (6, 4)
    np.testing.assert_array_equal(np.sort(blocks.ravel()), np.arange(24))
    np.testing.assert_array_equal(blocks[0], [0, 1, 6, 7])  # the 2 x 2 corner
    with pytest.raises(ValueError, match="divide"):
        local_blocks((40,), 3)


@pytest.mark.parametrize("method", ["enkf", "denkf", "etkf", "serial"])
def test_analysis_mean_is_the_kalman_mean(method: str) -> None:
    # Exact for every scheme here: the EnKF's observation perturbations are
    # centred, so its mean update is the Kalman update of the sample mean.
    e = _ensemble()
    out = analysis(e, Y, jax.random.key(9), OBS, FilterConfig(method, obs_std=0.7))
    mean, _, _ = _kalman(np.asarray(e), np.asarray(Y), OBS, 0.49)
    np.testing.assert_allclose(np.asarray(out.mean(0)), mean, atol=2e-5)


@pytest.mark.parametrize("method", ["etkf", "serial"])
def test_square_root_covariance_is_the_kalman_covariance(method: str) -> None:
    # Square-root filters reproduce P_a = (I - KH) P exactly (Tippett et al. 2003).
    e = _ensemble()
    out = analysis(e, Y, jax.random.key(9), OBS, FilterConfig(method, obs_std=0.7))
    _, cov, _ = _kalman(np.asarray(e), np.asarray(Y), OBS, 0.49)
    np.testing.assert_allclose(np.cov(np.asarray(out, np.float64).T), cov, atol=5e-5)


def test_denkf_covariance_has_sakov_oke_extra_term() -> None:
    # Sakov & Oke (2008), eq. (10): P_a = (I - KH) P + K H P H^T K^T / 4.
    e = _ensemble()
    out = analysis(e, Y, jax.random.key(9), OBS, FilterConfig("denkf", obs_std=0.7))
    _, cov, k = _kalman(np.asarray(e), np.asarray(Y), OBS, 0.49)
    h, p = OBS.matrix(), np.cov(np.asarray(e, np.float64).T)
    np.testing.assert_allclose(np.cov(np.asarray(out, np.float64).T), cov + k @ h @ p @ h.T @ k.T / 4, atol=5e-5)


def test_stochastic_enkf_covariance_is_the_kalman_covariance_for_a_large_ensemble() -> None:
    # Burgers et al. (1998): with perturbed observations the expected analysis
    # covariance is the Kalman one. 20000 members, so the sampling error of a
    # covariance entry (O(1)) is about sqrt(2 / 20000) = 0.01; bound 0.05.
    e = _ensemble(members=20000)
    out = analysis(e, Y, jax.random.key(9), OBS, FilterConfig("enkf", obs_std=0.7))
    _, cov, _ = _kalman(np.asarray(e), np.asarray(Y), OBS, 0.49)
    np.testing.assert_allclose(np.cov(np.asarray(out, np.float64).T), cov, atol=0.05)


@pytest.mark.parametrize("rescale,expected", [(True, 1.0), (False, 0.75)])
def test_perturbations_are_rescaled_as_dapper_mean0(rescale: bool, expected: float) -> None:
    # One observed scalar, N = 4: from A_a = A - K (D + A) the perturbations D
    # are recovered exactly. Centring N draws of variance R leaves an expected
    # population variance R (N-1)/N = 0.75; DAPPER's mean0 rescales by
    # sqrt(N/(N-1)) back to R = 1. Mean over 4000 draws: std about 0.01, bound 0.04.
    e = jnp.asarray([[-1.0], [0.5], [0.2], [0.3]])
    obs, cfg = LinearObservation(1), FilterConfig("enkf", rescale_perturbations=rescale)
    a = np.asarray(e - e.mean(0))[:, 0]
    gain = np.var(a, ddof=1) / (np.var(a, ddof=1) + 1.0)

    def pert_variance(key: jax.Array) -> jax.Array:
        out = analysis(e, jnp.zeros(1), key, obs, cfg)[:, 0]
        d = (a - (out - out.mean())) / gain - a
        return jnp.mean(d**2)

    variances = jax.vmap(pert_variance)(jax.random.split(jax.random.key(4), 4000))
    assert abs(float(variances.mean()) - expected) < 0.04


def test_rotation_is_orthogonal_and_mean_preserving() -> None:
    g = np.asarray(mean_preserving_rotation(jax.random.key(1), 7), np.float64)
    np.testing.assert_allclose(g @ g.T, np.eye(7), atol=1e-5)
    np.testing.assert_allclose(g @ np.ones(7), np.ones(7), atol=1e-5)
    e = _ensemble()
    plain = analysis(e, Y, jax.random.key(9), OBS, FilterConfig("etkf", 1.02))
    turned = analysis(e, Y, jax.random.key(9), OBS, FilterConfig("etkf", 1.02, rotation=True))
    np.testing.assert_allclose(np.asarray(turned.mean(0)), np.asarray(plain.mean(0)), atol=1e-5)
    np.testing.assert_allclose(np.cov(np.asarray(turned).T), np.cov(np.asarray(plain).T), atol=1e-4)
    assert float(jnp.max(jnp.abs(turned - plain))) > 0.1  # the members did move


def test_inflation_scales_anomalies_only() -> None:
    e = _ensemble()
    out = inflate(e, 1.3)
    np.testing.assert_allclose(np.asarray(out.mean(0)), np.asarray(e.mean(0)), atol=1e-5)
    np.testing.assert_allclose(np.asarray(out.std(0)), 1.3 * np.asarray(e.std(0)), rtol=1e-5)


def test_gaspari_cohn_values_and_dapper_radius() -> None:
    # Gaspari & Cohn (1999) eq. (4.10): 1 at 0, 5/24 at r = 1 from both pieces, 0 from 2 on.
    r = jnp.asarray([0.0, 1.0 - 1e-6, 1.0 + 1e-6, 2.0, 3.0])
    np.testing.assert_allclose(np.asarray(gaspari_cohn(r)), [1.0, 5 / 24, 5 / 24, 0.0, 0.0], atol=1e-5)
    # DAPPER's radius L: half-width c = 1.82 L, so at d = L the taper is GC(1 / 1.82) = 0.6336
    # (eq. 4.10 evaluated by hand; DAPPER's docstring rounds this to exp(-1/2) = 0.61).
    assert abs(float(taper(jnp.asarray(4.0), 4.0)) - 0.6336) < 1e-3
    assert float(taper(jnp.asarray(2 * 1.82 * 4.0 - 0.01), 4.0)) == 0.0  # below the 1e-3 cut-off


def test_wide_taper_changes_nothing_and_narrow_taper_decouples() -> None:
    e, key = _ensemble(), jax.random.key(3)
    plain = analysis(e, Y, key, OBS, FilterConfig("denkf"))
    wide = analysis(e, Y, key, OBS, FilterConfig("denkf", localization=1e6))
    np.testing.assert_allclose(np.asarray(wide), np.asarray(plain), atol=1e-4)
    # Radius 0.25: support 2 x 1.82 x 0.25 < 1 grid point, so an unobserved variable (0) is not updated.
    narrow = analysis(e, Y, key, OBS, FilterConfig("denkf", localization=0.25))
    np.testing.assert_allclose(np.asarray(narrow[:, 0]), np.asarray(e[:, 0]), atol=1e-6)


def test_letkf_with_a_wide_radius_is_the_etkf() -> None:
    e = _ensemble()
    etkf = analysis(e, Y, jax.random.key(0), OBS, FilterConfig("etkf", obs_std=0.7))
    letkf = analysis(e, Y, jax.random.key(0), OBS, FilterConfig("letkf", obs_std=0.7, localization=1e6, local_block=2))
    np.testing.assert_allclose(np.asarray(letkf), np.asarray(etkf), atol=1e-4)


def test_letkf_local_analysis_is_the_etkf_with_tapered_observation_error() -> None:
    # Hunt et al. (2007) R-localisation: at grid point i the analysis is the
    # ETKF with R_j / rho_ij. Checked at every point against the explicit
    # float64 square-root update with that R (Tippett et al. 2003 form).
    e = np.asarray(_ensemble(), np.float64)
    radius, members = 2.0, e.shape[0]
    out = np.asarray(analysis(jnp.asarray(e, jnp.float32), Y, jax.random.key(0), OBS,
                              FilterConfig("letkf", obs_std=0.7, localization=radius)))
    rho = np.asarray(taper(OBS.state_to_obs_distances(), radius), np.float64)
    mean, anom = e.mean(0), e - e.mean(0)
    hx = anom[:, OBS.index()]
    for i in range(OBS.n):
        keep = rho[i] > 0
        if not keep.any():
            np.testing.assert_allclose(out[:, i], e[:, i], atol=1e-5)
            continue
        rinv = np.diag(rho[i][keep] / 0.49)
        yl = hx[:, keep]
        pw = np.linalg.inv(yl @ rinv @ yl.T + (members - 1) * np.eye(members))
        w = (np.asarray(Y, np.float64)[keep] - mean[OBS.index()][keep]) @ rinv @ yl.T @ pw
        dd, vv = np.linalg.eigh(pw)
        t = (vv * np.sqrt(dd)) @ vv.T * np.sqrt(members - 1)
        np.testing.assert_allclose(out[:, i], mean[i] + w @ anom[:, i] + t @ anom[:, i], atol=2e-4)


def test_enkf_n_inflation_minimises_the_dual_cost() -> None:
    # Bocquet et al. (2015) eq. (25), written as DAPPER's EnKF_N(dual=True) does
    # with the SVD of Y R^-1/2, minimised here by scipy in float64: the
    # bisection's l1 must agree to 1e-3.
    e = np.asarray(_ensemble(members=10), np.float64)
    members, n1 = 10, 9.0
    yy = (e - e.mean(0))[:, OBS.index()] / 0.7
    dy = (np.asarray(Y, np.float64) - e.mean(0)[OBS.index()]) / 0.7
    _, s, ut = np.linalg.svd(yy, full_matrices=False)
    du = ut @ dy
    diag = np.pad(s**2, (0, members - s.size)) + n1
    e_n, c_l = (members + 1) / members, members / n1
    corr = np.sqrt((e_n / c_l) ** (np.mean(1 / diag) * n1))
    e_n, c_l = e_n / corr, c_l * corr
    cost = lambda l1: np.sum(du**2 / ((l1 * s) ** 2 + n1)) + e_n / l1**2 + c_l * np.log(l1**2)  # noqa: E731
    best = minimize_scalar(cost, bounds=(1e-2, 1e2), method="bounded", options={"xatol": 1e-8}).x
    l1 = float(inflation_estimate(jnp.asarray(yy, jnp.float32), jnp.asarray(dy, jnp.float32), 1.0))
    assert abs(l1 - best) < 1e-3
    # The analysis is the ETKF of the forecast inflated by l1.
    ej = jnp.asarray(e, jnp.float32)
    out = analysis(ej, Y, jax.random.key(0), OBS, FilterConfig("enkf_n", obs_std=0.7))
    etkf = analysis(inflate(ej, l1), Y, jax.random.key(0), OBS, FilterConfig("etkf", obs_std=0.7))
    np.testing.assert_allclose(np.asarray(out), np.asarray(etkf), atol=1e-4)


def test_var3d_static_gain_and_climatology() -> None:
    states = np.asarray(_ensemble(members=500), np.float64)
    clim = climatology(jnp.asarray(states))
    np.testing.assert_allclose(np.asarray(clim.mean), states.mean(0), atol=1e-5)
    np.testing.assert_allclose(np.asarray(clim.covariance), np.cov(states.T), atol=1e-4)
    b = np.cov(states.T)
    h = OBS.matrix()
    expected = b @ h.T @ np.linalg.inv(h @ b @ h.T + 0.49 * np.eye(OBS.size))
    gain = static_gain(jnp.asarray(b, jnp.float32), OBS, 0.7)
    np.testing.assert_allclose(np.asarray(gain), expected, atol=1e-5)
    x0 = jnp.asarray(states[0], jnp.float32)
    _, analyses = run_var3d(lambda x: x, x0, Y[None], gain, OBS)
    np.testing.assert_allclose(np.asarray(analyses[0]), states[0] + expected @ (np.asarray(Y) - states[0][OBS.index()]), atol=1e-4)


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
    with pytest.raises(ValueError, match="needs a localization"):
        FilterConfig("letkf")
    with pytest.raises(ValueError, match="expected ensemble"):
        analysis(jnp.zeros((5, 11)), jnp.zeros(4), jax.random.key(0), OBS, FilterConfig())


@dataclass(frozen=True)
class _Grid2D:
    """A model on a 4x4 grid whose initial_state is not flat when ``flat`` is off."""

    flat: bool = True
    grid: tuple[int, ...] = (4, 4)
    interval: float = 0.1

    def initial_state(self, key: jax.Array) -> jax.Array:
        x = jax.random.normal(key, (4, 4))
        return x.ravel() if self.flat else x

    def forecast(self, x: jax.Array) -> jax.Array:
        return 0.9 * x


def test_an_operator_must_live_on_the_models_grid() -> None:
    model = _Grid2D()
    assert operator_for(model, None).shape == (4, 4)
    sub = LinearObservation.subgrid((4, 4), 2)
    assert operator_for(model, sub) is sub
    with pytest.raises(ValueError, match=r"obs lives on the grid \(16,\), the model's is \(4, 4\)"):
        operator_for(model, LinearObservation(16, indices=(0, 5, 10)))
    with pytest.raises(ValueError, match=r"obs observes a state of 9 values, the model's has 16"):
        operator_for(model, LinearObservation(9))


def test_a_state_that_is_not_flat_is_refused_naming_both_shapes() -> None:
    check_state(_Grid2D())
    with pytest.raises(ValueError, match=r"shape \(16,\) for the grid \(4, 4\) \(C order\), got shape \(4, 4\)"):
        check_state(_Grid2D(flat=False))


def test_run_filter_refuses_nan_observations_and_bad_shapes_naming_them() -> None:
    obs, cfg = LinearObservation(4), FilterConfig("etkf")
    flow = lambda e: e  # noqa: E731
    ens = jax.random.normal(jax.random.key(0), (6, 4))
    ys = jnp.ones((3, 4)).at[1, 2].set(jnp.nan)
    with pytest.raises(ValueError, match=r"cycles \[1\] hold NaN or inf; mark them missing"):
        run_filter(flow, ens, ys, jnp.ones(3, bool), 0, obs, cfg)
    # Marked missing, the same observations run, and nothing turns NaN.
    _, out = run_filter(flow, ens, ys, jnp.array([True, False, True]), 0, obs, cfg)
    assert bool(jnp.all(jnp.isfinite(out.analysis)))
    with pytest.raises(ValueError, match=r"expected an ensemble of shape \(members >= 2, 4\), got \(4,\)"):
        run_filter(flow, ens[0], ys, jnp.ones(3, bool), 0, obs, cfg)
    with pytest.raises(ValueError, match=r"expected observations \(K, 4\) and observed \(K,\), got \(3, 5\)"):
        run_filter(flow, ens, jnp.ones((3, 5)), jnp.ones(3, bool), 0, obs, cfg)

"""The Gaussian-process surrogate: its kernel and likelihood gradient against closed forms, fits, refits, checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import approx_fprime

from coupler.learners.gp import GaussianProcess, GPConfig, matern52
from coupler.runtime.control.checkpoints import decode, encode


def _smooth(x: np.ndarray) -> np.ndarray:
    return np.sin(3 * x[:, 0]) + 0.5 * np.cos(5 * x[:, 1])


def test_matern52_matches_its_closed_form() -> None:
    # Rasmussen & Williams (2006) eq. 4.17 with nu = 5/2: k(r) = s (1 + sqrt5 r + 5 r^2 / 3) exp(-sqrt5 r).
    a = np.zeros((1, 2))
    b = np.array([[0.6, 0.8], [0.0, 0.0]])  # distance 1 with unit length scales, and 0
    k = matern52(a, b, np.ones(2), 2.0)[0]
    assert k[1] == pytest.approx(2.0)
    assert k[0] == pytest.approx(2.0 * (1 + math.sqrt(5) + 5 / 3) * math.exp(-math.sqrt(5)), rel=1e-12)
    # Length scales divide each axis: length 2 on the first axis halves its distance.
    assert matern52(a, np.array([[1.2, 0.0]]), np.array([2.0, 1.0]), 1.0)[0, 0] == pytest.approx(
        matern52(a, np.array([[0.6, 0.0]]), np.ones(2), 1.0)[0, 0], rel=1e-12
    )


def test_likelihood_gradient_matches_finite_differences() -> None:
    rng = np.random.default_rng(0)
    gp = GaussianProcess(GPConfig(), 3)
    x = rng.uniform(size=(30, 3))
    y = np.sin(4 * x[:, 0]) + x[:, 2]
    y = (y - y.mean()) / y.std()
    theta = np.log(np.array([0.3, 0.7, 0.2, 1.3, 0.02]))
    analytic = gp._neg_log_likelihood(theta, x, y)[1]
    numeric = approx_fprime(theta, lambda t: gp._neg_log_likelihood(t, x, y)[0], 1e-6)
    # Central differences are not used: forward differences of step 1e-6 carry O(1e-6 * curvature) error.
    np.testing.assert_allclose(analytic, numeric, rtol=1e-4, atol=1e-4)


def test_likelihood_is_the_gaussian_log_density_with_and_without_precomputed_differences() -> None:
    # trend "none": -log N(y; 0, K + (noise + jitter) I), the closed form, whichever way distances are computed.
    from scipy.stats import multivariate_normal

    from coupler.learners.gp import _squared_differences

    rng = np.random.default_rng(1)
    gp = GaussianProcess(GPConfig(trend="none"), 3)
    x = rng.uniform(size=(25, 3))
    y = np.sin(4 * x[:, 0]) + x[:, 2]
    theta = np.log(np.array([0.3, 0.7, 0.2, 1.3, 0.02]))
    lengths, signal, noise = gp._unpack(theta)
    cov = matern52(x, x, lengths, signal) + (noise + 1e-8) * np.eye(len(x))
    nll, grad = gp._neg_log_likelihood(theta, x, y)
    assert nll == pytest.approx(-multivariate_normal(np.zeros(len(x)), cov).logpdf(y), rel=1e-10)
    nll_sq, grad_sq = gp._neg_log_likelihood(theta, x, y, _squared_differences(x))
    assert nll_sq == nll and np.array_equal(grad_sq, grad)


def test_fit_interpolates_a_smooth_function_and_knows_where_it_has_no_data() -> None:
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(40, 2))
    gp = GaussianProcess(GPConfig(), 2)
    gp.fit(x, _smooth(x))
    test = rng.uniform(size=(200, 2))
    mean, std = gp.predict(test)
    assert np.sqrt(np.mean((mean - _smooth(test)) ** 2)) < 0.05  # range of the function: about 3
    _, at_data = gp.predict(x)
    _, far = gp.predict(np.array([[3.0, 3.0]]))  # far outside the data: back to the prior
    assert at_data.max() < 0.05 < far[0]
    with pytest.raises(ValueError, match="finite"):
        gp.fit(x, np.full(40, np.nan))
    with pytest.raises(RuntimeError, match="before any fit"):
        GaussianProcess(GPConfig(), 2).predict(x)


def test_refits_choose_hyperparameters_again_only_after_the_data_grew() -> None:
    rng = np.random.default_rng(2)
    x = rng.uniform(size=(60, 2))
    gp = GaussianProcess(GPConfig(reoptimise_growth=0.1), 2)
    gp.fit(x[:40], _smooth(x[:40]))
    assert gp.choices == 1
    lengths = gp.length_scales.copy()
    gp.fit(x[:43], _smooth(x[:43]))  # 7.5 % more: condition only, the same hyperparameters
    assert gp.choices == 1 and np.array_equal(gp.length_scales, lengths)
    np.testing.assert_allclose(gp.predict(x[:43])[0], _smooth(x[:43]), atol=0.02)  # but it does use the new points
    gp.fit(x[:44], _smooth(x[:44]))  # 10 % more than at the last choice
    assert gp.choices == 2 and gp.fits == 3


def test_an_extended_factor_predicts_as_a_fresh_factorisation() -> None:
    # Conditioning on 4 more points with the hyperparameters kept extends the Cholesky factor
    # (block formula); a process loaded with the same hyperparameters and data factorises afresh.
    rng = np.random.default_rng(4)
    x = rng.uniform(size=(64, 3))
    y = np.sin(4 * x[:, 0]) * x[:, 1] + x[:, 2]
    grown = GaussianProcess(GPConfig(reoptimise_growth=0.5), 3)
    grown.fit(x[:60], y[:60])
    grown.fit(x, y)
    assert grown.choices == 1 and grown.extensions == 1
    fresh = GaussianProcess(GPConfig(), 3)
    fresh.load_state_dict(grown.state_dict())  # refactorises from the data
    test = rng.uniform(size=(100, 3))
    for a, b in zip(grown.predict(test), fresh.predict(test)):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-9)  # float64 rounding of two factorisations
    grown.fit(x[::-1], y[::-1])  # not an extension of the points factorised: factorised afresh
    assert grown.extensions == 1


def test_state_survives_the_checkpoint_format() -> None:
    rng = np.random.default_rng(3)
    x = rng.uniform(size=(25, 2))
    a = GaussianProcess(GPConfig(), 2)
    a.fit(x, _smooth(x))
    b = GaussianProcess(GPConfig(), 2)
    b.load_state_dict(decode(encode(a.state_dict())))
    test = rng.uniform(size=(50, 2))
    for u, v in zip(a.predict(test), b.predict(test)):
        np.testing.assert_allclose(u, v, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="shape"):
        GaussianProcess(GPConfig(), 3).load_state_dict(a.state_dict())


def test_a_degenerate_optimum_is_recognised_so_that_the_default_start_is_tried_again() -> None:
    # Length scales far below the spacing of the data explain it as uncorrelated noise-free values:
    # the optimum a warm start once stayed in for good (8-parameter heat map, 17% RMS error vs 6%).
    x = np.random.default_rng(0).uniform(size=(80, 8))
    gp = GaussianProcess(GPConfig(), 8)
    tiny = np.log(np.concatenate([np.full(8, 0.01), [1.0, 1e-6]]))
    assert gp._degenerate(tiny, x)
    flat = GaussianProcess(GPConfig(), 2)
    assert not flat._degenerate(flat._default_theta(), x[:, :2])


@pytest.mark.parametrize("trend", ["none", "constant", "linear"])
def test_leave_one_out_is_a_refit_without_the_point(trend: str) -> None:
    # R&W eq. 5.12 against brute force: the posterior at x_i given every other point, same hyperparameters;
    # a trend's GLS coefficients estimated again without the point, and their uncertainty in the variance.
    rng = np.random.default_rng(3)
    x = rng.uniform(size=(25, 2))
    y = np.sin(5 * x[:, 0]) + x[:, 1]
    gp = GaussianProcess(GPConfig(trend=trend), 2)  # type: ignore[arg-type]
    gp.fit(x, y)
    loo = gp.leave_one_out()
    np.testing.assert_array_equal(loo.points, x)
    np.testing.assert_allclose(loo.lengths, gp.length_scales)
    state = gp.state_dict()
    lengths, (signal, noise) = np.exp(state["theta"][:2]), np.exp(state["theta"][2:])
    ys = (y - state["y_mean"]) / state["y_scale"]
    for i in (0, 7, 24):
        keep = np.arange(len(x)) != i
        k = matern52(x[keep], x[keep], lengths, signal) + (noise + 1e-8) * np.eye(len(x) - 1)
        kx = matern52(x[keep], x[i : i + 1], lengths, signal)[:, 0]
        h = {"none": np.zeros((len(x), 0)), "constant": np.ones((len(x), 1)), "linear": np.c_[np.ones(len(x)), x - 0.5]}[trend]
        hk, hi = h[keep], h[i]
        kinv_h = np.linalg.solve(k, hk)
        gram = hk.T @ kinv_h
        beta = np.linalg.solve(gram, kinv_h.T @ ys[keep]) if h.shape[1] else np.zeros(0)
        mean = hi @ beta + kx @ np.linalg.solve(k, ys[keep] - hk @ beta)
        r = hi - kinv_h.T @ kx  # the trend's share of the error (universal kriging)
        var = signal - kx @ np.linalg.solve(k, kx) + noise + 1e-8 + (r @ np.linalg.solve(gram, r) if h.shape[1] else 0.0)
        assert loo.residuals[i] == pytest.approx(state["y_scale"] * (ys[i] - mean), rel=1e-6, abs=1e-9)
        assert loo.variances[i] == pytest.approx(state["y_scale"] ** 2 * var, rel=1e-6)
    with pytest.raises(RuntimeError, match="before any fit"):
        GaussianProcess(GPConfig(), 2).leave_one_out()


def test_a_choice_takes_the_best_optimum_of_the_warm_and_the_fresh_starts() -> None:
    # A warm start alone can stay in a poor optimum (on the hot-track map: length 10 for an input that
    # matters, from 100 to 600 points); every choice also starts fresh, and the best likelihood wins.
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(120, 2))
    y = np.sin(6 * x[:, 0]) + 0.1 * x[:, 1]
    stuck = np.log(np.array([10.0, 0.3, 1.0, 0.3]))
    nll = {}
    for name, lengths in (("warm", ()), ("0.3", (0.3,)), ("0.1", (0.1,)), ("all", (0.3, 0.1))):
        gp = GaussianProcess(GPConfig(fresh_lengths=lengths), 2)
        gp.fits, gp._theta = 1, stuck.copy()  # as after an earlier fit that chose it
        gp.fit(x, y)
        nll[name] = gp._last_nll
    assert nll["all"] <= min(nll["warm"], nll["0.3"], nll["0.1"]) + 1e-9
    assert gp.choices == 1 and gp.length_scales[0] < 1.0
    with pytest.raises(ValueError, match="fresh_lengths"):
        GPConfig(fresh_lengths=(0.3, 0.0))


def test_median_mean_makes_the_gp_revert_to_the_flat_level_far_from_the_data() -> None:
    # Nine points on a flat level 0 and three on a bump of 1: far from every point the GP predicts the
    # centre of its targets, the median (0) with median_mean, the mean (0.25) without.
    x = np.concatenate([np.linspace(0.0, 0.3, 9), [0.34, 0.35, 0.36]])[:, None]
    y = np.concatenate([np.zeros(9), np.ones(3)])
    far = np.array([[50.0]])
    for median, centre in ((True, 0.0), (False, 0.25)):
        gp = GaussianProcess(GPConfig(median_mean=median, trend="none", length_bounds=(0.01, 0.2)), 1)
        gp.fit(x, y)
        assert gp.predict(far)[0][0] == pytest.approx(centre, abs=1e-6)


@pytest.mark.parametrize("trend", ["constant", "linear"])
def test_profiled_trend_likelihood_gradient_matches_finite_differences(trend: str) -> None:
    # The GLS coefficients are profiled out: at them, the gradient in theta is the partial one.
    rng = np.random.default_rng(1)
    gp = GaussianProcess(GPConfig(trend=trend), 3)  # type: ignore[arg-type]
    x = rng.uniform(size=(30, 3))
    y = np.sin(4 * x[:, 0]) + 2.0 * x[:, 2] + 1.0
    theta = np.log(np.array([0.3, 0.7, 0.2, 1.3, 0.02]))
    analytic = gp._neg_log_likelihood(theta, x, y)[1]
    numeric = approx_fprime(theta, lambda t: gp._neg_log_likelihood(t, x, y)[0], 1e-6)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-4, atol=1e-5)


def test_gls_constant_trend_reverts_to_the_flat_level_not_to_a_cluster() -> None:
    # Nine points spread over a flat level 0 and nine clustered on a bump of 1: far from every point
    # the plain GP reverts to the targets' mean (0.5); ordinary kriging's GLS constant counts the
    # cluster about as one point and reverts near the flat level.
    x = np.concatenate([np.linspace(0.0, 0.8, 9), np.linspace(0.95, 0.96, 9)])[:, None]
    y = np.concatenate([np.zeros(9), np.ones(9)])
    far = np.array([[50.0]])
    level = {}
    for trend in ("none", "constant"):
        gp = GaussianProcess(GPConfig(trend=trend, length_bounds=(0.01, 0.05)), 1)  # type: ignore[arg-type]
        gp.fit(x, y)
        level[trend] = float(gp.predict(far)[0][0])
    assert level["none"] == pytest.approx(0.5, abs=1e-6)
    assert abs(level["constant"]) < 0.15  # about 1 / (9 + 1)


def test_linear_trend_extrapolates_a_plane_and_survives_a_checkpoint() -> None:
    x = np.random.default_rng(2).uniform(size=(25, 2))
    plane = lambda u: 1.0 + 2.0 * u[:, 0] - 3.0 * u[:, 1]  # noqa: E731
    gp = GaussianProcess(GPConfig(trend="linear"), 2)
    gp.fit(x, plane(x))
    far = np.array([[3.0, -2.0]])
    assert gp.predict(far)[0][0] == pytest.approx(plane(far)[0], rel=1e-3)
    other = GaussianProcess(GPConfig(trend="linear"), 2)
    other.load_state_dict(decode(encode(gp.state_dict())))
    np.testing.assert_allclose(other.predict(far)[0], gp.predict(far)[0], rtol=1e-9)
    with pytest.raises(ValueError, match="trend"):
        GPConfig(trend="quadratic")  # type: ignore[arg-type]

"""The shifted-log output warping: its maps against closed forms, a warped GP on 1-D toys, and the
``auto`` choice between warped and unwarped GPs on draws of each."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scipy.stats import multivariate_normal

from coupler.learners.gp import GaussianProcess, GPConfig, matern52
from coupler.learners.output_warping import LOG_OFFSETS, LogWarp, backward, forward, log_jacobian, log_warp
from coupler.runtime.control.checkpoints import decode, encode


def test_the_shift_lies_below_the_targets_by_the_offset_times_their_range() -> None:
    y = np.array([2.0, 5.0, 12.0])
    warp = log_warp(y, 0.1)
    assert warp == LogWarp(0.1, 2.0 - 0.1 * 10.0)
    assert np.all(np.isfinite(forward(warp, y)))
    with pytest.raises(ValueError, match="offset"):
        log_warp(y, 0.0)


def test_backward_is_the_inverse_at_zero_variance_and_the_log_normal_median_and_std_otherwise() -> None:
    warp = LogWarp(0.01, -0.3)
    y = np.array([0.1, 1.0, 7.0])
    mean, std = backward(warp, forward(warp, y), np.zeros(3))
    np.testing.assert_allclose(mean, y, rtol=1e-12)
    assert np.all(std == 0.0)
    # Log-normal of latent mean m and variance v: median exp(m), Var = (exp(v) - 1) exp(2m + v).
    m, s = np.array([0.2]), np.array([0.5])
    mean, std = backward(warp, m, s)
    assert mean[0] == pytest.approx(math.exp(0.2) - 0.3, rel=1e-12)
    assert std[0] == pytest.approx(math.sqrt((math.exp(0.25) - 1) * math.exp(0.4 + 0.25)), rel=1e-12)
    # Far from the data the latent variance is capped, so the moments stay finite.
    assert np.all(np.isfinite(backward(warp, np.array([0.0]), np.array([100.0]))))


def test_log_jacobian_matches_finite_differences_of_the_warping() -> None:
    warp = log_warp(np.array([0.0, 1.0]), 0.05)
    y = np.array([0.01, 0.3, 0.9])
    h = 1e-6
    slope = (forward(warp, y + h) - forward(warp, y - h)) / (2 * h)
    # Central differences of a log on [0.06, 1]: truncation error O(h^2 / y^2), far below the tolerance.
    assert log_jacobian(warp, y) == pytest.approx(float(np.sum(np.log(slope))), rel=1e-7)


def _exp_of_smooth(x: np.ndarray) -> np.ndarray:
    return np.exp(3.0 * np.sin(4.0 * x[:, 0]))  # from 0.05 to 20: a known log warping, shift 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_warped_gp_recovers_a_log_warping_and_maps_better_than_a_plain_one(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(15, 1))
    test = np.linspace(0.0, 1.0, 400)[:, None]
    warped = GaussianProcess(GPConfig(output_warp="log"), 1)
    plain = GaussianProcess(GPConfig(), 1)
    warped.fit(x, _exp_of_smooth(x))
    plain.fit(x, _exp_of_smooth(x))
    # The offsets are a coarse grid (decades), so the recovered shift is near the true 0, not at it:
    # within a tenth of the targets' range of about 20.
    assert warped.warp is not None and warped.warp.offset <= 0.1
    assert abs(warped.warp.shift) < 2.0
    err = [float(np.sqrt(np.mean((m.predict(test)[0] - _exp_of_smooth(test)) ** 2))) for m in (warped, plain)]
    # Measured: 6 to 400 times lower on these seeds; a factor 3 leaves room for other BLAS roundings.
    assert err[0] < err[1] / 3
    mean, std = warped.predict(test)
    assert np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std >= 0)


def test_the_likelihood_keeps_a_smooth_surface_unwarped_or_nearly_affine() -> None:
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(15, 1))
    y = np.sin(6.0 * x[:, 0]) + 2.0
    gp = GaussianProcess(GPConfig(output_warp="log"), 1)
    gp.fit(x, y)
    # No warping, or the largest offset (a log over [1, 2] times the range: nearly affine).
    assert gp.warp is None or gp.warp.offset == 1.0
    test = np.linspace(0.0, 1.0, 200)[:, None]
    assert float(np.sqrt(np.mean((gp.predict(test)[0] - np.sin(6.0 * test[:, 0]) - 2.0) ** 2))) < 0.02  # range 2


def test_refits_keep_the_offset_and_a_checkpoint_restores_the_warping() -> None:
    rng = np.random.default_rng(3)
    x = rng.uniform(size=(30, 1))
    y = _exp_of_smooth(x)
    gp = GaussianProcess(GPConfig(output_warp="log", reoptimise_growth=0.5), 1)
    gp.fit(x[:20], y[:20])
    first = gp.warp
    assert first is not None
    gp.fit(x[:25], y[:25])  # 25 < 1.5 * 20: conditions only, the offset kept
    assert gp.warp is not None and gp.warp.offset == first.offset
    assert gp.warp.shift < float(y[:25].min())
    restored = GaussianProcess(GPConfig(output_warp="log"), 1)
    restored.load_state_dict(decode(encode(gp.state_dict())))
    test = rng.uniform(size=(50, 1))
    np.testing.assert_allclose(restored.predict(test)[0], gp.predict(test)[0], rtol=1e-10)
    assert restored.warp == gp.warp


def _exp_of_plane_and_sine(x: np.ndarray) -> np.ndarray:
    return np.exp(3.0 * np.sin(4.0 * x[:, 0]) + x[:, 1])  # its logarithm is smooth: an exact log warping, shift 0


def test_light_choices_find_the_model_of_a_full_search_at_every_choice_for_a_fraction_of_the_fits() -> None:
    # The default schedule searches every offset with fresh starts at 12 and 27 points only (the data
    # doubled) and warm-starts 3 offsets in between; searching in full at every choice finds the same
    # offsets and hyperparameters here, so the maps agree to rounding (measured: within 2e-9 of the range).
    rng = np.random.default_rng(5)
    x = rng.uniform(size=(48, 2))
    test = rng.uniform(size=(400, 2))
    light = GaussianProcess(GPConfig(output_warp="log"), 2)
    full = GaussianProcess(GPConfig(output_warp="log", full_search_growth=1.0), 2)
    spent = {"light": 0, "full": 0}
    for n in (12, 15, 18, 22, 27, 33, 40, 48):
        before = (light.evaluations, full.evaluations)
        light.fit(x[:n], _exp_of_plane_and_sine(x[:n]))
        full.fit(x[:n], _exp_of_plane_and_sine(x[:n]))
        if n not in (12, 27):
            spent["light"] += light.evaluations - before[0]
            spent["full"] += full.evaluations - before[1]
        assert light.warp is not None and full.warp is not None and light.warp.offset == full.warp.offset
        np.testing.assert_allclose(light.length_scales, full.length_scales, rtol=1e-3)
        gap = np.sqrt(np.mean((light.predict(test)[0] - full.predict(test)[0]) ** 2))
        assert gap < 1e-5 * np.ptp(_exp_of_plane_and_sine(test))
    assert (light.full_searches, full.full_searches, light.choices) == (2, 8, 8)
    assert spent["light"] < spent["full"] / 3  # measured: about 1/8 of the likelihood evaluations


def test_the_full_search_runs_when_the_data_doubled_and_when_the_likelihood_drops() -> None:
    rng = np.random.default_rng(5)
    x = rng.uniform(size=(60, 2))
    y = _exp_of_plane_and_sine(x)
    gp = GaussianProcess(GPConfig(output_warp="log", reoptimise_growth=0.2, full_search_growth=2.0), 2)
    fulls = []
    for n in (10, 12, 15, 18, 20, 25, 40):  # choices at all but 20 (< 1.2 * 18); full where n >= 2 * the last full
        gp.fit(x[:n], y[:n])
        fulls.append(gp.full_searches)
    assert fulls == [1, 1, 1, 1, 1, 2, 2] and gp.choices == 6 and gp.surprises == 0
    # Five values from another surface: the likelihood per point drops by 4 nats (-0.89 to 3.1), so the
    # light choice is followed at once by a full search.
    other = y[:48].copy()
    other[43:] = rng.uniform(0.0, 50.0, 5)
    gp.fit(x[:48], other)  # 48 >= 1.2 * 40: a choice; 48 < 2 * 25: light, surprised
    assert gp.surprises == 1 and gp.full_searches == 3
    restored = GaussianProcess(GPConfig(output_warp="log"), 2)
    restored.load_state_dict(decode(encode(gp.state_dict())))
    assert (restored._full_on, restored._nll_y) == (gp._full_on, gp._nll_y) == (48, gp._nll_y)
    with pytest.raises(ValueError, match="full_search_growth"):
        GPConfig(full_search_growth=0.5)


def _gp_draw(seed: int, n: int = 40, dim: int = 2, length: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uniform points and one draw of a zero-mean Matérn 5/2 GP (unit signal) at them."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n, dim))
    k = matern52(x, x, np.full(dim, length), 1.0) + 1e-8 * np.eye(n)
    return x, np.linalg.cholesky(k) @ rng.standard_normal(n)


def _direct_log_density(gp: GaussianProcess, x: np.ndarray, y: np.ndarray) -> float:
    """``log p(y)`` of the GP's chosen model computed another way: the latent ``g(y)`` is Gaussian with
    mean ``y_mean + scale * beta`` and covariance ``scale^2 K`` (scipy's density), and the change of
    variables adds ``log |det dg/dy|``, here the log-determinant of a Jacobian taken by central differences."""
    lengths, signal, noise = gp._unpack(gp._theta)
    cov = gp._y_scale**2 * (matern52(x, x, lengths, signal) + (noise + 1e-8) * np.eye(len(x)))
    g = y if gp.warp is None else forward(gp.warp, y)
    density = multivariate_normal.logpdf(g, mean=np.full(len(g), gp._y_mean + gp._y_scale * gp._beta[0]), cov=cov)
    if gp.warp is None:
        return float(density)
    h = 1e-7 * np.ptp(y)
    jacobian = np.diag((forward(gp.warp, y + h) - forward(gp.warp, y - h)) / (2 * h))
    return float(density + np.linalg.slogdet(jacobian)[1])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_auto_chooses_the_log_on_an_exactly_log_warped_gp_and_its_likelihood_is_the_density_of_the_targets(seed: int) -> None:
    x, f = _gp_draw(seed)
    y = np.exp(1.5 * f)  # log(y) is a GP draw: an exact log warping, shift 0
    gp = GaussianProcess(GPConfig(output_warp="auto"), 2)
    gp.fit(x, y)
    assert gp.warp is not None and gp.vetoes == 0
    # The choice's likelihood of the original targets is the change-of-variables density: measured to agree
    # to 1e-9 relative; 1e-6 leaves room for the finite-difference Jacobian (truncation O(h^2), h 1e-7 of the range).
    assert -gp._nll_y == pytest.approx(_direct_log_density(gp, x, y), rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_auto_keeps_plain_gp_draws_and_linear_targets_unwarped(seed: int) -> None:
    x, f = _gp_draw(seed)
    for y, nearly_affine_allowed in ((f, True), (2.0 * x[:, 0] + 0.5 * x[:, 1] - 1.0, False)):  # both take negative values
        gp = GaussianProcess(GPConfig(output_warp="auto"), 2)
        gp.fit(x, y)
        # A plain GP draw may keep the largest offset, a log over [range, 2 range] that the likelihood cannot
        # tell from affine on 40 points (seeds 2, 4, 6, 7 of 0-7 do); a plane keeps no warping.
        assert gp.warp is None or (nearly_affine_allowed and gp.warp.offset == max(LOG_OFFSETS))
        assert -gp._nll_y == pytest.approx(_direct_log_density(gp, x, y), rel=1e-6)


def _floor_and_dome(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A dome over a third of the box on a floor of near-zero values spread over decades (as a Gray-Scott
    pattern amplitude where no pattern forms)."""
    return np.sqrt(np.maximum(0.0, 0.1 - np.sum((x - 0.6) ** 2, axis=1))) + 1e-5 * np.exp(2.0 * rng.standard_normal(len(x)))


def test_auto_vetoes_a_log_the_likelihood_prefers_for_resolving_a_floor() -> None:
    vetoed = 0
    for seed in range(10):
        rng = np.random.default_rng(seed)
        x, test = rng.uniform(size=(60, 2)), rng.uniform(size=(2000, 2))
        y, truth = _floor_and_dome(x, rng), _floor_and_dome(test, rng)
        models = {mode: GaussianProcess(GPConfig(output_warp=mode), 2) for mode in ("none", "log", "auto")}
        err = {}
        for mode, gp in models.items():
            gp.fit(x, y)
            err[mode] = float(np.sqrt(np.mean((gp.predict(test)[0] - truth) ** 2)))
        assert models["log"].warp is not None and models["log"].warp.offset == min(LOG_OFFSETS)
        # Measured on seeds 0-9: the log's map error is 1.9 to 8.1 times the unwarped GP's.
        assert err["log"] > 1.5 * err["none"]
        if models["auto"].vetoes:
            vetoed += 1
            assert models["auto"].warp is None and err["auto"] == pytest.approx(err["none"], rel=1e-9)
        else:
            assert models["auto"].warp == models["log"].warp
    # Measured: 9 of 10 (seed 2's leave-one-out errors differ by a factor 1.43 only, under the veto's 1.5).
    assert vetoed >= 8


def test_a_checkpoint_keeps_the_auto_choice_and_the_next_choices_follow_alike() -> None:
    rng = np.random.default_rng(0)
    x, test, more = rng.uniform(size=(60, 2)), rng.uniform(size=(500, 2)), rng.uniform(size=(20, 2))
    y = _floor_and_dome(x, rng)
    gp = GaussianProcess(GPConfig(output_warp="auto"), 2)
    gp.fit(x, y)
    assert gp.warp is None and gp.vetoes == 1  # seed 0 of the test above
    restored = GaussianProcess(GPConfig(output_warp="auto"), 2)
    restored.load_state_dict(decode(encode(gp.state_dict())))
    assert restored.warp is None and (restored._full_on, restored._nll_y) == (gp._full_on, gp._nll_y)
    xs, ys = np.concatenate([x, more]), np.concatenate([y, _floor_and_dome(more, rng)])
    for model in (gp, restored):
        model.fit(xs, ys)  # 80 >= 1.2 * 60: a light choice of both, from the same state
    assert restored.warp == gp.warp
    np.testing.assert_allclose(restored.predict(test)[0], gp.predict(test)[0], rtol=1e-8, atol=1e-12)


def test_the_output_warp_and_its_veto_are_checked() -> None:
    with pytest.raises(ValueError, match="output_warp"):
        GPConfig(output_warp="exp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="warp_veto"):
        GPConfig(warp_veto=0.9)

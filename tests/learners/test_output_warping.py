"""The shifted-log output warping: its maps against closed forms, and a warped GP on 1-D toys."""

from __future__ import annotations

import math

import numpy as np
import pytest

from coupler.learners.gp import GaussianProcess, GPConfig
from coupler.learners.output_warping import LogWarp, backward, forward, log_jacobian, log_warp
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

"""DeepEnsemble: members vmapped in one module, fits a known function, is unsure away from its data."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from coupler.learners.ensemble import DeepEnsemble, EnsembleConfig

SMALL = EnsembleConfig(members=4, hidden=32, depth=2, fourier_features=8, steps_per_fit=400)


def _target(x: np.ndarray) -> np.ndarray:
    return (np.sin(2 * np.pi * x[:, 0]) + x[:, 1] ** 2).astype(np.float32)


def test_members_are_one_module_with_a_leading_member_axis_and_differ() -> None:
    ens = DeepEnsemble(SMALL, dim=2, seed=0)
    leaves = [v for _, v in nnx.to_flat_state(ens._params)]
    assert leaves and all(np.shape(v.get_value())[0] == SMALL.members for v in leaves)
    x = np.random.default_rng(0).uniform(size=(16, 2)).astype(np.float32)
    preds = ens.members(x)
    assert preds.shape == (SMALL.members, 16)
    assert np.min(np.ptp(preds, axis=0)) > 0  # independently initialised members disagree


def test_fit_recovers_a_smooth_function_to_a_few_percent() -> None:
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(128, 2)).astype(np.float32)
    test = rng.uniform(size=(256, 2)).astype(np.float32)
    ens = DeepEnsemble(SMALL, dim=2, seed=1)
    for _ in range(4):
        loss = ens.fit(x, _target(x))
    mean, std = ens.predict(test)
    # The target spans [-1, 2]; 128 samples of a smooth function pin it down to 5 % of that range.
    rmse = float(np.sqrt(np.mean((mean - _target(test)) ** 2)))
    assert rmse < 0.15, rmse
    assert loss < 0.05 and np.all(std >= 0)
    assert ens.fits == 4 and ens.observations == 128


def test_uncertainty_is_larger_away_from_the_data() -> None:
    rng = np.random.default_rng(2)
    x = rng.uniform(size=(64, 2)).astype(np.float32) * np.array([0.4, 1.0], np.float32)  # only x0 < 0.4
    ens = DeepEnsemble(SMALL, dim=2, seed=2)
    for _ in range(3):
        ens.fit(x, _target(x))
    inside = rng.uniform(size=(200, 2)).astype(np.float32) * np.array([0.4, 1.0], np.float32)
    outside = (rng.uniform(size=(200, 2)) * np.array([0.3, 1.0]) + np.array([0.7, 0.0])).astype(np.float32)
    _, std_in = ens.predict(inside)
    _, std_out = ens.predict(outside)
    assert std_out.mean() > 2 * std_in.mean(), (std_in.mean(), std_out.mean())


def test_growing_data_and_single_points_fit_without_errors() -> None:
    ens = DeepEnsemble(SMALL, dim=2, seed=0)
    for n in (1, 3):  # both padded to 16 rows: one compiled fit serves both
        x = np.linspace(0, 1, 2 * n, dtype=np.float32).reshape(n, 2)
        assert np.isfinite(ens.fit(x, 2 * x[:, 0], steps=5))
    assert ens.predict(np.zeros((5, 2), np.float32))[0].shape == (5,)


def test_bad_inputs_are_refused_with_what_was_expected() -> None:
    ens = DeepEnsemble(EnsembleConfig(members=2, hidden=8, steps_per_fit=2), dim=2)
    with pytest.raises(ValueError, match=r"expected x \(N, 2\)"):
        ens.fit(np.zeros((3, 3), np.float32), np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="finite"):
        ens.fit(np.zeros((2, 2), np.float32), np.array([0.0, np.nan], np.float32))
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        ens.predict(np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="members >= 2"):
        EnsembleConfig(members=1)
    with pytest.raises(ValueError, match="dim"):
        DeepEnsemble(EnsembleConfig(members=2), dim=0)


def test_state_dict_round_trips_through_the_checkpoint_format_and_training_continues_identically() -> None:
    from coupler.runtime.control.checkpoints import decode, encode

    cfg = EnsembleConfig(members=3, hidden=8, depth=2, fourier_features=4, steps_per_fit=20)
    x = np.random.default_rng(2).uniform(size=(24, 2)).astype(np.float32)
    a = DeepEnsemble(cfg, dim=2, seed=5)
    a.fit(x, _target(x))
    b = DeepEnsemble(cfg, dim=2, seed=5)
    b.load_state_dict(decode(encode(a.state_dict())))  # msgpack + numpy, no pickle
    np.testing.assert_array_equal(a.members(x), b.members(x))
    a.fit(x, _target(x))  # the bootstrap draws and Adam moments continue too
    b.fit(x, _target(x))
    np.testing.assert_array_equal(a.members(x), b.members(x))
    assert (b.fits, b.observations) == (2, 24)
    with pytest.raises(ValueError, match="does not fit this ensemble"):
        DeepEnsemble(EnsembleConfig(members=3, hidden=16, fourier_features=4), dim=2).load_state_dict(a.state_dict())


def test_gradient_clipping_bounds_each_members_step() -> None:
    x = np.random.default_rng(3).uniform(size=(32, 2)).astype(np.float32)
    y = np.where(x[:, 0] > 0.5, 1.0, 0.0).astype(np.float32)  # a cliff

    def largest_move(clip_norm: float) -> float:
        cfg = EnsembleConfig(members=2, hidden=8, clip_norm=clip_norm, learning_rate=1e-2, weight_decay=0.0, steps_per_fit=3)
        ens = DeepEnsemble(cfg, dim=2)
        p0 = [np.asarray(v) for v in jax.tree.leaves(ens._params)]
        ens.fit(x, y)
        return max(float(np.max(np.abs(np.asarray(b) - a))) for a, b in zip(p0, jax.tree.leaves(ens._params)))

    # Adam's step m / (sqrt(v) + eps) is about lr for any gradient well above eps = 1e-8
    # (optax's default), so unclipped weights move by ~lr per step; a gradient clipped to a norm
    # of 1e-12 is far below eps and moves them by about lr * 1e-12 / 1e-8 per step.
    assert largest_move(0.0) > 1e-3
    assert largest_move(1e-12) < 1e-5
    with pytest.raises(ValueError, match="clip_norm"):
        EnsembleConfig(clip_norm=-1.0)

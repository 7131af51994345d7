"""DeepEnsemble: members vmapped in one module, fits a known function, is unsure away from its data."""

from __future__ import annotations

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

"""Trust-region expected improvement: the region's geometry, its resizing rule, candidates and checkpoints."""

from __future__ import annotations

import numpy as np
import pytest

from coupler.learners.acquisition import ParameterSpace, SearchData
from coupler.learners.trust_region import TrustRegionExpectedImprovement
from coupler.runtime.control.checkpoints import decode, encode

SPACE = ParameterSpace((0.0,) * 4, (1.0,) * 4)


def _data(x: np.ndarray, y: np.ndarray, lengths: np.ndarray | None = None) -> SearchData:
    def predict(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # a model that knows nothing: mean 0, std 1
        return np.zeros(len(p)), np.ones(len(p))

    return SearchData(x.astype(np.float32), y.astype(np.float32), np.zeros((0, 4), np.float32), predict, length_scales=lengths)


def test_the_region_is_centred_on_the_best_point_with_sides_in_proportion_to_the_length_scales() -> None:
    tr = TrustRegionExpectedImprovement(SPACE, initial=0, initial_length=0.4)
    x = np.array([[0.1, 0.1, 0.1, 0.1], [0.5, 0.5, 0.5, 0.5], [0.9, 0.2, 0.3, 0.4]])
    lengths = np.array([0.1, 0.4, 0.2, 0.2])
    lo, hi = tr.bounds(_data(x, np.array([0.0, 2.0, 1.0]), lengths))
    side = 0.4 * lengths / np.exp(np.mean(np.log(lengths)))  # geometric mean of the weights is 1
    np.testing.assert_allclose((lo + hi) / 2, 0.5)
    np.testing.assert_allclose(hi - lo, side)
    lo, hi = tr.bounds(_data(x, np.array([0.0, 2.0, 1.0])))  # no length scales: a cube
    np.testing.assert_allclose(hi - lo, 0.4)
    with pytest.raises(ValueError, match="min_length"):
        TrustRegionExpectedImprovement(SPACE, initial_length=2.0)


def test_the_side_halves_after_failures_doubles_after_successes_and_restarts_when_tiny() -> None:
    tr = TrustRegionExpectedImprovement(SPACE, initial=0, initial_length=0.8, min_length=0.1, failure_tolerance=2, success_tolerance=2)
    rng = np.random.default_rng(0)
    x, y = rng.uniform(size=(4, 4)), np.array([0.0, 1.0, 0.5, 0.2])

    def batch(values: list[float]) -> None:
        nonlocal x, y
        x = np.concatenate([x, rng.uniform(size=(len(values), 4))])
        y = np.concatenate([y, values])
        tr.propose(2, _data(x, y))

    tr.propose(2, _data(x, y))  # the first results: the best so far, no verdict
    assert tr.length == 0.8
    batch([0.3, 0.4])
    assert tr.length == 0.8  # one failure
    batch([0.9, 0.1])
    assert tr.length == 0.4  # two in a row: halved
    batch([1.5, 0.0])
    batch([1.6, 0.0])
    assert tr.length == 0.8  # two successes: doubled
    for _ in range(8):  # two failures per halving
        batch([0.0, 0.0])
    assert tr.length == 0.8 and tr.restarts == 1  # 0.8 -> 0.4 -> 0.2 -> 0.1 -> 0.05 < min: start over


def test_proposals_lie_in_the_region_and_differ_from_the_incumbent_in_few_coordinates_in_many_dimensions() -> None:
    space = ParameterSpace((0.0,) * 40, (1.0,) * 40)
    tr = TrustRegionExpectedImprovement(space, initial=0, initial_length=0.2, candidates=256, local=0, seed=1)
    x = np.random.default_rng(2).uniform(size=(10, 40))
    y = np.arange(10.0)
    data = SearchData(x.astype(np.float32), y.astype(np.float32), np.zeros((0, 40), np.float32),
                      lambda p: (np.zeros(len(p)), np.ones(len(p))))  # fmt: skip
    lo, hi = tr.bounds(data)
    cands = tr._candidates(data)
    assert np.all(cands >= lo - 1e-6) and np.all(cands <= hi + 1e-6)
    changed = (np.abs(cands - x[-1].astype(np.float32)) > 0).sum(1)
    assert 1 <= changed.min() and changed.mean() < 30  # about 20 of 40 coordinates, at least one
    picks = tr.propose(4, data)
    assert np.all(picks >= lo - 1e-6) and np.all(picks <= hi + 1e-6)


def test_the_region_survives_the_checkpoint_format() -> None:
    tr = TrustRegionExpectedImprovement(SPACE, initial=4, seed=3)
    rng = np.random.default_rng(4)
    x = tr.propose(4, _data(np.zeros((0, 4)), np.zeros(0)))
    y = rng.uniform(size=4)
    for _ in range(5):
        new = tr.propose(2, _data(x, y))
        x, y = np.concatenate([x, new]), np.concatenate([y, rng.uniform(size=2) * 0.1])
    other = TrustRegionExpectedImprovement(SPACE, initial=4, seed=3)
    other.load_state_dict(decode(encode(tr.state_dict())))
    assert other.length == tr.length < 0.8
    np.testing.assert_array_equal(tr.propose(2, _data(x, y)), other.propose(2, _data(x, y)))

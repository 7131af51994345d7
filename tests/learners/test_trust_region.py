"""Trust-region expected improvement: the region's geometry, its resizing rule, candidates and checkpoints."""

from __future__ import annotations

import numpy as np
import pytest

from coupler.learners.acquisition import ParameterSpace, SearchData
from coupler.learners.gp import GPConfig
from coupler.learners.steerer import Steerer, TaskStatus
from coupler.learners.trust_region import TrustRegionExpectedImprovement, MultiTrustRegionExpectedImprovement, region_bounds
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


# -- several trust regions (TuRBO-m) ---------------------------------------------------------------------


def _answer(tr: MultiTrustRegionExpectedImprovement, x: np.ndarray, y: np.ndarray, n: int, f) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    new = tr.propose(n, _data(x, y))
    return np.concatenate([x, new]), np.concatenate([y, f(new)])


def test_each_region_draws_its_own_design_then_searches_around_its_own_best() -> None:
    tr = MultiTrustRegionExpectedImprovement(SPACE, regions=3, initial=4, initial_length=0.2, candidates=128, local=0, seed=5)
    x, y = np.zeros((0, 4)), np.zeros(0)
    for _ in range(2):  # 12 design points, dealt 2 per region per proposal
        x, y = _answer(tr, x, y, 6, lambda p: p[:, 0])
    owners = tr.owner(x)
    assert sorted(np.bincount(owners).tolist()) == [4, 4, 4]
    for r in range(3):  # each design is a Latin hypercube of its own: one point per stratum of every axis
        np.testing.assert_array_equal(np.sort((x[owners == r] * 4).astype(int), 0), np.tile(np.arange(4)[:, None], (1, 4)))
    picks = tr.propose(6, _data(x, y))
    got = tr.owner(picks)
    assert sorted(got.tolist()) == [0, 0, 1, 1, 2, 2]
    for r in range(3):
        lo, hi = tr.bounds_of(r, _data(x, y))
        mine = x[owners == r]
        np.testing.assert_allclose(np.stack([lo, hi]), np.stack(region_bounds(mine[np.argmax(mine[:, 0])], 0.2, None)))  # its own best's
        assert np.all(picks[got == r] >= lo - 1e-6) and np.all(picks[got == r] <= hi + 1e-6)


def test_a_collapsed_region_retires_its_points_and_restarts_from_a_fresh_design_the_others_go_on() -> None:
    tr = MultiTrustRegionExpectedImprovement(SPACE, regions=2, initial=2, initial_length=0.4, min_length=0.1, failure_tolerance=1, seed=6)
    x, y = np.zeros((0, 4)), np.zeros(0)
    x, y = _answer(tr, x, y, 4, lambda p: np.where(tr.owner(p) == 0, 1.0, 2.0))  # the designs
    lengths = []
    for _ in range(3):  # region 0 never improves (0.0 < its 1.0); region 1 improves every time
        x, y = _answer(tr, x, y, 2, lambda p: np.where(tr.owner(p) == 0, 0.0, 3.0 + len(y)))
        lengths.append(tr.state[0].length)
    assert lengths[:2] == [0.4, 0.2]  # one failure per halving (the first batch only set the best)
    picks = tr.propose(2, _data(x, y))  # the third failure: 0.1 -> 0.05 < min_length
    assert tr.state[0].restarts == 1 and tr.state[0].length == 0.4 and tr.state[0].best == -np.inf
    assert tr.state[1].restarts == 0 and tr.state[1].best > 2.0
    assert np.all(tr.owner(x)[: 2] != 0) and 0 not in tr.owner(x).tolist()  # its old points are no region's now
    # The proposal is the fresh design, a Latin hypercube over the whole box (one point in each half of every axis).
    assert tr.owner(picks).tolist() == [0, 0] and len(tr.state[0].design) == 0
    np.testing.assert_array_equal(np.sort((picks * 2).astype(int), 0), [[0] * 4, [1] * 4])


def test_several_regions_find_the_higher_narrow_peak_that_one_region_misses() -> None:
    """Two peaks in 2-D: a broad one of height 1 and a narrower one of height 1.5 in a corner, a real GP.
    One trust region climbs the broad one and, restarted around its best point, stays there; four regions,
    each restarted from a fresh design when it collapses, find the higher one (same budget, same seeds)."""
    space = ParameterSpace((0.0, 0.0), (1.0, 1.0))

    def f(p: np.ndarray) -> np.ndarray:
        broad = np.exp(-np.sum((p - 0.3) ** 2, 1) / (2 * 0.15**2))
        narrow = 1.5 * np.exp(-np.sum((p - np.array([0.8, 0.75])) ** 2, 1) / (2 * 0.08**2))
        return broad + narrow

    def best_of(strategy: TrustRegionExpectedImprovement, budget: int = 300) -> float:
        steerer = Steerer(space, strategy, GPConfig(), seed=0)
        while len(steerer.tasks) < budget:
            for rec in steerer.propose(4):
                steerer.record(rec.task, TaskStatus.OK, float(f(rec.x[None])[0]), finished=float(rec.task + 1))
            steerer.refit()
        best = steerer.best()
        assert best is not None
        return best.qoi

    sizes = {"candidates": 256, "local": 0, "initial_length": 0.2, "min_length": 0.2 / 16}
    one = [best_of(TrustRegionExpectedImprovement(space, initial=8, seed=s, **sizes)) for s in range(2)]
    many = [best_of(MultiTrustRegionExpectedImprovement(space, regions=4, initial=4, seed=s, **sizes)) for s in range(2)]
    assert max(one) < 1.1  # the broad peak only
    assert min(many) > 1.4  # the higher peak (1.5 at its top) on every seed


def test_the_regions_survive_the_checkpoint_format() -> None:
    tr = MultiTrustRegionExpectedImprovement(SPACE, regions=3, initial=3, seed=7)
    rng = np.random.default_rng(8)
    x, y = np.zeros((0, 4)), np.zeros(0)
    for _ in range(6):
        x, y = _answer(tr, x, y, 3, lambda p: rng.uniform(size=len(p)))
    other = MultiTrustRegionExpectedImprovement(SPACE, regions=3, initial=3, seed=7)
    other.load_state_dict(decode(encode(tr.state_dict())))
    np.testing.assert_array_equal(other.owner(x), tr.owner(x))
    assert [(g.length, g.best, g.failures) for g in other.state] == [(g.length, g.best, g.failures) for g in tr.state]
    np.testing.assert_array_equal(tr.propose(3, _data(x, y)), other.propose(3, _data(x, y)))
    with pytest.raises(ValueError, match="regions"):
        MultiTrustRegionExpectedImprovement(SPACE, regions=2, initial=3).load_state_dict(tr.state_dict())
    with pytest.raises(ValueError, match="region"):
        MultiTrustRegionExpectedImprovement(SPACE, regions=0)

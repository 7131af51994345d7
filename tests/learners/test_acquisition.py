"""Acquisition strategies: closed-form scores, sweeps, greedy batches, what becomes pointless."""

from __future__ import annotations

import math

import numpy as np
import pytest

from coupler.learners.acquisition import (
    ExpectedGlobalFit,
    ExpectedImprovement,
    GridSweep,
    MaxUncertainty,
    ParameterSpace,
    RandomSweep,
    SearchData,
    UpperConfidenceBound,
    expected_improvement,
    latin_hypercube,
    upper_confidence_bound,
)

SPACE = ParameterSpace((0.02, 0.05), (0.08, 0.07), ("F", "k"))


def _empty(predict=None) -> SearchData:
    return SearchData(x=np.zeros((0, 2), np.float32), y=np.zeros(0, np.float32), pending=np.zeros((0, 2)), predict=predict)


def _data(predict, x=((0.5, 0.5),), y=(0.0,), pending=()) -> SearchData:
    return SearchData(
        x=np.array(x, np.float32), y=np.array(y, np.float32), pending=np.array(pending, np.float32).reshape(-1, 2), predict=predict
    )


def test_expected_improvement_matches_its_closed_form_and_a_quadrature() -> None:
    # At mean == best, EI = std * phi(0) = std / sqrt(2 pi) (Jones, Schonlau & Welch 1998, eq. 15).
    assert expected_improvement(np.array([1.0]), np.array([2.0]), best=1.0)[0] == pytest.approx(2 / math.sqrt(2 * math.pi))
    # Elsewhere, against a numerical integral of max(y - best, 0) N(y; mu, s^2) dy (1e-6 relative).
    mu, s, best = 0.3, 0.7, 0.9
    y = np.linspace(mu - 12 * s, mu + 12 * s, 400001)
    dens = np.exp(-0.5 * ((y - mu) / s) ** 2) / (s * math.sqrt(2 * math.pi))
    quad = float(np.sum(np.maximum(y - best, 0) * dens) * (y[1] - y[0]))
    assert expected_improvement(np.array([mu]), np.array([s]), best)[0] == pytest.approx(quad, rel=1e-6)
    # No uncertainty: the plain improvement; a margin xi lowers it.
    np.testing.assert_allclose(expected_improvement(np.array([2.0, 0.5]), np.zeros(2), best=1.0), [1.0, 0.0])
    assert expected_improvement(np.array([1.0]), np.array([1.0]), 1.0, xi=0.5)[0] < expected_improvement(np.array([1.0]), np.array([1.0]), 1.0)[0]
    np.testing.assert_allclose(upper_confidence_bound(np.array([1.0]), np.array([0.5]), beta=2.0), [2.0])


def test_parameter_space_maps_to_the_unit_box_and_back() -> None:
    x = np.array([[0.02, 0.05], [0.08, 0.07], [0.05, 0.06]], np.float32)
    np.testing.assert_allclose(SPACE.to_unit(x), [[0, 0], [1, 1], [0.5, 0.5]], atol=1e-6)
    np.testing.assert_allclose(SPACE.from_unit(SPACE.to_unit(x)), x, rtol=1e-6)
    g = SPACE.grid(3)
    assert g.shape == (9, 2) and g.min() == 0 and g.max() == 1 and len({tuple(p) for p in g}) == 9
    with pytest.raises(ValueError, match="below its upper"):
        ParameterSpace((1.0,), (0.0,))
    with pytest.raises(ValueError, match=">= 2 points"):
        SPACE.grid(1)


def test_grid_sweep_visits_every_node_once_then_stops() -> None:
    sweep = GridSweep(SPACE, 4)
    got = np.concatenate([sweep.propose(5, _empty()) for _ in range(4)])
    np.testing.assert_array_equal(got, SPACE.grid(4))
    assert len(sweep.propose(3, _empty())) == 0
    assert not sweep.pointless(np.zeros((2, 2)), _empty()).any()


def test_random_sweep_is_uniform_in_the_box_and_reproducible() -> None:
    a = RandomSweep(SPACE, seed=3).propose(2000, _empty())
    b = RandomSweep(SPACE, seed=3).propose(2000, _empty())
    np.testing.assert_array_equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
    assert abs(a.mean() - 0.5) < 0.02  # the mean of 4000 U(0,1) draws: sd 0.0046


def test_latin_hypercube_has_one_point_per_stratum_and_axis() -> None:
    pts = latin_hypercube(10, 2, np.random.default_rng(0))
    for axis in range(2):
        assert sorted(np.floor(pts[:, axis] * 10).astype(int)) == list(range(10))


def test_model_guided_strategies_start_with_a_space_filling_design() -> None:
    mu = MaxUncertainty(SPACE, initial=6, seed=0)
    first = np.concatenate([mu.propose(4, _empty()), mu.propose(2, _empty())])
    assert first.shape == (6, 2)
    for axis in range(2):
        assert sorted(np.floor(first[:, axis] * 6).astype(int)) == list(range(6))


def test_max_uncertainty_goes_where_the_model_is_unsure_and_spreads_a_batch() -> None:
    target = np.array([0.8, 0.2])

    def predict(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(len(u)), np.exp(-np.sum((u - target) ** 2, 1) / 0.02)

    strategy = MaxUncertainty(SPACE, initial=0, min_distance=0.05, spread=0.0, seed=1)
    pending = [(0.8, 0.2)]  # already running at the most uncertain point
    batch = strategy.propose(4, _data(predict, pending=pending))
    assert batch.shape == (4, 2)
    assert np.all(np.linalg.norm(batch - target, axis=1) < 0.2)  # near the uncertain spot
    near = np.concatenate([batch, np.array(pending)])
    d = np.linalg.norm(near[:, None] - near[None], axis=-1) + np.eye(len(near))
    assert d.min() >= 0.05 - 1e-6  # apart from each other and from what is running


def test_spread_keeps_proposals_away_from_a_region_that_stays_uncertain() -> None:
    # The model is unsure only at one spot, however many points sit there: without a spread every
    # proposal lands next to it; with spread s, each keeps s / sqrt(N) from everything else.
    spot = np.array([0.2, 0.2])

    def predict(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(len(u)), np.exp(-np.sum((u - spot) ** 2, 1) / 0.01)

    observed = [tuple(spot + d) for d in np.random.default_rng(0).normal(0, 0.02, (10, 2))]
    data = _data(predict, x=observed, y=[0.0] * len(observed))
    piled = MaxUncertainty(SPACE, initial=0, spread=0.0, seed=3).propose(4, data)
    spread = MaxUncertainty(SPACE, initial=0, spread=0.5, seed=3).propose(4, data)
    assert np.all(np.linalg.norm(piled - spot, axis=1) < 0.15)
    radius = 0.5 / math.sqrt(len(observed) + 4)
    everything = np.concatenate([np.array(observed), spread])
    d = np.linalg.norm(spread[:, None] - everything[None], axis=-1)
    d[np.arange(4), len(observed) + np.arange(4)] = np.inf  # a point's distance to itself
    assert d.min() >= radius - 1e-6


@pytest.mark.parametrize("strategy", [ExpectedImprovement(SPACE, initial=0, seed=2), UpperConfidenceBound(SPACE, initial=0, seed=2)])
def test_maximisers_propose_near_the_predicted_peak(strategy) -> None:
    peak = np.array([0.3, 0.7])

    def predict(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.exp(-np.sum((u - peak) ** 2, 1) / 0.01), np.full(len(u), 0.01)

    batch = strategy.propose(2, _data(predict, x=[(0.5, 0.5)], y=[0.1]))
    assert np.all(np.linalg.norm(batch - peak, axis=1) < 0.1), batch


def test_pointless_marks_running_points_that_cannot_matter() -> None:
    def predict(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return u[:, 0].astype(np.float64), np.full(len(u), 0.01)  # the model: y = x0, sure of it

    pending = np.array([[0.1, 0.5], [0.95, 0.5]], np.float32)
    data = _data(predict, x=[(0.8, 0.5)], y=[0.8])
    # A maximiser needs no point whose optimistic bound 0.1 + 3 * 0.01 is below the best 0.8.
    np.testing.assert_array_equal(ExpectedImprovement(SPACE, cancel_beta=3.0).pointless(pending, data), [True, False])
    # A mapper needs no point the model is already sure about (std 0.01 < 0.05); 0 never cancels.
    np.testing.assert_array_equal(MaxUncertainty(SPACE, settle_std=0.05).pointless(pending, data), [True, True])
    assert not MaxUncertainty(SPACE).pointless(pending, data).any()
    # Sweeps never cancel.
    assert not RandomSweep(SPACE).pointless(pending, data).any()


def test_strategies_continue_from_their_state_dict_in_the_checkpoint_format() -> None:
    from coupler.runtime.control.checkpoints import decode, encode

    space = ParameterSpace((0.0, 0.0), (1.0, 1.0))
    empty = SearchData(np.zeros((0, 2), np.float32), np.zeros(0, np.float32), np.zeros((0, 2), np.float32))
    pairs = [
        (lambda: GridSweep(space, 4), 5),
        (lambda: RandomSweep(space, seed=4), 3),
        (lambda: MaxUncertainty(space, initial=6, seed=4), 2),  # halfway through its initial design
    ]
    for make, first in pairs:
        a = make()
        a.propose(first, empty)
        b = make()
        b.load_state_dict(decode(encode(a.state_dict())))  # msgpack + numpy: the generator state is a string
        np.testing.assert_array_equal(a.propose(4, empty), b.propose(4, empty))
    with pytest.raises(ValueError, match="PCG64"):
        RandomSweep(space).load_state_dict({"rng": '{"bit_generator": "MT19937"}'})


def _front(u: np.ndarray) -> np.ndarray:
    # Flat (0) over most of the square, a steep rise across the line u0 = 0.7 (a regime boundary).
    return np.tanh((u[:, 0] - 0.7) / 0.03) + 1.0


def test_expected_global_fit_scores_as_lam_2008_and_concentrates_on_a_front() -> None:
    from coupler.learners.gp import GaussianProcess, GPConfig

    x = latin_hypercube(40, 2, np.random.default_rng(0))
    gp = GaussianProcess(GPConfig(), 2)
    gp.fit(x, _front(x))
    data = SearchData(x=x.astype(np.float32), y=_front(x).astype(np.float32), pending=np.zeros((0, 2)), predict=gp.predict)
    eigf = ExpectedGlobalFit(SPACE, initial=0, candidates=400, local=0, spread=0.0, seed=1)
    picks = eigf.propose(8, data)
    # Score by hand for the first pick, over the same candidates (Lam 2008: (mean - y(nearest))^2 + var).
    cands = np.random.default_rng(1).uniform(size=(400, 2))
    mean, std = gp.predict(cands)
    nearest = np.argmin(((cands[:, None] - x[None]) ** 2).sum(-1), 1)
    by_hand = (mean - _front(x)[nearest]) ** 2 + std**2
    np.testing.assert_allclose(picks[0], cands[np.argmax(by_hand)], atol=1e-6)
    # The front (|u0 - 0.7| < 0.1) is a fifth of the square; a value-blind design would put a fifth there.
    assert np.mean(np.abs(picks[:, 0] - 0.7) < 0.1) >= 0.75
    # A batch keeps min_distance from the pending points and from its own picks.
    pending = picks[:3]
    more = eigf.propose(4, SearchData(x=data.x, y=data.y, pending=pending, predict=gp.predict))
    taken = np.concatenate([pending, more])
    gaps = np.sqrt(((taken[:, None] - taken[None]) ** 2).sum(-1))[np.triu_indices(len(taken), 1)]
    assert gaps.min() >= eigf.min_distance
    assert not eigf.pointless(pending, data).any()

"""Integrated-variance reduction: greedy picks against brute-force refits, batches, pending points, checkpoints;
its calibrated (error-weighted) variant."""

from __future__ import annotations

import numpy as np
import pytest

from coupler.learners.acquisition import ParameterSpace, SearchData
from coupler.learners.gp import GaussianProcess, GPConfig
from coupler.learners.steerer import Steerer, TaskStatus
from coupler.learners.variance_reduction import (
    CalibratedVarianceReduction,
    GradientWeightedVarianceReduction,
    IntegratedVarianceReduction,
    greedy_variance_reduction,
)
from coupler.runtime.control.checkpoints import decode, encode

SPACE = ParameterSpace((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def _fitted(n: int = 30) -> tuple[GaussianProcess, np.ndarray]:
    x = np.random.default_rng(0).uniform(size=(n, 3))
    gp = GaussianProcess(GPConfig(), 3)
    gp.fit(x, np.sin(4 * x[:, 0]) + x[:, 1] ** 2)
    return gp, x


def _mean_variance_with(gp: GaussianProcess, x: np.ndarray, extra: np.ndarray, refs: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Brute force: condition a copy of the GP (same hyperparameters) on ``x`` and ``extra``; its
    mean (``weights``: weighted mean) posterior variance at ``refs`` (the values do not matter for a GP's variance)."""
    other = GaussianProcess(GPConfig(reoptimise_growth=1e9), 3)  # never re-chooses: only conditions
    other.load_state_dict(gp.state_dict())
    both = np.concatenate([x, extra])
    other.fit(both, np.zeros(len(both)))  # y_scale 1: in the units of the original's standardised targets
    return float(np.average(other.predict(refs)[1] ** 2, weights=weights))


def test_joint_covariance_matches_the_posterior_variance() -> None:
    gp, _ = _fitted()
    pts = np.random.default_rng(1).uniform(size=(7, 3))
    joint = gp.joint(pts)
    scale = gp.state_dict()["y_scale"]
    np.testing.assert_allclose(np.sqrt(joint.variance()) * scale, gp.predict(pts)[1], rtol=1e-6)
    np.testing.assert_allclose(np.diag(joint(np.arange(7), np.arange(7))), joint.variance(), rtol=1e-6, atol=1e-12)
    block = joint(np.arange(7), np.arange(7))
    np.testing.assert_allclose(block, block.T, atol=1e-12)
    assert np.all(np.linalg.eigvalsh(block) > -1e-9)  # a covariance


def test_greedy_picks_are_those_of_brute_force_refits_after_the_pending_points() -> None:
    gp, x = _fitted()
    rng = np.random.default_rng(2)
    pending, cands, refs = rng.uniform(size=(2, 3)), rng.uniform(size=(40, 3)), rng.uniform(size=(100, 3))
    picks = greedy_variance_reduction(gp.joint(np.concatenate([pending, cands, refs])), 2, 40, 3)
    base, brute = list(pending), []
    for _ in range(3):
        after = [np.inf if i in brute else _mean_variance_with(gp, x, np.array(base + [c]), refs) for i, c in enumerate(cands)]
        brute.append(int(np.argmin(after)))
        base.append(cands[brute[-1]])
    assert picks == brute
    with pytest.raises(ValueError, match="no reference points"):
        greedy_variance_reduction(gp.joint(cands), 0, 40, 1)


def test_a_batch_spreads_out_and_keeps_away_from_pending_points() -> None:
    steerer = Steerer(SPACE, IntegratedVarianceReduction(SPACE, initial=10, candidates=256, reference=128, seed=0), GPConfig())
    for rec in steerer.propose(10):
        u = rec.x
        steerer.record(rec.task, TaskStatus.OK, float(np.sin(4 * u[0]) + u[1] ** 2))
    steerer.refit()
    running = steerer.propose(4)
    batch = steerer.propose(4)
    xs = np.array([r.x for r in running + batch])
    gaps = np.sqrt(((xs[:, None] - xs[None]) ** 2).sum(-1)) + np.eye(len(xs))
    assert gaps.min() > 0.1  # no two of the 8 points (4 pending, 4 new) bunch up


def test_integrated_variance_falls_as_a_steered_map_proceeds_and_survives_a_checkpoint() -> None:
    def make() -> Steerer:
        # Hyperparameters chosen once: with them fixed, every observation can only lower the variance.
        strategy = IntegratedVarianceReduction(SPACE, initial=8, candidates=128, reference=64, seed=4)
        return Steerer(SPACE, strategy, GPConfig(reoptimise_growth=1e9))

    def answer(s: Steerer, n: int) -> None:
        for rec in s.propose(n):
            s.record(rec.task, TaskStatus.OK, float(np.cos(3 * rec.x[0]) * rec.x[2]), finished=float(rec.task))
        s.refit()

    first = make()
    answer(first, 8)
    strategy = first.strategy
    assert isinstance(strategy, IntegratedVarianceReduction)
    before = strategy.integrated_variance(first.data())
    answer(first, 4)
    assert strategy.integrated_variance(first.data()) < before
    second = make()
    second.load_state_dict(decode(encode(first.state_dict())))
    np.testing.assert_array_equal(np.stack([r.x for r in first.propose(3)]), np.stack([r.x for r in second.propose(3)]))


def test_weighted_greedy_picks_are_those_of_brute_force_weighted_refits() -> None:
    gp, x = _fitted()
    rng = np.random.default_rng(5)
    pending, cands, refs = rng.uniform(size=(1, 3)), rng.uniform(size=(30, 3)), rng.uniform(size=(80, 3))
    w = np.where(refs[:, 0] > 0.7, 20.0, 0.05)  # nearly all the weight in one slab of the box
    picks = greedy_variance_reduction(gp.joint(np.concatenate([pending, cands, refs])), 1, 30, 3, w)
    base, brute = list(pending), []
    for _ in range(3):
        after = [np.inf if i in brute else _mean_variance_with(gp, x, np.array(base + [c]), refs, w) for i, c in enumerate(cands)]
        brute.append(int(np.argmin(after)))
        base.append(cands[brute[-1]])
    assert picks == brute
    assert picks != greedy_variance_reduction(gp.joint(np.concatenate([pending, cands, refs])), 1, 30, 3)  # the weights matter here
    with pytest.raises(ValueError, match="reference weights"):
        greedy_variance_reduction(gp.joint(np.concatenate([cands, refs])), 0, 30, 1, np.ones(3))


def _bump(u: np.ndarray) -> float:
    """Flat but for a narrow bump at (0.7, 0.3): localized structure."""
    return float(np.exp(-((u[0] - 0.7) ** 2 + (u[1] - 0.3) ** 2) / (2 * 0.06**2)))


def test_calibrated_picks_go_where_the_surface_changes_and_ivr_ones_do_not() -> None:
    space = ParameterSpace((0.0, 0.0), (1.0, 1.0))
    start = np.random.default_rng(6).uniform(size=(40, 2))
    spread = {}
    for name, kind in (("calibrated", CalibratedVarianceReduction), ("ivr", IntegratedVarianceReduction)):
        steerer = Steerer(space, kind(space, initial=0, candidates=256, reference=128, seed=0), GPConfig())
        for i, u in enumerate(start):
            steerer.record(i, TaskStatus.OK, _bump(u), x=u, finished=float(i))
        steerer.refit()
        if kind is CalibratedVarianceReduction:
            w = steerer.strategy.weights(steerer.data(), np.array([[0.7, 0.3], [0.72, 0.35], [0.1, 0.9], [0.2, 0.8]]))
            assert w is not None and min(w[:2]) > 10 * max(w[2:])  # the GP's errors are at the bump, not on the plain
        batch = np.array([r.x for r in steerer.propose(8)])
        spread[name] = float(np.mean(np.hypot(batch[:, 0] - 0.7, batch[:, 1] - 0.3)))
    assert spread["calibrated"] < 0.2 < spread["ivr"]


def test_calibrated_weights_need_leave_one_out_and_a_positive_floor() -> None:
    space = ParameterSpace((0.0, 0.0), (1.0, 1.0))
    strategy = CalibratedVarianceReduction(space, initial=0, candidates=16, reference=16)
    empty = SearchData(np.zeros((0, 2), np.float32), np.zeros(0, np.float32), np.zeros((0, 2), np.float32))
    assert strategy.weights(empty, np.zeros((3, 2))) is None
    with pytest.raises(ValueError, match="floor"):
        CalibratedVarianceReduction(space, floor=0.0)


def test_gradient_weights_are_large_on_the_bump_and_picks_go_there() -> None:
    space = ParameterSpace((0.0, 0.0), (1.0, 1.0))
    start = np.random.default_rng(6).uniform(size=(40, 2))
    steerer = Steerer(space, GradientWeightedVarianceReduction(space, initial=0, candidates=256, reference=128, seed=0), GPConfig())
    for i, u in enumerate(start):
        steerer.record(i, TaskStatus.OK, _bump(u), x=u, finished=float(i))
    steerer.refit()
    w = steerer.strategy.weights(steerer.data(), np.array([[0.7, 0.25], [0.75, 0.3], [0.1, 0.9], [0.2, 0.8]]))
    assert w is not None and min(w[:2]) > 10 * max(w[2:])  # the flanks of the bump change; the plain does not
    batch = np.array([r.x for r in steerer.propose(8)])
    # Most picks at the bump (integrated-variance reduction's spread over the box: median 0.4 on these points).
    assert float(np.median(np.hypot(batch[:, 0] - 0.7, batch[:, 1] - 0.3))) < 0.15


def test_gradient_weights_need_a_fitted_mean_and_a_positive_floor() -> None:
    space = ParameterSpace((0.0, 0.0), (1.0, 1.0))
    strategy = GradientWeightedVarianceReduction(space, initial=0, candidates=16, reference=16)
    empty = SearchData(np.zeros((0, 2), np.float32), np.zeros(0, np.float32), np.zeros((0, 2), np.float32))
    assert strategy.weights(empty, np.zeros((3, 2))) is None
    with pytest.raises(ValueError, match="floor"):
        GradientWeightedVarianceReduction(space, floor=0.0)

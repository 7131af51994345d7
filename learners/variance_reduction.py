"""Mapping a response surface by integrated-variance reduction (active learning Cohn, ALC).

To map a surface, a surrogate's error *over the whole box* is what matters, so
the next simulation should be where observing reduces the integrated posterior
variance most (Cohn 1996, "Neural network exploration using optimal experiment
design"; Seo et al. 2000, "Gaussian process regression: active data selection
and test point rejection"; Gramacy 2020, *Surrogates*, sec. 6.2.2). For a
Gaussian process, observing ``x`` (noise variance ``s2``) lowers the variance
at a reference point ``r`` by ``cov(r, x)^2 / (var(x) + s2)``, whatever value it
returns; the criterion is the mean of that over reference points spread through
the box. Largest posterior variance alone (:class:`MaxUncertainty`) puts points on
the faces and corners of the box, whose variance is large but whose
neighbourhood is small; the integral counts the volume a point informs.

A batch is chosen greedily: after each pick, and first for every pending point,
the covariance is conditioned on that point as if it had been observed (a
rank-one update, exact for a GP since the posterior covariance does not depend
on the values), so a batch spreads out by itself and keeps away from running
simulations.

The surrogate must offer ``joint(points)``, as
:class:`~coupler.learners.gp.GaussianProcess` does (the steerer passes it as
``SearchData.covariance``); without it the strategy scores by posterior standard
deviation, like :class:`MaxUncertainty`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from coupler.learners.acquisition import JointCovariance, MaxUncertainty, SearchData, far_enough
from coupler.learners.gp import matern52
from coupler.learners.samplers import sobol_engine


@dataclass
class IntegratedVarianceReduction(MaxUncertainty):
    """Map a response surface: simulate where observing lowers the integrated variance most.

    Args (besides those of :class:`MaxUncertainty`):
        reference: reference points (scrambled Sobol, fixed by ``seed``) over which
            the variance reduction is averaged.

    Raises:
        ValueError: for ``reference < 1``.
    """

    candidates: int = 512
    local: int = 0
    spread: float = 0.0
    reference: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.reference < 1:
            raise ValueError(f"reference must be >= 1, got {self.reference}")
        with warnings.catch_warnings():  # a reference set need not be a power of two
            warnings.filterwarnings("ignore", message="The balance properties", category=UserWarning)
            self._reference = sobol_engine(self.space.dim, scramble=True, seed=self.seed).random(self.reference)

    def _greedy(self, n: int, data: SearchData, already: np.ndarray) -> list[np.ndarray]:
        if data.covariance is None:
            return super()._greedy(n, data, already)
        return self._weighted_picks(n, data, already, np.empty((0, self.space.dim)), None)

    def _weighted_picks(
        self, n: int, data: SearchData, already: np.ndarray, local: np.ndarray, w: np.ndarray | None,
    ) -> list[np.ndarray]:
        """``n`` points that most reduce the (``w``-weighted) variance over the reference points.

        Candidates are uniform in the box plus ``local`` ones (where a subclass expects
        the error), away from the data; pending and already chosen points count as data.
        """
        d = self.space.dim
        cands = np.concatenate([self._rng.uniform(size=(self.candidates, d)), local])
        cands = cands[far_enough(cands, data.x.reshape(-1, d), 1e-4)]
        fantasy = np.concatenate([data.pending.reshape(-1, d), already.reshape(-1, d)])
        joint = data.covariance(np.concatenate([fantasy, cands, self._reference]))  # type: ignore[misc]
        chosen = greedy_variance_reduction(joint, len(fantasy), len(cands), n, w)
        picks = [cands[i] for i in chosen]
        if len(picks) < n:  # fewer candidates than asked for (all but a few were answered already)
            picks.extend(self._rng.uniform(size=(n - len(picks), d)))
        return picks

    def integrated_variance(self, data: SearchData) -> float:
        """Mean posterior variance over the reference points (standardised units): what the picks reduce.

        Raises:
            ValueError: when ``data`` carries no ``covariance``.
        """
        if data.covariance is None:
            raise ValueError("integrated_variance needs SearchData.covariance (a surrogate with joint())")
        return float(np.mean(data.covariance(self._reference).variance()))


def greedy_variance_reduction(joint: JointCovariance, fantasy: int, candidates: int, n: int,
                               weights: np.ndarray | None = None) -> list[int]:  # fmt: skip
    """Pick ``n`` candidates one by one, each lowering the integrated variance most.

    The points of ``joint`` are, in order, ``fantasy`` points to condition on first
    (pending simulations), ``candidates`` candidates, and the reference points
    (the rest). Conditioning on a point ``z`` is the rank-one update
    ``cov(a, b) -= cov(a, z) cov(z, b) / (var(z) + noise)``, kept as rows of a
    factor so each costs ``O(N M)`` (``M`` points, ``N`` observations).

    Args:
        joint: the posterior covariance over fantasy, candidate and reference points.
        fantasy: how many leading points to condition on before picking.
        candidates: how many points after them are candidates.
        n: picks wanted (at most ``candidates``).
        weights: a weight per reference point (``None``: all 1): the integral becomes
            the weighted mean of the variance.

    Returns:
        Indices into the candidates (``0 .. candidates - 1``), in the order picked.

    Raises:
        ValueError: when no reference points follow the candidates, or for weights of another length.
    """
    total = len(joint.variance())
    if total <= fantasy + candidates:
        raise ValueError(f"{total} points leave no reference points after {fantasy} fantasy and {candidates} candidates")
    w = np.ones(total - fantasy - candidates) if weights is None else np.asarray(weights, np.float64)
    if w.shape != (total - fantasy - candidates,):
        raise ValueError(f"expected {total - fantasy - candidates} reference weights, got shape {w.shape}")
    every = np.arange(total)
    c_idx, r_idx = every[fantasy : fantasy + candidates], every[fantasy + candidates :]
    rows = np.zeros((total, 0))  # cov_now(a, b) = cov(a, b) - rows[a] . rows[b]

    def condition(i: int) -> np.ndarray:
        nonlocal rows
        col = joint(every, np.array([i]))[:, 0] - rows @ rows[i]
        col = col / np.sqrt(max(float(col[i]), 0.0) + joint.noise)
        rows = np.concatenate([rows, col[:, None]], 1)
        return col

    for i in range(fantasy):
        condition(i)
    block = joint(c_idx, r_idx) - rows[c_idx] @ rows[r_idx].T
    var = joint.variance()[c_idx] - (rows[c_idx] ** 2).sum(1)
    chosen: list[int] = []
    for _ in range(min(n, candidates)):
        # Mean over the references of cov(r, x)^2 / (var(x) + noise): the variance observing x removes.
        score = (block**2) @ w / (np.maximum(var, 0.0) + joint.noise)
        score[chosen] = -np.inf
        best = int(np.argmax(score))
        chosen.append(best)
        col = condition(fantasy + best)
        block -= np.outer(col[c_idx], col[r_idx])
        var -= col[c_idx] ** 2
    return chosen


@dataclass
class CalibratedVarianceReduction(IntegratedVarianceReduction):
    """Map a surface with localized structure: reduce the variance where the GP's errors are.

    A stationary GP has one length scale per input for the whole box, so its
    variance is the same over a flat plain as over a steep front, and
    integrated-variance reduction (a design that does not look at the values)
    spreads points evenly, as a space-filling sweep does. The GP's real error is
    not even: its leave-one-out residuals (free from the fit) are near zero where
    the surface is flat and large where it changes fast. This strategy weights each
    reference point's variance by the local calibration ``c = residual^2 /
    loo_variance`` (how much larger the squared error is than the GP says), smoothed
    with the GP's own kernel over the observed points, falling back to the average
    calibration away from them, and never below ``floor`` times it (so that no part
    of the box is given up). It is the expected squared error, not the variance,
    that the picks reduce (in the spirit of Liu et al. 2017, "An adaptive sampling
    approach for Kriging metamodeling by maximizing expected prediction error", and
    of LOLA-Voronoi's local-error weighting, Crombecq et al. 2011), with the batch
    machinery of :class:`IntegratedVarianceReduction`. Candidates are uniform draws
    plus ``local`` perturbations (half a length scale) of the worst-explained points.

    On a surface that varies alike everywhere the weights are flat and it is
    :class:`IntegratedVarianceReduction`; it gains only where the structure is
    localized. Without ``SearchData.leave_one_out`` it is that strategy too.

    Args (besides those of :class:`IntegratedVarianceReduction`):
        floor: smallest weight, as a share of the mean calibration.
        prior_weight: weight (a kernel correlation) of the mean calibration in the smoothing.

    Raises:
        ValueError: for ``floor`` or ``prior_weight`` not positive.
    """

    local: int = 256
    floor: float = 0.05
    prior_weight: float = 0.05

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.floor <= 0 or self.prior_weight <= 0:
            raise ValueError(f"floor and prior_weight must be > 0, got {self.floor}, {self.prior_weight}")

    def weights(self, data: SearchData, points: np.ndarray) -> np.ndarray | None:
        """The calibration weight at ``(M, d)`` points (``None``: no leave-one-out residuals)."""
        if data.leave_one_out is None:
            return None
        loo = data.leave_one_out()
        calib = loo.residuals**2 / np.maximum(loo.variances, 1e-300)
        mean = float(np.mean(calib))
        if not mean > 0:
            return np.ones(len(points))
        near = matern52(np.asarray(points, np.float64), loo.points, loo.lengths, 1.0)
        smooth = (near @ calib + self.prior_weight * mean) / (near.sum(1) + self.prior_weight)
        return np.maximum(smooth, self.floor * mean)

    def _greedy(self, n: int, data: SearchData, already: np.ndarray) -> list[np.ndarray]:
        w = self.weights(data, self._reference) if data.covariance is not None else None
        if w is None:
            return super()._greedy(n, data, already)
        d = self.space.dim
        loo = data.leave_one_out()  # type: ignore[misc]  # checked by weights()
        worst = loo.points[np.argsort(loo.residuals**2 / np.maximum(loo.variances, 1e-300))[-16:]]
        centres = worst[self._rng.integers(0, len(worst), self.local)]
        scale = 0.5 * np.minimum(loo.lengths, 0.5)
        local = np.clip(centres + scale * self._rng.normal(size=(self.local, d)), 0.0, 1.0)
        return self._weighted_picks(n, data, already, local, w)


@dataclass
class GradientWeightedVarianceReduction(IntegratedVarianceReduction):
    """Map a surface with localized structure: reduce the variance where the predicted surface changes.

    Like :class:`CalibratedVarianceReduction`, but the weight of a reference point is read
    from the GP's *mean* rather than from its leave-one-out residuals: the squared change of
    the mean across one length scale, ``sum_i (l_i d mu / d x_i)^2`` (central differences),
    plus its posterior variance (a part of the box the GP knows nothing about may hold
    structure), never below ``floor`` times the mean weight. On a flat plain both vanish
    once a few points pinned it, so the picks go to the fronts and the excursion: the
    gradient-weighted error estimate of LOLA-Voronoi (Crombecq et al. 2011) and of
    Mo et al. 2017's gradient-enhanced criteria, with the batch machinery of
    :class:`IntegratedVarianceReduction`. The residuals are known at the observed points
    only; the mean's change is known everywhere, between the points too. Candidates are
    uniform draws plus ``local`` perturbations (half a length scale) of the reference
    points of largest weight.

    Without ``SearchData.predict`` or ``length_scales`` it is :class:`IntegratedVarianceReduction`.

    Args (besides those of :class:`IntegratedVarianceReduction`):
        floor: smallest weight, as a share of the mean weight.

    Raises:
        ValueError: for ``floor`` not positive.
    """

    local: int = 256
    floor: float = 0.05

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.floor <= 0:
            raise ValueError(f"floor must be > 0, got {self.floor}")

    def weights(self, data: SearchData, points: np.ndarray) -> np.ndarray | None:
        """The weight at ``(M, d)`` points, in the targets' units squared (``None``: no fitted mean)."""
        if data.predict is None or data.length_scales is None:
            return None
        pts = np.asarray(points, np.float64)
        m, d = pts.shape
        lengths = np.minimum(np.asarray(data.length_scales, np.float64), 1.0)
        h = 0.25 * lengths  # a step well inside a length scale, where the mean is smooth
        shifted = [pts]
        for i in range(d):
            for sign in (1.0, -1.0):
                q = pts.copy()
                q[:, i] += sign * h[i]
                shifted.append(q)
        mean, std = data.predict(np.concatenate(shifted))
        mean = np.asarray(mean, np.float64).reshape(1 + 2 * d, m)
        change = ((mean[1::2] - mean[2::2]) / (2.0 * h[:, None]) * lengths[:, None]) ** 2  # (d, M)
        w = change.sum(0) + np.asarray(std, np.float64)[:m] ** 2
        total = float(np.mean(w))
        return np.maximum(w, self.floor * total) if total > 0 else np.ones(m)

    def _greedy(self, n: int, data: SearchData, already: np.ndarray) -> list[np.ndarray]:
        w = self.weights(data, self._reference) if data.covariance is not None else None
        if w is None:
            return super()._greedy(n, data, already)
        d = self.space.dim
        lengths = np.minimum(np.asarray(data.length_scales, np.float64), 0.5)
        top = self._reference[np.argsort(w)[-32:]]
        centres = top[self._rng.integers(0, len(top), self.local)]
        local = np.clip(centres + 0.5 * lengths * self._rng.normal(size=(self.local, d)), 0.0, 1.0)
        return self._weighted_picks(n, data, already, local, w)


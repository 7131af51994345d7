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
from scipy.stats import qmc

from coupler.learners.acquisition import JointCovariance, MaxUncertainty, SearchData, _far_enough


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
            self._reference = qmc.Sobol(self.space.dim, scramble=True, seed=self.seed).random(self.reference)

    def _greedy(self, n: int, data: SearchData, already: np.ndarray) -> list[np.ndarray]:
        if data.covariance is None:
            return super()._greedy(n, data, already)
        d = self.space.dim
        cands = self._rng.uniform(size=(self.candidates, d))
        cands = cands[_far_enough(cands, data.x.reshape(-1, d), 1e-4)]
        fantasy = np.concatenate([data.pending.reshape(-1, d), already.reshape(-1, d)])
        joint = data.covariance(np.concatenate([fantasy, cands, self._reference]))
        chosen = greedy_variance_reduction(joint, len(fantasy), len(cands), n)
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


def greedy_variance_reduction(joint: JointCovariance, fantasy: int, candidates: int, n: int) -> list[int]:
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

    Returns:
        Indices into the candidates (``0 .. candidates - 1``), in the order picked.

    Raises:
        ValueError: when no reference points follow the candidates.
    """
    total = len(joint.variance())
    if total <= fantasy + candidates:
        raise ValueError(f"{total} points leave no reference points after {fantasy} fantasy and {candidates} candidates")
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
        score = (block**2).sum(1) / (np.maximum(var, 0.0) + joint.noise)
        score[chosen] = -np.inf
        best = int(np.argmax(score))
        chosen.append(best)
        col = condition(fantasy + best)
        block -= np.outer(col[c_idx], col[r_idx])
        var -= col[c_idx] ** 2
    return chosen

"""Expected improvement inside a trust region: a local search for narrow optima in many dimensions.

In 8 or more dimensions a global expected-improvement search spends its
candidates on a box whose volume is almost all far from the incumbent, and a GP
fitted over the whole box is too smooth near a narrow peak. TuRBO (Eriksson et
al. 2019, "Scalable global optimization via local Bayesian optimization",
NeurIPS) keeps a hyper-rectangle around the best point seen, its sides in
proportion to the GP's length scales (a long side where the quantity varies
slowly), doubles it after ``success_tolerance`` batches in a row that improved
on the best and halves it after ``failure_tolerance`` that did not; when it has
shrunk below ``min_length`` the search has converged there and starts over at
``initial_length`` (around the best point still: one trust region, TuRBO-1).
Candidates are drawn inside the region, each changing a random subset of
about 20 coordinates of the incumbent (all of them in up to 20 dimensions), and
scored by expected improvement.

Improvement is measured relative to the spread of the values: a batch succeeds
when its best beats the previous best by ``1e-3`` times their range. Picks of
one batch keep ``0.05`` times the region's side apart (``min_distance`` follows
the region).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coupler.learners.acquisition import ExpectedImprovement, SearchData


@dataclass
class TrustRegionExpectedImprovement(ExpectedImprovement):
    """Find the maximum: expected improvement on candidates inside a trust region around the best point.

    Args (besides those of :class:`ExpectedImprovement`):
        initial_length: side of the region (unit box) at the start and after a restart,
            before scaling by the length scales.
        min_length: below this side the region restarts.
        max_length: the region never grows beyond this side.
        success_tolerance: improving batches in a row that double the side.
        failure_tolerance: batches in a row without improvement that halve it
            (``None``: ``max(4, d / batch)``, TuRBO's choice, for the batch of the first proposal).

    Raises:
        ValueError: for lengths not ordered ``0 < min_length <= initial_length <= max_length``.
    """

    initial_length: float = 0.8
    min_length: float = 0.5**7
    max_length: float = 1.6
    success_tolerance: int = 3
    failure_tolerance: int | None = None
    length: float = field(default=0.0, init=False)
    restarts: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.min_length <= self.initial_length <= self.max_length:
            raise ValueError(
                f"need 0 < min_length <= initial_length <= max_length, got {self.min_length}, {self.initial_length}, {self.max_length}"
            )
        self.length = self.initial_length
        self._seen, self._best = 0, -math.inf
        self._successes = self._failures = 0

    def _update(self, data: SearchData, n: int) -> None:
        """Count the results that arrived since the last proposal as one batch: success or failure."""
        if len(data.y) <= self._seen:
            return
        new, old = data.y[self._seen :], data.y[: self._seen]
        self._seen = len(data.y)
        if len(old) == 0 or self._design_used < self.initial:
            self._best = float(np.max(data.y))
            return
        spread = float(np.ptp(data.y)) or 1.0
        if float(np.max(new)) > self._best + 1e-3 * spread:
            self._successes, self._failures = self._successes + 1, 0
        else:
            self._successes, self._failures = 0, self._failures + 1
        self._best = max(self._best, float(np.max(new)))
        limit = self.failure_tolerance or max(4, math.ceil(self.space.dim / max(n, 1)))
        if self._successes >= self.success_tolerance:
            self.length, self._successes = min(2.0 * self.length, self.max_length), 0
        elif self._failures >= limit:
            self.length, self._failures = self.length / 2.0, 0
        if self.length < self.min_length:
            self.length, self.restarts = self.initial_length, self.restarts + 1

    def bounds(self, data: SearchData) -> tuple[np.ndarray, np.ndarray]:
        """The region, ``(lower, upper)`` in the unit box: centred on the best point, sides
        ``length`` times the length scales over their geometric mean (equal sides without them)."""
        d = self.space.dim
        centre = data.x[int(np.argmax(data.y))].astype(np.float64)
        lengths = np.ones(d) if data.length_scales is None else np.asarray(data.length_scales, np.float64)
        weights = lengths / np.exp(np.mean(np.log(lengths)))
        half = 0.5 * self.length * weights
        return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)

    def propose(self, n: int, data: SearchData) -> np.ndarray:
        self._update(data, n)
        self.min_distance = 0.05 * self.length
        return super().propose(n, data)

    def _candidates(self, data: SearchData) -> np.ndarray:
        d = self.space.dim
        lo, hi = self.bounds(data)
        centre = data.x[int(np.argmax(data.y))].astype(np.float64)
        count = self.candidates + self.local
        inside = lo + (hi - lo) * self._rng.uniform(size=(count, d))
        # Change about 20 coordinates of the incumbent per candidate (TuRBO's perturbation mask).
        mask = self._rng.uniform(size=(count, d)) <= min(1.0, 20.0 / d)
        mask[np.arange(count), self._rng.integers(0, d, count)] = True
        return np.where(mask, inside, centre).astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        """The region and its counters besides the generator and initial design (plain data)."""
        return {**super().state_dict(), "length": self.length, "restarts": self.restarts, "seen": self._seen,
                "best": self._best, "successes": self._successes, "failures": self._failures}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` of a strategy built with the same settings."""
        super().load_state_dict(state)
        self.length, self.restarts = float(state["length"]), int(state["restarts"])
        self._seen, self._best = int(state["seen"]), float(state["best"])
        self._successes, self._failures = int(state["successes"]), int(state["failures"])

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

:class:`MultiTrustRegionExpectedImprovement` keeps ``m`` such regions at once (TuRBO-m
in the same paper), each started from a design of its own, with its own
incumbent, resizing and restarts; a region that has shrunk away restarts from a
fresh design over the whole box instead of around the best point, so the search
does not stay on the first peak it climbs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coupler.learners.acquisition import ExpectedImprovement, SearchData, far_enough, expected_improvement, latin_hypercube

MATCH = 1e-5
"""Largest unit-box coordinate difference at which an answered point is taken for a proposed one (a
steerer hands back points mapped to the parameters and back, in float32)."""


def region_bounds(centre: np.ndarray, length: float, length_scales: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """A trust region in the unit box: ``(lower, upper)`` around ``centre``, sides ``length`` times the
    length scales over their geometric mean (equal sides without them), clipped to the box."""
    centre = np.asarray(centre, np.float64)
    lengths = np.ones(len(centre)) if length_scales is None else np.asarray(length_scales, np.float64)
    half = 0.5 * length * lengths / np.exp(np.mean(np.log(lengths)))
    return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)


def region_candidates(rng: np.random.Generator, centre: np.ndarray, lower: np.ndarray, upper: np.ndarray, count: int) -> np.ndarray:
    """``count`` candidates in ``[lower, upper]``, each changing about 20 coordinates of ``centre``
    (at least one; all of them in up to 20 dimensions): TuRBO's perturbation mask."""
    d = len(centre)
    inside = lower + (upper - lower) * rng.uniform(size=(count, d))
    mask = rng.uniform(size=(count, d)) <= min(1.0, 20.0 / d)
    mask[np.arange(count), rng.integers(0, d, count)] = True
    return np.where(mask, inside, centre).astype(np.float32)


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

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.min_length <= self.initial_length <= self.max_length:
            raise ValueError(
                f"need 0 < min_length <= initial_length <= max_length, got {self.min_length}, {self.initial_length}, {self.max_length}"
            )
        self.region = TrustRegion(self.initial_length)
        self._seen = 0

    @property
    def length(self) -> float:
        """The region's side (unit box, before scaling by the length scales)."""
        return self.region.length

    @property
    def restarts(self) -> int:
        """Times the region shrank below ``min_length`` and started over."""
        return self.region.restarts

    def _update(self, data: SearchData, n: int) -> None:
        """Count the results that arrived since the last proposal as one batch: success or failure."""
        if len(data.y) <= self._seen:
            return
        new, old = data.y[self._seen :], data.y[: self._seen]
        self._seen = len(data.y)
        if len(old) == 0 or self._design_used < self.initial:
            self.region.best = float(np.max(data.y))
            return
        limit = self.failure_tolerance or max(4, math.ceil(self.space.dim / max(n, 1)))
        self.region.judge(float(np.max(new)), float(np.ptp(data.y)), success_tolerance=self.success_tolerance,
                          failure_limit=limit, max_length=self.max_length)
        if self.region.length < self.min_length:
            self.region.length, self.region.restarts = self.initial_length, self.region.restarts + 1

    def bounds(self, data: SearchData) -> tuple[np.ndarray, np.ndarray]:
        """The region, ``(lower, upper)`` in the unit box: centred on the best point, sides
        ``length`` times the length scales over their geometric mean (equal sides without them)."""
        return region_bounds(data.x[int(np.argmax(data.y))], self.length, data.length_scales)

    def propose(self, n: int, data: SearchData) -> np.ndarray:
        self._update(data, n)
        self.min_distance = 0.05 * self.length
        return super().propose(n, data)

    def _candidates(self, data: SearchData) -> np.ndarray:
        lo, hi = self.bounds(data)
        centre = data.x[int(np.argmax(data.y))].astype(np.float64)
        return region_candidates(self._rng, centre, lo, hi, self.candidates + self.local)

    def state_dict(self) -> dict[str, Any]:
        """The region and its counters besides the generator and initial design (plain data)."""
        g = self.region
        return {**super().state_dict(), "length": g.length, "restarts": g.restarts, "seen": self._seen,
                "best": g.best, "successes": g.successes, "failures": g.failures}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` of a strategy built with the same settings."""
        super().load_state_dict(state)
        self._seen = int(state["seen"])
        self.region = TrustRegion(float(state["length"]), float(state["best"]), int(state["successes"]),
                                  int(state["failures"]), int(state["restarts"]))


@dataclass
class TrustRegion:
    """One region of :class:`MultiTrustRegionExpectedImprovement`: its side, counters and fresh design.

    Attributes:
        length: side (unit box, before scaling by the length scales).
        best: the best value among the region's own answered points (``-inf``: none yet).
        successes: improving batches in a row.
        failures: batches in a row without improvement.
        restarts: times the region shrank away and started over from a fresh design.
        design: ``(k, d)`` points of the region's current design not yet proposed.
    """

    length: float
    best: float = -math.inf
    successes: int = 0
    failures: int = 0
    restarts: int = 0
    design: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))

    def judge(self, batch_best: float, spread: float, *, success_tolerance: int, failure_limit: int, max_length: float) -> None:
        """TuRBO's verdict on one batch: its best beat the region's by more than ``1e-3`` of the values' spread
        (a success) or not (a failure); ``success_tolerance`` successes in a row double the side (up to
        ``max_length``), ``failure_limit`` failures in a row halve it. The caller restarts a region whose side
        fell below its minimum.

        Args:
            batch_best: the best value of the batch's results.
            spread: the range of every value so far (0: taken as 1).
            success_tolerance, failure_limit, max_length: the rule's settings.
        """
        if batch_best > self.best + 1e-3 * (spread or 1.0):
            self.successes, self.failures = self.successes + 1, 0
        else:
            self.successes, self.failures = 0, self.failures + 1
        self.best = max(self.best, batch_best)
        if self.successes >= success_tolerance:
            self.length, self.successes = min(2.0 * self.length, max_length), 0
        elif self.failures >= failure_limit:
            self.length, self.failures = self.length / 2.0, 0


@dataclass
class MultiTrustRegionExpectedImprovement(ExpectedImprovement):
    """Find the maximum with ``regions`` trust regions at once (TuRBO-m), each restarted afresh when it collapses.

    Each region begins with a Latin hypercube of ``initial`` points over the whole
    box, owns the points it proposed, and searches around the best of them
    (expected improvement over *that* value, on candidates in its box, scored by
    the one surrogate fitted to every point); its side doubles and halves as in
    :class:`TrustRegionExpectedImprovement`, counting as a batch the results of
    its own points that arrived since the last proposal. When the side falls
    below ``min_length`` the region's points are retired (the surrogate keeps
    them) and it starts over from a fresh Latin hypercube of ``initial`` points.
    The ``n`` points of a proposal are dealt to the regions in turn (a region
    still drawing its design gives those points first; a region whose design is
    all running takes none); with nothing to deal from, uniform draws owned by
    no region.

    Args (besides those of :class:`ExpectedImprovement`, whose ``initial`` is here each region's
    design size, and whose ``candidates + local`` candidates are shared among the regions, so that a
    proposal scores as many as one search's):
        regions: how many trust regions.
        initial_length: side (unit box) at the start and after a restart, before scaling by the
            length scales.
        min_length: below this side a region restarts from a fresh design.
        max_length: a region never grows beyond this side.
        success_tolerance: improving batches in a row that double a side.
        failure_tolerance: batches in a row without improvement that halve it (``None``:
            ``max(4, d / k)`` for ``k`` points a region gets of a batch, TuRBO's choice).

    Raises:
        ValueError: for fewer than one region, fewer than one design point, or lengths not
            ordered ``0 < min_length <= initial_length <= max_length``.

    Example:
        >>> from coupler.learners.acquisition import ParameterSpace, SearchData
        >>> tr = MultiTrustRegionExpectedImprovement(ParameterSpace((0.0, 0.0), (1.0, 1.0)), regions=3, initial=4)
        >>> empty = SearchData(np.zeros((0, 2), np.float32), np.zeros(0, np.float32), np.zeros((0, 2), np.float32))
        >>> tr.propose(6, empty).shape  # two design points of each region
        (6, 2)
    """

    regions: int = 4
    initial_length: float = 0.8
    min_length: float = 0.5**7
    max_length: float = 1.6
    success_tolerance: int = 3
    failure_tolerance: int | None = None
    state: list[TrustRegion] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.regions < 1 or self.initial < 1:
            raise ValueError(f"need at least one region and one design point, got regions={self.regions}, initial={self.initial}")
        if not 0 < self.min_length <= self.initial_length <= self.max_length:
            raise ValueError(
                f"need 0 < min_length <= initial_length <= max_length, got {self.min_length}, {self.initial_length}, {self.max_length}"
            )
        self.state = [TrustRegion(self.initial_length, design=self._fresh_design()) for _ in range(self.regions)]
        # Every point proposed, its region (-1: retired, or no region's) and whether its result was judged.
        # Matched to answered points within MATCH (the unit box's round trip through the parameters is not exact).
        self._points = np.zeros((0, self.space.dim), np.float32)
        self._regions = np.zeros(0, np.int64)
        self._judged = np.zeros(0, bool)
        self._turn = 0

    def _fresh_design(self) -> np.ndarray:
        return latin_hypercube(self.initial, self.space.dim, self._rng)

    def _match(self, x: np.ndarray) -> np.ndarray:
        """Index into the proposed points of each of ``(N, d)`` points (``-1``: not proposed here)."""
        x = np.asarray(x, np.float32).reshape(-1, self.space.dim)
        if len(self._points) == 0 or len(x) == 0:
            return np.full(len(x), -1, np.int64)
        gap = np.abs(x[:, None, :] - self._points[None, :, :]).max(-1)
        nearest = np.argmin(gap, 1)
        return np.where(gap[np.arange(len(x)), nearest] <= MATCH, nearest, -1)

    def owner(self, x: np.ndarray) -> np.ndarray:
        """The region each of ``(N, d)`` unit-box points belongs to (``-1``: retired, or proposed by none)."""
        j = self._match(x)
        return np.where(j >= 0, self._regions[np.maximum(j, 0)] if len(self._regions) else -1, -1)

    def _update(self, data: SearchData, per_region: int) -> None:
        """Judge each region on its own results that arrived since the last proposal; restart collapsed ones."""
        spread = float(np.ptp(data.y)) if len(data.y) else 1.0
        new: dict[int, list[float]] = {}
        for j, y in zip(self._match(data.x), np.asarray(data.y, np.float64)):
            if j >= 0 and self._regions[j] >= 0 and not self._judged[j]:
                self._judged[j] = True
                new.setdefault(int(self._regions[j]), []).append(float(y))
        limit = self.failure_tolerance or max(4, math.ceil(self.space.dim / max(per_region, 1)))
        for r, values in new.items():
            region = self.state[r]
            if region.best == -math.inf or len(region.design):  # still its design: no verdict
                region.best = max(region.best, max(values))
                continue
            region.judge(max(values), spread, success_tolerance=self.success_tolerance, failure_limit=limit, max_length=self.max_length)
            if region.length < self.min_length:
                self._restart(r)

    def _restart(self, r: int) -> None:
        """Retire region ``r``'s points and give it a fresh design over the whole box."""
        self._regions[self._regions == r] = -1
        self.state[r] = TrustRegion(self.initial_length, restarts=self.state[r].restarts + 1, design=self._fresh_design())

    def bounds_of(self, region: int, data: SearchData) -> tuple[np.ndarray, np.ndarray] | None:
        """Region ``region``'s box, ``(lower, upper)`` in the unit box, around the best of its answered
        points (``None``: it has none yet)."""
        return self._box(region, data, self.owner(data.x))

    def _box(self, region: int, data: SearchData, owners: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        owned = np.flatnonzero(owners == region)
        if len(owned) == 0:
            return None
        centre = data.x[owned[int(np.argmax(data.y[owned]))]]
        return region_bounds(centre, self.state[region].length, data.length_scales)

    def propose(self, n: int, data: SearchData) -> np.ndarray:
        """The next ``n`` unit-box points: each region's design points first, then each searching region's
        expected-improvement picks, dealt in turn (after judging the results that arrived)."""
        self._update(data, max(1, n // self.regions))
        order = [(self._turn + i) % self.regions for i in range(self.regions)]
        self._turn = (self._turn + n) % self.regions
        owners = self.owner(data.x)  # once per proposal: matching costs O(N K d)
        searching = [r for r in order if not len(self.state[r].design) and np.any(owners == r) and data.predict is not None]
        quota = dict.fromkeys(order, 0)
        left = n
        while left and any(quota[r] < len(self.state[r].design) for r in order):  # design points first, in turn
            for r in order:
                if left and quota[r] < len(self.state[r].design):
                    quota[r], left = quota[r] + 1, left - 1
        for i in range(left if searching else 0):
            quota[searching[i % len(searching)]] += 1
        picks: list[np.ndarray] = []
        taken = np.asarray(data.pending, np.float32).reshape(-1, self.space.dim)
        for r in order:
            if quota[r] == 0:
                continue
            region = self.state[r]
            if len(region.design):
                mine, region.design = region.design[: quota[r]], region.design[quota[r] :]
            else:
                mine = self._search(r, quota[r], data, taken, owners)
            mine = np.asarray(mine, np.float32).reshape(-1, self.space.dim)
            self._points = np.concatenate([self._points, mine])
            self._regions = np.concatenate([self._regions, np.full(len(mine), r, np.int64)])
            self._judged = np.concatenate([self._judged, np.zeros(len(mine), bool)])
            picks.append(mine)
            taken = np.concatenate([taken, mine])
        out = np.concatenate(picks) if picks else np.zeros((0, self.space.dim), np.float32)
        if len(out) < n:  # nothing to deal from (designs all running): space-filling draws of no region
            out = np.concatenate([out, self._rng.uniform(size=(n - len(out), self.space.dim)).astype(np.float32)])
        return out

    def _search(self, r: int, k: int, data: SearchData, taken: np.ndarray, owners: np.ndarray) -> np.ndarray:
        """``k`` points of region ``r``: the greedy best of expected improvement over the region's best value."""
        assert data.predict is not None
        box = self._box(r, data, owners)
        assert box is not None
        lo, hi = box
        owned = np.flatnonzero(owners == r)
        centre = data.x[owned[int(np.argmax(data.y[owned]))]].astype(np.float64)
        # The regions share one proposal's candidates: steering costs what one search's does, whatever the regions.
        count = max(k, -(-(self.candidates + self.local) // self.regions))
        cands = region_candidates(self._rng, centre, lo, hi, count)
        mean, std = data.predict(cands)
        score = expected_improvement(mean, std, self.state[r].best, self.xi)
        score[~far_enough(cands, np.asarray(data.x, np.float32), 1e-4)] = -np.inf
        radius = 0.05 * self.state[r].length
        out: list[np.ndarray] = []
        for i in np.argsort(-score):
            if len(out) == k or not np.isfinite(score[i]):
                break
            if far_enough(cands[i : i + 1], taken, radius)[0]:
                out.append(cands[i])
                taken = np.concatenate([taken, cands[i : i + 1]])
        while len(out) < k:  # everything scored is crowded: uniform draws in the region
            out.append((lo + (hi - lo) * self._rng.uniform(size=self.space.dim)).astype(np.float32))
        return np.asarray(out, np.float32)

    def state_dict(self) -> dict[str, Any]:
        """Regions, owners and counters besides the generator (plain data)."""
        return {**super().state_dict(), "turn": self._turn, "points": self._points.copy(), "owner": self._regions.copy(),
                "judged": self._judged.copy(),
                "regions": [{"length": g.length, "best": g.best, "successes": g.successes, "failures": g.failures,
                             "restarts": g.restarts, "design": g.design.copy()} for g in self.state]}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` of a strategy built with the same settings.

        Raises:
            ValueError: for another number of regions.
        """
        if len(state["regions"]) != self.regions:
            raise ValueError(f"expected {self.regions} regions, got {len(state['regions'])}")
        super().load_state_dict(state)
        self._turn = int(state["turn"])
        self._points = np.asarray(state["points"], np.float32).reshape(-1, self.space.dim)
        self._regions = np.asarray(state["owner"], np.int64).reshape(-1)
        self._judged = np.asarray(state["judged"], bool).reshape(-1)
        self.state = [TrustRegion(float(g["length"]), float(g["best"]), int(g["successes"]), int(g["failures"]), int(g["restarts"]),
                                  np.asarray(g["design"], np.float32).reshape(-1, self.space.dim)) for g in state["regions"]]  # fmt: skip

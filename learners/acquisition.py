"""Where to simulate next: acquisition strategies over a box of parameters.

Every strategy answers one question through the same method, ``propose(n,
data)``: the next ``n`` points to simulate, in the unit box, given what has been
observed and what is still running (:class:`SearchData`). The model-free sweeps
(:class:`GridSweep`, :class:`RandomSweep`) ignore the data and the model; the
model-guided ones score candidates with a surrogate's mean and standard
deviation (e.g. a :class:`~coupler.learners.ensemble.DeepEnsemble`):

| strategy | score | for |
|---|---|---|
| :class:`MaxUncertainty` | ``std`` | mapping a response surface |
| :class:`ExpectedGlobalFit` | ``(mean - y(nearest))^2 + std^2`` (Lam 2008) | mapping a surface with localized features |
| :class:`ExpectedImprovement` | ``E[max(y - best - xi, 0)]`` (Jones et al. 1998) | finding the maximum |
| :class:`UpperConfidenceBound` | ``mean + beta * std`` (Srinivas et al. 2010) | finding the maximum |

A batch is chosen greedily: the best-scoring candidate, then the best one
farther than ``min_distance`` from every point picked or still running, and so
on -- so a batch proposed while earlier ones run does not duplicate them.
Candidates are uniform draws plus Gaussian perturbations of the best points
observed so far (local refinement near a maximum).

``pointless(pending, data)`` says which running points a strategy no longer
needs (their result cannot change its answer); a steerer may cancel them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

import numpy as np

if TYPE_CHECKING:
    from coupler.learners.gp import LeaveOneOut

Predictor = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
"""Maps ``(N, d)`` unit-box points to ``(mean, std)``, each ``(N,)``."""


@dataclass(frozen=True)
class ParameterSpace:
    """An axis-aligned box of parameters, and its map to the unit box.

    Args:
        lower: lower bound of each parameter.
        upper: upper bound of each parameter.
        names: a name per parameter (for tables and plots).

    Raises:
        ValueError: for mismatched lengths or an empty interval.
    """

    lower: tuple[float, ...]
    upper: tuple[float, ...]
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        names = self.names or tuple(f"x{i}" for i in range(len(self.lower)))
        object.__setattr__(self, "names", names)
        if not (len(self.lower) == len(self.upper) == len(names)) or not self.lower:
            raise ValueError(f"lower, upper and names need one entry per parameter, got {self.lower}, {self.upper}, {names}")
        if any(not lo < hi for lo, hi in zip(self.lower, self.upper)):
            raise ValueError(f"every lower bound must be below its upper bound, got {self.lower} and {self.upper}")

    @property
    def dim(self) -> int:
        """Number of parameters."""
        return len(self.lower)

    def to_unit(self, x: np.ndarray) -> np.ndarray:
        """Parameters ``(N, d)`` to the unit box."""
        lo, hi = np.asarray(self.lower), np.asarray(self.upper)
        return ((np.asarray(x, np.float64) - lo) / (hi - lo)).astype(np.float32)

    def from_unit(self, u: np.ndarray) -> np.ndarray:
        """Unit-box points ``(N, d)`` to parameters."""
        lo, hi = np.asarray(self.lower), np.asarray(self.upper)
        return (lo + np.asarray(u, np.float64) * (hi - lo)).astype(np.float32)

    def grid(self, points_per_axis: int) -> np.ndarray:
        """The ``points_per_axis ** d`` nodes of a regular grid (corners included), unit box, C order.

        Raises:
            ValueError: for fewer than 2 points per axis.
        """
        if points_per_axis < 2:
            raise ValueError(f"a grid needs >= 2 points per axis, got {points_per_axis}")
        axis = np.linspace(0.0, 1.0, points_per_axis)
        mesh = np.meshgrid(*([axis] * self.dim), indexing="ij")
        return np.stack(mesh, -1).reshape(-1, self.dim).astype(np.float32)


class JointCovariance(Protocol):
    """A surrogate's posterior covariance among a fixed set of points (e.g.
    :class:`~coupler.learners.gp.PosteriorCovariance`)."""

    noise: float

    def __call__(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """The covariance block between the points indexed by ``rows`` and by ``cols``."""
        ...

    def variance(self) -> np.ndarray:
        """The posterior variance at every point."""
        ...


@dataclass
class SearchData:
    """What a strategy decides from (unit-box coordinates).

    Attributes:
        x: ``(N, d)`` points with a result.
        y: ``(N,)`` their quantities of interest.
        pending: ``(P, d)`` points proposed and not yet answered.
        predict: the surrogate (``None`` before it has been fitted).
        covariance: the surrogate's joint posterior over given ``(M, d)`` points, for
            design criteria (``None``: not fitted, or a surrogate without one).
        leave_one_out: the surrogate's leave-one-out residuals at the points it was fitted
            to (``None``: not fitted, or a surrogate without them).
        length_scales: the surrogate's length scale per input, unit-box units (``None``:
            not fitted, or a surrogate without them).
    """

    x: np.ndarray
    y: np.ndarray
    pending: np.ndarray
    predict: Predictor | None = None
    covariance: Callable[[np.ndarray], JointCovariance] | None = None
    leave_one_out: Callable[[], LeaveOneOut] | None = None
    length_scales: np.ndarray | None = None


class Strategy(Protocol):
    """What every acquisition strategy offers."""

    uses_model: bool

    def propose(self, n: int, data: SearchData) -> np.ndarray:
        """The next ``n`` points (fewer when a finite sweep runs out), ``(n, d)`` in the unit box."""
        ...

    def pointless(self, pending: np.ndarray, data: SearchData) -> np.ndarray:
        """A boolean mask over ``pending``: points whose result is no longer needed."""
        ...


def expected_improvement(mean: np.ndarray, std: np.ndarray, best: float, xi: float = 0.0) -> np.ndarray:
    """Closed-form expected improvement over ``best`` of a Gaussian ``N(mean, std^2)`` (maximisation).

    ``EI = (mean - best - xi) Phi(z) + std phi(z)`` with ``z = (mean - best - xi) / std``;
    where ``std = 0`` it is ``max(mean - best - xi, 0)``.
    """
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    gain = mean - best - xi
    safe = np.maximum(std, 1e-12)
    z = gain / safe
    cdf = 0.5 * (1.0 + np.vectorize(math.erf, otypes=[np.float64])(z / math.sqrt(2.0)))
    pdf = np.exp(-0.5 * z**2) / math.sqrt(2.0 * math.pi)
    return np.where(std > 1e-12, gain * cdf + safe * pdf, np.maximum(gain, 0.0))


def upper_confidence_bound(mean: np.ndarray, std: np.ndarray, beta: float = 2.0) -> np.ndarray:
    """``mean + beta * std``: optimism in the face of uncertainty."""
    return np.asarray(mean) + beta * np.asarray(std)


def far_enough(cands: np.ndarray, taken: np.ndarray, radius: float) -> np.ndarray:
    """Which candidates lie at least ``radius`` (Euclidean, unit box) from every point of ``taken``.

    Args:
        cands: ``(n, d)`` candidate points.
        taken: ``(m, d)`` points already run or proposed (``m`` may be 0).
        radius: the smallest distance kept; ``<= 0`` keeps every candidate.

    Returns:
        ``(n,)`` booleans.
    """
    if len(taken) == 0 or radius <= 0:
        return np.ones(len(cands), bool)
    d2 = ((cands[:, None, :] - taken[None, :, :]) ** 2).sum(-1)
    return d2.min(1) >= radius**2


def rng_state(rng: np.random.Generator) -> str:
    """A generator's state as a JSON string: plain data for a checkpoint (its 128-bit
    integers would not fit the 64-bit integers of msgpack)."""
    return json.dumps(rng.bit_generator.state)


def set_rng_state(rng: np.random.Generator, state: str) -> None:
    """Put ``state`` from :func:`rng_state` into ``rng``.

    Raises:
        ValueError: if ``state`` is of another kind of bit generator.
    """
    st = json.loads(state)
    kind = type(rng.bit_generator).__name__
    if st.get("bit_generator") != kind:
        raise ValueError(f"expected the state of a {kind} bit generator, got {st.get('bit_generator')!r}")
    rng.bit_generator.state = st


def latin_hypercube(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` points of a random Latin hypercube in the unit box (one per row and column stratum)."""
    strata = np.stack([rng.permutation(n) for _ in range(dim)], 1)
    return ((strata + rng.uniform(size=(n, dim))) / n).astype(np.float32)


@dataclass
class GridSweep:
    """A regular grid, visited in order (model-free baseline).

    Args:
        space: the parameter box.
        points_per_axis: grid nodes per parameter.
    """

    space: ParameterSpace
    points_per_axis: int
    uses_model: bool = field(default=False, init=False)
    _next: int = field(default=0, init=False)

    def propose(self, n: int, data: SearchData) -> np.ndarray:
        nodes = self.space.grid(self.points_per_axis)
        out = nodes[self._next : self._next + n]
        self._next += len(out)
        return out

    def pointless(self, pending: np.ndarray, data: SearchData) -> np.ndarray:
        return np.zeros(len(pending), bool)

    def state_dict(self) -> dict[str, int]:
        """How far the sweep got (plain data for a checkpoint)."""
        return {"next": self._next}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from :meth:`state_dict` of a sweep of the same grid."""
        self._next = int(state["next"])


@dataclass
class RandomSweep:
    """Uniform random points (model-free baseline).

    Args:
        space: the parameter box.
        seed: seed of the draws.
    """

    space: ParameterSpace
    seed: int = 0
    uses_model: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def propose(self, n: int, data: SearchData) -> np.ndarray:
        return self._rng.uniform(size=(n, self.space.dim)).astype(np.float32)

    def pointless(self, pending: np.ndarray, data: SearchData) -> np.ndarray:
        return np.zeros(len(pending), bool)

    def state_dict(self) -> dict[str, str]:
        """The generator's state (plain data for a checkpoint)."""
        return {"rng": rng_state(self._rng)}

    def load_state_dict(self, state: dict[str, str]) -> None:
        """Continue the draws from :meth:`state_dict` of another instance."""
        set_rng_state(self._rng, state["rng"])


@dataclass
class _ModelGuided:
    """Shared machinery: an initial Latin hypercube, then greedy batches of the best score.

    Args:
        space: the parameter box.
        initial: points proposed (as a Latin hypercube) before the model is used.
        candidates: uniform candidates scored per proposal.
        local: Gaussian perturbations (``local_scale`` in unit coordinates) of the
            best observed points added to the candidates.
        min_distance: smallest unit-box distance between a proposed point and any
            point picked in the same batch or still pending.
        spread: also keep proposals ``spread / sqrt(N)`` apart from every point
            observed, pending or picked (``N`` of them): a radius that shrinks as
            the design fills, so a region whose value stays uncertain however
            densely it is sampled (a chaotic edge) cannot absorb every proposal.
            0 turns it off.
        seed: seed of the candidate draws.
    """

    space: ParameterSpace
    initial: int = 12
    candidates: int = 2048
    local: int = 512
    local_scale: float = 0.03
    min_distance: float = 0.02
    spread: float = 0.0
    seed: int = 0
    uses_model: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)
        self._design: np.ndarray | None = None
        self._design_used = 0

    def score(self, mean: np.ndarray, std: np.ndarray, data: SearchData) -> np.ndarray:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Generator state and initial design (plain data for a checkpoint)."""
        design = np.zeros((0, self.space.dim), np.float32) if self._design is None else self._design.copy()
        return {"rng": rng_state(self._rng), "design": design, "design_used": self._design_used}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` of a strategy built with the same settings.

        Raises:
            ValueError: for a design of another dimension.
        """
        design = np.asarray(state["design"], np.float32)
        if design.ndim != 2 or design.shape[1] != self.space.dim:
            raise ValueError(f"expected an initial design of shape (n, {self.space.dim}), got {design.shape}")
        set_rng_state(self._rng, state["rng"])
        self._design = design if len(design) else None
        self._design_used = int(state["design_used"])

    def propose(self, n: int, data: SearchData) -> np.ndarray:
        out: list[np.ndarray] = []
        if self._design_used < self.initial:
            if self._design is None:
                self._design = latin_hypercube(self.initial, self.space.dim, self._rng)
            take = self._design[self._design_used : self._design_used + n]
            self._design_used += len(take)
            out.extend(take)
        if len(out) < n and data.predict is not None and len(data.y) > 0:
            out.extend(self._greedy(n - len(out), data, np.array(out).reshape(-1, self.space.dim)))
        elif len(out) < n:  # no model yet (nothing observed): more space-filling points
            out.extend(self._rng.uniform(size=(n - len(out), self.space.dim)))
        return np.asarray(out, np.float32).reshape(-1, self.space.dim)

    def _candidates(self, data: SearchData) -> np.ndarray:
        d = self.space.dim
        uniform = self._rng.uniform(size=(self.candidates, d))
        top = data.x[np.argsort(data.y)[-8:]]
        centres = top[self._rng.integers(0, len(top), self.local)]
        local = np.clip(centres + self.local_scale * self._rng.normal(size=(self.local, d)), 0.0, 1.0)
        return np.concatenate([uniform, local]).astype(np.float32)

    def _greedy(self, n: int, data: SearchData, already: np.ndarray) -> list[np.ndarray]:
        assert data.predict is not None
        cands = self._candidates(data)
        mean, std = data.predict(cands)
        score = np.asarray(self.score(mean, std, data), np.float64)
        # Never re-propose a point already answered.
        score[~far_enough(cands, data.x, 1e-4)] = -np.inf
        taken = np.concatenate([data.pending.reshape(-1, self.space.dim), already])
        every = np.concatenate([data.x.reshape(-1, self.space.dim), taken])
        radius = self.spread / np.sqrt(len(every) + n) if self.spread > 0 else 0.0
        if radius > 0:
            score[~far_enough(cands, every, radius)] = -np.inf
        picks: list[np.ndarray] = []
        order = np.argsort(-score)
        for i in order:
            if len(picks) == n or not np.isfinite(score[i]):
                break
            if far_enough(cands[i : i + 1], taken, max(self.min_distance, radius))[0]:
                picks.append(cands[i])
                taken = np.concatenate([taken, cands[i : i + 1]])
        if len(picks) < n:  # everything scored is crowded: fall back to space-filling draws
            picks.extend(self._rng.uniform(size=(n - len(picks), self.space.dim)))
        return picks


@dataclass
class MaxUncertainty(_ModelGuided):
    """Map a response surface: simulate where the ensemble disagrees most.

    A pending point is pointless once the model is already sure there
    (``std < settle_std``, in the quantity's units; 0 never cancels). Proposals
    keep ``spread / sqrt(N)`` apart (see ``spread``): uncertainty alone piles
    points onto edges where the quantity jumps irregularly.
    """

    spread: float = 0.5
    settle_std: float = 0.0

    def score(self, mean: np.ndarray, std: np.ndarray, data: SearchData) -> np.ndarray:
        return np.asarray(std)

    def pointless(self, pending: np.ndarray, data: SearchData) -> np.ndarray:
        if data.predict is None or len(pending) == 0 or self.settle_std <= 0:
            return np.zeros(len(pending), bool)
        _, std = data.predict(pending)
        return np.asarray(std) < self.settle_std


@dataclass
class ExpectedGlobalFit(_ModelGuided):
    """Map a surface with localized structure: the expected improvement for global fit (EIGF).

    Lam (2008), "Sequential adaptive designs in computer experiments for response
    surface model fit" (PhD thesis, Ohio State), sec. 3: the score of ``x`` is
    ``(mean(x) - y(nearest))^2 + std(x)^2``, where ``y(nearest)`` is the value
    observed at the observed point nearest ``x``. The first term is large where
    the surrogate predicts a change from what was seen nearby (a front, a ridge,
    the edge of a hot spot), the second where it knows little; unlike the
    variance of a stationary GP, the score looks at the values, so a design
    concentrates where the surface changes and thins out over flat parts.

    A batch: pending points (and each pick) count as observed with the
    surrogate's mean there (the kriging believer), so the next pick's nearest
    value is theirs; proposals keep ``spread / sqrt(N)`` apart, as
    :class:`MaxUncertainty`'s do. Candidates are uniform draws plus ``local``
    perturbations of the observed points whose value differs most from their
    nearest neighbour's (where the surface changes fast).
    """

    spread: float = 0.5

    def score(self, mean: np.ndarray, std: np.ndarray, data: SearchData) -> np.ndarray:
        raise TypeError("ExpectedGlobalFit scores in _greedy (it needs the candidates' nearest points)")

    def pointless(self, pending: np.ndarray, data: SearchData) -> np.ndarray:
        return np.zeros(len(pending), bool)

    def _candidates(self, data: SearchData) -> np.ndarray:
        d = self.space.dim
        x = data.x.reshape(-1, d)
        uniform = self._rng.uniform(size=(self.candidates, d))
        if len(x) < 2 or self.local == 0:
            return uniform.astype(np.float32)
        jump = np.abs(data.y - data.y[_nearest(x, x, exclude_self=True)])
        top = x[np.argsort(jump)[-16:]]
        centres = top[self._rng.integers(0, len(top), self.local)]
        scale = self.local_scale if data.length_scales is None else 0.5 * np.minimum(data.length_scales, 0.5)
        local = np.clip(centres + scale * self._rng.normal(size=(self.local, d)), 0.0, 1.0)
        return np.concatenate([uniform, local]).astype(np.float32)

    def _greedy(self, n: int, data: SearchData, already: np.ndarray) -> list[np.ndarray]:
        assert data.predict is not None
        d = self.space.dim
        cands = self._candidates(data)
        mean, std = (np.asarray(a, np.float64) for a in data.predict(cands))
        taken = np.concatenate([data.pending.reshape(-1, d), already.reshape(-1, d)])
        known_x = np.concatenate([data.x.reshape(-1, d), taken])
        believed = np.asarray(data.predict(taken)[0], np.float64) if len(taken) else np.zeros(0)
        known_y = np.concatenate([np.asarray(data.y, np.float64), believed])
        radius = max(self.min_distance, self.spread / np.sqrt(len(known_x) + n) if self.spread > 0 else 0.0)
        ok = far_enough(cands, data.x.reshape(-1, d), 1e-4)
        picks: list[np.ndarray] = []
        for _ in range(n):
            ok &= far_enough(cands, known_x[len(data.x):], radius) if len(known_x) > len(data.x) else ok
            if not ok.any():
                break
            score = (mean - known_y[_nearest(cands, known_x)]) ** 2 + std**2
            score[~ok] = -np.inf
            best = int(np.argmax(score))
            picks.append(cands[best])
            known_x = np.concatenate([known_x, cands[best : best + 1]])
            known_y = np.append(known_y, mean[best])  # the believer: the pick's value is the mean there
        if len(picks) < n:
            picks.extend(self._rng.uniform(size=(n - len(picks), d)))
        return picks


def _nearest(a: np.ndarray, b: np.ndarray, exclude_self: bool = False) -> np.ndarray:
    """Index into ``b`` of the point nearest each row of ``a`` (``exclude_self``: ``a`` is ``b``, skip the diagonal)."""
    d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    if exclude_self:
        np.fill_diagonal(d2, np.inf)
    return np.argmin(d2, 1)


@dataclass
class _Maximiser(_ModelGuided):
    """Optimisation strategies: a pending point is pointless when even an optimistic
    bound ``mean + cancel_beta * std`` there is below the best value observed."""

    cancel_beta: float = 3.0

    def pointless(self, pending: np.ndarray, data: SearchData) -> np.ndarray:
        if data.predict is None or len(pending) == 0 or len(data.y) == 0:
            return np.zeros(len(pending), bool)
        mean, std = data.predict(pending)
        return upper_confidence_bound(mean, std, self.cancel_beta) < float(np.max(data.y))


@dataclass
class ExpectedImprovement(_Maximiser):
    """Find the maximum: expected improvement over the best observed value (margin ``xi``)."""

    xi: float = 0.0

    def score(self, mean: np.ndarray, std: np.ndarray, data: SearchData) -> np.ndarray:
        return expected_improvement(mean, std, float(np.max(data.y)), self.xi)


@dataclass
class UpperConfidenceBound(_Maximiser):
    """Find the maximum: the largest ``mean + beta * std``."""

    beta: float = 2.0

    def score(self, mean: np.ndarray, std: np.ndarray, data: SearchData) -> np.ndarray:
        return upper_confidence_bound(mean, std, self.beta)

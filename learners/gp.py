"""A Gaussian-process surrogate: the standard model of Bayesian optimisation in a few dimensions.

A GP on standardised targets with a constant prior mean fitted by generalised
least squares (ordinary kriging; ``GPConfig.trend``), a Matérn 5/2 kernel and one length
scale per input (automatic relevance determination; Rasmussen & Williams 2006,
"Gaussian Processes for Machine Learning", eqs. 2.25-2.26 for the posterior,
4.17 for the kernel, 5.8 for the log marginal likelihood). Its hyperparameters
(length scales, signal and noise variance) maximise the log marginal
likelihood (L-BFGS-B on their logarithms, within bounds).

Refits keep up with the data: hyperparameters are chosen again only once the
data grew by ``reoptimise_growth`` (20 %) since the last choice, and then
warm-started from it and from fixed fresh starts (``fresh_lengths``; the best
optimum wins: a warm start alone can stay in a poor optimum for good);
the fits in between only condition on the new points, extending the last
Cholesky factor when the points only grew (``O(N^2 k)`` for ``k`` new points;
milliseconds for the hundreds of points a steered study gathers).

It offers the surrogate interface the :class:`~coupler.learners.steerer.Steerer`
uses (``fit``, ``predict``, ``state_dict``, ``load_state_dict``), like
:class:`~coupler.learners.ensemble.DeepEnsemble`; inputs are in the unit box.

Example:
    >>> gp = GaussianProcess(GPConfig(), dim=2)
    >>> x = np.random.default_rng(0).uniform(size=(20, 2))
    >>> _ = gp.fit(x, np.sin(3 * x[:, 0]))
    >>> mean, std = gp.predict(x[:3])
    >>> mean.shape, bool(np.all(std < 0.1))
    ((3,), True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
from scipy.linalg import cho_factor, cho_solve, solve_triangular
from scipy.linalg.lapack import dpotrf, dpotri, dpotrs
from scipy.optimize import minimize

from coupler.learners.output_warping import LOG_OFFSETS, LogWarp, backward, forward, log_jacobian, log_warp

_SQRT5 = math.sqrt(5.0)


@dataclass(frozen=True)
class GPConfig:
    """Hyperparameter bounds and fit settings of a :class:`GaussianProcess`.

    Attributes:
        length_bounds: range of every length scale (unit-box units).
        noise_bounds: range of the noise variance (standardised targets).
        signal_bounds: range of the signal variance (standardised targets).
        max_iter: L-BFGS-B iterations per fit.
        fresh_starts_until: below this many points, each choice also starts from every
            length scale of ``fresh_lengths`` (signal 1, noise 1e-3) besides the last
            choice; the best optimum wins. Above it, the fresh starts are tried only when
            the warm start's optimum is degenerate (length scales far below the spacing of
            the data, which it explains as uncorrelated). A warm start alone can stay in
            a poor optimum once it fell in: on an 8-parameter heat map at 80 points, RMS
            error 17 % where the default start's optimum gives 6 %; on the 4-parameter
            hot-track map, a warm start that chose length 10 for an input that matters
            kept it from 100 to 600 Sobol points (RMS error 19-24 %, where a fresh
            choice gives 13 % to 5.4 % at a likelihood far higher). Hence the default:
            every choice, to the GP's range of about a thousand points.
        fresh_lengths: the length scale (all inputs alike) of each fresh start; one start
            alone lands in the degenerate optimum on some data (0.3 did on the hot track
            at 300 points, 0.1 did not), so there are two.
        median_mean: centre the targets on their median, not their mean (with ``trend="none"``,
            the GP reverts to it away from the data; a fitted trend re-estimates the level). For a surface flat over most of the box with a localized
            excursion, the median is the flat level while the mean is pulled towards the
            excursion, the more so the more a design concentrates there.
        trend: the GP's prior mean, fitted by generalised least squares and profiled out of the
            likelihood (universal kriging; Santner, Williams & Notz 2003, sec. 3.3): ``"none"``
            (zero, on targets centred as ``median_mean`` says), ``"constant"`` (ordinary kriging,
            the default, as DiceKriging's) or ``"linear"`` (``b0 + b . x``). The GLS estimate weighs points by how independent they
            are, so a cluster of points counts about as one: a design concentrated on a localized
            excursion no longer drags the level the GP reverts to far from the data towards it,
            as the plain mean of the targets does.
        reoptimise_growth: choose hyperparameters again only once the data grew by this
            share since they were last chosen; fits in between keep them and only
            condition on the new data (one Cholesky factorisation). 0 re-chooses every fit.
        output_warp: ``"none"``, ``"log"`` or ``"auto"``. ``"log"``: fit the GP to a shifted logarithm
            of the targets, its offset (or no warping) chosen with the hyperparameters by the marginal
            likelihood of the original targets (:mod:`~coupler.learners.output_warping`); predictions
            are the log-normal's median and standard deviation. For surfaces flat but for an excursion
            whose sides fall off like ``exp(-d^2)``, which the logarithm makes smooth. ``"auto"``: the
            same choice, the unwarped GP optimised at every choice too, and the warping dropped for it
            when its leave-one-out RMS error in the targets' units exceeds the unwarped GP's by
            ``warp_veto`` (the likelihood of the original targets rewards resolving a floor of
            near-zero values, which a map's RMS error does not see).
        full_search_growth: with the log warping, every offset is tried (each with the fresh
            starts too) at the first choice and once the data grew by this factor since the last
            such full search; the choices in between warm-start the last offset and its two
            neighbours only (3 optimisations rather than 24). 1 searches in full at every choice.
        surprise: a light warped choice whose best likelihood per point (original targets) is
            lower than the last choice's by more than this (nats) searches in full at once: the
            data no longer fit the model chosen, as when a warm start sits in a poor optimum. The
            likelihood per point does climb as a design gathers on an excursion (on the 8-D hot
            track, by up to 0.5 nats per choice of 20 % more points), hence a whole nat.
        fresh_offsets: a full search warm-starts every offset, then starts this many of the
            best afresh (from each of ``fresh_lengths``).
        warp_veto: with ``output_warp="auto"``, the factor by which the warped GP's leave-one-out
            RMS error (targets' units, median prediction) may exceed the unwarped GP's before the
            unwarped GP is kept. On the 4-D Gray-Scott amplitude (80 and 200 Sobol points) the
            likelihood prefers the log by 2.7 nats per point while its leave-one-out error is 2.3 and
            3.5 times the unwarped GP's (its map's error 2.3 and 3.2 times); on the hot track's
            steered designs (4- and 8-D, 32 to 64 points) it is 0.8 to 1.4 but once (2.8).
            The eighth pass of docs/modulation.md measures 1.5, 1.2 and 1.0.
    """

    length_bounds: tuple[float, float] = (0.01, 10.0)
    noise_bounds: tuple[float, float] = (1e-6, 0.5)
    signal_bounds: tuple[float, float] = (0.05, 20.0)
    max_iter: int = 60
    fresh_starts_until: int = 4096
    fresh_lengths: tuple[float, ...] = (0.3, 0.1)
    median_mean: bool = False
    trend: Literal["none", "constant", "linear"] = "constant"
    reoptimise_growth: float = 0.2
    output_warp: Literal["none", "log", "auto"] = "none"
    full_search_growth: float = 2.0
    surprise: float = 1.0
    fresh_offsets: int = 3
    warp_veto: float = 1.5

    def __post_init__(self) -> None:
        for name in ("length_bounds", "noise_bounds", "signal_bounds"):
            lo, hi = getattr(self, name)
            if not 0 < lo < hi:
                raise ValueError(f"{name} must satisfy 0 < low < high, got {(lo, hi)}")
        if not all(length > 0 for length in self.fresh_lengths):
            raise ValueError(f"fresh_lengths must be positive, got {self.fresh_lengths}")
        if self.trend not in ("none", "constant", "linear"):
            raise ValueError(f"trend must be 'none', 'constant' or 'linear', got {self.trend!r}")
        if self.output_warp not in ("none", "log", "auto"):
            raise ValueError(f"output_warp must be 'none', 'log' or 'auto', got {self.output_warp!r}")
        if not self.warp_veto >= 1:
            raise ValueError(f"warp_veto must be >= 1, got {self.warp_veto}")
        if self.full_search_growth < 1 or self.surprise < 0 or self.fresh_offsets < 1:
            raise ValueError(f"full_search_growth must be >= 1, surprise >= 0 and fresh_offsets >= 1, got "
                             f"{self.full_search_growth}, {self.surprise}, {self.fresh_offsets}")
        if self.max_iter < 1 or self.reoptimise_growth < 0:
            raise ValueError(f"max_iter must be >= 1 and reoptimise_growth >= 0, got {self.max_iter}, {self.reoptimise_growth}")


def matern52(a: np.ndarray, b: np.ndarray, lengths: np.ndarray, signal: float) -> np.ndarray:
    """Matérn 5/2 covariance ``s (1 + sqrt5 r + 5 r^2 / 3) exp(-sqrt5 r)``, ``r`` the length-scaled distance.

    ``r^2 = |a|^2 + |b|^2 - 2 a.b`` on the scaled inputs: one matrix product rather than an
    ``(N, M, d)`` array of differences (six times faster for a thousand candidates against
    hundreds of points); rounding can make it slightly negative, hence the clip.
    """
    sa, sb = a / lengths, b / lengths
    r2 = np.maximum((sa * sa).sum(1)[:, None] + (sb * sb).sum(1)[None, :] - 2.0 * sa @ sb.T, 0.0)
    r = np.sqrt(r2)
    return signal * (1.0 + _SQRT5 * r + 5.0 / 3.0 * r2) * np.exp(-_SQRT5 * r)


def _squared_differences(x: np.ndarray) -> np.ndarray:
    """``(N^2, dim)``: ``(x_i - x_j)^2`` along each input, row ``i N + j``."""
    return ((x[:, None, :] - x[None, :, :]) ** 2).reshape(-1, x.shape[1])


class LeaveOneOut(NamedTuple):
    """A GP's leave-one-out predictions at the points it is conditioned on (targets' units).

    Attributes:
        points: ``(N, dim)`` the points, in the order fitted.
        residuals: ``(N,)`` target minus the mean predicted there without that point.
        variances: ``(N,)`` the predictive variance there without that point.
        lengths: the length scales (to measure distances as the kernel does).
    """

    points: np.ndarray
    residuals: np.ndarray
    variances: np.ndarray
    lengths: np.ndarray


@dataclass(frozen=True)
class PosteriorCovariance:
    """A GP's posterior covariance among ``points`` (standardised units), entry by entry.

    ``cov(a, b) = k(a, b) - w_a . w_b`` with ``w = L^-1 k(X, .)`` the whitened
    cross-covariances (R&W eq. 2.26). It does not depend on the observed values:
    only on where they were observed and on the hyperparameters.

    Attributes:
        points: ``(M, dim)`` the points.
        whitened: ``(N, M)`` ``L^-1 k(X, points)``.
        lengths: the length scales.
        signal: the signal variance.
        noise: the noise variance of an observation.
    """

    points: np.ndarray
    whitened: np.ndarray
    lengths: np.ndarray
    signal: float
    noise: float

    def __call__(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """The ``(len(rows), len(cols))`` covariance block between points given by index."""
        prior = matern52(self.points[rows], self.points[cols], self.lengths, self.signal)
        return prior - self.whitened[:, rows].T @ self.whitened[:, cols]

    def variance(self) -> np.ndarray:
        """The posterior variance at every point, ``(M,)``."""
        return np.maximum(self.signal - (self.whitened * self.whitened).sum(0), 0.0)


class GaussianProcess:
    """GP regressor over the unit box (numpy in, numpy out).

    Args:
        config: bounds and fit settings.
        dim: input dimension.
        seed: unused by the fit (deterministic); kept so that every surrogate is built alike.

    Raises:
        ValueError: for ``dim < 1``.
    """

    def __init__(self, config: GPConfig, dim: int, seed: int = 0) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        del seed
        self.config = config
        self.dim = dim
        self._theta = self._default_theta()
        self._x = np.zeros((0, dim))
        self._y_mean, self._y_scale = 0.0, 1.0
        self._chol: tuple[np.ndarray, bool] | None = None
        self._alpha = np.zeros(0)
        self._beta = np.zeros(self._trend_terms())
        self.fits = 0
        self.choices = 0  # fits that chose hyperparameters (the others only conditioned)
        self.extensions = 0  # fits that extended the last factor rather than factorising again
        self._conditioned_theta: np.ndarray | None = None
        self._chosen_on, self._last_nll = 0, 0.0
        self.evaluations = 0  # likelihood evaluations over all fits (the cost of fitting)
        self.warp: LogWarp | None = None  # the output warping (config.output_warp == "log"), chosen with the hyperparameters
        self._full_on, self._nll_y = 0, 0.0  # points at the warping's last full search; nll of the original targets at the last choice
        self.full_searches = 0  # warped choices that tried every offset with fresh starts
        self.surprises = 0  # light warped choices whose likelihood dropped, so that a full search followed
        self.vetoes = 0  # "auto" choices whose warping lost to the unwarped GP on leave-one-out error

    def _trend_terms(self) -> int:
        return {"none": 0, "constant": 1, "linear": 1 + self.dim}[self.config.trend]

    def _basis(self, x: np.ndarray) -> np.ndarray:
        """The trend's regressors at ``(N, dim)`` points, ``(N, terms)``."""
        if self.config.trend == "none":
            return np.zeros((len(x), 0))
        one = np.ones((len(x), 1))
        return one if self.config.trend == "constant" else np.concatenate([one, x - 0.5], 1)

    def _gls(self, solve: Any, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The GLS trend coefficients ``(H^T K^-1 H)^-1 H^T K^-1 y`` (``solve`` applies ``K^-1``)."""
        h = self._basis(x)
        if h.shape[1] == 0:
            return np.zeros(0)
        kih = solve(h)
        gram = h.T @ kih
        rhs = kih.T @ y
        if gram.shape == (1, 1):  # the constant trend: a weighted mean
            return rhs / (gram[0] * (1.0 + 1e-10))
        return np.linalg.lstsq(gram + 1e-10 * np.trace(gram) * np.eye(len(gram)), rhs, rcond=None)[0]

    def _default_theta(self) -> np.ndarray:
        return np.log(np.concatenate([np.full(self.dim, 0.3), [1.0, 1e-3]]))

    def _bounds(self) -> list[tuple[float, float]]:
        c = self.config
        return [tuple(np.log(c.length_bounds))] * self.dim + [tuple(np.log(c.signal_bounds)), tuple(np.log(c.noise_bounds))]

    def _unpack(self, theta: np.ndarray) -> tuple[np.ndarray, float, float]:
        e = np.exp(theta)
        return e[: self.dim], float(e[self.dim]), float(e[self.dim + 1])

    def _neg_log_likelihood(self, theta: np.ndarray, x: np.ndarray, y: np.ndarray,
                            sq: np.ndarray | None = None) -> tuple[float, np.ndarray]:  # fmt: skip
        """The negative log marginal likelihood and its gradient in ``theta`` (R&W eq. 5.9).

        ``dK/dlog l_i = s (5/3) (1 + sqrt5 r) exp(-sqrt5 r) d_i^2 / l_i^2`` (the Matérn 5/2
        kernel differentiated through ``r``), ``dK/dlog s = K - noise I``, ``dK/dlog noise = noise I``.
        ``sq``, the ``(N^2, dim)`` squared differences of ``x`` along each input, does not change
        during an optimisation (:meth:`_optimise` passes it): the scaled distances are then one
        matrix-vector product, and the length scales' gradient another.
        """
        self.evaluations += 1
        n = len(x)
        if sq is None:
            sq = _squared_differences(x)
        lengths, signal, noise = self._unpack(theta)
        inv_l2 = 1.0 / (lengths * lengths)
        r = np.sqrt(np.maximum(sq @ inv_l2, 0.0)).reshape(n, n)
        decay = np.exp(-_SQRT5 * r)
        ks = signal * (1.0 + _SQRT5 * r + 5.0 / 3.0 * r * r) * decay
        k = ks + (noise + 1e-8) * np.eye(n)
        low, info = dpotrf(k, lower=1, clean=1)  # LAPACK directly: scipy's wrappers' checks cost as much at N ~ 100
        if info != 0:
            return 1e10, np.zeros_like(theta)  # not positive definite at these hyperparameters: reject the step
        beta = self._gls(lambda b: dpotrs(low, b, lower=1)[0], x, y)
        y = y - self._basis(x) @ beta  # profiled: at the optimal beta, the gradient in theta is the partial one
        alpha = dpotrs(low, y, lower=1)[0]
        nll = float(0.5 * y @ alpha + np.log(np.diag(low)).sum() + 0.5 * n * math.log(2 * math.pi))
        inv, info = dpotri(low, lower=1)  # K^-1 from its factor: a third of solving against the identity
        if info != 0:
            return 1e10, np.zeros_like(theta)
        inv = np.tril(inv) + np.tril(inv, -1).T  # dpotri fills the lower triangle only
        w = inv - np.outer(alpha, alpha)  # K^-1 - alpha alpha^T
        common = signal * 5.0 / 3.0 * (1.0 + _SQRT5 * r) * decay
        grad = np.empty_like(theta)
        grad[: self.dim] = 0.5 * ((w * common).reshape(-1) @ sq) * inv_l2
        grad[self.dim] = 0.5 * np.sum(w * ks)
        grad[self.dim + 1] = 0.5 * noise * np.trace(w)
        return nll, grad

    def fit(self, x: np.ndarray, y: np.ndarray) -> float:
        """Choose hyperparameters for all the data (warm start from the last fit) and condition on it.

        Args:
            x: ``(N, dim)`` inputs in the unit box.
            y: ``(N,)`` finite targets.

        Returns:
            The negative log marginal likelihood per point when the hyperparameters were last chosen.

        Raises:
            ValueError: for mismatched shapes, no data or non-finite targets.
        """
        x = np.asarray(x, np.float64)
        y = np.asarray(y, np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim or y.shape != (x.shape[0],) or x.shape[0] == 0:
            raise ValueError(f"expected x (N, {self.dim}) and y (N,) with N >= 1, got x {x.shape} and y {y.shape}")
        if not np.all(np.isfinite(y)):
            raise ValueError(f"targets must be finite; {int(np.sum(~np.isfinite(y)))} of {len(y)} are not")
        choose = self.fits == 0 or len(y) >= (1.0 + self.config.reoptimise_growth) * self._chosen_on
        if self.config.output_warp != "none" and choose:
            self._choose_warped(x, y)
        else:
            if self.warp is not None:
                self.warp = log_warp(y, self.warp.offset)  # the offset kept, the shift below the new targets
            ys = self._standardise(y)
            if choose:
                self._theta, self._last_nll = self._optimise(x, ys)
                self._chosen_on = len(y)
                self.choices += 1
        self._condition(x, self._standardise(y))
        self.fits += 1
        return self._last_nll / max(self._chosen_on, 1)

    def _standardise(self, y: np.ndarray) -> np.ndarray:
        """Warp (when a warping is set) and standardise targets, setting the scale it used."""
        g = y if self.warp is None else forward(self.warp, y)
        self._y_mean = float(np.median(g) if self.config.median_mean else g.mean())
        self._y_scale = float(g.std()) or 1.0
        return (g - self._y_mean) / self._y_scale

    def _choose_warped(self, x: np.ndarray, y: np.ndarray) -> None:
        """Choose hyperparameters and the log warping's offset together.

        For each offset tried (of :data:`LOG_OFFSETS`, and no warping), the hyperparameters that
        maximise the likelihood of the warped targets; the pair whose likelihood of the *original*
        targets is largest wins (the warped one plus the Jacobian of warping and standardising).
        A full search tries every offset, each also from the fresh starts; it runs at the first
        choice, once the data grew by ``full_search_growth`` since the last one, and when a light
        search is surprised. A light search (the choices in between) warm-starts from the last
        choice with its offset and the two next to it on the ladder (no warping next to the
        largest offset): 3 optimisations instead of 24. It is surprised when the likelihood per
        point of its best pair is lower than at the last choice by more than ``surprise``.
        With ``output_warp="auto"`` every search also optimises the unwarped GP, and a warped
        winner yields to it when its leave-one-out RMS error is more than ``warp_veto`` times
        the unwarped GP's (:meth:`_loo_rms`).
        """
        c, n = self.config, len(y)
        full = self._full_on == 0 or n >= c.full_search_growth * self._full_on
        ladder: tuple[float | None, ...] = (*LOG_OFFSETS, None)  # None: no warping, beyond the largest offset
        if full:
            tried = ladder
        else:
            at = ladder.index(None if self.warp is None else self.warp.offset)
            tried = ladder[max(at - 1, 0) : at + 2]
            if c.output_warp == "auto" and None not in tried:
                tried = (*tried, None)
        found = self._search_offsets(x, y, tried, fresh=full)
        if not full and found[0][0] / n > self._nll_y / max(self._chosen_on, 1) + c.surprise:
            self.surprises += 1
            full = True
            found = sorted(found + self._search_offsets(x, y, ladder, fresh=True), key=lambda f: f[0])
        best = found[0]
        if c.output_warp == "auto" and best[2] is not None:
            plain = next(f for f in found if f[2] is None)
            if self._loo_rms(x, y, best) > c.warp_veto * self._loo_rms(x, y, plain):
                best = plain
                self.vetoes += 1
        self._nll_y, self._theta, self.warp, self._last_nll = best
        if full:
            self._full_on = n
            self.full_searches += 1
        self._chosen_on = n
        self.choices += 1

    def _loo_rms(self, x: np.ndarray, y: np.ndarray, model: tuple[float, np.ndarray, LogWarp | None, float]) -> float:
        """The leave-one-out RMS error, in the targets' units, of a ``(nll of y, theta, warping, nll)``
        found by :meth:`_search_offsets`: each point's latent leave-one-out mean (closed form,
        :meth:`leave_one_out`) mapped back as :meth:`predict` maps it (the log-normal's median)."""
        _, self._theta, self.warp, _ = model
        self._condition(x, self._standardise(y))
        latent = y if self.warp is None else forward(self.warp, y)
        guess = latent - self.leave_one_out().residuals
        if self.warp is not None:
            guess = np.exp(guess) + self.warp.shift
        return float(np.sqrt(np.mean((guess - y) ** 2)))

    def _search_offsets(self, x: np.ndarray, y: np.ndarray, offsets: tuple[float | None, ...],
                        fresh: bool) -> list[tuple[float, np.ndarray, LogWarp | None, float]]:  # fmt: skip
        """Every ``(nll of y, theta, warping, nll of the warped targets)`` found over ``offsets``, best
        first, each optimised from the last choice; when ``fresh``, the ``fresh_offsets`` best of them
        are optimised again from the fresh starts (the offsets far behind after a warm start are not
        the ones a fresh start would lift to the top: their likelihoods differ by nats per point)."""
        start = self._theta
        found: list[tuple[float, np.ndarray, LogWarp | None, float]] = []
        for offset in offsets:
            found.append(self._fit_offset(x, y, offset, start, fresh=False))
        found.sort(key=lambda f: f[0])
        if fresh:
            again = [self._fit_offset(x, y, None if f[2] is None else f[2].offset, start, fresh=True)
                     for f in found[: self.config.fresh_offsets]]  # fmt: skip
            found = sorted(found + again, key=lambda f: f[0])
        return found

    def _fit_offset(self, x: np.ndarray, y: np.ndarray, offset: float | None, start: np.ndarray,
                    fresh: bool) -> tuple[float, np.ndarray, LogWarp | None, float]:  # fmt: skip
        """Optimise the hyperparameters for one offset (``None``: no warping) from ``start``, and from
        the fresh starts when ``fresh``; ``(nll of y, theta, warping, nll of the warped targets)``."""
        self.warp, self._theta = (None if offset is None else log_warp(y, offset)), start
        ys = self._standardise(y)
        theta, nll = self._optimise(x, ys, fresh, warm=not fresh)
        nll_y = nll + len(y) * math.log(self._y_scale) - (0.0 if self.warp is None else log_jacobian(self.warp, y))
        return nll_y, theta, self.warp, nll

    def _degenerate(self, theta: np.ndarray, x: np.ndarray) -> bool:
        """Whether ``theta`` explains the data as nearly uncorrelated: a point's correlation
        with its nearest neighbour below 0.1 on average (an optimum with length scales far
        below the spacing of the data, which a warm start can stay in for good)."""
        corr = matern52(x, x, self._unpack(theta)[0], 1.0)
        np.fill_diagonal(corr, 0.0)
        return bool(np.mean(corr.max(1)) < 0.1)

    def _optimise(self, x: np.ndarray, ys: np.ndarray, fresh: bool = True, warm: bool = True) -> tuple[np.ndarray, float]:
        """Maximise the marginal likelihood from the last choice (when ``warm``), and from the fresh
        starts while the data are few (and ``fresh``) or when the last choice's optimum is
        degenerate; the best hyperparameters and their negative log likelihood."""
        best: tuple[float, np.ndarray] | None = None
        starts = [np.log(np.concatenate([np.full(self.dim, length), [1.0, 1e-3]])) for length in self.config.fresh_lengths]
        sq = _squared_differences(x)
        for i, start in enumerate([self._theta, *starts]):
            if i == 0 and not warm and starts:
                continue  # the caller has the warm start's optimum already
            again = i > 0
            few = fresh and len(ys) < self.config.fresh_starts_until
            if again and self.fits > 0 and not few and best is not None and not self._degenerate(best[1], x):
                break
            if again and warm and self.fits == 0 and np.array_equal(start, self._theta):
                continue  # the first fit already started from the default
            res = minimize(self._neg_log_likelihood, start, args=(x, ys, sq), method="L-BFGS-B", jac=True, bounds=self._bounds(),
                           options={"maxiter": self.config.max_iter})  # fmt: skip
            if best is None or res.fun < best[0]:
                best = (float(res.fun), np.asarray(res.x))
        assert best is not None
        return best[1], best[0]

    def _condition(self, x: np.ndarray, ys: np.ndarray) -> None:
        """Factorise the covariance of ``x``; when ``x`` extends the points last factorised and the
        hyperparameters did not change, extend that factor instead (``O(N^2 k)`` for ``k`` new
        points rather than ``O(N^3)``): ``L' = [[L, 0], [B, C]]`` with ``B = K(new, old) L^-T`` and
        ``C C^T = K(new, new) - B B^T``."""
        lengths, signal, noise = self._unpack(self._theta)
        n_old = len(self._x)
        extend = (
            self._chol is not None and self._conditioned_theta is not None
            and np.array_equal(self._conditioned_theta, self._theta)
            and 0 < n_old < len(x) and np.array_equal(x[:n_old], self._x)
        )  # fmt: skip
        if extend:
            assert self._chol is not None
            low, new = self._chol[0], x[n_old:]
            b = solve_triangular(low, matern52(self._x, new, lengths, signal), lower=True).T
            c = np.linalg.cholesky(matern52(new, new, lengths, signal) + (noise + 1e-8) * np.eye(len(new)) - b @ b.T)
            grown = np.zeros((len(x), len(x)))
            grown[:n_old, :n_old], grown[n_old:, :n_old], grown[n_old:, n_old:] = low, b, c
            self._chol = (grown, True)
            self.extensions += 1
        else:
            k = matern52(x, x, lengths, signal) + (noise + 1e-8) * np.eye(len(x))
            self._chol = cho_factor(k, lower=True)
        self._beta = self._gls(lambda b: cho_solve(self._chol, b), x, ys)
        self._alpha = cho_solve(self._chol, ys - self._basis(x) @ self._beta)
        self._x = x
        self._conditioned_theta = self._theta.copy()

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation of the latent function at ``(N, dim)`` points.

        Raises:
            RuntimeError: before the first fit.
        """
        if self._chol is None:
            raise RuntimeError("GaussianProcess.predict before any fit")
        x = np.asarray(x, np.float64).reshape(-1, self.dim)
        lengths, signal, _ = self._unpack(self._theta)
        ks = matern52(x, self._x, lengths, signal)
        mean = ks @ self._alpha + self._basis(x) @ self._beta
        v = solve_triangular(self._chol[0], ks.T, lower=True)
        var = np.maximum(signal - (v * v).sum(0), 0.0)
        mean, std = self._y_mean + self._y_scale * mean, self._y_scale * np.sqrt(var)
        return (mean, std) if self.warp is None else backward(self.warp, mean, std)

    def joint(self, points: np.ndarray) -> PosteriorCovariance:
        """The posterior covariance among a fixed set of points, for design criteria.

        The whitened cross-covariances ``L^-1 k(X, points)`` are computed once
        (``O(N^2 M)`` for ``M`` points); every covariance asked of the result then costs
        ``O(N)`` per entry. Units are the standardised targets' (the ranking of
        design criteria does not depend on them).

        Args:
            points: ``(M, dim)`` points in the unit box.

        Returns:
            A :class:`PosteriorCovariance` over ``points``.

        Raises:
            RuntimeError: before the first fit.
        """
        if self._chol is None:
            raise RuntimeError("GaussianProcess.joint before any fit")
        pts = np.asarray(points, np.float64).reshape(-1, self.dim)
        lengths, signal, noise = self._unpack(self._theta)
        whitened = solve_triangular(self._chol[0], matern52(self._x, pts, lengths, signal), lower=True)
        return PosteriorCovariance(pts, whitened, lengths, signal, noise + 1e-8)

    def leave_one_out(self) -> LeaveOneOut:
        """Leave-one-out residuals and predictive variances of the points conditioned on.

        Closed form, no refits (R&W eq. 5.12): without point ``i``, the mean there misses
        its target by ``alpha_i / [K^-1]_ii`` and its variance is ``1 / [K^-1]_ii``
        (hyperparameters kept; ``K`` includes the noise). With a fitted trend, its coefficients
        are estimated again without the point too: ``K^-1`` becomes the projected precision
        ``Q = K^-1 - K^-1 H (H^T K^-1 H)^-1 H^T K^-1`` (``alpha = Q y``), and ``1 / Q_ii`` is the
        universal-kriging variance, which counts the trend's uncertainty (Dubrule 1983,
        "Cross validation of kriging in a unique neighborhood"). ``O(N^3 / 3)`` for the diagonal.

        Returns:
            A :class:`LeaveOneOut`.

        Raises:
            RuntimeError: before the first fit.
        """
        if self._chol is None:
            raise RuntimeError("GaussianProcess.leave_one_out before any fit")
        inv_low = solve_triangular(self._chol[0], np.eye(len(self._x)), lower=True)
        diag = (inv_low * inv_low).sum(0)  # diag(K^-1) = column norms of L^-1, as K^-1 = L^-T L^-1
        h = self._basis(self._x)
        if h.shape[1]:
            kih = cho_solve(self._chol, h)
            diag = diag - np.einsum("ij,jk,ik->i", kih, np.linalg.pinv(h.T @ kih), kih)
        return LeaveOneOut(self._x.copy(), self._y_scale * self._alpha / diag, self._y_scale**2 / diag, self.length_scales)

    @property
    def length_scales(self) -> np.ndarray:
        """The fitted length scale of each input (short: the quantity varies fast along it)."""
        return self._unpack(self._theta)[0]

    def state_dict(self) -> dict[str, Any]:
        """Hyperparameters and the data conditioned on (plain data for a checkpoint)."""
        return {"theta": self._theta.copy(), "x": self._x.copy(), "y_mean": self._y_mean, "y_scale": self._y_scale,
                "alpha": self._alpha.copy(), "fits": self.fits, "choices": self.choices, "chosen_on": self._chosen_on,
                "last_nll": self._last_nll, "beta": self._beta.copy(),
                "warp": None if self.warp is None else (self.warp.offset, self.warp.shift),
                "full_on": self._full_on, "nll_y": self._nll_y}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` of a process of the same dimension.

        Raises:
            ValueError: for a state of another dimension.
        """
        theta = np.asarray(state["theta"], np.float64)
        if theta.shape != (self.dim + 2,):
            raise ValueError(f"expected hyperparameters of shape ({self.dim + 2},), got {theta.shape}")
        self._theta = theta
        self._y_mean, self._y_scale, self.fits = float(state["y_mean"]), float(state["y_scale"]), int(state["fits"])
        self.choices, self._chosen_on, self._last_nll = int(state["choices"]), int(state["chosen_on"]), float(state["last_nll"])
        warp = state.get("warp")
        self.warp = None if warp is None else LogWarp(float(warp[0]), float(warp[1]))
        self._full_on, self._nll_y = int(state.get("full_on", 0)), float(state.get("nll_y", 0.0))  # 0: search in full next
        x = np.asarray(state["x"], np.float64).reshape(-1, self.dim)
        if len(x):
            # Refactor from the data (a Cholesky factor is cheap to recompute and large to store).
            lengths, signal, noise = self._unpack(theta)
            self._chol = cho_factor(matern52(x, x, lengths, signal) + (noise + 1e-8) * np.eye(len(x)), lower=True)
            self._alpha = np.asarray(state["alpha"], np.float64)
            self._beta = np.asarray(state.get("beta", np.zeros(self._trend_terms())), np.float64)
            self._x = x
            self._conditioned_theta = theta.copy()

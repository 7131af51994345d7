"""The settings of an ensemble filter's analysis, checked when built."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Method = Literal["enkf", "denkf", "etkf", "serial", "letkf", "enkf_n"]
METHODS: tuple[Method, ...] = ("enkf", "denkf", "etkf", "serial", "letkf", "enkf_n")
# Methods that taper covariances (enkf, denkf) or weight observations (letkf) by distance.
_LOCALISED = ("enkf", "denkf", "letkf")


@dataclass(frozen=True)
class FilterConfig:
    """An ensemble filter's analysis settings (names and defaults follow DAPPER where it has them).

    Args:
        method: the analysis scheme:

            - ``"enkf"``: stochastic EnKF with perturbed observations (Burgers,
              van Leeuwen & Evensen 1998; DAPPER ``EnKF('PertObs')``);
            - ``"denkf"``: deterministic EnKF (Sakov & Oke 2008; ``EnKF('DEnKF')``);
            - ``"etkf"``: square-root EnKF with the symmetric transform, i.e. the
              ETKF (Bishop et al. 2001; Hunt et al. 2007; ``EnKF('Sqrt')``);
            - ``"serial"``: serial square-root EnKF, one observation at a time in
              random order (Potter's scheme / EnSRF, Whitaker & Hamill 2002;
              ``EnKF('Serial')``);
            - ``"letkf"``: local ETKF, one analysis per local block with
              Gaspari-Cohn weighted observations (Hunt et al. 2007; ``LETKF``);
            - ``"enkf_n"``: finite-size EnKF, which estimates its own inflation
              each cycle (Bocquet 2011, Bocquet et al. 2015; ``EnKF_N``).
        inflation: multiplicative inflation of the analysis anomalies (1 = none).
        obs_std: observation-error standard deviation (``R = obs_std^2 I``).
        localization: localisation radius in grid points (taper 0.63, about
            ``exp(-1/2)``, at this distance; Gaspari-Cohn half-width ``1.82 x radius``, as DAPPER's
            ``loc_rad``). Required by ``"letkf"``; for ``"enkf"``/``"denkf"`` it
            tapers the sample covariance (Schur product); refused elsewhere.
        rotation: after the update, turn the anomalies by a random orthogonal,
            mean-preserving matrix (DAPPER's ``rot=True``, ``genOG_1``); it
            keeps the mean and covariance and spreads the anomalies more evenly.
        rescale_perturbations: ``"enkf"`` only: centre the observation
            perturbations *and* rescale them by ``sqrt(N / (N - 1))`` so that
            their sample variance stays ``R`` on average (DAPPER's ``mean0``);
            ``False`` centres only.
        local_block: ``"letkf"``: side of the blocks of grid points that share one
            local analysis (DAPPER's Lorenz-96 setting uses 2); must divide every
            grid side.
        prior_boost: ``"enkf_n"``: DAPPER's ``xN``, the confidence in the
            inflation hyper-prior (1 for a chaotic model, 2 for a milder one).

    Raises:
        ValueError: for an unknown method, non-positive numbers, a radius asked of
            a method without localisation, or an ``"letkf"`` without one.
    """

    method: Method = "enkf"
    inflation: float = 1.0
    obs_std: float = 1.0
    localization: float | None = None
    rotation: bool = False
    rescale_perturbations: bool = True
    local_block: int = 1
    prior_boost: float = 1.0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if not self.inflation > 0 or not self.obs_std > 0 or not self.prior_boost > 0:
            raise ValueError(
                f"inflation, obs_std and prior_boost must be > 0, got {self.inflation}, {self.obs_std}, {self.prior_boost}"
            )
        if self.localization is not None and self.method not in _LOCALISED:
            raise ValueError(f"localization applies to {_LOCALISED}, not {self.method!r}")
        if self.localization is not None and not self.localization > 0:
            raise ValueError(f"localization radius must be > 0, got {self.localization}")
        if self.method == "letkf" and self.localization is None:
            raise ValueError("method 'letkf' needs a localization radius (e.g. localization=4.0)")
        if self.local_block < 1:
            raise ValueError(f"local_block must be >= 1, got {self.local_block}")

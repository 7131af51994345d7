"""Space-filling sweeps: the strong model-free baselines of a steered search.

:class:`SobolSweep` draws a scrambled Sobol sequence (Owen scrambling, via
``scipy.stats.qmc``, which JAX already depends on): every prefix of ``2^m``
points puts exactly one point in each of the ``2^m`` equal intervals of every
axis, and it fills the box more evenly than random draws (lower discrepancy).
:class:`LatinHypercubeSweep` draws Latin hypercubes of ``block`` points at a time
(one point per stratum of every axis within each block). Both speak the
:class:`~coupler.learners.acquisition.Strategy` protocol, ignore the data, never
cancel and checkpoint as plain data.
"""

from __future__ import annotations

import warnings
from typing import Any
from dataclasses import dataclass, field

import numpy as np

from coupler.learners.acquisition import ParameterSpace, SearchData, latin_hypercube, rng_state, set_rng_state


@dataclass
class SobolSweep:
    """Scrambled Sobol points in order (model-free baseline).

    Args:
        space: the parameter box.
        seed: seed of the scrambling.
    """

    space: ParameterSpace
    seed: int = 0
    uses_model: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self._sobol = sobol_engine(self.space.dim, scramble=True, seed=self.seed)
        self._drawn = 0

    def propose(self, n: int, data: SearchData) -> np.ndarray:
        # scipy warns when a draw is not a power of two; the *sequence* keeps its balance at every
        # power-of-two prefix whatever the draw sizes, which is what a sweep consumes.
        self._drawn += n
        if n == 0:
            return np.zeros((0, self.space.dim), np.float32)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The balance properties", category=UserWarning)
            return self._sobol.random(n).astype(np.float32)

    def pointless(self, pending: np.ndarray, data: SearchData) -> np.ndarray:
        return np.zeros(len(pending), bool)

    def state_dict(self) -> dict[str, int]:
        """How many points were drawn (the scrambling is the seed's: plain data for a checkpoint)."""
        return {"drawn": self._drawn}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue the sequence of a sweep with the same seed from :meth:`state_dict`."""
        self._sobol = sobol_engine(self.space.dim, scramble=True, seed=self.seed)
        self._drawn = int(state["drawn"])
        self._sobol.fast_forward(self._drawn)


@dataclass
class LatinHypercubeSweep:
    """Consecutive random Latin hypercubes of ``block`` points (model-free baseline).

    Args:
        space: the parameter box.
        block: points per hypercube (each block is stratified on its own).
        seed: seed of the draws.

    Raises:
        ValueError: for ``block < 1``.
    """

    space: ParameterSpace
    block: int = 64
    seed: int = 0
    uses_model: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.block < 1:
            raise ValueError(f"block must be >= 1, got {self.block}")
        self._rng = np.random.default_rng(self.seed)
        self._queue = np.zeros((0, self.space.dim), np.float32)

    def propose(self, n: int, data: SearchData) -> np.ndarray:
        while len(self._queue) < n:
            self._queue = np.concatenate([self._queue, latin_hypercube(self.block, self.space.dim, self._rng)])
        out, self._queue = self._queue[:n], self._queue[n:]
        return out

    def pointless(self, pending: np.ndarray, data: SearchData) -> np.ndarray:
        return np.zeros(len(pending), bool)

    def state_dict(self) -> dict[str, object]:
        """The generator and the rest of the current block (plain data for a checkpoint)."""
        return {"rng": rng_state(self._rng), "queue": self._queue.copy()}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Continue from :meth:`state_dict` of a sweep with the same settings."""
        set_rng_state(self._rng, str(state["rng"]))
        self._queue = np.asarray(state["queue"], np.float32).reshape(-1, self.space.dim)


def sobol_engine(dim: int, scramble: bool, seed: int | None) -> Any:
    """A ``scipy.stats.qmc.Sobol`` engine; ``scipy.stats`` is imported on first use.

    It takes about a second to import, which every process that imports this
    package paid at start (every worker does, for its actor hosts).

    Args:
        dim: dimensions.
        scramble: Owen scrambling.
        seed: the scrambling's seed.

    Returns:
        The engine.
    """
    from scipy.stats import qmc

    return qmc.Sobol(dim, scramble=scramble, seed=seed)

"""Linear observation of a subset of a gridded state: ``H x`` picks observed variables.

The state is a flat vector of ``n`` values on a periodic grid of shape
``shape`` (a ring of ``n`` points by default, as Lorenz-96; ``(ny, nx)`` for a
2-D field flattened in C order). Observations are ``y = H x + e`` with
``e ~ N(0, obs_std^2 I)``; the grid gives each observation a position, which
is what localisation measures distances with.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np

from coupler.physics.localization import grid_coordinates, periodic_distances


@dataclass(frozen=True)
class LinearObservation:
    """Observe a subset of the ``n`` state variables (all of them by default).

    Args:
        n: state size.
        indices: observed variables (flat indices), in order; ``None`` for all (``H = I``).
        shape: the periodic grid the flat state lives on; ``None`` for a ring ``(n,)``.

    Raises:
        ValueError: for ``n < 1``, an empty subset, duplicates, indices out of
            range, or a grid whose size is not ``n``.

    Example:
        >>> obs = LinearObservation.subgrid((64, 64), stride=8)   # 64 of 4096 points
        >>> obs.size
        64
    """

    n: int
    indices: tuple[int, ...] | None = None
    shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"LinearObservation needs n >= 1, got n={self.n}")
        if self.indices is not None:
            idx = tuple(int(i) for i in self.indices)
            if not idx or len(set(idx)) != len(idx) or min(idx) < 0 or max(idx) >= self.n:
                raise ValueError(f"indices must be distinct, non-empty and in [0, {self.n}), got {self.indices}")
            object.__setattr__(self, "indices", idx)
        shape = (self.n,) if self.shape is None else tuple(int(s) for s in self.shape)
        if int(np.prod(shape)) != self.n:
            raise ValueError(f"grid shape {shape} has {int(np.prod(shape))} points, expected n={self.n}")
        object.__setattr__(self, "shape", shape)

    @classmethod
    def every(cls, n: int, stride: int, offset: int = 0) -> LinearObservation:
        """Observe every ``stride``-th variable of a ring of ``n``, starting at ``offset``.

        Raises:
            ValueError: ``stride < 1`` or ``offset`` outside ``[0, n)``.
        """
        if stride < 1 or not 0 <= offset < n:
            raise ValueError(f"need stride >= 1 and 0 <= offset < n={n}, got stride={stride}, offset={offset}")
        return cls(n, tuple(range(offset, n, stride)))

    @classmethod
    def subgrid(cls, shape: tuple[int, ...], stride: int, offset: int = 0) -> LinearObservation:
        """Observe every ``stride``-th point along each axis of a grid (a regular sub-grid).

        Args:
            shape: the state's grid shape.
            stride: spacing of the observed points along every axis (>= 1).
            offset: index of the first observed point along every axis.

        Raises:
            ValueError: for ``stride < 1`` or an offset outside the grid.
        """
        if stride < 1 or not all(0 <= offset < s for s in shape):
            raise ValueError(f"need stride >= 1 and 0 <= offset < every side of {shape}, got {stride}, {offset}")
        axes = np.meshgrid(*(np.arange(offset, s, stride) for s in shape), indexing="ij")
        flat = np.ravel_multi_index(tuple(a.ravel() for a in axes), shape)
        return cls(int(np.prod(shape)), tuple(int(i) for i in flat), tuple(shape))

    @property
    def size(self) -> int:
        """Number of observed values ``p``."""
        return self.n if self.indices is None else len(self.indices)

    def index(self) -> np.ndarray:
        """The ``(p,)`` flat indices of the observed variables."""
        return np.arange(self.n) if self.indices is None else np.asarray(self.indices)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``H x`` for states ``x`` of shape ``(..., n)``."""
        return x if self.indices is None else x[..., self.index()]

    def matrix(self) -> np.ndarray:
        """``H`` as a ``(p, n)`` 0/1 matrix."""
        return np.eye(self.n)[self.index()]

    def state_to_obs_distances(self) -> np.ndarray:
        """``(n, p)`` periodic grid distances from every state variable to every observation."""
        coords = grid_coordinates(self.shape)  # type: ignore[arg-type]
        return periodic_distances(coords, coords[self.index()], self.shape)  # type: ignore[arg-type]

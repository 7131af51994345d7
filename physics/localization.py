"""Distance-based localisation on periodic grids: the Gaspari-Cohn taper and local domains.

Two conventions meet here. :func:`gaspari_cohn` is the function of Gaspari &
Cohn (1999), eq. (4.10), of ``r = distance / c``: 1 at 0, ``5/24`` at ``c`` and
0 from ``2c`` on. A *localisation radius* ``L`` (what :class:`FilterConfig`
takes) follows DAPPER (``tools/localization.py``, ``dist2coeff``): the
half-width is ``c = 1.82 L`` (about ``sqrt(10/3)``), so the taper is 0.63 at the distance
``L`` -- near ``exp(-1/2)``, the value of a Gaussian of standard deviation ``L``
there, which is what DAPPER's docstring says -- and reaches zero at ``3.64 L``. Tapers below 1e-3 are cut to 0,
as DAPPER's ``inds_and_coeffs`` does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# DAPPER's constant (tools/localization.py) rather than sqrt(10/3) = 1.8257, so
# that the radii of its tuned settings mean the same here.
GC_HALF_WIDTH_PER_RADIUS = 1.82
TAPER_CUTOFF = 1e-3


def gaspari_cohn(r: jax.Array) -> jax.Array:
    """The compactly supported fifth-order taper of Gaspari & Cohn (1999), eq. (4.10).

    Args:
        r: distance divided by the half-width ``c``; the taper is 1 at 0 and 0 beyond 2.

    Returns:
        Taper values, same shape as ``r``.
    """
    r = jnp.abs(r)
    inner = (((-0.25 * r + 0.5) * r + 0.625) * r - 5.0 / 3.0) * r**2 + 1.0
    outer = ((((r / 12.0 - 0.5) * r + 0.625) * r + 5.0 / 3.0) * r - 5.0) * r + 4.0 - 2.0 / (3.0 * jnp.where(r > 0, r, 1.0))
    return jnp.where(r <= 1.0, inner, jnp.where(r < 2.0, outer, 0.0))


def taper(distance: np.ndarray | jax.Array, radius: float) -> jax.Array:
    """Gaspari-Cohn weights for distances, with DAPPER's radius convention and cut-off.

    Args:
        distance: grid distances (any shape).
        radius: localisation radius ``L`` (half-width ``1.82 L``), > 0.

    Returns:
        Weights in ``[0, 1]``, 0 where below :data:`TAPER_CUTOFF`.
    """
    w = gaspari_cohn(jnp.asarray(distance) / (GC_HALF_WIDTH_PER_RADIUS * radius))
    return jnp.where(w > TAPER_CUTOFF, w, 0.0)


def grid_coordinates(shape: tuple[int, ...]) -> np.ndarray:
    """``(prod(shape), len(shape))`` integer coordinates of a C-ordered grid's points."""
    return np.stack(np.unravel_index(np.arange(int(np.prod(shape))), shape), axis=-1)


def periodic_distances(a: np.ndarray, b: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Euclidean distances between point sets on a periodic grid (a torus of side lengths ``shape``).

    Args:
        a: ``(m, d)`` coordinates.
        b: ``(k, d)`` coordinates.
        shape: the grid's ``d`` side lengths.

    Returns:
        ``(m, k)`` distances, each axis wrapped to the shorter way round.
    """
    d = np.abs(a[:, None, :] - b[None, :, :]).astype(np.float64)
    d = np.minimum(d, np.asarray(shape) - d)
    return np.sqrt(np.sum(d * d, axis=-1))


def local_blocks(shape: tuple[int, ...], block: int) -> np.ndarray:
    """Partition a grid into rectangular blocks of ``block`` points along every axis.

    The LETKF makes one local analysis per block (DAPPER's ``batch_shape``;
    its Lorenz-96 settings use blocks of 2).

    Args:
        shape: grid shape.
        block: block side, dividing every axis length.

    Returns:
        ``(blocks, block**d)`` flat state indices, one row per block.

    Raises:
        ValueError: if ``block`` does not divide every side of ``shape``.
    """
    if block < 1 or any(s % block for s in shape):
        raise ValueError(f"local block side must be >= 1 and divide every grid side {shape}, got {block}")
    coords = grid_coordinates(shape)
    block_id = np.ravel_multi_index(tuple((coords // block).T), tuple(s // block for s in shape))
    order = np.argsort(block_id, kind="stable")
    return order.reshape(-1, block ** len(shape))

"""Two-dimensional heat equation on the unit square, explicit finite differences.

Solves ``du/dt = a * (d2u/dx2 + d2u/dy2)`` on ``[0, 1]^2`` with ``u = 0`` on the
boundary (homogeneous Dirichlet), a uniform grid of ``n x n`` interior points
(``dx = 1 / (n + 1)``), the 5-point Laplacian and forward Euler in time (FTCS).
The scheme is second order in space and first order in time; with the time step
tied to ``dx**2`` (as here) the global error falls as ``dx**2``.

Every product of sines ``sin(m pi x) sin(l pi y)`` is an eigenmode of both the
continuous and the discrete operator, so the analytic solution of a mode is
``exp(-a pi^2 (m^2 + l^2) t)`` times its initial shape; the tests compare against
it. Initial conditions are sums of such modes with amplitudes from ``params``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp


class HeatParams(NamedTuple):
    """Parameters of one heat-equation run.

    Attributes:
        diffusivity: scalar ``a > 0``; must not exceed the simulator's
            ``max_diffusivity`` (the time step is chosen for it).
        amplitudes: ``(modes, modes)`` array; entry ``[m-1, l-1]`` is the
            amplitude of ``sin(m pi x) sin(l pi y)`` in the initial field.
    """

    diffusivity: jax.Array
    amplitudes: jax.Array


class HeatState(NamedTuple):
    """State of one run: the interior field, the simulated time, the step count."""

    u: jax.Array
    t: jax.Array
    step: jax.Array


@dataclass(frozen=True)
class Heat2D:
    """Heat equation simulator (pure, jit-able, vmap-able over params and state).

    Args:
        n: interior grid points per side (the field is ``n x n``).
        modes: how many sine modes per direction make up an initial field.
        max_diffusivity: largest diffusivity any run may use; fixes ``dt``.
        cfl: ``dt = cfl * dx**2 / max_diffusivity``; FTCS is stable for
            ``cfl <= 0.25``.

    Raises:
        ValueError: for ``n < 3``, ``modes < 1``, a non-positive diffusivity
            bound or an unstable ``cfl``.

    Example:
        >>> sim = Heat2D(n=32)
        >>> p = sim.random_params(jax.random.key(0))
        >>> s = sim.advance(sim.init(jax.random.key(1), p), p, 10)
        >>> s.u.shape
        (32, 32)
    """

    n: int = 32
    modes: int = 4
    max_diffusivity: float = 1.0
    cfl: float = 0.2

    def __post_init__(self) -> None:
        if self.n < 3:
            raise ValueError(f"Heat2D needs n >= 3 interior points, got n={self.n}")
        if self.modes < 1:
            raise ValueError(f"Heat2D needs modes >= 1, got modes={self.modes}")
        if not self.max_diffusivity > 0:
            raise ValueError(f"max_diffusivity must be > 0, got {self.max_diffusivity}")
        if not 0 < self.cfl <= 0.25:
            raise ValueError(f"cfl must be in (0, 0.25] for a stable FTCS step, got {self.cfl}")

    @property
    def dx(self) -> float:
        """Grid spacing."""
        return 1.0 / (self.n + 1)

    @property
    def dt(self) -> float:
        """Time step, stable for every diffusivity up to ``max_diffusivity``."""
        return self.cfl * self.dx**2 / self.max_diffusivity

    def grid(self) -> tuple[jax.Array, jax.Array]:
        """Return the interior coordinates ``(x, y)``, each ``(n, n)``, ``x`` along axis 0."""
        x = jnp.arange(1, self.n + 1) * self.dx
        return jnp.meshgrid(x, x, indexing="ij")

    def field_from_amplitudes(self, amplitudes: jax.Array) -> jax.Array:
        """Sum of sine modes: ``sum a[m-1, l-1] sin(m pi x) sin(l pi y)``.

        Args:
            amplitudes: ``(k, k)`` array of mode amplitudes, any ``k >= 1``.

        Returns:
            The ``(n, n)`` field on the interior grid.
        """
        k = amplitudes.shape[0]
        x = jnp.arange(1, self.n + 1) * self.dx
        basis = jnp.sin(jnp.pi * jnp.outer(jnp.arange(1, k + 1), x))  # (k, n)
        return jnp.einsum("ml,mi,lj->ij", amplitudes, basis, basis)

    def random_params(
        self,
        key: jax.Array,
        diffusivity_range: tuple[float, float] = (0.25, 1.0),
    ) -> HeatParams:
        """Draw a diffusivity (uniform) and mode amplitudes (normal, 1/(m+l) decay).

        Args:
            key: JAX PRNG key.
            diffusivity_range: bounds of the uniform draw; the upper bound must
                not exceed ``max_diffusivity``.

        Returns:
            A ``HeatParams``.

        Raises:
            ValueError: if the range is empty, non-positive or above ``max_diffusivity``.
        """
        lo, hi = diffusivity_range
        if not 0 < lo <= hi <= self.max_diffusivity:
            raise ValueError(
                f"diffusivity_range must satisfy 0 < lo <= hi <= max_diffusivity="
                f"{self.max_diffusivity}, got {diffusivity_range}"
            )
        k_a, k_d = jax.random.split(key)
        m = jnp.arange(1, self.modes + 1)
        decay = 1.0 / (m[:, None] + m[None, :])
        amplitudes = jax.random.normal(k_a, (self.modes, self.modes)) * decay
        diffusivity = jax.random.uniform(k_d, (), minval=lo, maxval=hi)
        return HeatParams(diffusivity=diffusivity, amplitudes=amplitudes)

    def init(self, key: jax.Array, params: HeatParams) -> HeatState:
        """Initial state from ``params.amplitudes`` (the key is unused: deterministic IC).

        Args:
            key: PRNG key, part of the simulator protocol.
            params: the run's parameters.

        Returns:
            The state at ``t = 0``.
        """
        del key
        u = self.field_from_amplitudes(jnp.asarray(params.amplitudes, jnp.float32))
        return HeatState(u=u.astype(jnp.float32), t=jnp.zeros((), jnp.float32), step=jnp.zeros((), jnp.int32))

    def laplacian(self, u: jax.Array) -> jax.Array:
        """5-point Laplacian with zero Dirichlet values outside the interior."""
        p = jnp.pad(u, 1)
        return (p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4.0 * u) / self.dx**2

    def step(self, state: HeatState, params: HeatParams) -> HeatState:
        """One forward-Euler step of ``dt``."""
        du = self.dt * params.diffusivity * self.laplacian(state.u)
        step = state.step + 1
        # Keep the state's dtype (float64 params must not promote a float32 field
        # inside fori_loop) and compute t from the step count (no float32 drift).
        return HeatState(u=state.u + du.astype(state.u.dtype), t=(step * self.dt).astype(state.t.dtype), step=step)

    def advance(self, state: HeatState, params: HeatParams, steps: int) -> HeatState:
        """Take ``steps`` steps inside one ``lax.fori_loop`` (jit this, not a Python loop)."""
        return jax.lax.fori_loop(0, steps, lambda _, s: self.step(s, params), state)

    def observe(self, state: HeatState) -> dict[str, jax.Array]:
        """The published field: ``{"u": (n, n) float32}``."""
        return {"u": state.u}

    def exact_mode(self, m: int, l: int, diffusivity: float, t: float) -> jax.Array:
        """Analytic solution from the single mode ``sin(m pi x) sin(l pi y)`` at time ``t``."""
        x, y = self.grid()
        rate = diffusivity * jnp.pi**2 * (m**2 + l**2)
        return jnp.exp(-rate * t) * jnp.sin(m * jnp.pi * x) * jnp.sin(l * jnp.pi * y)

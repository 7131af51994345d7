"""The Lorenz-96 and Lorenz-63 systems, integrated with classical RK4.

Lorenz-96 (Lorenz 1996; Lorenz & Emanuel 1998) on a periodic ring of ``n``
variables::

    dx_i/dt = (x_{i+1} - x_{i-2}) x_{i-1} - x_i + F

The quadratic (advection) term conserves the energy ``E = sum(x_i^2) / 2``
exactly; the linear damping ``-x_i`` and the forcing ``F`` drive and dissipate.
At ``F = 8`` with ``n = 40`` the system is chaotic (leading Lyapunov exponent
about 1.7 per time unit) and is the standard test bed of ensemble data
assimilation with one RK4 step of ``dt = 0.05`` between observations.

Lorenz-63 (Lorenz 1963)::

    dx/dt = sigma (y - x),  dy/dt = x (rho - z) - y,  dz/dt = x y - beta z

with the classical ``sigma = 10, rho = 28, beta = 8/3`` by default.

Both simulators follow :class:`coupler.physics.base.Simulator`: frozen
dataclasses with pure ``init``/``step``/``observe``, jit-able and vmap-able
(an ensemble is a ``vmap`` over the state). They compute in the dtype of the
state they are given, so float64 works where ``jax_enable_x64`` is on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp


class LorenzState(NamedTuple):
    """State of one Lorenz run: the variables, the model time and the step count."""

    x: jax.Array
    t: jax.Array
    step: jax.Array


class Lorenz96Params(NamedTuple):
    """Parameters of a Lorenz-96 run: the forcing ``F`` (scalar)."""

    forcing: jax.Array


class Lorenz63Params(NamedTuple):
    """Parameters of a Lorenz-63 run (scalars)."""

    sigma: jax.Array
    rho: jax.Array
    beta: jax.Array


def rk4(f: Callable[[jax.Array], jax.Array], x: jax.Array, dt: float) -> jax.Array:
    """One classical fourth-order Runge-Kutta step of the autonomous ODE ``dx/dt = f(x)``.

    Args:
        f: the tendency.
        x: the state.
        dt: the step.

    Returns:
        ``x`` advanced by ``dt``.
    """
    k1 = f(x)
    k2 = f(x + 0.5 * dt * k1)
    k3 = f(x + 0.5 * dt * k2)
    k4 = f(x + dt * k3)
    return x + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


def _advance_state(state: LorenzState, x: jax.Array, dt: float) -> LorenzState:
    step = state.step + 1
    # t from the step count: no drift from summing dt in float32.
    return LorenzState(x=x.astype(state.x.dtype), t=(step * dt).astype(state.t.dtype), step=step)


@dataclass(frozen=True)
class Lorenz96:
    """Lorenz-96 on ``n`` periodic variables, one RK4 step of ``dt`` per ``step``.

    Args:
        n: number of variables (``n >= 4`` so that the stencil ``i-2..i+1`` is distinct).
        dt: time step (0.05 is the customary step between observations).
        spread: standard deviation of the perturbation ``init`` adds to the
            rest state ``x_i = F``, which is an unstable fixed point.

    Raises:
        ValueError: for ``n < 4`` or a non-positive ``dt``.

    Example:
        >>> sim = Lorenz96(n=40)
        >>> p = Lorenz96Params(forcing=jnp.asarray(8.0))
        >>> s = sim.advance(sim.init(jax.random.key(0), p), p, 100)
        >>> s.x.shape
        (40,)
    """

    n: int = 40
    dt: float = 0.05
    spread: float = 0.001**0.5

    def __post_init__(self) -> None:
        if self.n < 4:
            raise ValueError(f"Lorenz96 needs n >= 4 variables, got n={self.n}")
        if not self.dt > 0:
            raise ValueError(f"Lorenz96 needs dt > 0, got dt={self.dt}")

    @staticmethod
    def advection(x: jax.Array) -> jax.Array:
        """The energy-conserving quadratic term ``(x_{i+1} - x_{i-2}) x_{i-1}`` (last axis periodic)."""
        return (jnp.roll(x, -1, -1) - jnp.roll(x, 2, -1)) * jnp.roll(x, 1, -1)

    def tendency(self, x: jax.Array, forcing: jax.Array) -> jax.Array:
        """``dx/dt`` for states ``x`` (last axis: the ring) and forcing ``F``."""
        return self.advection(x) - x + jnp.asarray(forcing, x.dtype)

    def flow(self, x: jax.Array, forcing: jax.Array) -> jax.Array:
        """``x`` advanced by one RK4 step of ``dt`` (any leading batch axes)."""
        return rk4(lambda z: self.tendency(z, forcing), x, self.dt)

    def init(self, key: jax.Array, params: Lorenz96Params, dtype: jnp.dtype | None = None) -> LorenzState:
        """The rest state ``x_i = F`` plus a small Gaussian perturbation of std ``spread``.

        Args:
            key: PRNG key for the perturbation.
            params: the run's parameters.
            dtype: floating dtype of the state (default: JAX's default float).

        Returns:
            The state at ``t = 0``.
        """
        dtype = dtype or jnp.zeros(()).dtype
        x = jnp.asarray(params.forcing, dtype) + self.spread * jax.random.normal(key, (self.n,), dtype)
        return LorenzState(x=x, t=jnp.zeros((), dtype), step=jnp.zeros((), jnp.int32))

    def step(self, state: LorenzState, params: Lorenz96Params) -> LorenzState:
        """One RK4 step of ``dt``."""
        return _advance_state(state, self.flow(state.x, params.forcing), self.dt)

    def advance(self, state: LorenzState, params: Lorenz96Params, steps: int) -> LorenzState:
        """``steps`` steps inside one ``lax.fori_loop``."""
        return jax.lax.fori_loop(0, steps, lambda _, s: self.step(s, params), state)

    def observe(self, state: LorenzState) -> dict[str, jax.Array]:
        """The published field: ``{"x": (n,)}``."""
        return {"x": state.x}


@dataclass(frozen=True)
class Lorenz63:
    """Lorenz-63, one RK4 step of ``dt`` per ``step``.

    Args:
        dt: time step (0.01 is customary).

    Raises:
        ValueError: for a non-positive ``dt``.
    """

    dt: float = 0.01

    def __post_init__(self) -> None:
        if not self.dt > 0:
            raise ValueError(f"Lorenz63 needs dt > 0, got dt={self.dt}")

    @staticmethod
    def classic() -> Lorenz63Params:
        """The classical parameters ``sigma = 10, rho = 28, beta = 8/3``."""
        return Lorenz63Params(sigma=jnp.asarray(10.0), rho=jnp.asarray(28.0), beta=jnp.asarray(8.0 / 3.0))

    @staticmethod
    def tendency(x: jax.Array, params: Lorenz63Params) -> jax.Array:
        """``dx/dt`` for states ``x`` whose last axis is ``(x, y, z)``."""
        a, b, c = x[..., 0], x[..., 1], x[..., 2]
        dx = params.sigma * (b - a)
        dy = a * (params.rho - c) - b
        dz = a * b - params.beta * c
        return jnp.stack([dx, dy, dz], axis=-1).astype(x.dtype)

    def flow(self, x: jax.Array, params: Lorenz63Params) -> jax.Array:
        """``x`` advanced by one RK4 step of ``dt``."""
        return rk4(lambda z: self.tendency(z, params), x, self.dt)

    def init(self, key: jax.Array, params: Lorenz63Params, dtype: jnp.dtype | None = None) -> LorenzState:
        """A point near the attractor, ``(1, 1, 25)`` plus a unit Gaussian perturbation.

        Args:
            key: PRNG key for the perturbation.
            params: the run's parameters (unused: part of the simulator protocol).
            dtype: floating dtype of the state (default: JAX's default float).

        Returns:
            The state at ``t = 0``.
        """
        del params
        dtype = dtype or jnp.zeros(()).dtype
        x = jnp.asarray([1.0, 1.0, 25.0], dtype) + jax.random.normal(key, (3,), dtype)
        return LorenzState(x=x, t=jnp.zeros((), dtype), step=jnp.zeros((), jnp.int32))

    def step(self, state: LorenzState, params: Lorenz63Params) -> LorenzState:
        """One RK4 step of ``dt``."""
        return _advance_state(state, self.flow(state.x, params), self.dt)

    def advance(self, state: LorenzState, params: Lorenz63Params, steps: int) -> LorenzState:
        """``steps`` steps inside one ``lax.fori_loop``."""
        return jax.lax.fori_loop(0, steps, lambda _, s: self.step(s, params), state)

    def observe(self, state: LorenzState) -> dict[str, jax.Array]:
        """The published field: ``{"x": (3,)}``."""
        return {"x": state.x}

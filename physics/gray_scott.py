"""Gray-Scott reaction-diffusion on a periodic square grid, explicit finite differences.

Solves (Pearson 1993, "Complex patterns in a simple system", Science 261:189)::

    du/dt = Du lap(u) - u v^2 + F (1 - u)
    dv/dt = Dv lap(v) + u v^2 - (F + k) v

in grid units (``dx = 1``) with the 5-point Laplacian, periodic boundaries and
forward Euler in time. The defaults ``Du = 0.21``, ``Dv = 0.105``, ``dt = 1`` are
Pearson's ``Du = 2e-5``, ``Dv = 1e-5`` on his 256-point grid of side 2.5
(``Du / dx^2 = 2e-5 / (2.5/256)^2 = 0.21``), so patterns have his wavelength in
cells; a small grid shows a few wavelengths of them.

The parameters are the feed rate ``F`` and the kill rate ``k``; a run may also
set its own ``Du``, ``Dv`` and seed (size and concentration), so studies of up
to six parameters vmap over one simulator (:class:`GrayScottParams`). The homogeneous
steady states are known in closed form: the trivial state ``(u, v) = (1, 0)``
for every ``(F, k)``, and, where ``F >= 4 (F + k)^2`` (left of the saddle-node
line ``k = sqrt(F)/2 - F``), ``u = (1 +- sqrt(1 - 4 (F + k)^2 / F)) / 2`` with
``v = F (1 - u) / (F + k)`` (:meth:`GrayScott.homogeneous_states`); the tests
check the scheme against them and against exact diffusion of Fourier modes.

The scalar quantity of interest over ``(F, k)`` is the pattern amplitude
:func:`pattern_amplitude`: the spatial standard deviation of ``v`` after a fixed
time from a fixed seed perturbation. It is zero where the seed dies out or the
field becomes uniform, and positive in Pearson's pattern regimes (spots,
stripes, labyrinths), a crescent in the ``(F, k)`` plane along the saddle-node line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp


class GrayScottParams(NamedTuple):
    """Parameters of one run: feed rate ``F`` and kill rate ``k`` (scalars, >= 0), and
    optionally per-run values of settings the simulator otherwise fixes.

    A field left ``None`` takes the simulator's value (``GrayScott.diffusion_u`` and so
    on); a given one overrides it for this run, so a batch of runs can be vmapped over
    diffusivities and seeds as well as rates. Per-run diffusivities must keep
    ``dt * max(Du, Dv) <= 0.25`` (the step cannot check a traced value: bound the study).

    Attributes:
        feed: ``F``.
        kill: ``k``.
        diffusion_u: ``Du`` in grid units.
        diffusion_v: ``Dv`` in grid units.
        seed_fraction: side of the central seed square as a share of ``n`` (in ``(0, 1)``).
        seed_v: ``v`` inside the seed square (Pearson: 0.25; ``u`` there is ``1 - 2 seed_v``).
    """

    feed: jax.Array
    kill: jax.Array
    diffusion_u: jax.Array | None = None
    diffusion_v: jax.Array | None = None
    seed_fraction: jax.Array | None = None
    seed_v: jax.Array | None = None


class GrayScottState(NamedTuple):
    """State of one run: the two concentration fields, the simulated time, the step count."""

    u: jax.Array
    v: jax.Array
    t: jax.Array
    step: jax.Array


@dataclass(frozen=True)
class GrayScott:
    """Gray-Scott simulator (pure, jit-able, vmap-able over params and state).

    Args:
        n: grid points per side (the fields are ``n x n``, periodic).
        diffusion_u: ``Du`` in grid units.
        diffusion_v: ``Dv`` in grid units.
        dt: time step; forward Euler is stable for ``dt * max(Du, Dv) <= 0.25``
            (the reaction terms are mild for ``F, k <= 0.1``).
        seed_fraction: side of the central seed square as a share of ``n``.
        noise: amplitude of the uniform noise added to the seed (from the ``init`` key).

    Raises:
        ValueError: for ``n < 4``, non-positive diffusivities, an unstable ``dt``
            or a seed fraction outside ``(0, 1)``.

    Example:
        >>> sim = GrayScott(n=32)
        >>> p = GrayScottParams(feed=jnp.float32(0.04), kill=jnp.float32(0.06))
        >>> s = sim.advance(sim.init(jax.random.key(0), p), p, 100)
        >>> s.v.shape
        (32, 32)
    """

    n: int = 32
    diffusion_u: float = 0.21
    diffusion_v: float = 0.105
    dt: float = 1.0
    seed_fraction: float = 0.25
    noise: float = 0.02

    def __post_init__(self) -> None:
        if self.n < 4:
            raise ValueError(f"GrayScott needs n >= 4 grid points, got n={self.n}")
        if not (self.diffusion_u > 0 and self.diffusion_v > 0):
            raise ValueError(f"diffusivities must be > 0, got Du={self.diffusion_u}, Dv={self.diffusion_v}")
        if not 0 < self.dt * max(self.diffusion_u, self.diffusion_v) <= 0.25:
            raise ValueError(
                f"dt * max(Du, Dv) must be in (0, 0.25] for a stable step, got {self.dt * max(self.diffusion_u, self.diffusion_v)}"
            )
        if not 0 < self.seed_fraction < 1:
            raise ValueError(f"seed_fraction must be in (0, 1), got {self.seed_fraction}")

    def init(self, key: jax.Array, params: GrayScottParams) -> GrayScottState:
        """Pearson's initial condition: ``(1, 0)`` with a noisy ``(1/2, 1/4)`` square in the middle.

        Args:
            key: PRNG key of the seed's noise (fixed key: deterministic runs).
            params: the run's parameters; only ``seed_fraction`` and ``seed_v`` matter
                here (``None``: the simulator's seed fraction and Pearson's ``v = 1/4``).

        Returns:
            The state at ``t = 0``.
        """
        n = self.n
        idx = jnp.arange(n)
        if params.seed_fraction is None:
            half = jnp.float32(max(1, int(round(self.seed_fraction * n / 2))))
        else:  # traced: the same rounding, at least one cell
            half = jnp.maximum(1.0, jnp.round(jnp.asarray(params.seed_fraction, jnp.float32) * n / 2))
        seed_v = jnp.float32(0.25) if params.seed_v is None else jnp.asarray(params.seed_v, jnp.float32)
        near = jnp.abs(idx - n // 2) < half
        inside = near[:, None] & near[None, :]
        ku, kv = jax.random.split(key)
        u = jnp.where(inside, 1.0 - 2.0 * seed_v, 1.0) + self.noise * (jax.random.uniform(ku, (n, n)) - 0.5) * inside
        v = jnp.where(inside, seed_v, 0.0) + self.noise * (jax.random.uniform(kv, (n, n)) - 0.5) * inside
        zero = jnp.zeros((), jnp.float32)
        return GrayScottState(u=u.astype(jnp.float32), v=v.astype(jnp.float32), t=zero, step=jnp.zeros((), jnp.int32))

    @staticmethod
    def laplacian(a: jax.Array) -> jax.Array:
        """Periodic 5-point Laplacian with ``dx = 1``."""
        return jnp.roll(a, 1, 0) + jnp.roll(a, -1, 0) + jnp.roll(a, 1, 1) + jnp.roll(a, -1, 1) - 4.0 * a

    def step(self, state: GrayScottState, params: GrayScottParams) -> GrayScottState:
        """One forward-Euler step of ``dt``."""
        u, v = state.u, state.v
        f = jnp.asarray(params.feed, u.dtype)
        k = jnp.asarray(params.kill, u.dtype)
        d_u = self.diffusion_u if params.diffusion_u is None else jnp.asarray(params.diffusion_u, u.dtype)
        d_v = self.diffusion_v if params.diffusion_v is None else jnp.asarray(params.diffusion_v, u.dtype)
        uvv = u * v * v
        du = d_u * self.laplacian(u) - uvv + f * (1.0 - u)
        dv = d_v * self.laplacian(v) + uvv - (f + k) * v
        step = state.step + 1
        # t from the step count: no float32 drift over long runs.
        return GrayScottState(u=u + self.dt * du, v=v + self.dt * dv, t=(step * self.dt).astype(state.t.dtype), step=step)

    def advance(self, state: GrayScottState, params: GrayScottParams, steps: int) -> GrayScottState:
        """Take ``steps`` steps inside one ``lax.fori_loop`` (jit this, not a Python loop)."""
        return jax.lax.fori_loop(0, steps, lambda _, s: self.step(s, params), state)

    def observe(self, state: GrayScottState) -> dict[str, jax.Array]:
        """The published fields: ``{"u": (n, n), "v": (n, n)}`` float32."""
        return {"u": state.u, "v": state.v}

    @staticmethod
    def homogeneous_states(feed: float, kill: float) -> list[tuple[float, float]]:
        """The spatially uniform steady states ``(u, v)`` in closed form (see the module docstring).

        Args:
            feed: ``F > 0``.
            kill: ``k >= 0``.

        Returns:
            ``[(1, 0)]``, plus the two non-trivial states where ``F >= 4 (F + k)^2``.

        Raises:
            ValueError: for ``F <= 0`` or ``k < 0``.
        """
        if not (feed > 0 and kill >= 0):
            raise ValueError(f"expected F > 0 and k >= 0, got F={feed}, k={kill}")
        states = [(1.0, 0.0)]
        disc = 1.0 - 4.0 * (feed + kill) ** 2 / feed
        if disc >= 0:
            for sign in (1.0, -1.0):
                u = 0.5 * (1.0 + sign * disc**0.5)
                states.append((u, feed * (1.0 - u) / (feed + kill)))
        return states


def pattern_amplitude(state: GrayScottState) -> jax.Array:
    """The quantity of interest: the spatial standard deviation of ``v``.

    Zero for any uniform state (the seed died out, or the field filled in
    evenly), positive where a stationary or moving pattern remains; the
    crescent of pattern regimes in the ``(F, k)`` plane is where it lives.
    """
    return jnp.std(state.v)


VECTOR_LAYOUT = ("feed", "kill", "diffusion_u", "diffusion_v", "seed_fraction", "seed_v")
"""The order of :class:`GrayScottParams` fields in a parameter vector (a prefix of it)."""


def params_from_vector(x: jax.Array) -> GrayScottParams:
    """``GrayScottParams`` from a vector: the layout a parameter study proposes.

    The vector holds the first ``len(x)`` fields of :data:`VECTOR_LAYOUT`: ``(F, k)``,
    ``(F, k, Du, Dv)``, ``(F, k, Du, Dv, seed_fraction)`` and so on; the fields after it
    keep the simulator's values.

    Raises:
        ValueError: for a vector of fewer than 2 or more than 6 entries.
    """
    size = x.shape[0]
    if not 2 <= size <= len(VECTOR_LAYOUT):
        raise ValueError(f"expected a vector of 2 to {len(VECTOR_LAYOUT)} entries {VECTOR_LAYOUT}, got {size}")
    return GrayScottParams(**{name: jnp.asarray(x[i], jnp.float32) for i, name in enumerate(VECTOR_LAYOUT[:size])})


def run_amplitude(sim: GrayScott, x: jax.Array, steps: int, seed: int = 0) -> jax.Array:
    """Pattern amplitude after ``steps`` steps at ``x`` from the seed of ``seed``.

    Pure and vmap-able over ``x``: ``jax.jit(jax.vmap(lambda x: run_amplitude(sim, x, 2000)))``
    evaluates a whole batch of parameter points in one call.

    Args:
        sim: the simulator.
        x: ``(d,)`` parameters in the layout of :func:`params_from_vector` (``d`` in 2..6).
        steps: time steps to run.
        seed: PRNG seed of the initial perturbation (the same for every ``x``).

    Returns:
        A float32 scalar; NaN where the run blew up.
    """
    params = params_from_vector(x)
    state = sim.advance(sim.init(jax.random.key(seed), params), params, steps)
    return pattern_amplitude(state)

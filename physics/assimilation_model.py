"""What a data-assimilation run needs of a model, and that for the models shipped here.

Bring your own JAX model by writing a small frozen dataclass with:

- ``grid``: the shape of the state's periodic grid (``(n,)`` for a ring of
  ``n`` variables, ``(ny, nx)`` for a 2-D field); the state is the flat
  C-ordered vector of ``prod(grid)`` values. Localisation measures distances
  on this grid.
- ``interval``: model time between two observations.
- ``initial_state(key) -> (n,)``: one random initial state (for the truth and
  for each ensemble member).
- ``forecast(x) -> x``: one state ``(n,)`` advanced over one observation
  interval, however many model steps that takes; pure and jit-able (it is
  ``vmap``-ed over the members).

The observation operator is a :class:`~coupler.physics.observation_operator.LinearObservation`
on the model's grid (all points by default, or a subset / a sub-grid);
:func:`observe_all` builds the default one. Nothing else: no Dask, no actors.

Example (a damped oscillator, observed in position, 10 Euler steps per interval)::

    @dataclass(frozen=True)
    class Oscillator:
        grid: tuple[int, ...] = (2,)
        interval: float = 0.1

        def initial_state(self, key):
            return jax.random.normal(key, (2,))

        def forecast(self, x):
            def step(_, s):
                return s + 0.01 * jnp.stack([s[1], -s[0] - 0.1 * s[1]])
            return jax.lax.fori_loop(0, 10, step, x)

    obs = LinearObservation(2, indices=(0,))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from coupler.physics.lorenz import Lorenz63, Lorenz63Params, Lorenz96, Lorenz96Params
from coupler.physics.navier_stokes import NavierStokes2D, NavierStokesParams, NavierStokesState
from coupler.physics.observation_operator import LinearObservation


@runtime_checkable
class AssimilationModel(Protocol):
    """The model protocol that the assimilation actors (``actors/``, never imported here) run."""

    @property
    def grid(self) -> tuple[int, ...]: ...

    @property
    def interval(self) -> float: ...

    def initial_state(self, key: jax.Array) -> jax.Array: ...

    def forecast(self, x: jax.Array) -> jax.Array: ...


def state_size(model: AssimilationModel) -> int:
    """``n = prod(model.grid)``."""
    return int(np.prod(model.grid))


def observe_all(model: AssimilationModel) -> LinearObservation:
    """Observe every variable of ``model``'s grid."""
    return LinearObservation(state_size(model), shape=tuple(model.grid))


def operator_for(model: AssimilationModel, obs: LinearObservation | None) -> LinearObservation:
    """``obs``, checked against ``model``'s grid, or every variable of it (``None``).

    Args:
        model: the model whose state ``obs`` observes.
        obs: the observation operator, or ``None``.

    Returns:
        The operator to use.

    Raises:
        ValueError: if ``obs`` observes a state of another size, or lives on
            another grid (localisation would measure distances on the wrong
            grid: a 16x16 model observed through a ring of 256 points).
    """
    if obs is None:
        return observe_all(model)
    n, grid = state_size(model), tuple(int(s) for s in model.grid)
    if obs.n != n:
        raise ValueError(f"obs observes a state of {obs.n} values, the model's has {n} (grid {grid})")
    if tuple(obs.shape) != grid:  # type: ignore[arg-type]
        raise ValueError(
            f"obs lives on the grid {obs.shape}, the model's is {grid}: localisation measures distances on obs's "
            f"grid; give it shape={grid} (e.g. LinearObservation({n}, indices=..., shape={grid}), or .subgrid)"
        )
    return obs


def check_state(model: AssimilationModel) -> None:
    """Refuse a model whose ``initial_state`` is not the flat vector of ``prod(grid)`` values (shapes only).

    Raises:
        ValueError: naming the shape expected and the shape ``initial_state`` gives.
    """
    n = state_size(model)
    shape = jax.eval_shape(model.initial_state, jax.random.key(0)).shape
    if shape != (n,):
        raise ValueError(
            f"model.initial_state must return the flat state, shape ({n},) for the grid {tuple(model.grid)} "
            f"(C order), got shape {shape}"
        )


def _check_steps(steps: int) -> None:
    if steps < 1:
        raise ValueError(f"steps per observation interval must be >= 1, got {steps}")


@dataclass(frozen=True)
class Lorenz96Model:
    """Lorenz-96 on a ring, ``steps`` RK4 steps of ``dt`` per observation interval.

    Args:
        n: number of variables.
        forcing: ``F`` (8 is chaotic; set another value for a model with structural error).
        dt: RK4 step.
        steps: steps per observation interval.

    Raises:
        ValueError: for ``steps < 1`` (and what :class:`Lorenz96` refuses).
    """

    n: int = 40
    forcing: float = 8.0
    dt: float = 0.05
    steps: int = 1

    def __post_init__(self) -> None:
        _check_steps(self.steps)
        Lorenz96(self.n, self.dt)  # validates n and dt

    @property
    def grid(self) -> tuple[int, ...]:
        return (self.n,)

    @property
    def interval(self) -> float:
        return self.steps * self.dt

    def initial_state(self, key: jax.Array) -> jax.Array:
        """The rest state ``F`` plus a small perturbation (``Lorenz96.init``)."""
        return Lorenz96(self.n, self.dt).init(key, Lorenz96Params(jnp.asarray(self.forcing))).x

    def forecast(self, x: jax.Array) -> jax.Array:
        sim = Lorenz96(self.n, self.dt)
        return jax.lax.fori_loop(0, self.steps, lambda _, z: sim.flow(z, self.forcing), x)


@dataclass(frozen=True)
class Lorenz63Model:
    """Lorenz-63, ``steps`` RK4 steps of ``dt`` per observation interval (0.01 x 25 is customary).

    Raises:
        ValueError: for ``steps < 1`` or a non-positive ``dt``.
    """

    dt: float = 0.01
    steps: int = 25
    sigma: float = 10.0
    rho: float = 28.0
    beta: float = 8.0 / 3.0

    def __post_init__(self) -> None:
        _check_steps(self.steps)
        Lorenz63(self.dt)

    @property
    def grid(self) -> tuple[int, ...]:
        return (3,)

    @property
    def interval(self) -> float:
        return self.steps * self.dt

    def _params(self) -> Lorenz63Params:
        return Lorenz63Params(jnp.asarray(self.sigma), jnp.asarray(self.rho), jnp.asarray(self.beta))

    def initial_state(self, key: jax.Array) -> jax.Array:
        return Lorenz63(self.dt).init(key, self._params()).x

    def forecast(self, x: jax.Array) -> jax.Array:
        sim, params = Lorenz63(self.dt), self._params()
        return jax.lax.fori_loop(0, self.steps, lambda _, z: sim.flow(z, params), x)


@dataclass(frozen=True)
class VorticityModel:
    """2-D Navier-Stokes vorticity (:class:`NavierStokes2D`) as a flat ``n*n`` state.

    Args:
        n: grid points per side.
        dt: time step.
        steps: steps per observation interval.
        viscosity: ``nu``.
        forcing_amplitude: ``A`` of the Kolmogorov force.
        drag: linear drag ``alpha``.
        forcing_wavenumber: ``k_f``.

    Raises:
        ValueError: for ``steps < 1`` (and what :class:`NavierStokes2D` refuses).
    """

    n: int = 32
    dt: float = 0.05
    steps: int = 4
    viscosity: float = 0.01
    forcing_amplitude: float = 1.0
    drag: float = 0.1
    forcing_wavenumber: int = 4

    def __post_init__(self) -> None:
        _check_steps(self.steps)
        self._sim()  # validates n, dt and k_f

    def _sim(self) -> NavierStokes2D:
        return NavierStokes2D(n=self.n, dt=self.dt, forcing_wavenumber=self.forcing_wavenumber)

    def _params(self, dtype: DTypeLike = jnp.float32) -> NavierStokesParams:
        return NavierStokesParams(
            jnp.asarray(self.viscosity, dtype), jnp.asarray(self.forcing_amplitude, dtype), jnp.asarray(self.drag, dtype)
        )

    @property
    def grid(self) -> tuple[int, ...]:
        return (self.n, self.n)

    @property
    def interval(self) -> float:
        return self.steps * self.dt

    def initial_state(self, key: jax.Array) -> jax.Array:
        """A random vorticity field (``NavierStokes2D.init``), flattened."""
        return self._sim().init(key, self._params()).w.reshape(-1)

    def forecast(self, x: jax.Array) -> jax.Array:
        # In the state's precision: a float64 ensemble (under x64) is not rounded to float32 every cycle.
        dtype = jnp.result_type(x.dtype, jnp.float32)
        sim, params = self._sim(), self._params(dtype)
        w = x.reshape(self.n, self.n).astype(dtype)
        state = NavierStokesState(w, jnp.zeros((), dtype), jnp.zeros((), jnp.int32))
        return sim.advance(state, params, self.steps).w.reshape(-1).astype(x.dtype)

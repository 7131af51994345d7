"""The protocol every coupler simulator follows: pure ``init`` and ``step``.

A simulator is a small, immutable configuration object (grid size, time step)
whose methods are pure functions over pytrees, in the spirit of optax and
diffrax: ``init(key, params) -> state`` and ``step(state, params) -> state``.
Both are jit-able and vmap-able, so an ensemble inside one actor is a ``vmap``.
The runtime owns every side effect (publishing, checkpointing, timing).
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar, runtime_checkable

import jax

State = TypeVar("State")
Params = TypeVar("Params")


@runtime_checkable
class Simulator(Protocol[State, Params]):
    """A pure, jit-able time stepper over a pytree state.

    Implementations are frozen dataclasses so that they hash and can be
    closed over by ``jax.jit`` as static configuration.
    """

    def init(self, key: jax.Array, params: Params) -> State:
        """Build the initial state for ``params`` (``key`` for stochastic parts)."""
        ...

    def step(self, state: State, params: Params) -> State:
        """Advance ``state`` by one time step and return the new state."""
        ...

    def observe(self, state: State) -> dict[str, Any]:
        """Return the fields a coupling publishes, as a dict of arrays."""
        ...

"""The simulator host: runs any ``coupler.physics`` simulator and publishes its fields."""

from __future__ import annotations

import time
from typing import Any, Literal

import jax
import numpy as np

from coupler.actors.base import ActorHost
from coupler.physics.base import Simulator


class SimulatorActor(ActorHost):
    """Host a pure JAX simulator (one run, or an ensemble of runs as a ``vmap``).

    Each loop iteration advances the state by ``publish_every`` steps inside one
    jitted ``fori_loop`` and publishes on the output port ``"fields"``:

    - ``mode="snapshots"``: ``{"field": x_t, "params": f}`` every ``publish_every`` steps;
    - ``mode="pairs"``: ``{"input": x_t, "target": x_{t+publish_every}, "params": f}``,
      the training pairs of a surrogate that jumps ``publish_every`` steps.

    ``f`` is the run's conditioning vector ``features`` (left out when ``None``).

    With an ensemble (``ensemble=True``: every leaf of ``params`` and ``features``
    has a leading member axis) each member's data goes out as its own message.

    Args:
        simulator: the simulator (pickled to the worker; a frozen dataclass).
        params: its parameters (a pytree; batched over members if ``ensemble``).
        name: actor name.
        steps: simulator steps to run in total.
        publish_every: steps between publications.
        field: key of ``simulator.observe(state)`` to publish.
        features: per-run conditioning vector published with each message (e.g.
            the diffusivity); shape ``(P,)`` or ``(members, P)``.
        mode: ``"pairs"`` or ``"snapshots"``.
        ensemble: whether ``params`` carry a leading member axis.
        seed: PRNG seed for ``simulator.init``.
        outputs: must map ``"fields"`` to a channel.
        **kwargs: passed to :class:`ActorHost`.

    Raises:
        ValueError: for non-positive ``steps``/``publish_every``, an unknown mode,
            or ``outputs`` without a ``"fields"`` port.
    """

    def __init__(
        self,
        simulator: Simulator,
        params: Any,
        *,
        name: str,
        steps: int,
        publish_every: int = 1,
        field: str = "u",
        features: np.ndarray | None = None,
        mode: Literal["pairs", "snapshots"] = "snapshots",
        ensemble: bool = False,
        seed: int = 0,
        outputs: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        if steps < 1 or publish_every < 1:
            raise ValueError(f"steps and publish_every must be >= 1, got steps={steps}, publish_every={publish_every}")
        if mode not in ("pairs", "snapshots"):
            raise ValueError(f"mode must be 'pairs' or 'snapshots', got {mode!r}")
        if "fields" not in (outputs or {}):
            raise ValueError(f"SimulatorActor needs outputs={{'fields': <channel>}}, got outputs={outputs!r}")
        super().__init__(name=name, outputs=outputs, **kwargs)
        self.simulator = simulator
        self.params = params
        self.total_steps = steps
        self.publish_every = publish_every
        self.field = field
        self.mode = mode
        self.ensemble = ensemble
        self.seed = seed
        self.features = None if features is None else np.asarray(features, np.float32)
        self.sim_steps = 0
        self.published = 0
        self.publish_seconds = 0.0
        self.compute_seconds = 0.0
        self.last_publish_at = 0.0

    def setup(self) -> None:
        sim, k = self.simulator, self.publish_every

        def advance(state: Any, params: Any) -> Any:
            return jax.lax.fori_loop(0, k, lambda _, s: sim.step(s, params), state)

        def observe(state: Any) -> Any:
            return sim.observe(state)[self.field]

        key = jax.random.key(self.seed)
        if self.ensemble:
            members = jax.tree.leaves(self.params)[0].shape[0]
            keys = jax.random.split(key, members)
            self.state = jax.jit(jax.vmap(sim.init))(keys, self.params)
            self._advance = jax.jit(jax.vmap(advance))
            self._observe = jax.jit(jax.vmap(observe))
        else:
            self.state = jax.jit(sim.init)(key, self.params)
            self._advance = jax.jit(advance)
            self._observe = jax.jit(observe)
        self._prev = np.asarray(self._observe(self.state))
        self._t = 0.0

    def step(self) -> bool:
        if self.sim_steps >= self.total_steps:
            return False
        t0 = time.perf_counter()
        self.state = self._advance(self.state, self.params)
        current = np.asarray(self._observe(self.state))  # blocks until computed
        self.sim_steps += self.publish_every
        t1 = time.perf_counter()
        self.compute_seconds += t1 - t0
        sim_time = float(np.ravel(np.asarray(getattr(self.state, "t", self.sim_steps)))[0])
        members = range(current.shape[0]) if self.ensemble else [None]
        for m in members:
            x_prev = self._prev if m is None else self._prev[m]
            x_now = current if m is None else current[m]
            f = self.features if (m is None or self.features is None) else self.features[m]
            payload: dict[str, Any] = {"input": x_prev, "target": x_now} if self.mode == "pairs" else {"field": x_now}
            if f is not None:
                payload["params"] = f
            self.outputs["fields"].send(payload, timestamp=sim_time, step=self.sim_steps, meta={"member": m or 0})
            self.published += 1
        self._prev = current
        self.publish_seconds += time.perf_counter() - t1
        self.last_publish_at = time.time()
        return True

    def info(self) -> dict[str, Any]:
        return {
            "sim_steps": self.sim_steps,
            "published": self.published,
            "compute_seconds": round(self.compute_seconds, 4),
            "publish_seconds": round(self.publish_seconds, 4),
            "last_publish_at": self.last_publish_at,
        }

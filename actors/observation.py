"""The observation source: a hidden truth run that streams noisy, timestamped observations.

It stands for an instrument network: the truth is a ``Lorenz96`` run nobody
else sees; every ``interval`` model-time units it takes an observation ``y = H x
+ e``, ``e ~ N(0, obs_std^2 I)``, and sends it on its ``"obs"`` port (a ``Queue``
channel) with the model time as the message's ``timestamp`` and the cycle
number in ``meta``. ``rate`` paces the stream in wall-clock time (observations
per second), as a live feed would be; ``missing`` lists cycles whose
observation is lost and never sent.

With ``verify=True`` each message also carries the truth (field ``"truth"``)
so that the assimilation host can score itself; the filter never reads it.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from coupler.actors.base import ActorHost
from coupler.physics.assimilation import LinearObservation, observation_noise
from coupler.physics.lorenz import Lorenz96, Lorenz96Params


class ObservationSource(ActorHost):
    """Run the hidden truth and publish observations at a set wall-clock rate.

    Args:
        model: the truth's model (one ``step`` = one observation interval).
        forcing: the truth's forcing ``F``.
        name: actor name.
        cycles: observations to produce (cycles ``1 .. cycles``).
        obs: the observation operator (default: every variable).
        obs_std: observation-error standard deviation.
        seed: seed of the truth's initial state and of the observation noise.
        rate: observations per wall-clock second (``0``: as fast as accepted).
        missing: cycles whose observation is lost (not sent).
        verify: also send the truth, for scoring.
        outputs: must map ``"obs"`` to a channel.
        **kwargs: passed to :class:`ActorHost`.

    Raises:
        ValueError: for ``cycles < 1``, a negative rate, a non-positive
            ``obs_std`` or ``outputs`` without ``"obs"``.
    """

    def __init__(
        self,
        model: Lorenz96,
        forcing: float,
        *,
        name: str,
        cycles: int,
        obs: LinearObservation | None = None,
        obs_std: float = 1.0,
        seed: int = 0,
        rate: float = 0.0,
        missing: tuple[int, ...] = (),
        verify: bool = True,
        outputs: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        if cycles < 1 or rate < 0 or not obs_std > 0:
            raise ValueError(f"need cycles >= 1, rate >= 0 and obs_std > 0, got {cycles}, {rate}, {obs_std}")
        if "obs" not in (outputs or {}):
            raise ValueError(f"ObservationSource needs outputs={{'obs': <channel>}}, got outputs={outputs!r}")
        super().__init__(name=name, outputs=outputs, **kwargs)
        self.model = model
        self.forcing = float(forcing)
        self.cycles = cycles
        self.obs = obs or LinearObservation(model.n)
        self.obs_std = obs_std
        self.seed = seed
        self.rate = rate
        self.missing = frozenset(int(c) for c in missing)
        self.verify = verify
        self.cycle = 0
        self.sent = 0

    def setup(self) -> None:
        params = Lorenz96Params(forcing=jnp.asarray(self.forcing))
        self._truth = self.model.init(jax.random.key(self.seed), params)
        self._flow = jax.jit(lambda x: self.model.flow(x, self.forcing))
        self._noise = jax.jit(lambda k: observation_noise(self.seed, k, self.obs.size, self.obs_std))
        self._next_at = time.monotonic()

    def step(self) -> bool:
        if self.cycle >= self.cycles:
            return False
        x = self._flow(self._truth.x)
        self._truth = self._truth._replace(x=x)
        self.cycle += 1
        if self.rate:
            # Pace by a schedule, not by sleeping a fixed time, so the rate holds on average.
            self._next_at += 1.0 / self.rate
            time.sleep(max(0.0, self._next_at - time.monotonic()))
        if self.cycle in self.missing:
            return True
        y = np.asarray(self.obs(x) + self._noise(self.cycle))
        payload = {"y": y, "truth": np.asarray(x)} if self.verify else {"y": y}
        self.outputs["obs"].send(payload, timestamp=self.cycle * self.model.dt, step=self.cycle, meta={"cycle": self.cycle})
        self.sent += 1
        return True

    def info(self) -> dict[str, Any]:
        return {"cycle": self.cycle, "sent": self.sent}

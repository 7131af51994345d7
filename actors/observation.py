"""The observation source: a hidden truth run that streams noisy, timestamped observations.

It stands for an instrument network: the truth is a run of any
:class:`~coupler.physics.assimilation_model.AssimilationModel` nobody else
sees; every ``model.interval`` model-time units it takes an observation ``y = H x
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
import numpy as np

from coupler.actors.base import ActorHost
from coupler.physics.assimilation import LinearObservation, observation_noise
from coupler.physics.assimilation_model import AssimilationModel, operator_for


class ObservationSource(ActorHost):
    """Run the hidden truth and publish observations at a set wall-clock rate.

    Args:
        model: the truth's model.
        name: actor name.
        cycles: observations to produce (cycles ``1 .. cycles``).
        obs: the observation operator (default: every variable of the model's grid).
        obs_std: observation-error standard deviation.
        seed: seed of the truth's initial state and of the observation noise.
        rate: observations per wall-clock second (``0``: as fast as accepted).
        missing: cycles whose observation is lost (not sent).
        verify: also send the truth, for scoring.
        outputs: must map ``"obs"`` to a channel.
        **kwargs: passed to :class:`ActorHost`.

    Raises:
        ValueError: for ``cycles < 1``, a negative rate, a non-positive
            ``obs_std``, ``outputs`` without ``"obs"`` or an ``obs`` that does
            not fit the model's state or grid.
        TypeError: for a model without the assimilation protocol.
    """

    def __init__(
        self,
        model: AssimilationModel,
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
        if not isinstance(model, AssimilationModel):
            raise TypeError(f"model must follow AssimilationModel (grid, interval, initial_state, forecast), got {type(model)}")
        obs = operator_for(model, obs)
        super().__init__(name=name, outputs=outputs, **kwargs)
        self.model = model
        self.cycles = cycles
        self.obs = obs
        self.obs_std = obs_std
        self.seed = seed
        self.rate = rate
        self.missing = frozenset(int(c) for c in missing)
        self.verify = verify
        self.cycle = 0
        self.sent = 0

    def setup(self) -> None:
        self._truth = self.model.initial_state(jax.random.key(self.seed))
        self._flow = jax.jit(self.model.forecast)
        self._noise = jax.jit(lambda k: observation_noise(self.seed, k, self.obs.size, self.obs_std))
        self._next_at = time.monotonic()

    def step(self) -> bool:
        if self.cycle >= self.cycles:
            return False
        x = self._truth = self._flow(self._truth)
        self.cycle += 1
        if self.rate:
            # Pace by a schedule, not by sleeping a fixed time, so the rate holds on average.
            self._next_at += 1.0 / self.rate
            time.sleep(max(0.0, self._next_at - time.monotonic()))
        if self.cycle in self.missing:
            return True
        y = np.asarray(self.obs(x) + self._noise(self.cycle))
        payload = {"y": y, "truth": np.asarray(x)} if self.verify else {"y": y}
        self.outputs["obs"].send(payload, timestamp=self.cycle * self.model.interval, step=self.cycle, meta={"cycle": self.cycle})
        self.sent += 1
        return True

    def info(self) -> dict[str, Any]:
        return {"cycle": self.cycle, "sent": self.sent}

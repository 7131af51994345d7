"""The assimilation host: a running forecast ensemble corrected by a live observation stream.

The model is any :class:`~coupler.physics.assimilation_model.AssimilationModel`
(Lorenz-63, Lorenz-96, a 2-D vorticity field, or the user's own): its
``forecast`` covers one observation interval, however many model steps that is.
Each loop iteration takes the next observation from the ``"obs"`` port (a
``Queue`` channel fed by an :class:`~coupler.actors.observation.ObservationSource`)
and runs forecast-analysis cycles up to its time, all in one jitted,
vmapped ensemble function (:func:`coupler.physics.assimilation.cycle`):

- timestamps are matched to cycles (``cycle = timestamp / model.interval``); a
  timestamp off the cycle grid is refused (counted as ``mismatched``);
- an observation for a cycle already passed arrives too late to be used
  (counted as ``late``; a filter does not go back in time);
- an observation holding NaN or inf (a failed sensor) is refused (counted as
  ``invalid``, with a warning the first time): assimilated, it would turn the
  ensemble into NaN for good; its cycle is then forecast only;
- cycles whose observation never came are forecast only (``missing``); with
  ``max_wait`` set, the ensemble does not wait longer than that for an
  observation but moves on one cycle, as an operational system keeps to its
  schedule.

After every cycle it publishes the analysis (mean and spread) on the
``"analysis"`` port (a ``Latest`` channel), and -- for a learner -- the pair
``{"forecast": raw forecast mean, "increment": analysis mean - raw forecast
mean}`` on ``"increments"``. With a ``correction`` config the forecast adds a
learned model correction whose weights arrive on the ``"weights"`` port
(``Latest``, from a ``LearnerActor`` with a ``CorrectionTrainer``); new weights
are data to the jitted cycle, never a recompilation. It keeps the history of
every cycle, RMSE included when the observations carry the truth.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from coupler.actors.base import ActorHost
from coupler.runtime import ChannelTimeout
from coupler.learners.correction import CorrectionConfig, correction_function
from coupler.physics.assimilation import FilterConfig, LinearObservation, cycle, cycle_key, initial_ensemble
from coupler.physics.assimilation_model import AssimilationModel, check_state, operator_for, state_size
from coupler.physics.localization import local_blocks

logger = logging.getLogger(__name__)

# A timestamp within this fraction of an interval of a cycle's time is that cycle's.
_TIME_TOLERANCE = 1e-3
_HISTORY_KEYS = ("cycle", "observed", "y", "truth", "forecast", "analysis", "spread", "weights_version", "wall")


class AssimilationActor(ActorHost):
    """Host an ensemble filter on a live observation stream.

    Args:
        model: the forecast model (give it other parameters than the truth's for model error).
        name: actor name.
        cycles: cycles to run (the loop ends after cycle ``cycles``).
        members: ensemble size.
        filter: the analysis scheme, inflation, observation error, localisation.
        obs: the observation operator (default: every variable of the model's grid).
        seed: seed of the initial ensemble and of the filter's randomness.
        correction: the correction network's config; ``None``: no correction.
        max_wait: seconds to wait for an observation before forecasting a cycle
            without one (``None``: wait as long as it takes).
        inputs: must map ``"obs"``; may map ``"weights"`` (with ``correction``).
        outputs: may map ``"analysis"`` and ``"increments"``.
        **kwargs: passed to :class:`ActorHost`.

    Raises:
        ValueError: for ``cycles < 1``, ``members < 2``, inputs without ``"obs"``, a
            ``"weights"`` input without a ``correction``, an ``obs`` that
            does not fit the model's state or grid, a model whose
            ``initial_state`` is not flat, a ``correction`` on another grid, or
            an LETKF ``local_block`` that does not divide every side of the
            observed grid.
        TypeError: for a model without the assimilation protocol.
    """

    def __init__(
        self,
        model: AssimilationModel,
        *,
        name: str,
        cycles: int,
        members: int = 40,
        filter: FilterConfig = FilterConfig(),
        obs: LinearObservation | None = None,
        seed: int = 0,
        correction: CorrectionConfig | None = None,
        max_wait: float | None = None,
        inputs: dict[str, str] | None = None,
        outputs: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        if cycles < 1:
            raise ValueError(f"cycles must be >= 1, got {cycles}")
        if "obs" not in (inputs or {}):
            raise ValueError(f"AssimilationActor needs inputs={{'obs': <channel>}}, got inputs={inputs!r}")
        if "weights" in (inputs or {}) and correction is None:
            raise ValueError("a 'weights' input needs correction=CorrectionConfig(...) to apply them")
        if not isinstance(model, AssimilationModel):
            raise TypeError(f"model must follow AssimilationModel (grid, interval, initial_state, forecast), got {type(model)}")
        if members < 2:
            raise ValueError(f"an ensemble needs members >= 2, got {members}")
        obs = operator_for(model, obs)
        check_state(model)
        grid = tuple(int(g) for g in model.grid)
        if correction is not None and (correction.grid or (state_size(model),)) != grid:
            raise ValueError(
                f"correction.grid is {correction.grid}, the model's grid is {grid}: set CorrectionConfig(grid={grid})"
            )
        if filter.method == "letkf":  # here, at the spawn, not at the first analysis
            local_blocks(obs.shape, filter.local_block)  # type: ignore[arg-type]
        super().__init__(name=name, inputs=inputs, outputs=outputs, **kwargs)
        self.model = model
        self.cycles = cycles
        self.members = members
        self.filter = filter
        self.obs = obs
        self.seed = seed
        self.correction = correction
        self.max_wait = max_wait
        self.cycle = 0
        self.late = self.missing = self.mismatched = self.unpublished = self.invalid = 0
        self.weights: Any = None
        self.weights_version = 0
        self.rows: dict[str, list[Any]] = {k: [] for k in _HISTORY_KEYS}
        self._restored: dict[str, Any] | None = None

    # -- loop ----------------------------------------------------------------------------------
    def setup(self) -> None:
        flow = jax.vmap(self.model.forecast)
        obs, cfg, seed = self.obs, self.filter, self.seed
        if self.correction is None:
            self._cycle = jax.jit(lambda e, y, m, k, w: cycle(flow, e, y, m, cycle_key(seed, k), obs, cfg))
        else:
            apply, zero = correction_function(self.correction)
            self.weights = zero if self.weights is None else self.weights
            self._cycle = jax.jit(
                lambda e, y, m, k, w: cycle(flow, e, y, m, cycle_key(seed, k), obs, cfg, lambda x: apply(w, x))
            )
        self.ensemble = initial_ensemble(self.model.initial_state, self.members, seed)
        restored, self._restored = self._restored, None
        if restored is not None:
            self.ensemble = jnp.asarray(restored["ensemble"], self.ensemble.dtype)

    def step(self) -> bool:
        if self.cycle >= self.cycles:
            return False
        if "weights" in self.inputs:
            w = self.inputs["weights"].receive(timeout=0, default=None)
            if w is not None:
                self.weights, self.weights_version = w.data, int(w.step)
        msg = self.inputs["obs"].receive(timeout=self.max_wait, default=None)
        if msg is None:  # nothing within max_wait: keep to the schedule without it
            self._advance(None)
            return True
        interval = self.model.interval
        k = int(round(msg.timestamp / interval))
        if abs(msg.timestamp - k * interval) > _TIME_TOLERANCE * interval or k < 1:
            self.mismatched += 1
            return True
        if k <= self.cycle:
            self.late += 1
            return True
        if not np.all(np.isfinite(np.asarray(msg.data["y"]))):
            self.invalid += 1
            if self.invalid == 1:
                logger.warning(
                    "assimilation %r: the observation for cycle %d holds NaN or inf (%s); it is refused and its "
                    "cycle forecast only (counted in status().info['invalid'])", self.name, k, msg.source,
                )
            return True
        while self.cycle < k - 1 and self.cycle < self.cycles:
            self._advance(None)
        if self.cycle < self.cycles:
            self._advance(msg.data)
        return True

    def _advance(self, data: dict[str, Any] | None) -> None:
        """Run cycle ``self.cycle + 1`` (assimilating ``data["y"]`` if given) and publish it."""
        k = self.cycle + 1
        observed = data is not None
        dtype = self.ensemble.dtype  # float64 with jax_enable_x64: observations are not rounded to float32
        y = np.asarray(data["y"], dtype) if observed else np.zeros(self.obs.size, dtype)
        self.ensemble, out = self._cycle(self.ensemble, y, jnp.asarray(observed), k, self.weights)
        mean, raw, fc = np.asarray(out.analysis), np.asarray(out.raw_forecast), np.asarray(out.forecast)
        spread = float(out.spread)
        self.cycle = k
        self.missing += not observed
        truth = None if not observed or "truth" not in data else np.asarray(data["truth"])
        recorded_y = y if observed else np.full(self.obs.size, np.nan, dtype)
        for key, value in zip(
            _HISTORY_KEYS, (k, observed, recorded_y, truth, fc, mean, spread, self.weights_version, time.time())
        ):
            self.rows[key].append(value)
        if truth is not None:
            self.report_metric("rmse_analysis", float(np.sqrt(np.mean((mean - truth) ** 2))), step=k)
        t = k * self.model.interval
        if "analysis" in self.outputs:
            try:
                # Readers of the analysis (a display, a downstream model) come and
                # go; the filter keeps to its schedule whether anyone reads or not.
                self.outputs["analysis"].send({"mean": mean, "spread": np.float32(spread)}, timestamp=t, step=k, timeout=0)
            except ChannelTimeout:
                self.unpublished += 1
        if observed and "increments" in self.outputs:
            self.outputs["increments"].send({"forecast": raw, "increment": mean - raw}, timestamp=t, step=k)

    # -- remote methods --------------------------------------------------------------------------
    def history(self) -> dict[str, Any]:
        """Every cycle so far as numpy arrays (cycles without an observation have NaN ``y``/``truth``).

        Keys: ``cycle``, ``observed``, ``y`` ``(K, p)``, ``truth``, ``forecast``,
        ``analysis`` ``(K, n)``, ``spread``, ``weights_version``, ``wall``,
        ``rmse_forecast``, ``rmse_analysis`` (NaN where there is no truth).
        """
        n = state_size(self.model)
        rows = {k: list(v) for k, v in self.rows.items()}
        truth = np.array([np.full(n, np.nan) if t is None else t for t in rows["truth"]]).reshape(-1, n)
        out = {
            "cycle": np.asarray(rows["cycle"], np.int64),
            "observed": np.asarray(rows["observed"], bool),
            "y": np.asarray(rows["y"]).reshape(-1, self.obs.size),
            "truth": truth,
            "forecast": np.asarray(rows["forecast"]).reshape(-1, n),
            "analysis": np.asarray(rows["analysis"]).reshape(-1, n),
            "spread": np.asarray(rows["spread"]),
            "weights_version": np.asarray(rows["weights_version"], np.int64),
            "wall": np.asarray(rows["wall"]),
        }
        out["rmse_forecast"] = np.sqrt(np.mean((out["forecast"] - truth) ** 2, axis=1))
        out["rmse_analysis"] = np.sqrt(np.mean((out["analysis"] - truth) ** 2, axis=1))
        return out

    def info(self) -> dict[str, Any]:
        return {
            "cycle": self.cycle,
            "late": self.late,
            "missing": self.missing,
            "mismatched": self.mismatched,
            "unpublished": self.unpublished,
            "invalid": self.invalid,
            "weights_version": self.weights_version,
        }

    def state_dict(self) -> dict[str, Any]:
        """Ensemble, cycle, counters, correction weights and history (numpy)."""
        if not hasattr(self, "ensemble"):
            return {} if self._restored is None else self._restored
        return {
            "ensemble": np.array(self.ensemble),
            "cycle": self.cycle,
            "counters": [self.late, self.missing, self.mismatched, self.unpublished, self.invalid],
            "weights": self.weights,
            "weights_version": self.weights_version,
            "rows": {k: list(v) for k, v in self.rows.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state_dict()`` of another instance (the ensemble is set at set-up).

        Raises:
            ValueError: if keys are missing.
        """
        if not state:
            return
        missing = sorted({"ensemble", "cycle", "counters", "weights", "weights_version", "rows"} - set(state))
        if missing:
            raise ValueError(f"AssimilationActor {self.name!r}: checkpoint state lacks {missing}; got keys {sorted(state)}")
        self._restored = state
        self.cycle = int(state["cycle"])
        counters = [int(c) for c in state["counters"]] + [0]  # a checkpoint from before "invalid" has four
        self.late, self.missing, self.mismatched, self.unpublished, self.invalid = counters[:5]
        self.weights, self.weights_version = state["weights"], int(state["weights_version"])
        self.rows = {k: list(state["rows"][k]) for k in _HISTORY_KEYS}

"""An ensemble spread over the cluster: member-block simulators and the filter that gathers them.

Real systems run the members as separate model instances (PDAF's online mode
keeps members in model tasks, Melissa-DA runs thousands of them on separate
cores). Here the members live in :class:`MemberBlockActor` s, each advancing a
block of members (one ``vmap``) on its worker, and one
:class:`EnsembleFilterActor` runs the cycle:

1. **scatter**: it sends block ``b`` its analysis members for cycle ``k`` on
   the block's own ``Latest`` channel (``"block<b>"`` output);
2. **forecast**: each block advances its members over one observation interval
   and sends them back, tagged ``step = k + 1``, on its own ``Latest`` channel
   (``"forecast<b>"`` input of the filter);
3. **gather**: the filter takes the observation of cycle ``k + 1`` and the
   blocks' forecasts; it waits at most ``gather_timeout`` seconds for a block;
4. **analysis**: on the members it has (any subset of blocks, >= 2 members).

A block whose forecast does not come (its worker was lost, or it is late) is
*absent* for that cycle: the filter goes on with the others, and sends the
absent block new members drawn from the analysis (its mean plus random
combinations of the analysis anomalies, which have the analysis covariance in
expectation). When the supervisor restarts the lost block on another worker
(``Coupling.spawn`` registers every actor with it), the new instance takes the
next members it is sent and rejoins; the filter no longer waits the full
timeout for a block it knows absent, only a grace after the others.

One channel per block and direction, with ``Latest``: a restarted block needs
only the newest members, and nothing queued for a lost consumer can hold the
filter back.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from coupler.actors.base import ActorHost
from coupler.physics.assimilation import FilterConfig, LinearObservation, analysis, cycle_key, initial_ensemble
from coupler.physics.assimilation_model import AssimilationModel, check_state, operator_for
from coupler.runtime import ChannelTimeout, ConsumerGone

# Seconds a scatter waits for a block that is absent (lost, or restarting) before moving on.
_ABSENT_SEND_TIMEOUT = 0.05
# Timing fields of the filter's history, per cycle.
TIMING_KEYS = ("forecast", "gather", "analysis", "scatter", "cycle_time")


def block_input(b: int) -> str:
    """The filter's input port carrying block ``b``'s forecasts."""
    return f"forecast{b}"


def block_output(b: int) -> str:
    """The filter's output port carrying block ``b``'s analysis members."""
    return f"block{b}"


class MemberBlockActor(ActorHost):
    """Advance a block of ensemble members one observation interval per analysis it receives.

    Args:
        model: the forecast model.
        name: actor name.
        block: this block's index (it tags its forecasts with it).
        **kwargs: passed to :class:`ActorHost`; its ``inputs`` must map ``"members"`` (a
            ``Latest`` channel from the filter), its ``outputs`` ``"forecast"`` (a ``Latest``
            channel to the filter).

    Raises:
        ValueError: for missing ports.
        TypeError: for a model without the assimilation protocol.
    """

    def __init__(self, model: AssimilationModel, *, name: str, block: int, **kwargs: Any) -> None:
        if "members" not in (kwargs.get("inputs") or {}) or "forecast" not in (kwargs.get("outputs") or {}):
            raise ValueError(f"MemberBlockActor needs inputs={{'members': ...}} and outputs={{'forecast': ...}}, got {kwargs}")
        if not isinstance(model, AssimilationModel):
            raise TypeError(f"model must follow AssimilationModel, got {type(model)}")
        super().__init__(name=name, **kwargs)
        self.model, self.block = model, block
        self.last = -1  # the last analysis cycle forecast from
        self.forecasts = 0

    def setup(self) -> None:
        self._forecast = jax.jit(jax.vmap(self.model.forecast))

    def step(self) -> bool:
        msg = self.inputs["members"].receive()
        k = int(msg.step)
        if k <= self.last:  # the same analysis again (a Latest value re-delivered): nothing new to forecast
            return True
        t0 = time.perf_counter()
        members = self._forecast(jnp.asarray(msg.data["members"]))
        members = np.asarray(members)  # waits for the computation, so the time below is the forecast's
        seconds = time.perf_counter() - t0
        self.outputs["forecast"].send(
            {"members": members, "seconds": np.float64(seconds)}, timestamp=(k + 1) * self.model.interval, step=k + 1,
            meta={"block": self.block},
        )
        self.last, self.forecasts = k, self.forecasts + 1
        return True

    def info(self) -> dict[str, Any]:
        return {"block": self.block, "last": self.last, "forecasts": self.forecasts}

    def state_dict(self) -> dict[str, Any]:
        return {"last": self.last, "forecasts": self.forecasts}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.last, self.forecasts = int(state["last"]), int(state["forecasts"])


class EnsembleFilterActor(ActorHost):
    """Run the filter of an ensemble whose members live in :class:`MemberBlockActor` s.

    Args:
        model: the model (its interval matches observations to cycles; its
            ``initial_state`` draws the initial members).
        name: actor name.
        cycles: analysis cycles to run.
        blocks: number of member blocks.
        block_size: members per block (the ensemble has ``blocks * block_size``).
        filter: the analysis scheme.
        obs: the observation operator (default: every variable).
        seed: seed of the initial ensemble, the filter's randomness and the redraws.
        gather_timeout: seconds to wait for a block's forecast before the cycle
            goes on without it.
        inputs: ``"obs"`` and ``forecast<b>`` for every block.
        outputs: ``block<b>`` for every block.
        **kwargs: passed to :class:`ActorHost`.

    Raises:
        ValueError: for ``cycles < 1``, fewer than 2 members, a non-positive
            timeout, missing ports, an ``obs`` that does not fit the model's state
            or grid, or a model whose ``initial_state`` is not flat.
    """

    def __init__(
        self,
        model: AssimilationModel,
        *,
        name: str,
        cycles: int,
        blocks: int,
        block_size: int,
        filter: FilterConfig = FilterConfig(),
        obs: LinearObservation | None = None,
        seed: int = 0,
        gather_timeout: float = 10.0,
        inputs: dict[str, str] | None = None,
        outputs: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        if cycles < 1 or blocks < 1 or blocks * block_size < 2 or not gather_timeout > 0:
            raise ValueError(
                f"need cycles >= 1, >= 2 members and gather_timeout > 0, got {cycles}, {blocks} x {block_size}, {gather_timeout}"
            )
        want_in = {"obs", *(block_input(b) for b in range(blocks))}
        want_out = {block_output(b) for b in range(blocks)}
        if not want_in <= set(inputs or {}) or not want_out <= set(outputs or {}):
            raise ValueError(f"EnsembleFilterActor needs inputs {sorted(want_in)} and outputs {sorted(want_out)}, "
                             f"got {sorted(inputs or {})} and {sorted(outputs or {})}")
        obs = operator_for(model, obs)
        check_state(model)
        super().__init__(name=name, inputs=inputs, outputs=outputs, **kwargs)
        self.model, self.cycles, self.blocks, self.block_size = model, cycles, blocks, block_size
        self.filter, self.obs, self.seed = filter, obs, seed
        self.gather_timeout = gather_timeout
        self.cycle = 0
        self.absent: set[int] = set()
        self.ensemble: np.ndarray | None = None
        # A cycle in progress: its observation and the forecasts gathered so far.
        self._pending: dict[str, np.ndarray] | None = None
        self._got: dict[int, tuple[np.ndarray, float]] = {}
        self._gather_start: float | None = None
        self.rows: dict[str, list[Any]] = {k: [] for k in ("cycle", "members_used", "absent", "rmse", "wall", *TIMING_KEYS)}

    def setup(self) -> None:
        obs, cfg = self.obs, self.filter
        # One compilation per number of members present (a few values at most).
        self._analysis = jax.jit(lambda e, y, k: analysis(e, y, cycle_key(self.seed, k), obs, cfg))
        self._rng = np.random.default_rng([self.seed, self.cycle])
        if self.ensemble is None:
            self.ensemble = np.array(initial_ensemble(self.model.initial_state, self.blocks * self.block_size, self.seed))
        self._scatter(self.cycle)

    def _members(self, b: int) -> slice:
        return slice(b * self.block_size, (b + 1) * self.block_size)

    def _scatter(self, k: int) -> None:
        for b in range(self.blocks):
            try:
                self.outputs[block_output(b)].send(
                    {"members": self.ensemble[self._members(b)]}, timestamp=k * self.model.interval, step=k,
                    timeout=_ABSENT_SEND_TIMEOUT if b in self.absent else None,
                )
            except (ConsumerGone, ChannelTimeout):
                self.absent.add(b)  # its worker is gone; it gets the next cycle's members once restarted

    def _gather(self, k: int) -> None:
        """Take the blocks' forecasts of cycle ``k`` into ``self._got`` until all came or time is up.

        What it took stays in ``self._got`` if a control request (a checkpoint)
        interrupts the wait, so the retried step goes on from there.
        """
        if self._gather_start is None:
            self._gather_start = time.monotonic()
        start = self._gather_start
        deadline = start + self.gather_timeout
        for present_pass in (True, False):
            for b in range(self.blocks):
                if b in self._got or (b in self.absent) == present_pass:
                    continue
                # Absent blocks get a grace after the present ones, not the full timeout.
                until = deadline if present_pass else time.monotonic() + 0.25 * (time.monotonic() - start) + 0.01
                while b not in self._got:
                    msg = self.inputs[block_input(b)].receive(timeout=max(0.0, until - time.monotonic()), default=None)
                    if msg is None:
                        break
                    if int(msg.step) == k:
                        self._got[b] = (np.asarray(msg.data["members"]), float(msg.data["seconds"]))

    def step(self) -> bool:
        if self.cycle >= self.cycles:
            return False
        k = self.cycle + 1
        if self._pending is None:  # taken once: a step retried after a control request reuses it
            msg = self.inputs["obs"].receive()
            if int(round(msg.timestamp / self.model.interval)) != k:
                raise ValueError(f"{self.name}: expected the observation of cycle {k} (t = {k * self.model.interval}), "
                                 f"got t = {msg.timestamp}")
            self._pending = {key: np.asarray(v) for key, v in msg.data.items()}
        self._gather(k)
        gather_wall = time.monotonic() - self._gather_start
        t1 = time.perf_counter()
        got, data = self._got, self._pending
        self._got, self._pending, self._gather_start = {}, None, None
        present = sorted(got)
        self.absent = set(range(self.blocks)) - set(got)
        forecast_seconds = max((got[b][1] for b in present), default=0.0)
        used = sum(got[b][0].shape[0] for b in present)
        err = np.nan
        if used >= 2:
            forecast = np.concatenate([got[b][0] for b in present])
            updated = np.asarray(self._analysis(jnp.asarray(forecast), jnp.asarray(data["y"], forecast.dtype), k))
            for i, b in enumerate(present):
                self.ensemble[self._members(b)] = updated[i * self.block_size : (i + 1) * self.block_size]
            self._redraw(updated, sorted(self.absent))
            if "truth" in data:
                err = float(np.sqrt(np.mean((updated.mean(0) - data["truth"]) ** 2)))
        t2 = time.perf_counter()
        self._scatter(k)
        t3 = time.perf_counter()
        self.cycle = k
        row = {"cycle": k, "members_used": used if used >= 2 else 0, "absent": sorted(self.absent), "rmse": err,
               "forecast": forecast_seconds, "gather": max(0.0, gather_wall - forecast_seconds), "analysis": t2 - t1,
               "scatter": t3 - t2, "cycle_time": gather_wall + (t3 - t1), "wall": time.time()}
        for key, value in row.items():
            self.rows[key].append(value)
        return True

    def _redraw(self, analysis_members: np.ndarray, absent: list[int]) -> None:
        """New members for absent blocks: the analysis mean plus random combinations of its anomalies."""
        if not absent:
            return
        mean = analysis_members.mean(0)
        anom = analysis_members - mean
        m = anom.shape[0]
        for b in absent:
            weights = self._rng.standard_normal((self.block_size, m)) / np.sqrt(m - 1)
            self.ensemble[self._members(b)] = (mean + weights @ anom).astype(self.ensemble.dtype)

    def history(self) -> dict[str, Any]:
        """Per cycle: ``cycle``, ``members_used``, ``absent`` (list of blocks), ``rmse`` (NaN without truth),
        ``wall`` (end time), and seconds: ``forecast`` (the slowest block's own compute time, as it
        reported it), ``gather`` (the filter's wait for the forecasts beyond that: transfer and
        scheduling), ``analysis``, ``scatter`` and ``cycle_time`` (gather to scatter end)."""
        out: dict[str, Any] = {k: np.asarray(v) for k, v in self.rows.items() if k != "absent"}
        out["absent"] = [list(a) for a in self.rows["absent"]]
        return out

    def info(self) -> dict[str, Any]:
        return {"cycle": self.cycle, "absent": sorted(self.absent)}

    def state_dict(self) -> dict[str, Any]:
        """Cycle, ensemble, absent blocks, the observation of a cycle in progress, and the history."""
        return {"cycle": self.cycle, "ensemble": None if self.ensemble is None else self.ensemble.copy(),
                "absent": sorted(self.absent), "pending": self._pending,
                "rows": {k: list(v) for k, v in self.rows.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state_dict()``: set-up scatters the restored ensemble again."""
        if not state:
            return
        self.cycle, self.absent, self._pending = int(state["cycle"]), set(state["absent"]), state["pending"]
        self.ensemble = None if state["ensemble"] is None else np.array(state["ensemble"])
        self.rows = {k: list(v) for k, v in state["rows"].items()}

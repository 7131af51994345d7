"""Hybrid simulator hosts: a solver with blocks done by a surrogate, or with a learned correction.

A ``SimulatorActor`` advances its state in blocks of ``publish_every`` solver
steps. ``HybridSimulatorActor`` replaces some of those blocks by a single
prediction of a learned surrogate (trained on pairs ``x_t -> x_{t+publish_every}``,
as a ``LearnerActor`` does from a ``SimulatorActor`` in ``"pairs"`` mode).
The surrogate's weights arrive on the input port ``"weights"`` (a ``Latest``
channel, where a learner publishes while it trains): each block takes the
newest weights there, so the hybrid run improves while it runs. Until the
first weights arrive every block uses the solver.

Preconditions on the simulator (``Heat2D`` and ``NavierStokes2D`` meet them):
its state is a ``NamedTuple`` with fields ``t`` and ``step``, the observed
``field`` is also the name of the state's field, and the simulator has a ``dt``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from coupler.actors.simulator import SimulatorActor
from coupler.runtime.control.status import WeightsInUse
from coupler.learners.online import ModelFactory, OnlineTrainer, replace_checked
from coupler.learners.solver_correction import CorrectionModelConfig, corrected_rollout
from coupler.physics.navier_stokes import NavierStokes2D, NavierStokesParams, NavierStokesState


@dataclass(frozen=True)
class HybridSchedule:
    """Which blocks the surrogate does: the first ``replace`` of every ``every`` blocks.

    ``HybridSchedule(0, 1)`` is the pure solver, ``HybridSchedule(m, m)`` the pure surrogate.

    Raises:
        ValueError: unless ``0 <= replace <= every`` and ``every >= 1``.

    Examples:
        >>> [HybridSchedule(1, 3).uses_surrogate(b) for b in range(6)]
        [True, False, False, True, False, False]
    """

    replace: int
    every: int

    def __post_init__(self) -> None:
        if self.every < 1 or not 0 <= self.replace <= self.every:
            raise ValueError(f"need 0 <= replace <= every and every >= 1, got replace={self.replace}, every={self.every}")

    def uses_surrogate(self, block: int) -> bool:
        """Whether block number ``block`` (0-based) is a surrogate jump."""
        return block % self.every < self.replace

    @property
    def solver_fraction(self) -> float:
        """Share of blocks the solver still does."""
        return 1 - self.replace / self.every


def surrogate_jump(simulator: Any, state: Any, field: str, prediction: jax.Array, steps: int) -> Any:
    """``state`` after a surrogate block: ``field`` set to ``prediction``, clock moved ``steps`` steps.

    Args:
        simulator: the simulator (for ``dt``).
        state: a state ``NamedTuple`` with ``field``, ``t`` and ``step``.
        field: name of the predicted field in the state.
        prediction: its new value (same shape).
        steps: solver steps the jump stands for.

    Returns:
        The new state (same dtypes as ``state``).

    Raises:
        ValueError: if the state lacks ``field``, ``t`` or ``step``, or the shapes differ.
    """
    names = getattr(state, "_fields", ())
    missing = [f for f in (field, "t", "step") if f not in names]
    if missing:
        raise ValueError(f"a hybrid state must be a NamedTuple with {field!r}, 't' and 'step'; missing {missing} in {type(state).__name__}")
    old = getattr(state, field)
    if np.shape(prediction) != np.shape(old):
        raise ValueError(f"surrogate prediction of {field!r} has shape {np.shape(prediction)}, expected {np.shape(old)}")
    step = state.step + steps
    return state._replace(
        **{field: jnp.asarray(prediction, old.dtype)},
        step=step,
        t=(step * simulator.dt).astype(state.t.dtype),
    )


class HybridSimulatorActor(SimulatorActor):
    """A ``SimulatorActor`` whose blocks follow a ``HybridSchedule`` of solver and surrogate.

    Publishes exactly like ``SimulatorActor`` (a surrogate block's result is
    published as any other block's); every message's ``meta["weights_version"]``
    is the training step of the weights in use when its block ran (absent before
    the first weights). ``info()`` adds the blocks done by each, that training
    step (``weights_step``), how many training steps the newest weights on the
    channel are ahead of it (``weights_behind``) and the seconds since the
    learner sent the weights in use (``weights_age_s``: the staleness a
    dashboard shows; ``None`` before the first weights).

    A checkpoint adds the weights in use and the block counters, so a restored
    instance continues with the same surrogate until newer weights arrive.

    Args:
        simulator: the simulator (see the module docstring for its preconditions).
        params: as for ``SimulatorActor``.
        surrogate: the surrogate's ``ModelFactory`` (same as the learner's).
        replace: surrogate blocks in every ``every`` blocks.
        every: length of the schedule's cycle.
        features: conditioning vector(s) the surrogate gets (required).
        inputs: must map ``"weights"`` to a ``Latest`` channel.
        **kwargs: passed to :class:`SimulatorActor` (``name``, ``steps``,
            ``publish_every``, ``field``, ``mode``, ``ensemble``, ``outputs`` ...).

    Raises:
        ValueError: for a bad schedule, missing ``features`` or no ``"weights"`` input.
    """

    def __init__(
        self,
        simulator: Any,
        params: Any,
        *,
        surrogate: ModelFactory,
        replace: int,
        every: int,
        features: np.ndarray | None = None,
        inputs: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        if "weights" not in (inputs or {}):
            raise ValueError(f"HybridSimulatorActor needs inputs={{'weights': <Latest channel>}}, got inputs={inputs!r}")
        if features is None:
            raise ValueError("HybridSimulatorActor needs features: the surrogate is conditioned on them")
        super().__init__(simulator, params, features=features, inputs=inputs, **kwargs)
        self.schedule = HybridSchedule(replace, every)
        self.surrogate = surrogate
        self.surrogate_blocks = 0
        self.solver_blocks = 0
        self.weights_step: int | None = None
        self._weights: dict[str, Any] | None = None
        self._weights_seq: tuple[str, int] | None = None
        self._weights_sent_at: float | None = None

    def setup(self) -> None:
        restored = self._restored
        super().setup()
        # An OnlineTrainer only for its checked set_weights and jitted predict (no training here).
        self._model = OnlineTrainer(self.surrogate)
        if restored is not None and restored.get("weights") is not None:
            self._install(restored["weights"], restored.get("weights_step"))
            self._weights_sent_at = restored.get("weights_sent_at")
        self._solver_advance = self._advance
        self._advance = self._hybrid_advance

    def _install(self, weights: dict[str, Any], step: int | None) -> None:
        self._model.set_weights(weights)
        self._weights, self.weights_step = weights, step

    def _poll_weights(self) -> None:
        msg = self.inputs["weights"].latest()
        if msg is not None and (msg.source, msg.seq) != self._weights_seq:
            self._install(msg.data, int(msg.step))
            self._weights_seq = (msg.source, msg.seq)
            self._weights_sent_at = msg.sent_at

    def weights_version(self) -> int | None:
        """Training step of the weights in use (``None`` before the first arrive)."""
        return self.weights_step

    def _hybrid_advance(self, state: Any, params: Any) -> Any:
        block = self.sim_steps // self.publish_every
        self._poll_weights()
        if self._weights is None or not self.schedule.uses_surrogate(block):
            self.solver_blocks += 1
            return self._solver_advance(state, params)
        self.surrogate_blocks += 1
        u = np.asarray(getattr(state, self.field))
        prediction = self._model.predict(u, self.features)
        return surrogate_jump(self.simulator, state, self.field, prediction, self.publish_every)

    # -- remote methods ----------------------------------------------------------------------
    def available_weights_step(self) -> int | None:
        """Training step of the newest weights on the ``"weights"`` channel (``None``: none yet).

        The next block takes them; a driver can wait on this before starting the actor.
        """
        msg = self.inputs["weights"].latest()
        return None if msg is None else int(msg.step)

    def state_dict(self) -> dict[str, Any]:
        """``SimulatorActor.state_dict`` plus the weights in use and the block counters."""
        state = super().state_dict()
        if not hasattr(self, "state"):
            return state
        return {
            **state,
            "weights": self._weights,
            "weights_step": self.weights_step,
            "weights_sent_at": self._weights_sent_at,  # their age goes on across a restart
            "surrogate_blocks": self.surrogate_blocks,
            "solver_blocks": self.solver_blocks,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state_dict()``; the weights are installed when the loop sets up."""
        super().load_state_dict(state)
        if state:
            self.surrogate_blocks = int(state.get("surrogate_blocks", 0))
            self.solver_blocks = int(state.get("solver_blocks", 0))

    def weights_in_use(self) -> WeightsInUse | None:
        return _in_use(self.weights_step, self._weights_sent_at, self.available_weights_step())

    def info(self) -> dict[str, Any]:
        available = self.available_weights_step()
        return {
            **super().info(),
            "surrogate_blocks": self.surrogate_blocks,
            "solver_blocks": self.solver_blocks,
            "weights_step": self.weights_step,
            "weights_behind": None if available is None or self.weights_step is None else available - self.weights_step,
            "weights_age_s": None if self._weights_sent_at is None else round(time.time() - self._weights_sent_at, 3),
        }


def _in_use(step: int | None, sent_at: float | None, available: int | None) -> WeightsInUse | None:
    """The weights of ``step``, sent at ``sent_at`` (``None`` before the first), ``available`` the newest arrived."""
    if step is None or sent_at is None:
        return None
    return WeightsInUse(step, sent_at, None if available is None else available - step)


def corrected_advance(
    coarse: NavierStokes2D, graph: nnx.GraphDef, weights: nnx.State, state: NavierStokesState, params: NavierStokesParams, steps: int
) -> NavierStokesState:
    """``steps`` corrected coarse steps of one run or a batch of runs (``state.w`` ``(n, n)`` or ``(B, n, n)``)."""
    single = state.w.ndim == 2
    w = state.w[None] if single else state.w
    pm = jnp.stack([params.viscosity, params.forcing_amplitude, params.drag], axis=-1).reshape(-1, 3)
    w = corrected_rollout(coarse, nnx.merge(graph, weights), w, pm.astype(jnp.float32), steps)[-1]
    step = state.step + steps
    return state._replace(w=w[0] if single else w, step=step, t=(step * coarse.dt).astype(state.t.dtype))


class CorrectedSimulatorActor(SimulatorActor):
    """A coarse ``NavierStokes2D`` run (or ensemble) whose every step adds a learned correction.

    The correction (``learners.solver_correction``) takes the newest weights on
    the input port ``"weights"`` (a ``Latest`` channel a ``LearnerActor`` with a
    ``SolverCorrectionConfig`` trainer publishes to) at the start of each block;
    until the first arrive, blocks are plain coarse steps. Every message's
    ``meta["weights_version"]`` (and, with ``lineage=True``, its payload) says
    which weights produced it; ``info()`` adds ``weights_step``,
    ``weights_behind`` and ``weights_age_s`` as ``HybridSimulatorActor`` does.
    A checkpoint holds the run, not the weights: a restored instance takes the
    newest ones from its channel.

    Args:
        simulator: the coarse solver (the ``coarse`` of the trainer's config).
        params: ``NavierStokesParams`` (batched over members if ``ensemble``).
        correction: the model's hyperparameters (the trainer's ``model``: a
            ``CoarseCorrectionConfig`` or a ``SpectralClosureConfig``).
        inputs: must map ``"weights"`` to a ``Latest`` channel.
        **kwargs: passed to :class:`SimulatorActor`.

    Raises:
        ValueError: without a ``"weights"`` input.
        TypeError: if ``simulator`` is not a ``NavierStokes2D``.
    """

    def __init__(
        self,
        simulator: NavierStokes2D,
        params: NavierStokesParams,
        *,
        correction: CorrectionModelConfig,
        inputs: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        if "weights" not in (inputs or {}):
            raise ValueError(f"CorrectedSimulatorActor needs inputs={{'weights': <Latest channel>}}, got inputs={inputs!r}")
        if not isinstance(simulator, NavierStokes2D):
            raise TypeError(f"CorrectedSimulatorActor corrects a NavierStokes2D, got {type(simulator).__name__}")
        super().__init__(simulator, params, inputs=inputs, **kwargs)
        self.correction = correction
        self.corrected_blocks = 0
        self.solver_blocks = 0
        self.weights_step: int | None = None
        self._weights_seq: tuple[str, int] | None = None
        self._weights_sent_at: float | None = None

    def setup(self) -> None:
        super().setup()
        self._net = self.correction.build(0)
        self._graph = nnx.graphdef(self._net)
        self._weights: nnx.State | None = None
        steps = self.publish_every
        self._corrected = jax.jit(lambda s, p, w: corrected_advance(self.simulator, self._graph, w, s, p, steps))
        self._solver_advance = self._advance
        self._advance = self._corrected_advance

    def _poll_weights(self) -> None:
        msg = self.inputs["weights"].latest()
        if msg is not None and (msg.source, msg.seq) != self._weights_seq:
            replace_checked(nnx.state(self._net), msg.data, "weights")
            self._weights = nnx.state(self._net)
            self.weights_step, self._weights_seq, self._weights_sent_at = int(msg.step), (msg.source, msg.seq), msg.sent_at

    def _corrected_advance(self, state: NavierStokesState, params: NavierStokesParams) -> NavierStokesState:
        self._poll_weights()
        if self._weights is None:
            self.solver_blocks += 1
            return self._solver_advance(state, params)
        self.corrected_blocks += 1
        return self._corrected(state, params, self._weights)

    def weights_version(self) -> int | None:
        """Training step of the weights in use (``None`` before the first arrive)."""
        return self.weights_step

    def available_weights_step(self) -> int | None:
        """Training step of the newest weights on the ``"weights"`` channel (``None``: none yet)."""
        msg = self.inputs["weights"].latest()
        return None if msg is None else int(msg.step)

    def weights_in_use(self) -> WeightsInUse | None:
        return _in_use(self.weights_step, self._weights_sent_at, self.available_weights_step())

    def info(self) -> dict[str, Any]:
        available = self.available_weights_step()
        return {
            **super().info(),
            "corrected_blocks": self.corrected_blocks,
            "solver_blocks": self.solver_blocks,
            "weights_step": self.weights_step,
            "weights_behind": None if available is None or self.weights_step is None else available - self.weights_step,
            "weights_age_s": None if self._weights_sent_at is None else round(time.time() - self._weights_sent_at, 3),
        }

"""Actor hosts: long-lived Dask actors that run simulators, learners, steering and assimilation.

Every actor subclasses ``ActorHost`` (``coupler.actors.base``), which is composed
of parts with one job each: its run loop and the control requests served between
steps (``run_loop``), its ports (``ports``), the order of its ``Queue`` takes
(``take_order``) and its checkpoints (``checkpointing``).

Names are imported on first use (PEP 562): a worker that hosts only a plain
``ActorHost`` subclass then imports ``coupler.actors.base`` without JAX, Flax
and the learners (about 2 s of CPU per worker process).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from coupler.actors.base import ActorHost as ActorHost
    from coupler.actors.learner import LearnerActor as LearnerActor
    from coupler.actors.learner import Trainer as Trainer
    from coupler.actors.simulator import SimulatorActor as SimulatorActor
    from coupler.actors.hybrid import HybridSimulatorActor as HybridSimulatorActor
    from coupler.actors.hybrid import HybridSchedule as HybridSchedule
    from coupler.actors.hybrid import CorrectedSimulatorActor as CorrectedSimulatorActor
    from coupler.actors.pool import SimulatorPoolActor as SimulatorPoolActor
    from coupler.actors.pool import SimulationStudy as SimulationStudy
    from coupler.actors.pool import Study as Study
    from coupler.actors.pool import TaskStatus as TaskStatus
    from coupler.actors.pool import task_message as task_message
    from coupler.actors.pool import cancel_message as cancel_message
    from coupler.actors.steering import SteeringActor as SteeringActor
    from coupler.actors.steering import Steerer as Steerer
    from coupler.actors.steering import TaskRecord as TaskRecord
    from coupler.actors.steering import overlap_seconds as overlap_seconds
    from coupler.actors.observation import ObservationSource as ObservationSource
    from coupler.actors.assimilation import AssimilationActor as AssimilationActor
    from coupler.actors.ensemble_members import EnsembleFilterActor as EnsembleFilterActor
    from coupler.actors.ensemble_members import MemberBlockActor as MemberBlockActor

_EXPORTS = {
    "ActorHost": "coupler.actors.base",
    "LearnerActor": "coupler.actors.learner",
    "Trainer": "coupler.actors.learner",
    "SimulatorActor": "coupler.actors.simulator",
    "HybridSimulatorActor": "coupler.actors.hybrid",
    "HybridSchedule": "coupler.actors.hybrid",
    "CorrectedSimulatorActor": "coupler.actors.hybrid",
    "SimulatorPoolActor": "coupler.actors.pool",
    "SimulationStudy": "coupler.actors.pool",
    "Study": "coupler.actors.pool",
    "TaskStatus": "coupler.actors.pool",
    "task_message": "coupler.actors.pool",
    "cancel_message": "coupler.actors.pool",
    "SteeringActor": "coupler.actors.steering",
    "Steerer": "coupler.actors.steering",
    "TaskRecord": "coupler.actors.steering",
    "overlap_seconds": "coupler.actors.steering",
    "ObservationSource": "coupler.actors.observation",
    "AssimilationActor": "coupler.actors.assimilation",
    "EnsembleFilterActor": "coupler.actors.ensemble_members",
    "MemberBlockActor": "coupler.actors.ensemble_members",
}


def __getattr__(name: str) -> Any:
    """Import an exported name's module on first use.

    Raises:
        AttributeError: for a name the package does not export.
    """
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'coupler.actors' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__all__ = [
    "CorrectedSimulatorActor",
    "ActorHost",
    "AssimilationActor",
    "cancel_message",
    "EnsembleFilterActor",
    "HybridSchedule",
    "HybridSimulatorActor",
    "LearnerActor",
    "MemberBlockActor",
    "ObservationSource",
    "overlap_seconds",
    "SimulationStudy",
    "SimulatorActor",
    "SimulatorPoolActor",
    "Steerer",
    "SteeringActor",
    "Study",
    "task_message",
    "TaskRecord",
    "TaskStatus",
    "Trainer",
]

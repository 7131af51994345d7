"""Actor hosts: long-lived Dask actors that run simulators, learners, steering and assimilation.

The names below are imported on first use (PEP 562), not with the package:
every Dask worker imports ``coupler.actors.base`` to unpickle an actor, and
most actors need neither JAX nor Flax, which the simulator, learner and
hybrid hosts bring in (about 3 s of imports per worker on a 2-core machine).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# name -> the module that defines it
_WHERE = {
    "ActorHost": "base",
    "LearnerActor": "learner",
    "Trainer": "learner",
    "SimulatorActor": "simulator",
    "HybridSimulatorActor": "hybrid",
    "HybridSchedule": "hybrid",
    "CorrectedSimulatorActor": "hybrid",
    "SimulatorPoolActor": "pool",
    "SimulationStudy": "pool",
    "Study": "pool",
    "TaskStatus": "pool",
    "task_message": "pool",
    "cancel_message": "pool",
    "SteeringActor": "steering",
    "Steerer": "steering",
    "TaskRecord": "steering",
    "overlap_seconds": "steering",
    "ObservationSource": "observation",
    "AssimilationActor": "assimilation",
    "EnsembleFilterActor": "ensemble_members",
    "MemberBlockActor": "ensemble_members",
}

__all__ = [
    "ActorHost",
    "AssimilationActor",
    "cancel_message",
    "CorrectedSimulatorActor",
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
]  # (a literal: the docs' static reader expands it)


def __getattr__(name: str) -> Any:
    """Import the module that defines ``name`` on first use.

    Raises:
        AttributeError: ``name`` is not one of this package's names.
    """
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'coupler.actors' has no attribute {name!r}; it exports {__all__}")
    value = getattr(importlib.import_module(f"coupler.actors.{module}"), name)
    globals()[name] = value  # next time without this call
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # for type checkers and IDEs, which do not run __getattr__
    from coupler.actors.assimilation import AssimilationActor as AssimilationActor
    from coupler.actors.base import ActorHost as ActorHost
    from coupler.actors.ensemble_members import EnsembleFilterActor as EnsembleFilterActor
    from coupler.actors.ensemble_members import MemberBlockActor as MemberBlockActor
    from coupler.actors.hybrid import CorrectedSimulatorActor as CorrectedSimulatorActor
    from coupler.actors.hybrid import HybridSchedule as HybridSchedule
    from coupler.actors.hybrid import HybridSimulatorActor as HybridSimulatorActor
    from coupler.actors.learner import LearnerActor as LearnerActor
    from coupler.actors.learner import Trainer as Trainer
    from coupler.actors.observation import ObservationSource as ObservationSource
    from coupler.actors.pool import SimulationStudy as SimulationStudy
    from coupler.actors.pool import SimulatorPoolActor as SimulatorPoolActor
    from coupler.actors.pool import Study as Study
    from coupler.actors.pool import TaskStatus as TaskStatus
    from coupler.actors.pool import cancel_message as cancel_message
    from coupler.actors.pool import task_message as task_message
    from coupler.actors.simulator import SimulatorActor as SimulatorActor
    from coupler.actors.steering import Steerer as Steerer
    from coupler.actors.steering import SteeringActor as SteeringActor
    from coupler.actors.steering import TaskRecord as TaskRecord
    from coupler.actors.steering import overlap_seconds as overlap_seconds

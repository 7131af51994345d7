"""Actor hosts: long-lived Dask actors that run simulators and learners."""

from coupler.actors.base import ActorHost as ActorHost
from coupler.actors.learner import LearnerActor as LearnerActor
from coupler.actors.learner import Trainer as Trainer
from coupler.actors.simulator import SimulatorActor as SimulatorActor

__all__ = ["ActorHost", "LearnerActor", "SimulatorActor", "Trainer"]

"""Actor hosts: long-lived Dask actors that run simulators and learners."""

from coupler.actors.base import ActorHost as ActorHost

__all__ = ["ActorHost"]

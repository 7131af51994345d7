"""coupler's runtime: the coupling driver, broker, channels, policies and data plane."""

from coupler.runtime import config as config
from coupler.runtime.control.actor_ref import ActorRef as ActorRef
from coupler.runtime.control.broker import Broker as Broker
from coupler.runtime.dataplane.buffers import BufferStats as BufferStats
from coupler.runtime.coupling import Coupling as Coupling
from coupler.runtime.dataplane.endpoint import Endpoint as Endpoint
from coupler.runtime.driver import Publisher as Publisher
from coupler.runtime.driver import Subscription as Subscription
from coupler.runtime.dataplane.endpoint import local_endpoint as local_endpoint
from coupler.runtime.errors import ActorEnded as ActorEnded
from coupler.runtime.errors import ActorFailed as ActorFailed
from coupler.runtime.control.checkpoints import CheckpointStore as CheckpointStore
from coupler.runtime.errors import ChannelClosed as ChannelClosed
from coupler.runtime.errors import CheckpointError as CheckpointError
from coupler.runtime.errors import ChannelExists as ChannelExists
from coupler.runtime.errors import ChannelTimeout as ChannelTimeout
from coupler.runtime.errors import ConsumerGone as ConsumerGone
from coupler.runtime.errors import CouplerError as CouplerError
from coupler.runtime.errors import Fenced as Fenced
from coupler.runtime.errors import Interrupted as Interrupted
from coupler.runtime.errors import InvalidRequest as InvalidRequest
from coupler.runtime.errors import NoCoupling as NoCoupling
from coupler.runtime.errors import NoSuitableWorker as NoSuitableWorker
from coupler.runtime.errors import PartiallyDelivered as PartiallyDelivered
from coupler.runtime.errors import SchedulerUnreachable as SchedulerUnreachable
from coupler.runtime.errors import SpecMismatch as SpecMismatch
from coupler.runtime.errors import UnknownChannel as UnknownChannel
from coupler.runtime.errors import UnknownPort as UnknownPort
from coupler.runtime.errors import WorkersNotReady as WorkersNotReady
from coupler.runtime.errors import WrongPolicy as WrongPolicy
from coupler.runtime.message import FieldSpec as FieldSpec
from coupler.runtime.message import Message as Message
from coupler.runtime.message import Spec as Spec
from coupler.runtime.policies import Latest as Latest
from coupler.runtime.policies import Policy as Policy
from coupler.runtime.policies import Queue as Queue
from coupler.runtime.policies import Reservoir as Reservoir
from coupler.runtime.policies import Window as Window
from coupler.runtime.version import __version__ as __version__
from coupler.runtime.dataplane.ports import InPort as InPort
from coupler.runtime.dataplane.ports import OutPort as OutPort
from coupler.runtime.control.status import ActorStatus as ActorStatus
from coupler.runtime.control.status import WeightsInUse as WeightsInUse
from coupler.runtime.control.status import ChannelStats as ChannelStats
from coupler.runtime.dataplane.waits import Wait as Wait

__all__ = [
    "ActorEnded",
    "ActorFailed",
    "ActorRef",
    "ActorStatus",
    "WeightsInUse",
    "Broker",
    "BufferStats",
    "ChannelClosed",
    "ChannelExists",
    "ChannelStats",
    "ChannelTimeout",
    "CheckpointError",
    "CheckpointStore",
    "config",
    "ConsumerGone",
    "Fenced",
    "CouplerError",
    "Coupling",
    "Endpoint",
    "FieldSpec",
    "InPort",
    "Interrupted",
    "InvalidRequest",
    "Latest",
    "local_endpoint",
    "Message",
    "NoCoupling",
    "NoSuitableWorker",
    "OutPort",
    "PartiallyDelivered",
    "Policy",
    "Publisher",
    "Queue",
    "Reservoir",
    "SchedulerUnreachable",
    "Spec",
    "SpecMismatch",
    "Subscription",
    "UnknownChannel",
    "UnknownPort",
    "Wait",
    "Window",
    "WorkersNotReady",
    "WrongPolicy",
    "__version__",
]

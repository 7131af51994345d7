"""A channel's routing table: what the broker tells the workers that produce on it.

The broker builds one per change of a channel (a consumer attached, left or
moved; the spec fixed; the channel closed) with a higher ``version``, and pushes
it to the producers' workers; a worker keeps the newest it has seen
(:class:`~coupler.runtime.dataplane.routing.Route`). It travels as a plain map
(:meth:`RoutingTable.to_wire`) and is decoded once, on arrival, into this typed
form: nothing downstream reads keys out of a dict or parses a string.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from coupler.runtime.control.departure import Departure, Gone
from coupler.runtime.message import Spec
from coupler.runtime.policies import Policy, Queue, policy_from_wire, policy_to_wire


@dataclass(frozen=True)
class ConsumerRef:
    """Where a consumer lives: its id, worker, stream address and host key."""

    cid: str
    worker: str
    stream: str
    host: str

    def to_wire(self) -> list[str]:
        """``[id, worker, stream, host]`` for msgpack."""
        return [self.cid, self.worker, self.stream, self.host]


@dataclass(frozen=True)
class RoutingTable:
    """One version of a channel's routing.

    Attributes:
        channel: the channel's name.
        version: higher for every change (a worker ignores an older table than the one it holds).
        policy: the channel's policy.
        spec: the channel's spec (``None`` until a first message fixes it).
        closed: the channel was closed.
        consumers: the attached consumers.
        gone: the consumers that left, and how.
        producers: producer -> the worker it last registered from.
    """

    channel: str
    version: int
    policy: Policy
    spec: Spec | None = None
    closed: bool = False
    consumers: tuple[ConsumerRef, ...] = ()
    gone: tuple[Gone, ...] = ()
    producers: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_queue(self) -> bool:
        """Whether the channel is a ``Queue`` (at-least-once, credited)."""
        return isinstance(self.policy, Queue)

    @property
    def shared(self) -> bool:
        """Whether it is a work-sharing ``Queue`` (each message at one consumer)."""
        return isinstance(self.policy, Queue) and self.policy.shared

    @property
    def maxsize(self) -> int:
        """A ``Queue``'s size (0 for other policies)."""
        return self.policy.maxsize if isinstance(self.policy, Queue) else 0

    @property
    def moving(self) -> frozenset[str]:
        """Consumers that left to be restarted elsewhere (producers wait for them)."""
        return frozenset(g.consumer for g in self.gone if g.kind is Departure.HANDOVER)

    def to_wire(self) -> dict[str, Any]:
        """The table as msgpack-able data (the inverse of :meth:`from_wire`)."""
        return {
            "channel": self.channel,
            "version": self.version,
            "policy": policy_to_wire(self.policy),
            "spec": None if self.spec is None else self.spec.to_wire(),
            "closed": self.closed,
            "consumers": [c.to_wire() for c in self.consumers],
            "gone": [g.to_wire() for g in self.gone],
            "producers": dict(self.producers),
        }

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> RoutingTable:
        """Decode a table the broker sent.

        Raises:
            ValueError: if a field is missing or of the wrong type (what was expected and what came).
        """
        try:
            channel, version = wire["channel"], wire["version"]
            consumers = tuple(ConsumerRef(*(str(x) for x in c)) for c in wire.get("consumers", ()))
            gone = tuple(Gone.from_wire(g) for g in wire.get("gone", ()))
            policy = policy_from_wire(dict(wire["policy"]))
            spec = None if wire.get("spec") is None else Spec.from_wire(wire["spec"])
            producers = {str(k): str(v) for k, v in dict(wire.get("producers") or {}).items()}
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(
                "a routing table needs channel, version, policy (and optionally spec, closed, consumers as "
                f"[id, worker, stream, host], gone, producers), got {dict(wire)!r:.200}: {e!r}"
            ) from None
        if not isinstance(channel, str) or type(version) is not int:
            raise ValueError(f"a routing table's channel is a str and its version an int, got {channel!r:.60}, {version!r:.20}")
        return cls(channel, version, policy, spec, bool(wire.get("closed", False)), consumers, gone, producers)


__all__ = ["ConsumerRef", "RoutingTable"]

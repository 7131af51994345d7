"""The broker's record of one channel: its routing table, and how consumers come and go.

A record is plain state (sans-IO): the broker validates requests, applies
them here, and pushes the resulting :meth:`ChannelRecord.routing` table to
the workers that need it. Every change that producers must hear about bumps
``version``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Collection

from coupler.runtime.control.departure import Departure, Gone
from coupler.runtime.control.routing_table import ConsumerRef, RoutingTable
from coupler.runtime.errors import ChannelClosed, ChannelExists, Fenced
from coupler.runtime.message import Spec
from coupler.runtime.policies import policy_from_wire

#: Consumers that left a channel for good (detached) that its record and routing table keep, newest.
DETACHED_KEPT = 256


@dataclass
class ChannelRecord:
    """Everything the broker knows about one channel."""

    name: str
    policy: dict[str, Any]
    spec: dict[str, Any] | None = None
    closed: bool = False
    producers: dict[str, str] = field(default_factory=dict)  # source -> worker address
    epochs: dict[str, int] = field(default_factory=dict)  # source -> epoch of its current instance (dataplane/fence.py)
    consumers: dict[str, str] = field(default_factory=dict)  # consumer id -> worker address
    streams: dict[str, tuple[str, str]] = field(default_factory=dict)  # consumer id -> (stream address, host key)
    gone: dict[str, Gone] = field(default_factory=dict)  # consumer id -> how it left
    version: int = 0
    run: str = ""  # the coupling run that declared it ("": none named); it ends with that run

    @property
    def drained(self) -> bool:
        """Closed, with no consumer attached or moving: nothing can use it any more."""
        return self.closed and not self.consumers and not any(g.kind is Departure.HANDOVER for g in self.gone.values())

    def routing(self) -> dict[str, Any]:
        """What a producer's worker needs to send on this channel: its :class:`RoutingTable`, on the wire."""
        return RoutingTable(
            channel=self.name,
            version=self.version,
            policy=policy_from_wire(self.policy),
            spec=None if self.spec is None else Spec.from_wire(self.spec),
            closed=self.closed,
            consumers=tuple(ConsumerRef(c, a, *self.streams.get(c, ("", ""))) for c, a in sorted(self.consumers.items())),
            gone=tuple(g for _, g in sorted(self.gone.items())),
            producers=dict(sorted(self.producers.items())),
        ).to_wire()

    def final_routing(self) -> dict[str, Any]:
        """The routing table of this channel once it is forgotten, on the wire: closed, nobody attached.

        What a consumer gets that attaches after that, for instance the successor of
        one whose worker was lost while it drained: it finds the channel closed and
        empty, as its predecessor would have at the end.
        """
        return RoutingTable(
            channel=self.name, version=self.version + 1, policy=policy_from_wire(self.policy),
            spec=None if self.spec is None else Spec.from_wire(self.spec), closed=True, consumers=(), gone=(), producers={},
        ).to_wire()

    def redeclare(self, policy: dict[str, Any], spec: dict[str, Any] | None) -> None:
        """A declaration of this channel again: the same policy and spec, or a first spec (then fixed).

        Raises:
            ChannelClosed: while it is closed and consumers still drain it.
            ChannelExists: for another policy or spec.
        """
        if self.closed:
            # Consumers still drain it (they detach as they end): the name is not free yet.
            # A new channel now would take their detaches for its own consumers.
            raise ChannelClosed(
                f"channel {self.name!r} is closed and consumers {self.draining()} have not detached yet; "
                "declare it again once they have ended"
            )
        if self.policy != policy or (spec is not None and self.spec is not None and self.spec != spec):
            raise ChannelExists(
                f"channel {self.name!r} already declared with policy {self.policy} and spec {self.spec}; "
                f"got policy {policy} and spec {spec}"
            )
        if spec is not None and self.spec is None:
            self.spec = spec

    def draining(self) -> list[str]:
        """The consumers attached or moving: a closed channel's name is not free until none are left."""
        return sorted(self.consumers) + sorted(c for c, g in self.gone.items() if g.kind is Departure.HANDOVER)

    def attach_producer(self, ident: str, address: str, live: Collection[str] | None) -> int:
        """Producer ``ident`` registers from worker ``address``; return its instance's epoch (dataplane/fence.py).

        One more than its predecessor's if that one's worker was lost, else the same.

        Args:
            ident: the producer's source name.
            address: its worker.
            live: the workers the scheduler knows (``None``: not known, e.g. a broker outside a scheduler).

        Raises:
            Fenced: if ``address`` is not in ``live`` (declared dead, back after a partition: its instances were replaced).
        """
        if live is not None and address not in live:
            raise Fenced(f"producer {ident!r} of {self.name!r}: worker {address} is not in the cluster any more")
        before = self.producers.get(ident)
        if before is not None and before != address and live is not None and before not in live:
            self.epochs[ident] = self.epochs.get(ident, 0) + 1  # lost there; the broker's remove_worker has not run yet
        self.producers[ident] = address
        return self.epochs.get(ident, 0)

    def attach_consumer(self, ident: str, address: str, stream: str, host: str) -> None:
        """Consumer ``ident`` on worker ``address`` takes data at ``stream`` (``host``: its host key)."""
        self.consumers[ident] = address
        self.streams[ident] = (stream, host)
        self.gone.pop(ident, None)
        self.version += 1

    def detach_consumer(self, ident: str, kind: Departure, address: str, detail: str = "") -> bool:
        """Consumer ``ident`` left as ``kind`` from worker ``address`` (``detail``: why, for people); whether
        it was attached there (else nothing changes: a replaced instance's detach, its successor elsewhere)."""
        if self.consumers.get(ident) != address:
            return False
        if self.consumers.pop(ident, None) is None:
            return False
        self.streams.pop(ident, None)
        self.gone[ident] = Gone(ident, kind, detail)
        self._prune_gone()
        self.version += 1
        return True

    def _prune_gone(self) -> None:
        """Keep the newest :data:`DETACHED_KEPT` consumers that left for good.

        Every routing table carries the departed, so on a long-lived channel whose
        consumers come and go (driver subscriptions, a pool's members) each push grew
        with every one that ever left. Those expected back (lost, moving) always stay:
        their producers wait for them.
        """
        left = [c for c, g in self.gone.items() if g.kind is Departure.DETACHED]
        for c in left[: max(0, len(left) - DETACHED_KEPT)]:  # oldest first (dicts keep insertion order)
            del self.gone[c]

    def give_up_consumer(self, ident: str, detail: str) -> bool:
        """Lost consumer ``ident`` will not be restarted (its supervisor gave up): it left for good.

        Its producers stop waiting for its return and fail as for a consumer that
        detached (``ConsumerGone``). Whether it was a lost consumer of this channel.
        """
        gone = self.gone.get(ident)
        if gone is None or gone.kind is not Departure.LOST or ident in self.consumers:
            return False
        self.gone[ident] = Gone(ident, Departure.DETACHED, detail)
        self._prune_gone()
        self.version += 1
        return True

    def replace_producer(self, ident: str) -> bool:
        """Producer ``ident``'s instance is replaced while its worker lives on (an incomplete hand-over):
        its successor gets the next epoch, which fences what the old instance's links still hold.

        Returns:
            Whether it produces here.
        """
        if ident not in self.producers:
            return False
        del self.producers[ident]
        self.epochs[ident] = self.epochs.get(ident, 0) + 1
        return True

    def lose_worker(self, worker: str) -> bool:
        """Worker ``worker`` was removed: its consumers are lost, its producers' next instances get a new epoch; whether any consumer was."""
        lost = [c for c, a in self.consumers.items() if a == worker]
        for c in lost:
            del self.consumers[c]
            self.streams.pop(c, None)
            self.gone[c] = Gone(c, Departure.LOST, f"worker {worker} was lost")
        for src in [src for src, a in self.producers.items() if a == worker]:
            del self.producers[src]
            self.epochs[src] = self.epochs.get(src, 0) + 1  # its successor's epoch: fences this instance if it comes back
        if lost:
            self.version += 1
        return bool(lost)


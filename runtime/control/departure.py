"""Why a consumer left a channel: the departure kinds the broker puts in routing tables.

Producers act on the kind, never on text: a ``HANDOVER`` consumer comes back
(they keep its messages and wait), a ``LOST`` one is expected back from the
supervisor for a while (``coupler.delivery.lost-consumer-wait``), a
``DETACHED`` one left for good (what is kept for it is dropped).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any


class Departure(Enum):
    """How a consumer left; the value is what travels in a routing table."""

    DETACHED = "detached"
    """It closed its port (finished, stopped): it does not come back."""

    HANDOVER = "handover"
    """It is moving to a successor instance (a walltime move): producers wait for it."""

    LOST = "lost"
    """Its worker was lost: the supervisor restarts it from its checkpoint."""


@dataclass(frozen=True)
class Gone:
    """One departed consumer in a routing table.

    Attributes:
        consumer: the consumer id (``actor/port``).
        kind: how it left.
        detail: for people: e.g. the lost worker's address.
    """

    consumer: str
    kind: Departure
    detail: str = ""

    def to_wire(self) -> list[str]:
        """``[consumer, kind, detail]`` for msgpack."""
        return [self.consumer, self.kind.value, self.detail]

    @classmethod
    def from_wire(cls, wire: Any) -> Gone:
        """The inverse of :meth:`to_wire`.

        Raises:
            ValueError: if ``wire`` is not ``[consumer, kind, detail]`` with a known kind.
        """
        try:
            consumer, kind, detail = wire
            return cls(str(consumer), Departure(kind), str(detail))
        except (TypeError, ValueError) as e:
            kinds = [d.value for d in Departure]
            raise ValueError(f"a departure must be [consumer, kind in {kinds}, detail], got {wire!r:.120} ({e})") from None

    def __str__(self) -> str:
        return f"{self.consumer} ({self.kind.value}{': ' + self.detail if self.detail else ''})"

"""Work-sharing queues across a producer's restart: which member had which message.

On a ``Queue(shared=True)`` each message goes to one member. A producer
restarted from its checkpoint sends again, under the same numbers, what it sent
after that checkpoint (:mod:`~coupler.runtime.dataplane.lineage` makes a
merging producer send the same contents). A member drops a message at or below
the highest number it had from that source (:func:`~coupler.runtime.dataplane.marks.dedupe`),
but it cannot know that *another* member had the message: sent to a member that
had not, a repeated message is processed twice.

So each member of a work-sharing queue keeps the numbers it received per source
(:class:`ReceiptLog`), from the producer's last committed checkpoint on (its
messages carry that checkpoint's next number under :data:`FLOOR_KEY`). A
restarted producer asks every member for them and routes each repeated number
by a :class:`ReplayPlan`:

- a number some member had goes to that member again, which drops it (and the
  producer keeps it for that member's own replay until the member commits);
- any other number (lost on its way when the producer died) goes to a member
  whose highest number is below it, which accepts it.

Past the highest number any member had, the plan is over and the queue shares
work as usual. Sans-IO: plain data in and out (``tests/runtime/test_receipts.py``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

FLOOR_KEY = "coupler.floor"
"""The ``Message.meta`` key of a work-sharing message: its producer's last committed checkpoint's next number."""

RECEIPTS_LIMIT = 100_000
"""Most numbers a member keeps per source beyond the floor (a producer that never commits would grow it)."""


def floor_of(meta: Any) -> int | None:
    """The committed floor a message's ``meta`` carries, or ``None`` (absent or malformed: ignored)."""
    if not isinstance(meta, dict):
        return None
    floor = meta.get(FLOOR_KEY)
    if isinstance(floor, int) and not isinstance(floor, bool) and 0 <= floor < 2**63:
        return floor
    return None


class ReceiptLog:
    """A member's side: per source, the increasing numbers it received at or above that source's floor.

    Args:
        limit: most numbers kept per source; beyond, the oldest go (counted in ``overflowed``).
    """

    def __init__(self, limit: int = RECEIPTS_LIMIT) -> None:
        self.limit = max(1, limit)
        self._seqs: dict[str, deque[int]] = {}
        self._floors: dict[str, int] = {}
        self.overflowed = 0

    def add(self, source: str, seq: int, floor: int | None = None) -> None:
        """``source``'s message ``seq`` was received (each at most once, in increasing order per source).

        Args:
            source: the producer's name.
            seq: the message's number.
            floor: the producer's committed floor the message carried, if any;
                numbers below it are forgotten (floors never go down).
        """
        if floor is not None and floor > self._floors.get(source, 0):
            self._floors[source] = floor
        low = self._floors.get(source, 0)
        seqs = self._seqs.setdefault(source, deque())
        while seqs and seqs[0] < low:
            seqs.popleft()
        if seq >= low:
            if seqs and seq <= seqs[-1]:  # out of order (a hand-over's carried messages): keep them sorted
                self._seqs[source] = seqs = deque(sorted({*seqs, seq}))
            else:
                seqs.append(seq)
            if len(seqs) > self.limit:
                seqs.popleft()
                self.overflowed += 1

    def since(self, source: str, start: int) -> list[int]:
        """The numbers of ``source`` received, ``start`` and above, in order."""
        return [q for q in self._seqs.get(source, ()) if q >= start]

    def forget(self, source: str) -> None:
        """Drop what is kept for ``source`` (the channel's producer left for good)."""
        self._seqs.pop(source, None)
        self._floors.pop(source, None)

    def sources(self) -> list[str]:
        """The sources something is kept for."""
        return list(self._seqs)


@dataclass(frozen=True)
class MemberRecord:
    """What one member said it had of the restarted producer's messages.

    Attributes:
        mark: the highest number it had from the producer (``-1``: none), below ``start`` or not.
        seqs: the numbers it received from ``start`` on, increasing.
    """

    mark: int
    seqs: tuple[int, ...]


@dataclass(frozen=True)
class Pin:
    """Send the message to this member only: it had it (and will drop it)."""

    cid: str


@dataclass(frozen=True)
class Avoid:
    """Send the message to any member but these: their highest number is at or above it (they would drop it)."""

    cids: frozenset[str]


@dataclass
class ReplayPlan:
    """The restarted producer's side: where each repeated number goes.

    Args:
        start: the checkpoint's next number (the first the producer sends again).
        members: member id -> what it had.
    """

    start: int
    members: Mapping[str, MemberRecord]
    _owner: dict[int, str] = field(init=False, default_factory=dict)
    _marks: dict[str, int] = field(init=False, default_factory=dict)
    end: int = field(init=False, default=-1)

    def __post_init__(self) -> None:
        for cid, rec in self.members.items():
            self._marks[cid] = rec.mark
            for q in rec.seqs:
                if q >= self.start:
                    self._owner.setdefault(q, cid)
            self.end = max(self.end, rec.mark)

    @classmethod
    def from_records(cls, start: int, records: Iterable[tuple[str, int, Iterable[int]]]) -> ReplayPlan:
        """A plan from ``(member id, mark, numbers)`` rows (several rows of one member are joined)."""
        joined: dict[str, tuple[int, set[int]]] = {}
        for cid, mark, seqs in records:
            m, s = joined.get(cid, (-1, set()))
            joined[cid] = (max(m, int(mark)), s | {int(q) for q in seqs})
        return cls(start, {cid: MemberRecord(m, tuple(sorted(s))) for cid, (m, s) in joined.items()})

    def over(self, seq: int) -> bool:
        """Whether ``seq`` is past every number a member had (the plan has nothing more to say)."""
        return seq > self.end

    def route(self, seq: int) -> Pin | Avoid | None:
        """Where message ``seq`` goes: to the member that had it, away from those that would drop it, or anywhere."""
        if self.over(seq):
            return None
        owner = self._owner.get(seq)
        if owner is not None:
            return Pin(owner)
        above = frozenset(cid for cid, mark in self._marks.items() if mark >= seq)
        if len(above) == len(self._marks):
            return None  # every member had a later one: it was taken by one whose record is gone (a restart)
        return Avoid(above) if above else None

    def sent(self, seq: int, cid: str) -> None:
        """Message ``seq`` went to member ``cid`` (its highest number is now at least ``seq``)."""
        self._owner.pop(seq, None)
        self._marks[cid] = max(self._marks.get(cid, -1), seq)


__all__ = ["FLOOR_KEY", "RECEIPTS_LIMIT", "ReceiptLog", "MemberRecord", "Pin", "Avoid", "ReplayPlan", "floor_of"]

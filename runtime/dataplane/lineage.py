"""Input-order logging: how an actor that merges inputs stays exactly-once across its restart.

An actor that takes ``Queue`` messages from several producers (a fan-in
channel, or several input ports) sees them in an order set by timing. Restarted
from a checkpoint, it takes the replayed backlog in another order, and -- if
what it sends depends on that order (a running sum, a counter, a random draw)
-- its ``k``-th output differs from the ``k``-th output it sent before it died.
Its consumers drop the re-sent outputs by ``(source, seq)``, so one input's
effect is lost and another's is seen twice.

The cure is causal message logging (Alvisi and Marzullo, "Message logging:
pessimistic, optimistic, causal, and optimal", IEEE TSE 24(2), 1998): the
order of the takes is a *determinant*, and it travels with the outputs that
depend on it.

- The merging actor numbers every ``Queue`` take (:class:`TakeLog`). Each
  message it sends carries, in ``meta[META_KEY]``, the takes it made since
  its previous message on that channel (:class:`TakesNote`), and the number of
  its last committed checkpoint's first take (``base``).
- Consumers keep those takes per source (:class:`LineageStore`) until a later
  note's ``base`` says the producer's stored checkpoint covers them.
- A restarted actor asks its consumers for the takes since its checkpoint,
  joins them (:func:`replay_order`) and takes its replayed inputs in exactly
  that order (:class:`ReplayOrder`, in the input buffers). It then sends again
  exactly what it sent before, under the same sequence numbers, and its
  consumers drop those copies as duplicates. Past the recorded order it runs
  freely: no consumer saw an output that depends on what comes next.

This module is sans-IO: plain data in, plain data out, no threads, sockets or
clocks, so that every interleaving can be tested alone
(``tests/runtime/test_lineage.py``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from itertools import islice
from typing import Any, Iterable

TAKES_LIMIT = 100_000
"""Most takes kept per actor (and per producer at a consumer) without a commit; the oldest go beyond.

An actor that never commits (checkpoints off) would otherwise keep every take it
ever made. Beyond the limit a restart cannot repeat the whole order from its
checkpoint; it repeats none of it (the joined order has a gap at its start),
as a replay log beyond ``retain-bytes`` cannot replay everything.
"""

META_KEY = "coupler.takes"
"""The ``Message.meta`` key that carries a :class:`TakesNote` (reserved: the ``coupler.`` prefix)."""

Take = tuple[str, str, int]
"""One take: ``(channel, source, seq)`` of a ``Queue`` message an actor took."""


@dataclass(frozen=True)
class TakesNote:
    """What one output message says about the takes before it.

    Attributes:
        first: the number of the first take in ``takes``.
        takes: takes numbered ``first``, ``first + 1``, ...
        base: the number of the first take after the producer's last committed
            checkpoint; consumers may forget takes numbered below it.
    """

    first: int
    takes: tuple[Take, ...]
    base: int

    def to_wire(self) -> list[Any]:
        """Plain lists for msgpack: ``[first, base, [[channel, source, seq], ...]]``."""
        return [self.first, self.base, [list(t) for t in self.takes]]

    @classmethod
    def from_wire(cls, wire: Any) -> TakesNote:
        """The inverse of :meth:`to_wire`, checking every field.

        Raises:
            ValueError: if ``wire`` is not ``[first, base, [[str, str, int], ...]]``
                with non-negative numbers.
        """
        try:
            first, base, raw = wire
            takes = tuple((str(ch), str(src), int(seq)) for ch, src, seq in raw)
            ok = all(isinstance(ch, str) and isinstance(src, str) for ch, src, _ in raw)
        except (TypeError, ValueError) as e:
            raise ValueError(f"a takes note must be [first, base, [[channel, source, seq], ...]], got {wire!r:.120} ({e})") from None
        if not ok or not _is_count(first) or not _is_count(base) or any(seq < 0 for _, _, seq in takes):
            raise ValueError(f"a takes note needs non-negative integers and string names, got {wire!r:.120}")
        return cls(first, takes, base)


def _is_count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**63


class TakeLog:
    """The merging actor's side: its takes since its last committed checkpoint, numbered.

    Args:
        count: the number of the next take (a restored actor continues its checkpoint's).
        limit: most takes kept; beyond, the oldest tenth goes (see :data:`TAKES_LIMIT`).
    """

    def __init__(self, count: int = 0, limit: int = TAKES_LIMIT) -> None:
        self._base = count  # number of self._takes[0]
        self._takes: list[Take] = []
        self.limit = max(1, limit)
        self.overflowed = 0  # takes dropped uncommitted
        self._noted: dict[str, int] = {}  # output channel -> number of the first take its next note carries

    @property
    def count(self) -> int:
        """The number the next take will get."""
        return self._base + len(self._takes)

    @property
    def base(self) -> int:
        """The first take after the last committed checkpoint."""
        return self._base

    def record(self, channel: str, source: str, seq: int) -> None:
        """Number one take of a ``Queue`` message."""
        self._takes.append((channel, source, seq))
        if len(self._takes) > self.limit:
            drop = max(1, self.limit // 10)
            del self._takes[:drop]
            self._base += drop  # notes now tell consumers to forget them too
            self.overflowed += drop

    def note_for(self, channel: str) -> TakesNote | None:
        """What the next message on ``channel`` carries: the takes since the last one it carried.

        A channel that has carried nothing yet (since the start or a restore)
        carries every take since the committed base. Returns ``None`` when
        there is nothing new (the message then carries no note).
        """
        first = max(self._noted.get(channel, self._base), self._base)
        if first >= self.count:
            return None
        return TakesNote(first, tuple(self._takes[first - self._base:]), self._base)

    def sent(self, channel: str, note: TakesNote) -> None:
        """The message that carried ``note`` on ``channel`` was sent (a failed send carries it again)."""
        self._noted[channel] = note.first + len(note.takes)

    def commit(self, count: int) -> None:
        """A checkpoint taken when the next take was ``count`` is stored: forget the takes before it.

        Raises:
            ValueError: for a count beyond the takes made so far.
        """
        if count > self.count:
            raise ValueError(f"commit of take {count}: only {self.count} takes were made")
        if count > self._base:
            del self._takes[: count - self._base]
            self._base = count


class LineageStore:
    """A consumer's side: the takes its producers' notes carried, per source, since their committed base.

    Args:
        limit: most takes kept per source; beyond, the oldest tenth goes (see :data:`TAKES_LIMIT`).
    """

    def __init__(self, limit: int = TAKES_LIMIT) -> None:
        self._takes: dict[str, dict[int, Take]] = {}
        self._base: dict[str, int] = {}
        self.limit = max(1, limit)

    def add(self, source: str, note: TakesNote) -> None:
        """Keep the takes a message from ``source`` carried; forget those below its base."""
        base = max(self._base.get(source, 0), note.base)
        kept = self._takes.setdefault(source, {})
        if base > self._base.get(source, 0):
            self._base[source] = base
            for n in [n for n in kept if n < base]:
                del kept[n]
        for i, take in enumerate(note.takes):
            n = note.first + i
            if n >= base:
                kept[n] = take
        if len(kept) > self.limit:  # numbers arrive in increasing order: the first keys are the oldest
            for n in list(islice(kept, max(1, self.limit // 10))):
                del kept[n]

    def since(self, source: str, start: int) -> dict[int, Take]:
        """The takes of ``source`` numbered ``start`` and above that this consumer holds."""
        return {n: t for n, t in self._takes.get(source, {}).items() if n >= start}

    def __len__(self) -> int:
        return sum(len(t) for t in self._takes.values())


def replay_order(parts: Iterable[dict[int, Take]], start: int) -> list[Take]:
    """Join what several consumers hold into the order to replay: takes ``start``, ``start + 1``, ...

    The order stops at the first number nobody holds (no consumer saw an output
    that depends on a later take) and before the first number for which two
    consumers disagree (which a correct producer never causes).

    Args:
        parts: number -> take, one dict per consumer.
        start: the first take after the checkpoint the actor restarts from.

    Returns:
        The takes in order.
    """
    merged: dict[int, Take] = {}
    conflicts: set[int] = set()
    for part in parts:
        for n, take in part.items():
            if merged.setdefault(n, take) != take:
                conflicts.add(n)
    out: list[Take] = []
    n = start
    while n in merged and n not in conflicts:
        out.append(merged[n])
        n += 1
    return out


class ReplayOrder:
    """The order in which a restored actor's input buffers hand out replayed messages.

    One order is shared by every ``Queue`` input of the actor: a buffer hands
    out a message only when it is the head of the whole order, so an actor
    that polls several inputs (takes whichever has a message) takes them in
    its predecessor's interleaving too, not only in each input's order.

    Args:
        takes: the recorded takes, in order.
    """

    def __init__(self, takes: Iterable[Take]) -> None:
        self._order: deque[Take] = deque(takes)

    def __len__(self) -> int:
        return len(self._order)

    def head(self) -> Take | None:
        """The take to repeat next, or ``None`` once the order is done."""
        return self._order[0] if self._order else None

    def pop(self) -> None:
        """The head was handed out."""
        self._order.popleft()

    def abandon(self) -> None:
        """Give up the rest of the order (its head did not come in time): every input runs freely."""
        self._order.clear()

    def pick(self, channel: str, items: Iterable[Any]) -> int | None:
        """The index in ``items`` (messages of ``channel``, with ``source`` and ``seq``) of the head.

        ``None`` when the head is another channel's or has not arrived yet.
        """
        head = self.head()
        if head is None or head[0] != channel:
            return None
        _, src, seq = head
        for i, m in enumerate(items):
            if m.seq == seq and m.source == src:
                return i
        return None

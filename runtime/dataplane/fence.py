"""Fencing replaced producer instances: the epoch every message carries, and the rule a consumer's worker applies.

A worker that the scheduler declared dead can come back (a cut link heals) with
its old actors still running, while their successors run elsewhere. Two
instances of one producer must never both deliver: once a successor's message
has reached a consumer's worker, nothing of the old instance may follow it.

- **Epochs, handed out by the broker.** The broker numbers the instances of
  each producer (source) of a channel. A first instance has epoch 0; an instance
  that registers after its predecessor's worker was lost gets the next epoch
  (``broker.attach``); a move off a retiring worker keeps it (its predecessor
  stopped at a step boundary and flushed what it sent).
- **Carried by every message.** A producer sends its epoch in each message's
  metadata under :data:`EPOCH_KEY`, when it is above 0: a first instance sends
  nothing more than before.
- **Checked by the consumer's worker** (:class:`Fence`): it keeps, per
  (channel, source), the highest epoch it has seen, and refuses a batch that
  holds a message of a lower one (the stream is told ``fenced`` and the old
  instance's ``send`` raises :class:`~coupler.runtime.errors.Fenced`).

The rule needs no round trip and no clock: whatever path the successor's
messages take (a stream of their own, a stream its worker already had for
another producer, or the consumer's own worker, in memory), the first of them
fences the old instance on that worker, and only the old instance's messages
that arrived before it are taken (their numbers the successor repeats from its
checkpoint, and the consumer drops those copies). The earlier fence asked the
broker where each producer ran when a stream opened, and so did not see a
successor that opened none.

:func:`judge` is the rule, pure; :class:`Fence` holds the marks of one worker for
its receiving threads and its in-memory deliveries.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from coupler.runtime.errors import Fenced

#: The metadata key under which a message carries its producer instance's epoch (absent: 0).
EPOCH_KEY = "coupler.epoch"

Stamp = tuple[str, int]  # (source, epoch) of one message


def epoch_of(meta: Any) -> int:
    """The epoch a message's metadata states (0 if none).

    Raises:
        ValueError: if it states one that is not a non-negative integer (a malformed stream).
    """
    if not meta:
        return 0
    e = meta.get(EPOCH_KEY, 0)
    if type(e) is not int or e < 0:
        raise ValueError(f"a message's epoch ({EPOCH_KEY!r}) must be a non-negative integer, got {e!r:.40}")
    return e


def stamps(sources: Sequence[str], metas: Sequence[Any]) -> list[Stamp]:
    """The (source, epoch) of each message of a batch, from its header columns."""
    return [(s, epoch_of(m)) for s, m in zip(sources, metas)]


def judge(marks: Mapping[str, int], batch: Sequence[Stamp]) -> tuple[bool, Mapping[str, int]]:
    """Whether a batch may be delivered, and the marks after it (pure).

    Args:
        marks: source -> the highest epoch seen of it (absent: 0).
        batch: the (source, epoch) of each of its messages, in order.

    Returns:
        ``(admitted, marks)``: a batch with a message whose epoch is below its
        source's mark (or below an earlier message of the same source in the
        batch) is refused and changes nothing; an admitted one raises each
        source's mark to its highest epoch. ``marks`` is returned as it is when
        nothing rises.
    """
    raised: dict[str, int] | None = None
    for source, epoch in batch:
        mark = (marks if raised is None else raised).get(source, 0)
        if epoch < mark:
            return False, marks
        if epoch > mark:
            if raised is None:
                raised = dict(marks)
            raised[source] = epoch
    return True, marks if raised is None else raised


class Fence:
    """The marks of one worker: per channel, the highest epoch seen of each source.

    A receiving thread calls :meth:`enter` before it delivers a batch and, if the
    batch was admitted, :meth:`leave` once it is in its buffer; an in-memory
    delivery on this worker calls :meth:`saw` first. A batch that raises a mark
    waits until every batch admitted before it has been put into its buffer, so
    that no message of an old instance, judged before the rise, lands behind the
    message that raised it.
    """

    def __init__(self) -> None:
        self._marks: dict[str, Mapping[str, int]] = {}
        self._busy: dict[str, int] = {}  # channel -> batches admitted and not yet delivered
        self._cond = threading.Condition(threading.Lock())
        self.fenced = 0  # batches refused

    def marks(self, channel: str) -> dict[str, int]:
        """Source -> the highest epoch seen on ``channel`` above 0."""
        return dict(self._marks.get(channel, {}))

    def marks_kept(self) -> list[str]:
        """The channels whose marks this worker keeps."""
        return list(self._marks)

    def enter(self, channel: str, sources: Sequence[str], metas: Sequence[Any]) -> bool:
        """Judge a batch of ``channel`` from its header columns; if admitted, call :meth:`leave` once it is delivered.

        Raises:
            ValueError: a message states a malformed epoch.
        """
        with self._cond:
            marks = self._marks.get(channel)
            if marks is None and not any(metas):
                pass  # no epoch here, none seen: admitted, raises nothing (every batch while no producer was replaced)
            else:
                marks = marks or {}
                admitted, after = judge(marks, stamps(sources, metas))
                if not admitted:
                    self.fenced += 1
                    return False
                if after is not marks:
                    self._marks[channel] = after
                    while self._busy.get(channel):  # those judged before the rise go in first
                        self._cond.wait()
            self._busy[channel] = self._busy.get(channel, 0) + 1
            return True

    def leave(self, channel: str) -> None:
        """An admitted batch of ``channel`` is in its buffer (or failed)."""
        with self._cond:
            n = self._busy[channel] - 1
            if n:
                self._busy[channel] = n
            else:
                del self._busy[channel]
                self._cond.notify_all()

    @contextmanager
    def admitting(self, channel: str, batch: Sequence[Stamp]) -> Iterator[bool]:
        """:meth:`enter` and :meth:`leave` around a block, for a batch given as (source, epoch) pairs."""
        admitted = self.enter(channel, [s for s, _ in batch], [{EPOCH_KEY: e} if e else {} for _, e in batch])
        try:
            yield admitted
        finally:
            if admitted:
                self.leave(channel)

    def saw(self, channel: str, source: str, epoch: int) -> None:
        """A message of ``source`` at ``epoch`` is delivered on this worker, in memory: raise its mark first.

        Never refuses: a producer on the consumer's own worker is not a replaced
        instance (if this worker had been declared dead, its consumer would be
        replaced too).
        """
        if epoch <= self._marks.get(channel, {}).get(source, 0):
            return  # (every message of a first instance: two dict reads)
        if self.enter(channel, [source], [{EPOCH_KEY: epoch}]):
            self.leave(channel)

    def forget(self, channel: str) -> None:
        """No consumer of ``channel`` is left on this worker: drop its marks."""
        with self._cond:
            self._marks.pop(channel, None)


class Refusals:
    """The producer side: instances on this worker that a consumer refused as replaced.

    A refused instance's later messages fail at once with :class:`Fenced`
    instead of opening stream after stream that the consumer refuses again; a
    later instance of the same producer (a higher epoch, restarted here) sends.
    Written by links' reading threads and read by senders: single dict reads and
    writes, atomic under the GIL.
    """

    def __init__(self) -> None:
        self._epochs: dict[tuple[str, str], int] = {}  # (channel, source) -> the highest epoch refused

    def __bool__(self) -> bool:
        return bool(self._epochs)

    def note(self, channel: str, sources: Mapping[str, int]) -> None:
        """A consumer refused these producers of ``channel`` (source -> the epoch it refused)."""
        for src, epoch in sources.items():
            key = (channel, src)
            self._epochs[key] = max(self._epochs.get(key, 0), epoch)

    def check(self, channel: str, header: Mapping[str, Any]) -> None:
        """Refuse a message of an instance at or below the epoch refused.

        Raises:
            Fenced: the message's producer instance was replaced.
        """
        refused = self._epochs.get((channel, header["source"]))
        if refused is not None and epoch_of(header["meta"]) <= refused:
            raise Fenced(
                f"channel {channel!r}: producer {header['source']!r} was replaced (a consumer refused its epoch "
                f"{refused}); its successor sends from its checkpoint"
            )

    def forget(self, channel: str) -> None:
        """Drop what is known of ``channel`` (it closed, or nothing on this worker produces on it any more)."""
        for key in [k for k in list(self._epochs) if k[0] == channel]:
            self._epochs.pop(key, None)


__all__ = ["EPOCH_KEY", "Fence", "Refusals", "Stamp", "epoch_of", "judge", "stamps"]

"""Delivery marks of a ``Queue`` buffer: per producer, what the consumer took and what a checkpoint covers.

Delivery on a ``Queue`` is at-least-once and processed-once: producers replay
after a restart of either end, and the consumer's buffer drops every (source,
seq) at or below what it already has (:func:`dedupe`). :class:`DeliveryMarks`
keep, per source, the highest seq handed to the consumer (what its checkpoint
records) and the highest a stored checkpoint covers (what producers may
forget), and the producer links to tell about commits. Sans-IO: the buffer
calls them with its lock held, and calls the commit functions after releasing it.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Iterable, Mapping

from coupler.runtime.message import Message

CommitFn = Callable[[dict[str, int]], None]  # (source -> highest seq the consumer's checkpoint covers)


def raise_marks(marks: dict[str, int], new: Mapping[str, int]) -> None:
    """Raise each source's mark in ``marks`` to its seq in ``new`` (marks never go down)."""
    for src, q in new.items():
        marks[src] = max(marks.get(src, -1), int(q))


def dedupe(messages: Iterable[Message], marks: dict[str, int]) -> tuple[deque[Message], int]:
    """``messages`` with each (source, seq) at most once, in order, less those at or below ``marks``.

    Args:
        messages: in the order they are to be delivered.
        marks: source -> highest seq already had; raised in place to the highest kept.

    Returns:
        The messages kept, and how many were dropped as duplicates.
    """
    kept: deque[Message] = deque()
    dropped = 0
    for m in messages:
        if m.seq <= marks.get(m.source, -1):
            dropped += 1
            continue
        marks[m.source] = m.seq
        kept.append(m)
    return kept, dropped


class DeliveryMarks:
    """Per source: the highest seq taken by the consumer and the highest committed; who to tell of commits."""

    def __init__(self) -> None:
        self.taken: dict[str, int] = {}  # source -> highest seq handed to the consumer
        self.committed: dict[str, int] = {}  # source -> highest seq a stored checkpoint covers
        self.fns: dict[int, CommitFn] = {}  # link id -> how to tell it about commits

    def took(self, m: Message) -> None:
        """``m`` was handed to the consumer."""
        if m.seq > self.taken.get(m.source, -1):
            self.taken[m.source] = m.seq

    def commit(self, marks: Mapping[str, int]) -> tuple[list[CommitFn], dict[str, int]]:
        """A checkpoint covering ``marks`` is stored.

        Returns:
            The links' commit functions, and the marks committed now to call them with.
        """
        raise_marks(self.committed, marks)
        return list(self.fns.values()), dict(self.committed)

"""The supervisor's journal keeps the newest events and counts the rest, so a long run does not grow it."""

from __future__ import annotations

import itertools

from coupler.runtime.control.journal import Journal


def test_the_journal_keeps_the_newest_events_and_counts_the_dropped_ones() -> None:
    clock = itertools.count()
    journal = Journal(lambda: float(next(clock)), kept=5)
    for i in range(12):
        journal.checkpoint_failed(f"a{i}", "tcp://w:1", "waits for room")
    events = journal.events()
    assert [e.actor for e in events] == [f"a{i}" for i in range(7, 12)]  # the newest five, oldest first
    assert [e.time for e in events] == [7.0, 8.0, 9.0, 10.0, 11.0]
    assert journal.dropped == 7

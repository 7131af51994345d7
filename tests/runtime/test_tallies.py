"""The broker's tallies keep a bounded number of ended actors' records, whatever the order of reports."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coupler.runtime.control.status import TERMINAL_STATES
from coupler.runtime.control.tallies import Tallies

NAMES = [f"a{i}" for i in range(8)]
STATES = ["created", "running", "paused", "finished", "stopped", "failed"]


def _status(name: str, state: str, step: int) -> dict:
    return {"name": name, "state": state, "steps": step, "metrics": {"origin": name, "points": [(step, "loss", step, 1.0)]}}


def _worker(name: str) -> str:
    """Actors a0, a3, a6 share a worker, and so on: a lost worker takes several at once."""
    return f"w{int(name[1:]) % 3}"


@settings(max_examples=300, deadline=None)
@given(
    kept=st.integers(0, 4),
    events=st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(STATES + ["lost-worker"])), max_size=60),
)
def test_only_the_last_ended_actors_are_kept_and_live_ones_never_go(kept: int, events: list[tuple[str, str]]) -> None:
    t = Tallies(ended_kept=kept)
    # A model of what must be kept: every actor's last state, and the order in which the ended ones ended.
    last: dict[str, str] = {}
    ended: list[str] = []
    for step, (name, state) in enumerate(events):
        if state == "lost-worker":  # the worker of `name`'s actor is removed, with every actor it hosts
            t.worker_lost(_worker(name), known=())
            hit = [n for n in last if _worker(n) == _worker(name) and last[n] not in TERMINAL_STATES]
        else:
            t.actor_status(name, {**_status(name, state, step), "worker": _worker(name)})
            hit = [name]
            last[name] = state
        for n in hit:
            if state == "lost-worker":
                last[n] = "lost"
            if n in ended:
                ended.remove(n)
            if last[n] in TERMINAL_STATES:
                ended.append(n)
        for n in ended[: max(len(ended) - kept, 0)]:
            del last[n]
        ended = ended[max(len(ended) - kept, 0):]
        t.sample(channels=())
        # Live actors are all kept, with their series; of the ended ones exactly the last `kept`.
        assert set(t.actors) == set(last)
        assert {n for n, a in t.actors.items() if a["state"] in TERMINAL_STATES} == set(ended)
        assert all(t.actors[n]["state"] == s for n, s in last.items())
        assert set(t.histories) <= set(last)
        assert {k[1] for k in t.meters if k[0] == "actor"} <= {n for n in last if n not in ended}


def test_a_forgotten_actor_that_reports_again_starts_a_new_record() -> None:
    t = Tallies(ended_kept=1)
    for name in ("a", "b"):
        t.actor_status(name, _status(name, "running", 1))
        t.actor_status(name, _status(name, "finished", 2))
    assert set(t.actors) == {"b"} and set(t.histories) == {"b"}
    t.actor_status("a", _status("a", "running", 0))  # the name reused by a new actor
    assert t.actors["a"]["state"] == "running" and set(t.actors) == {"a", "b"}
    with pytest.raises(ValueError, match="ended_kept"):
        Tallies(ended_kept=-1)


def test_ten_thousand_short_actors_leave_a_bounded_record() -> None:
    t = Tallies(ended_kept=64)
    for i in range(10_000):
        name = f"sim-{i}"
        t.actor_status(name, _status(name, "running", 1))
        if i % 100 == 0:
            t.sample(channels=())
        t.actor_status(name, _status(name, "finished", 2))
    assert len(t.actors) == 64 and len(t.histories) == 64 and not any(k[0] == "actor" for k in t.meters)
    assert set(t.actors) == {f"sim-{i}" for i in range(10_000 - 64, 10_000)}


def _consumer(n: int) -> dict:
    return {"received": n, "nbytes": 8 * n, "dropped": 0, "taken": n, "depth": 0}


@settings(max_examples=200, deadline=None)
@given(
    reports=st.lists(st.integers(0, 50), max_size=6).map(sorted),
    final_extra=st.integers(0, 20),
    final_first=st.booleans(),
    other=st.integers(0, 30),
    stale=st.booleans(),
)
def test_a_channels_totals_keep_what_a_consumer_took_after_its_last_report(
    reports: list[int], final_extra: int, final_first: bool, other: int, stale: bool,
) -> None:
    # Reports come every interval; the detach sends the final counters. In either order, and with
    # no report at all before the detach, the totals count every message it took, once. (Before,
    # what it took after the last report was missing: 9 of 10, or 0 of 10 on the producer's worker.)
    t = Tallies()
    final = (reports[-1] if reports else 0) + final_extra
    for n in reports:
        t.report("w", {"ch": {"producers": {}, "consumers": {"c": _consumer(n), "d": _consumer(other)}}}, {}, None, known={"ch"})
    without = {"ch": {"producers": {}, "consumers": {"d": _consumer(other)}}}
    if final_first:
        t.consumer_final("w", "ch", "c", {k: v for k, v in _consumer(final).items() if k != "depth"})
        if stale and reports:  # a report made before the detach, come after it
            t.report("w", {"ch": {"producers": {}, "consumers": {"c": _consumer(reports[-1]), "d": _consumer(other)}}}, {}, None, known={"ch"})
        t.report("w", without, {}, None, known={"ch"})
    else:
        t.report("w", without, {}, None, known={"ch"})
        t.consumer_final("w", "ch", "c", {k: v for k, v in _consumer(final).items() if k != "depth"})
    totals, _, consumers = t.aggregate("ch")
    assert "c" not in consumers
    assert (totals["received"], totals["taken"], totals["received_bytes"]) == (final + other, final + other, 8 * (final + other))
    t.forget_channel("ch")
    assert not t.counted and not t.finals

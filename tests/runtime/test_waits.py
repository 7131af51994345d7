"""An actor's status says what it waits for (runtime/dataplane/waits.py), on every path that blocks.

Before, a stage whose output had no consumer yet showed ``state='running',
steps=0`` for ever and nothing said why.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import pytest

from coupler.runtime import Coupling, Latest, Queue
from coupler.runtime.control.status import ActorStatus
from coupler.runtime.dataplane import waits
from coupler.runtime.dataplane.waits import Wait, WaitKind
from coupler.runtime.observe.dashboard import CouplerPage
from helper_actors import Collector, Producer, TakeOneThenStall


def _until(what: str, ready: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = ready()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting until {what}"
        time.sleep(0.05)


def _waiting(ref: Any) -> Wait | None:
    return ref.status().waiting


# -- the notes themselves ----------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(WaitKind))
def test_every_kind_of_wait_says_what_and_where_in_words_and_survives_the_wire(kind: WaitKind) -> None:
    w = Wait(kind, "ch", "sink/in", since=100.0)
    text = w.describe(now=112.4)
    assert text.startswith("waits 12 s for ") and "'ch'" in text
    assert Wait.from_dict(w.to_dict()) == w
    status = ActorStatus.from_dict(ActorStatus("a", state="running", waiting=w).to_dict())
    assert status.waiting == w and status.explanation.startswith("waits ")
    assert ActorStatus.from_dict(ActorStatus("a", state="finished", waiting=w).to_dict()).explanation == ""


def test_a_nested_wait_shows_while_it_lasts_then_the_outer_one_again_and_nothing_after() -> None:
    me = threading.current_thread()
    assert waits.current(me) is None
    with waits.waiting(WaitKind.ACCEPTANCE, "a", "k/in"):
        with waits.waiting(WaitKind.ROOM, "a", "k/in"):
            assert waits.current(me).kind is WaitKind.ROOM  # type: ignore[union-attr]
        assert waits.current(me).kind is WaitKind.ACCEPTANCE  # type: ignore[union-attr]
    assert waits.current(me) is None
    with pytest.raises(RuntimeError):
        with waits.waiting(WaitKind.INPUT, "a", "k/in"):
            raise RuntimeError("a wait that ends in an error ends too")
    assert waits.current(me) is None


def test_a_wait_nested_in_one_for_the_same_thing_keeps_its_start() -> None:
    me = threading.current_thread()
    outer = waits.begin(WaitKind.INPUT, "a", "k/in", since=50.0)
    with waits.waiting(WaitKind.INPUT, "a", "k/in"):
        assert waits.current(me).since == 50.0  # type: ignore[union-attr]
    with waits.waiting(WaitKind.ORDER, "a", "k/in"):  # another thing: its own start
        assert waits.current(me).since > 50.0  # type: ignore[union-attr]
    waits.end(outer)
    assert waits.current(me) is None


# -- actors on a cluster -----------------------------------------------------------------------
def test_a_producer_without_a_consumer_says_it_waits_for_one(coupling: Coupling, unique: str) -> None:
    ch = coupling.channel(f"c-{unique}", Queue(4))
    src = coupling.spawn(Producer, 5, name=f"src-{unique}", outputs={"out": ch})
    src.start()
    w = _until("the producer notes its wait", lambda: _waiting(src))
    assert (w.kind, w.channel) == (WaitKind.CONSUMER, ch), w
    assert "a consumer to attach" in src.status().explanation
    sink = coupling.spawn(Collector, name=f"sink-{unique}", inputs={"inp": ch})
    sink.start()
    assert src.wait(30).state == "finished"
    assert _until("the sink has every message", lambda: len(sink.call("received")) == 5)
    assert src.status().waiting is None
    sink.stop()


@pytest.mark.parametrize("placement", ["same worker", "other worker"])
def test_a_producer_held_up_by_a_full_queue_names_the_consumer_it_waits_for(
    coupling: Coupling, unique: str, placement: str
) -> None:
    """In memory (a consumer on the producer's worker) and through a stream (credits): the same answer."""
    workers = sorted(coupling.client.scheduler_info()["workers"])
    ch = coupling.channel(f"c-{unique}", Queue(2))
    stall = coupling.spawn(TakeOneThenStall, name=f"stall-{unique}", inputs={"inp": ch}, workers=workers[0])
    there = workers[0] if placement == "same worker" else workers[1]
    src = coupling.spawn(Producer, 1000, name=f"src-{unique}", outputs={"out": ch}, workers=there)
    stall.start()
    src.start()
    try:
        w = _until("the producer waits for room", lambda: (x := _waiting(src)) is not None and x.kind is WaitKind.ROOM and x)
        assert (w.channel, w.peer) == (ch, f"{stall.name}/inp"), w
        assert src.status().steps < 10  # it is held up, as it says
        # The consumer does not wait in the data plane: it is busy in its own step.
        assert stall.status().waiting is None
    finally:
        src.stop()
        stall.stop()


@pytest.mark.parametrize("policy", [Queue(4), Latest()], ids=["Queue", "Latest"])
def test_a_consumer_with_nothing_to_take_says_it_waits_for_input_on_its_port(coupling: Coupling, unique: str, policy: Any) -> None:
    ch = coupling.channel(f"c-{unique}", policy)
    sink = coupling.spawn(Collector, name=f"sink-{unique}", inputs={"inp": ch})
    sink.start()
    try:
        w = _until("the consumer notes its wait", lambda: _waiting(sink))
        assert (w.kind, w.channel, w.peer) == (WaitKind.INPUT, ch, f"{sink.name}/inp"), w
        # The run loop receives in slices of 0.1 s (to give way at step boundaries): still one wait,
        # from its start. Each slice's note started again, and the status said "waits 0 s".
        time.sleep(1.5)
        later = _waiting(sink)
        assert later is not None and later.since == pytest.approx(w.since, abs=0.2), (w, later)
        assert later.describe().startswith(("waits 1 s", "waits 2 s", "waits 3 s")), later.describe()
        src = coupling.spawn(Producer, 1, name=f"src-{unique}", outputs={"out": ch})
        src.start()
        assert _until("the message arrives", lambda: sink.call("received"))
        src.wait(30)
    finally:
        sink.stop()


def test_the_dashboard_shows_what_each_actor_waits_for(coupling: Coupling, unique: str) -> None:
    ch = coupling.channel(f"c-{unique}", Queue(4))
    src = coupling.spawn(Producer, 5, name=f"src-{unique}", outputs={"out": ch})
    src.start()
    try:
        _until("the producer notes its wait", lambda: _waiting(src))
        row: dict[str, Any] = {}

        def shown() -> bool:
            statuses = {src.name: src.status()}
            cols = CouplerPage.actor_rows(None, statuses, {})  # type: ignore[arg-type]
            row.update({k: v[0] for k, v in cols.items()})
            return bool(row["waiting"])

        _until("the row says it", shown)
        assert row["waiting"].startswith("waits ") and ch in row["waiting"]
    finally:
        src.stop()

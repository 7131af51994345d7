"""Channels on a real LocalCluster: fan-in, every policy, back-pressure, broadcast."""

from __future__ import annotations

import time

import pytest

from helper_actors import Collector, Producer
from coupler.runtime import Coupling, Latest, Queue, Reservoir, Window


def _wait_for(pred, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_fan_in_four_producers_no_loss_no_duplicates(coupling: Coupling, unique: str) -> None:
    ch = coupling.channel(f"fanin-{unique}", Queue(16))
    w = coupling.workers()
    n = 150
    col = coupling.spawn(Collector, name=f"col-{unique}", inputs={"inp": ch}, workers=w[1])
    prods = [
        coupling.spawn(Producer, n, ident=i, name=f"p{i}-{unique}", outputs={"out": ch}, workers=w[i % 2])
        for i in range(4)
    ]
    col.start()
    for p in prods:
        p.start()
    for p in prods:
        assert p.wait(60).state == "finished"
    _wait_for(lambda: len(col.call("received")) >= 4 * n, what="all messages")
    got = col.call("received")
    col.stop()
    assert len(got) == 4 * n
    # Exactly the set sent: every (source, seq) once, content matching the sender.
    keys = {(src, seq) for src, seq, *_ in got}
    assert keys == {(f"p{i}-{unique}", s) for i in range(4) for s in range(n)}
    for src, seq, step, value, ts in got:
        ident = int(src[1])
        assert value == ident * 1e6 + seq and step == seq and ts == 0.5 * seq
    # Order is kept per producer.
    for i in range(4):
        seqs = [seq for src, seq, *_ in got if src == f"p{i}-{unique}"]
        assert seqs == sorted(seqs)
    # Sum of all payloads: checksum of the content.
    expected = sum(16 * (i * 1e6 + s) for i in range(4) for s in range(n))
    assert col.call("received") and abs(sum(16 * v for *_, v, _ in got) - expected) < 1e-3 * expected


def test_queue_back_pressure_blocks_producer_until_consumer_takes(coupling: Coupling, unique: str) -> None:
    ch = coupling.channel(f"bp-{unique}", Queue(maxsize=4))
    w = coupling.workers()
    col = coupling.spawn(Collector, name=f"col-{unique}", inputs={"inp": ch}, workers=w[1])  # not started
    prod = coupling.spawn(Producer, 20, name=f"prod-{unique}", outputs={"out": ch}, workers=w[0])
    prod.start()
    _wait_for(lambda: prod.status().info["sent"] >= 4, what="the queue to fill")
    time.sleep(1.0)
    st = prod.status()
    # Four accepted, the fifth send is blocked: the producer waits, nothing is dropped.
    assert st.info["sent"] == 4 and st.state == "running"
    assert col.call("buffer_stats")["depth"] == 4
    col.start()
    assert prod.wait(30).state == "finished"
    _wait_for(lambda: len(col.call("received")) == 20, what="all 20 messages")
    assert [seq for _, seq, *_ in col.call("received")] == list(range(20))
    col.stop()


def test_latest_keeps_only_the_newest(coupling: Coupling, unique: str) -> None:
    ch = coupling.channel(f"latest-{unique}", Latest())
    w = coupling.workers()
    col = coupling.spawn(Collector, name=f"col-{unique}", inputs={"inp": ch}, workers=w[1])
    prod = coupling.spawn(Producer, 50, name=f"prod-{unique}", outputs={"out": ch}, workers=w[0])
    prod.start()
    prod.wait(30)
    assert col.call("receive_now", 5) == (f"prod-{unique}", 49, 49.0)
    assert col.call("receive_now", 0.2) is None  # nothing newer: the default comes back
    stats = col.call("buffer_stats")
    assert stats["received"] == 50 and stats["dropped"] == 49


def test_reservoir_keeps_a_uniform_sample_and_samples_batches(coupling: Coupling, unique: str) -> None:
    ch = coupling.channel(f"res-{unique}", Reservoir(capacity=64, seed=1))
    w = coupling.workers()
    col = coupling.spawn(Collector, name=f"col-{unique}", inputs={"inp": ch}, workers=w[1])
    prods = [coupling.spawn(Producer, 400, ident=i, name=f"p{i}-{unique}", outputs={"out": ch}, workers=w[0]) for i in range(2)]
    for p in prods:
        p.start()
    for p in prods:
        p.wait(60)
    held = col.call("contents")["x"][:, 0]
    assert held.shape == (64,)
    sent = {i * 1e6 + s for i in range(2) for s in range(400)}
    assert set(held.tolist()) <= sent and len(set(held.tolist())) == 64  # distinct messages, all real
    # A uniform sample of 800 messages keeps ~half of each producer's (binomial-ish, sd ~ 3.6).
    from_p1 = int((held >= 1e6).sum())
    assert 14 <= from_p1 <= 50
    batch = col.call("sample_now", 32)
    assert batch["x"].shape == (32, 16) and set(batch["x"][:, 0].tolist()) <= set(held.tolist())
    stats = col.call("buffer_stats")
    assert stats["received"] == 800 and stats["dropped"] == 800 - 64 and stats["depth"] == 64


def test_window_keeps_the_newest(coupling: Coupling, unique: str) -> None:
    ch = coupling.channel(f"win-{unique}", Window(capacity=10))
    w = coupling.workers()
    col = coupling.spawn(Collector, name=f"col-{unique}", inputs={"inp": ch}, workers=w[1])
    prod = coupling.spawn(Producer, 37, name=f"prod-{unique}", outputs={"out": ch}, workers=w[0])
    prod.start()
    prod.wait(30)
    held = sorted(col.call("contents")["x"][:, 0].tolist())
    assert held == [float(s) for s in range(27, 37)]
    with pytest.raises(Exception, match="use sample"):
        col.call("receive_now", 0)


def test_broadcast_every_consumer_gets_every_message(coupling: Coupling, unique: str) -> None:
    ch = coupling.channel(f"bc-{unique}", Queue(8))
    w = coupling.workers()
    cols = [coupling.spawn(Collector, name=f"c{i}-{unique}", inputs={"inp": ch}, workers=w[i % 2]) for i in range(3)]
    prod = coupling.spawn(Producer, 60, name=f"prod-{unique}", outputs={"out": ch}, workers=w[0])
    for c in cols:
        c.start()
    prod.start()
    prod.wait(30)
    for c in cols:
        _wait_for(lambda c=c: len(c.call("received")) == 60, what="every consumer to get all")
        assert [v for *_, v, _ in c.call("received")] == [float(s) for s in range(60)]
        c.stop()


def test_counters_reach_the_broker(coupling: Coupling, unique: str) -> None:
    ch = coupling.channel(f"stats-{unique}", Queue(8))
    w = coupling.workers()
    col = coupling.spawn(Collector, name=f"col-{unique}", inputs={"inp": ch}, workers=w[1])
    prod = coupling.spawn(Producer, 25, size=256, name=f"prod-{unique}", outputs={"out": ch}, workers=w[0])
    col.start()
    prod.start()
    prod.wait(30)
    # Producer and consumer report from different workers, each on its own clock.
    _wait_for(lambda: (coupling.channels()[ch].received, coupling.channels()[ch].sent) == (25, 25), what="reports")
    st = coupling.channels()[ch]
    assert st.sent == 25 and st.sent_bytes == 25 * 256 * 4 and st.producers == (f"prod-{unique}",)
    assert st.consumers == (f"col-{unique}/inp",) and st.policy == {"kind": "queue", "maxsize": 8}
    col.stop()


def test_work_sharing_gives_each_message_to_exactly_one_consumer(coupling: Coupling, unique: str) -> None:
    ch = coupling.channel(f"tasks-{unique}", Queue(2, shared=True))
    w = coupling.workers()
    # Four members, two per worker: one shares the producers' process (local path), three are remote links.
    cols = [
        coupling.spawn(Collector, 0.002, name=f"m{i}-{unique}", inputs={"inp": ch}, workers=w[i % 2]) for i in range(4)
    ]
    n = 120
    prods = [coupling.spawn(Producer, n, ident=i, name=f"p{i}-{unique}", outputs={"out": ch}, workers=w[0]) for i in range(2)]
    for c in cols:
        c.start()
    for p in prods:
        p.start()
    for p in prods:
        assert p.wait(60).state == "finished"
    _wait_for(lambda: sum(len(c.call("received")) for c in cols) >= 2 * n, what="all tasks")
    time.sleep(0.3)  # a duplicate would arrive now
    per_member = [c.call("received") for c in cols]
    for c in cols:
        c.stop()
    keys = [(src, seq) for got in per_member for src, seq, *_ in got]
    assert len(keys) == 2 * n, f"{len(keys)} deliveries for {2 * n} messages"
    assert set(keys) == {(f"p{i}-{unique}", s) for i in range(2) for s in range(n)}
    # Every member worked (the load is shared), and each member saw each producer's messages in order.
    assert all(len(got) > 0 for got in per_member), [len(got) for got in per_member]
    for got in per_member:
        for i in range(2):
            seqs = [seq for src, seq, *_ in got if src == f"p{i}-{unique}"]
            assert seqs == sorted(seqs)


def test_work_sharing_routes_around_a_member_that_does_not_take(coupling: Coupling, unique: str) -> None:
    ch = coupling.channel(f"tasks-{unique}", Queue(1, shared=True))
    w = coupling.workers()
    idle = coupling.spawn(Collector, name=f"idle-{unique}", inputs={"inp": ch}, workers=w[1])  # never started
    busy = coupling.spawn(Collector, name=f"busy-{unique}", inputs={"inp": ch}, workers=w[1])
    prod = coupling.spawn(Producer, 40, name=f"prod-{unique}", outputs={"out": ch}, workers=w[0])
    busy.start()
    prod.start()
    assert prod.wait(30).state == "finished"  # not blocked by the idle member's full queue
    _wait_for(lambda: len(busy.call("received")) >= 39, what="the working member to take the rest")
    got_busy = [seq for _, seq, *_ in busy.call("received")]
    held = idle.call("receive_now", 5)
    busy.stop()
    # The idle member holds at most its one slot; together they got every message once.
    taken = got_busy + ([] if held is None else [held[1]])
    assert sorted(taken) == list(range(40))
    assert idle.call("receive_now", 0.2) is None


def test_work_sharing_queues_nothing_at_a_member_that_is_not_waiting(coupling: Coupling, unique: str) -> None:
    """Pull, not push: a member that took a task and stopped receiving is given no second one.

    The member sits on the producer's own worker, where a freed slot used to be
    refilled at once (a local put needs no credit round trip).
    """
    ch = coupling.channel(f"tasks-{unique}", Queue(1, shared=True))
    w = coupling.workers()
    stuck = coupling.spawn(Collector, name=f"stuck-{unique}", inputs={"inp": ch}, workers=w[0])  # never started
    worker = coupling.spawn(Collector, 0.02, name=f"worker-{unique}", inputs={"inp": ch}, workers=w[1])
    prod = coupling.spawn(Producer, 40, name=f"prod-{unique}", outputs={"out": ch}, workers=w[0])
    worker.start()
    prod.start()
    first = stuck.call("receive_now", 10)  # waits, so it is offered one task
    assert first is not None
    assert prod.wait(30).state == "finished"
    _wait_for(lambda: len(worker.call("received")) >= 39, what="the waiting member to take the rest")
    assert stuck.call("buffer_stats")["depth"] == 0  # nothing was queued behind the task it took
    got = [seq for _, seq, *_ in worker.call("received")]
    worker.stop()
    assert sorted(got + [first[1]]) == list(range(40))

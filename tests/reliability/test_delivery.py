"""At-least-once delivery on Queue channels: duplicate suppression, resume, replay logs and commits."""

from __future__ import annotations

import time

import cloudpickle
import numpy as np
import pytest

import chaos_actors
from chaos_actors import Leaver, QueueLearner, Simulator
from coupler.runtime.dataplane.buffers import QueueBuffer, make_buffer
from coupler.runtime.coupling import Coupling
from coupler.runtime.dataplane.endpoint import ENDPOINT_NAME
from coupler.runtime.dataplane.outbox import ReplayLog
from coupler.runtime.dataplane.payloads import frozen_leaves
from coupler.runtime.message import Message
from coupler.runtime.policies import Queue

cloudpickle.register_pickle_by_value(chaos_actors)


def msg(seq: int, source: str = "p") -> Message:
    return Message(data={"x": np.array([seq], np.int64)}, seq=seq, source=source)


def _queue(maxsize: int = 8) -> QueueBuffer:
    buf = make_buffer("q", Queue(maxsize))
    assert isinstance(buf, QueueBuffer)
    return buf


def test_a_replayed_message_is_dropped_and_its_slot_freed() -> None:
    buf = _queue(4)
    granted: list[int] = []
    buf.add_link(1, lambda n, depth: granted.append(n))
    buf.want(1, 4)
    assert sum(granted) == 4
    assert buf.put_credited(1, [msg(0), msg(1), msg(0, "other")]) == 3  # all handled: nothing refused
    assert buf.put_credited(1, [msg(1)]) == 1  # a replay of seq 1 from "p"
    assert len(buf) == 3 and buf.stats.duplicates == 1
    buf.want(1, 4)
    assert sum(granted) == 5  # the duplicate's slot was free again: one more credit
    assert [(m.source, m.seq) for m in (buf.get(0), buf.get(0), buf.get(0))] == [("p", 0), ("p", 1), ("other", 0)]
    assert buf.taken_marks() == {"p": 1, "other": 0}
    buf.remove_link(1)  # its credits become free slots for a producer on this worker
    assert buf.put([msg(1), msg(2)], 0.1) == 2 and len(buf) == 1 and buf.stats.duplicates == 2


def test_resume_keeps_each_message_once_in_order() -> None:
    buf = _queue(8)
    buf.put([msg(3), msg(4), msg(5), msg(6)])  # a producer's replay arrived before the restore
    # The checkpoint had taken up to 2 and carried 3 and 4 over (a hand-over).
    buf.resume({"p": 2}, [msg(3), msg(4)])
    assert [buf.get(0).seq for _ in range(4)] == [3, 4, 5, 6]
    assert len(buf) == 0 and buf.stats.duplicates == 2
    buf.put([msg(5), msg(7)])
    assert [buf.get(0).seq for _ in range(1)] == [7]


def test_resume_drops_what_the_checkpoint_covers() -> None:
    buf = _queue(8)
    buf.put([msg(0), msg(1), msg(2), msg(0, "b")])
    buf.resume({"p": 1, "b": 5})
    assert [(m.source, m.seq) for m in (buf.get(0),)] == [("p", 2)]
    assert len(buf) == 0


def test_replay_log_forgets_what_is_committed_and_bounds_its_bytes() -> None:
    log = ReplayLog("c", "k/in", limit_bytes=3 * 8)
    hdr = lambda s, q: {"source": s, "seq": q}  # noqa: E731
    items = [log.add(hdr("a", q), [np.zeros(1)], 8) for q in range(3)]
    log.add(hdr("b", 0), [np.zeros(1)], 8)  # over the limit: not kept, and the log is full until a commit covers it
    assert [(i.header["source"], i.header["seq"]) for i in log.replay()] == [("a", 0), ("a", 1), ("a", 2)]
    assert log.forgotten == 1 and log.gaps == {"b": 0}
    log.remove(items[2])
    log.commit({"a": 0})
    assert [(i.header["source"], i.header["seq"]) for i in log.replay()] == [("a", 1)] and log.nbytes == 8
    assert log.full  # b's hole is not covered yet
    log.commit({"b": 0})
    assert not log.full
    log.add(hdr("b", 1), [np.zeros(1)], 8)
    assert [(i.header["source"], i.header["seq"]) for i in log.replay()] == [("a", 1), ("b", 1)] and log.nbytes == 16


def test_frozen_leaves_copy_writable_arrays_only() -> None:
    ro = np.arange(3.0)
    ro.flags.writeable = False
    rw = np.arange(3.0)
    out = frozen_leaves([ro, rw])
    assert out[0] is ro and out[1] is not rw and not out[1].flags.writeable
    rw[0] = 7.0
    assert out[1][0] == 0.0


def _replay_log_sizes(cp: Coupling, worker: str, channel: str) -> dict[str, list[int]]:
    def sizes(dask_worker) -> dict[str, list[int]]:  # type: ignore[no-untyped-def]
        ep = dask_worker.plugins[ENDPOINT_NAME]
        return {k[1]: [i.header["seq"] for i in log.replay()] for k, box in ep.dispatch.outboxes.items() if k[0] == channel and box.log for log in [box.log]}

    return cp.client.run(sizes, workers=[worker])[worker]


def _learn_from_a_simulator(cp: Coupling, tag: str, n: int) -> tuple[str, object, object, list[str]]:
    """A learner on worker 0 fed ``n`` samples by a simulator on worker 1, both done: ``(channel, learner, sim, workers)``."""
    ch = cp.channel(f"{tag}-ch", Queue(16))
    w = cp.workers()
    learner = cp.spawn(QueueLearner, name=f"learner-{tag}", inputs={"data": ch}, workers=w[0])
    sim = cp.spawn(Simulator, n, 3, name=f"sim-{tag}", outputs={"out": ch}, workers=w[1])
    learner.start()
    sim.start()
    assert sim.wait(60).state == "finished"
    deadline = time.monotonic() + 30
    while learner.status().info["count"] < n:
        assert time.monotonic() < deadline, "the learner did not get every message"
        time.sleep(0.05)
    return ch, learner, sim, w


def test_a_commit_reaches_the_producers_worker_and_empties_its_log(coupling: Coupling, unique: str) -> None:
    n = 40
    ch, learner, sim, w = _learn_from_a_simulator(coupling, f"commit-{unique}", n)
    kept = _replay_log_sizes(coupling, w[1], ch)
    assert kept == {f"learner-commit-{unique}/data": list(range(n))}  # everything, until the consumer commits
    ck = learner.checkpoint()
    assert ck["delivered"] == {"data": {sim.name: n - 1}}
    learner.call("commit", ck["delivered"])
    deadline = time.monotonic() + 10
    # Emptied; and once empty, forgotten with the links the finished simulator's worker kept for it.
    while _replay_log_sizes(coupling, w[1], ch).get(f"learner-commit-{unique}/data"):
        assert time.monotonic() < deadline, "the commit did not reach the producer's worker"
        time.sleep(0.05)
    with pytest.raises(ValueError, match="got marks for"):
        learner.call("commit", {"nope": {}})
    learner.stop()


def _until_forgotten(cp: Coupling, worker: str, channel: str, what: str) -> None:
    deadline = time.monotonic() + 10
    while _replay_log_sizes(cp, worker, channel):
        assert time.monotonic() < deadline, f"the producer's worker still keeps messages {what}"
        time.sleep(0.05)


def test_a_producer_forgets_what_it_kept_for_a_consumer_that_left_and_on_a_closed_channel(coupling: Coupling, unique: str) -> None:
    w = coupling.workers()
    n = 20
    ch = coupling.channel(f"leave-{unique}", Queue(16))
    leaver = coupling.spawn(Leaver, n, name=f"leaver-{unique}", inputs={"data": ch}, workers=w[0])
    sim = coupling.spawn(Simulator, n, 3, name=f"sim-{unique}", outputs={"out": ch}, workers=w[1])
    leaver.start()
    sim.start()
    assert sim.wait(60).state == "finished"
    assert leaver.wait(60).state == "finished"
    _until_forgotten(coupling, w[1], ch, "for a consumer that closed its port")

    ch, learner, _, w = _learn_from_a_simulator(coupling, f"close-{unique}", n)
    assert _replay_log_sizes(coupling, w[1], ch) == {f"learner-close-{unique}/data": list(range(n))}  # no commit yet
    coupling.close_channel(ch)
    _until_forgotten(coupling, w[1], ch, "on a closed channel")
    learner.stop()


def test_a_producer_waiting_inside_a_step_gives_its_credits_back(coupling: Coupling, unique: str) -> None:
    """Credits are slots of the consumer's queue: a producer that neither sends nor flushes must not keep them.

    Grants may run ahead of use, up to the whole queue, and the other producers
    of that queue would wait for slots it will not use (session 11 saw a resend
    stuck that way behind a producer holding 62 of 64).
    """
    ch = coupling.channel(f"idle-{unique}", Queue(16))
    w = coupling.workers()
    learner = coupling.spawn(QueueLearner, name=f"learner-{unique}", inputs={"data": ch}, workers=w[0])
    sim = coupling.spawn(Simulator, 5, 3, 0.0, 0, 30.0, name=f"sim-{unique}", outputs={"out": ch}, workers=w[1])
    learner.start()
    sim.start()

    def credits(dask_worker) -> list[int]:  # type: ignore[no-untyped-def]
        ep = dask_worker.plugins[ENDPOINT_NAME]
        return [link.stats()["credits"] for key, link in ep.dispatch.links.items() if key[0] == ch]

    deadline = time.monotonic() + 10
    while learner.status().info["count"] < 5 or coupling.client.run(credits, workers=[w[1]])[w[1]] != [0]:
        assert time.monotonic() < deadline, f"the waiting producer still holds credits {coupling.client.run(credits, workers=[w[1]])}"
        time.sleep(0.05)
    assert sim.status().state == "running"  # still inside its step: no flush gave them back
    sim.stop()
    learner.stop()


def test_a_broadcast_send_that_times_out_at_a_slow_consumer_never_gives_a_seq_two_payloads(coupling, unique) -> None:  # type: ignore[no-untyped-def]
    """A fast and a slow consumer of one Queue; sends with a timeout that the slow one's full queue makes expire.

    The fast consumer has each message by then, so its number is used: the
    send raises PartiallyDelivered with that number, and the message reaches
    the slow consumer later, before anything newer. Every (source, seq) carries
    one payload at both consumers (the number used to be reused for the next
    payload: the fast consumer had the wrong value for 9 of 12 sends).
    """
    import numpy as np

    from coupler.runtime import PartiallyDelivered, Queue
    from helper_actors import Collector, Producer

    cp = coupling
    ch = cp.channel(f"bcast-{unique}", Queue(2))
    w = cp.workers()
    prod = cp.spawn(Producer, 0, name=f"prod-{unique}", outputs={"out": ch}, workers=w[0])
    fast = cp.spawn(Collector, name=f"fast-{unique}", inputs={"inp": ch}, workers=w[1])
    slow = cp.spawn(Collector, name=f"slow-{unique}", inputs={"inp": ch}, workers=w[0])
    fast.start()  # takes everything at once; `slow` takes nothing until started: its queue of 2 fills
    payload_of: dict[int, float] = {}
    partial = 0
    for i in range(12):
        try:
            seq = prod.call("send_now", {"x": np.full(16, float(i), np.float32)}, 0.3)
        except PartiallyDelivered as e:
            seq, partial = e.seq, partial + 1
            assert e.delivered_to == (f"fast-{unique}/inp",) and e.pending == (f"slow-{unique}/inp",)
        assert seq not in payload_of, f"seq {seq} was used for two payloads"
        payload_of[seq] = float(i)
    assert partial >= 8  # the slow queue held 2; later sends timed out there
    slow.start()
    deadline = time.monotonic() + 30
    while min(len(fast.call("received")), len(slow.call("received"))) < 12 and time.monotonic() < deadline:
        time.sleep(0.1)
    for ref in (fast, slow):
        got = ref.call("received")
        assert [q for _, q, *_ in got] == sorted(payload_of), f"{ref.name}: every message once, in order"
        assert all(value == payload_of[q] for _, q, _, value, _ in got), f"{ref.name}: each seq with its own payload"
    for ref in (prod, fast, slow):
        ref.stop()

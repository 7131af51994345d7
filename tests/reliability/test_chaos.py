"""Chaos: SIGKILL the worker process hosting the learner, then one hosting a simulator, mid-run.

Two simulators stream samples on a ``Queue`` to a learner that trains on each
one. The supervisor restarts the lost actor from its last checkpoint on
another worker. The run must complete with every message accounted for: each
simulator's sequence numbers reach the learner exactly once and in order
(counts), the checksum of what it trained on equals that of what was sent,
and its final weights equal an offline replay of SGD over the messages in the
order it recorded (so its state after the restart is the checkpoint's state
plus each later message once).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import cloudpickle
import numpy as np
import pytest

import chaos_actors
from chaos_cluster import chaos_coupling, kill_worker, three_workers, until
from chaos_actors import QueueLearner, Simulator, break_stream_at, checksum, sample, sgd_step, stream_breaks_left
from coupler.runtime.coupling import Coupling
from coupler.runtime.policies import Queue

cloudpickle.register_pickle_by_value(chaos_actors)

N = 250  # samples per simulator
PERIOD = 0.01  # seconds per simulator step
SEEDS = (1, 2)
FIELD = 1 << 17  # float32 values per field in the shared-memory variant: 512 KiB, above coupler.transport.inline-max


_until = until
_workers = three_workers
_kill = kill_worker


@pytest.fixture(scope="module")
def cluster() -> Iterator[Coupling]:
    with chaos_coupling(checkpoint_interval=0.5) as cp:
        yield cp


def _delivery_state(dask_worker) -> dict:  # type: ignore[no-untyped-def]
    """What a worker's endpoint keeps and sends for its consumers (for a failure's message)."""
    from coupler.runtime.dataplane.endpoint import ENDPOINT_NAME

    ep = dask_worker.plugins[ENDPOINT_NAME]
    return {
        "owed": {str(k): len(b.owed) for k, b in ep.dispatch.outboxes.items()},
        "resending": [str(k) for k, b in ep.dispatch.outboxes.items() if b.resending],
        "logs": {str(k): len(b.log.items) for k, b in ep.dispatch.outboxes.items() if b.log},
        "links": {str(k): link.stats() for k, link in ep.dispatch.links.items()},
    }


def _start(cp: Coupling, tag: str, field: int = 0) -> tuple[object, list[object], list[str]]:
    ch = cp.channel(f"samples-{tag}", Queue(8))
    w = _workers(cp)
    learner = cp.spawn(QueueLearner, name=f"learner-{tag}", inputs={"data": ch}, workers=w[0])
    sims = [
        cp.spawn(Simulator, N, seed, PERIOD, field, name=f"sim{seed}-{tag}", outputs={"out": ch}, workers=w[i + 1])
        for i, seed in enumerate(SEEDS)
    ]
    learner.start()
    for s in sims:
        s.start()
    return learner, sims, w


def _assert_every_message_once(cp: Coupling, learner: object, sims: list[object], n: int = N, finished: bool = True) -> dict:
    for s in sims if finished else ():
        assert s.wait(120).state == "finished"
    _until("the learner to train on every message", lambda: learner.status().info["count"] >= n * len(sims))
    time.sleep(0.3)  # a duplicate arriving late would show up as an extra message
    rec = learner.call("record")
    trained = rec["trained"]
    assert len(trained) == n * len(sims)
    for s, seed in zip(sims, SEEDS):
        seqs = [q for src, q in trained if src == s.name]
        assert seqs == list(range(n)), f"{s.name}: expected seqs 0..{n - 1} once each, in order"
    expected = sum(checksum(sample(seed, i)) for seed in SEEDS for i in range(n))
    assert rec["total"] == pytest.approx(expected, rel=1e-12)
    assert rec["bad_fields"] == 0  # every field arrived with its own message's values
    # Offline replay of SGD over exactly the recorded messages (same float64 operations).
    seed_of = {s.name: seed for s, seed in zip(sims, SEEDS)}
    w = np.zeros_like(rec["w"])
    for src, q in trained:
        d = sample(seed_of[src], q)
        w = sgd_step(w, d["x"], d["y"])
    np.testing.assert_allclose(rec["w"], w, rtol=1e-12, atol=0)
    return rec


def test_sigkill_of_the_learners_worker_loses_and_repeats_nothing(cluster: Coupling) -> None:
    cp = cluster
    learner, sims, w = _start(cp, "kl")
    ck = lambda: cp.supervisor.last_checkpoint(learner.name) or {}  # noqa: E731
    _until("a learner checkpoint covering 100 messages", lambda: len(ck().get("state", {}).get("trained", [])) >= 100)
    _kill(cp, w[0])
    _until("the learner's restart", lambda: learner.generation == 1)
    rec = _assert_every_message_once(cp, learner, sims)
    assert 100 <= rec["restored_at"] < N * len(sims)  # resumed from its checkpoint, not from scratch
    restarted = [e for e in cp.supervisor.events if e.kind == "restarted" and e.actor == learner.name]
    assert len(restarted) == 1 and restarted[0].source == w[0] and "checkpoint" in restarted[0].detail
    assert learner.status().worker != w[0]
    learner.stop()


def test_sigkill_of_the_learners_worker_mid_stream_of_shared_memory_fields_loses_nothing(cluster: Coupling) -> None:
    """The same with 512 KiB fields, which go through shared-memory segments: what the
    killed learner had not acknowledged is handed to its successor from segments the
    producers kept (a segment is reused only once its message is acknowledged)."""
    cp = cluster
    learner, sims, w = _start(cp, "kf", field=FIELD)
    ck = lambda: cp.supervisor.last_checkpoint(learner.name) or {}  # noqa: E731
    _until("a learner checkpoint covering 100 messages", lambda: len(ck().get("state", {}).get("trained", [])) >= 100)
    _kill(cp, w[0])
    _until("the learner's restart", lambda: learner.generation == 1)
    _assert_every_message_once(cp, learner, sims)
    # The fields took that path, from every simulator whose worker the restarted learner
    # did not land on (on its own worker a consumer is served in the process, no link);
    # each counted its worker's links at its end (they close with it).
    remote = [s for s in sims if s.status().worker != learner.status().worker]
    assert remote and all(s.status().info["shm_messages"] > 0 for s in remote)
    learner.stop()


def test_sigkill_of_a_simulators_worker_loses_and_repeats_nothing(cluster: Coupling) -> None:
    cp = cluster
    learner, sims, w = _start(cp, "ks")
    victim = sims[0]
    ck = lambda: cp.supervisor.last_checkpoint(victim.name) or {}  # noqa: E731
    _until("a simulator checkpoint after 60 steps", lambda: ck().get("state", {}).get("i", 0) >= 60)
    _kill(cp, w[1])
    _until("the simulator's restart", lambda: victim.generation == 1)
    _assert_every_message_once(cp, learner, sims)
    restarted = [e for e in cp.supervisor.events if e.kind == "restarted" and e.actor == victim.name]
    assert len(restarted) == 1 and "checkpoint" in restarted[0].detail
    learner.stop()


def test_a_learner_restarted_after_its_simulators_finished_gets_what_its_checkpoint_did_not_cover(
    cluster: Coupling,
) -> None:
    """Producers that send nothing more still replay to a consumer's successor.

    Only a producer's next send used to catch a successor up, so a learner lost
    after its simulators had finished never got what followed its checkpoint.
    """
    cp = cluster
    n = 40
    ch = cp.channel("samples-fin", Queue(64))  # the simulators finish long before the learner
    w = _workers(cp)
    learner = cp.spawn(QueueLearner, 0.05, name="learner-fin", inputs={"data": ch}, workers=w[0])
    sims = [
        cp.spawn(Simulator, n, seed, 0.0, name=f"sim{seed}-fin", outputs={"out": ch}, workers=w[i + 1])
        for i, seed in enumerate(SEEDS)
    ]
    learner.start()
    for s in sims:
        s.start()
    for s in sims:
        assert s.wait(60).state == "finished"  # everything sent was accepted by the learner's worker
    ck = lambda: cp.supervisor.last_checkpoint(learner.name) or {}  # noqa: E731
    _until("a learner checkpoint covering 10 messages", lambda: len(ck().get("state", {}).get("trained", [])) >= 10)
    _kill(cp, w[0])  # what its buffer held dies with it; only the simulators' workers still have it
    _until("the learner's restart", lambda: learner.generation == 1)
    rec = _assert_every_message_once(cp, learner, sims, n)
    assert 10 <= rec["restored_at"] < n * len(sims)  # the rest came from the finished simulators' replay
    learner.stop()


@pytest.mark.parametrize("period", [0.0, 0.02], ids=["while-finishing", "mid-stream"])
def test_a_stream_cut_while_both_ends_live_loses_nothing(cluster: Coupling, period: float) -> None:
    """A stream that breaks with its consumer still there (no routing change) is caught up.

    What the producer's link had sent and the consumer not accepted comes again
    through a new stream, before anything sent later, whether the producer goes on
    sending or is finishing: its final flush used to fail with ConsumerGone, and a
    send could wait ``lost-consumer-wait`` for a routing change that never comes.
    """
    cp = cluster
    n = 40
    tag = f"cut-{int(period * 100)}"
    ch = cp.channel(f"samples-{tag}", Queue(64))
    w = _workers(cp)
    cp.client.run(break_stream_at, 30, workers=[w[0]])
    learner = cp.spawn(QueueLearner, name=f"learner-{tag}", inputs={"data": ch}, workers=w[0])
    sims = [
        cp.spawn(Simulator, n, seed, period, name=f"sim{seed}-{tag}", outputs={"out": ch}, workers=w[i + 1])
        for i, seed in enumerate(SEEDS)
    ]
    learner.start()
    for s in sims:
        s.start()
    try:
        _assert_every_message_once(cp, learner, sims, n)
        assert not cp.client.run(stream_breaks_left, workers=[w[0]])[w[0]], "the injected cut never happened"
    finally:
        for ref in [learner, *sims]:
            ref.stop()


def test_a_stream_cut_at_the_last_send_is_caught_up_while_the_producer_waits(cluster: Coupling) -> None:
    """What a broken stream owes reaches the consumer even if its producer sends nothing more.

    The cut hits the batch with a simulator's last sample; the simulators then
    wait inside that step (as a producer waiting for an answer does), so neither
    a later send, nor a checkpoint's flush, nor the final flush can catch the
    consumer up: the endpoint must resend on its own, and soon.
    """
    cp = cluster
    n, hold = 40, 60.0
    tag = "cut-idle"
    ch = cp.channel(f"samples-{tag}", Queue(64))
    w = _workers(cp)
    cp.client.run(break_stream_at, n - 1, workers=[w[0]])
    learner = cp.spawn(QueueLearner, name=f"learner-{tag}", inputs={"data": ch}, workers=w[0])
    sims = [
        cp.spawn(Simulator, n, seed, 0.0, 0, hold, name=f"sim{seed}-{tag}", outputs={"out": ch}, workers=w[i + 1])
        for i, seed in enumerate(SEEDS)
    ]
    learner.start()
    for s in sims:
        s.start()
    try:
        try:
            _until("every sample while the simulators wait", lambda: learner.status().info["count"] >= n * len(sims), timeout=20)
        except TimeoutError as e:
            raise TimeoutError(f"{e}; the producers' endpoints: {cp.client.run(_delivery_state)}") from None
        assert [s.status().state for s in sims] == ["running"] * len(sims)  # still waiting: not their final flush
        assert not cp.client.run(stream_breaks_left, workers=[w[0]])[w[0]], "the injected cut never happened"
        _assert_every_message_once(cp, learner, sims, n, finished=False)
    finally:
        for ref in [learner, *sims]:
            ref.stop()

"""A channel closed while one of its consumers is lost (its restart pending).

docs/reliability.md, lifecycle: ``close_channel`` makes sends fail, consumers
drain what they hold and detach, and the broker forgets the channel once the
last consumer detached; then "declaring the name again starts a new channel".
A consumer whose worker was lost when the channel closed must not keep the
channel's record (and its name) for ever.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import cloudpickle
import numpy as np
import pytest

import attack_actors
import merge_actors
from attack_actors import SeqSink
from chaos_cluster import chaos_coupling, kill_worker, until
from coupler.runtime.coupling import Coupling
from coupler.runtime.policies import Queue
from pools import start_stream

cloudpickle.register_pickle_by_value(merge_actors)
cloudpickle.register_pickle_by_value(attack_actors)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Coupling]:
    with chaos_coupling(checkpoint_interval=0.4, poll=0.2, backoff=1.0, restarts=100) as cp:
        yield cp


@pytest.mark.timeout(120)
@pytest.mark.parametrize("when", ["after-restart"])  # before the restart: see the test below
def test_a_channel_closed_while_its_consumer_is_lost_is_forgotten_and_its_name_reusable(cluster: Coupling, when: str) -> None:
    cp = cluster
    tag = f"cl{when[0]}-{time.monotonic_ns() % 10**7}"
    sink, src, ch, w = start_stream(cp, tag, 4)
    try:
        until("a stream", lambda: sink.status().info["count"] >= 20)
        kill_worker(cp, w[2])
        if when == "after-restart":
            until("the restart", lambda: sink.generation == 1, 60)
        cp.close_channel(ch)
        until("the producer sees the close", lambda: src.status().state != "running", 30)
        assert src.status().state in ("finished", "failed"), src.status()  # its send saw the close
        try:
            until("the broker forgets the channel", lambda: ch not in cp.channels(), 45)
        except TimeoutError:
            pytest.fail(f"the closed channel is still known 45 s later; sink {sink.status() if sink.generation else 'awaiting restart'}")
        cp.channel(ch, Queue(4))  # a new channel of that name
        sink2 = cp.spawn(SeqSink, name=f"sink2-{tag}", inputs={"data": ch}, workers=w[1])
        sink2.start()
        cp.send(ch, {"v": np.array(5.0)}, timeout=30)
        until("the new channel delivers", lambda: sink2.status().info["count"] == 1, 30)
        sink2.release()
    finally:
        for r in (src, sink):
            try:
                r.release()
            except Exception:
                pass


@pytest.fixture(scope="module")
def slow_restarts() -> Iterator[Coupling]:
    with chaos_coupling(checkpoint_interval=0.4, poll=0.2, backoff=4.0, restarts=100) as cp:
        yield cp


@pytest.mark.timeout(150)
def test_a_consumer_lost_when_its_channel_closed_ends_instead_of_retrying_its_placement(slow_restarts: Coupling) -> None:
    import threading

    cp = slow_restarts
    tag = f"clx-{time.monotonic_ns() % 10**7}"
    sink, src, ch, w = start_stream(cp, tag, 4)
    until("a stream", lambda: sink.status().info["count"] >= 20)
    until("a checkpoint that took some", lambda: len((cp.supervisor.last_checkpoint(sink.name) or {}).get("state", {}).get("got", [])) >= 10, 20)
    kill_worker(cp, w[2])
    cp.close_channel(ch)  # the restart waits 4 s (backoff): the channel is closed before it
    until("the broker forgets the channel", lambda: ch not in cp.channels(), 30)
    answer: list = []
    t = threading.Thread(target=lambda: answer.append(sink.status()), daemon=True)
    t.start()
    t.join(40)
    retries = [e for e in cp.supervisor.events if e.actor == sink.name]
    assert answer, (f"the lost consumer's status() still blocks 40 s after its channel closed; supervisor: "
                    f"{cp.supervisor._records[sink.name].last_error[:200]!r}, events {[e.kind for e in retries]}")
    assert answer[0].state in ("finished", "stopped", "failed"), answer[0]
    src.release()

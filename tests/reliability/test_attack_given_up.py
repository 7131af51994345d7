"""A Queue consumer that the supervisor gives up on (max-restarts reached) is gone for good.

docs/reliability.md: producers wait for a *lost* consumer "to be restarted"
(``coupler.delivery.lost-consumer-wait``, 300 s by default); a consumer that
left for good makes its blocked producers fail with ``ConsumerGone``
(lifecycle table). Once the supervisor has given up, no restart will come: the
producer must not stay blocked for the whole lost-consumer wait, and
releasing the failed consumer's handle must not leave it blocked either.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import cloudpickle
import pytest

import attack_actors
import merge_actors
from attack_actors import SeqSink
from chaos_cluster import chaos_coupling, kill_worker, three_workers, until
from coupler.runtime import ActorFailed
from coupler.runtime.coupling import Coupling
from coupler.runtime.policies import Queue
from pools import start_stream

cloudpickle.register_pickle_by_value(merge_actors)
cloudpickle.register_pickle_by_value(attack_actors)

PROMPT = 30.0  # seconds: far under the 300 s lost-consumer wait


@pytest.fixture(scope="module")
def cluster() -> Iterator[Coupling]:
    with chaos_coupling(checkpoint_interval=0.4, poll=0.2, backoff=0.1, restarts=0) as cp:
        yield cp


def test_a_producer_of_a_consumer_given_up_on_fails_promptly_with_consumer_gone(cluster: Coupling) -> None:
    cp = cluster
    tag = f"gaveup-{time.monotonic_ns() % 10**7}"
    sink, src, ch, w = start_stream(cp, tag, 2)
    try:
        until("a stream", lambda: sink.status().info["count"] >= 20)
        kill_worker(cp, w[2])
        until("the supervisor gives up", lambda: any(e.kind == "gave-up" and e.actor == sink.name for e in cp.supervisor.events), 30)
        with pytest.raises(ActorFailed):
            sink.status()
        try:
            sink.release()
        except Exception:
            pass
        t0 = time.monotonic()
        try:
            until("the producer's end", lambda: src.status().state != "running", PROMPT)
        except TimeoutError:
            pytest.fail(f"the producer of a consumer given up on still runs (blocked) {PROMPT:.0f} s later: {src.status()}")
        st = src.status()
        assert st.state == "failed" and "ConsumerGone" in st.error, st
        assert time.monotonic() - t0 < PROMPT
    finally:
        try:
            src.stop(timeout=5)
        except Exception:
            pass


def test_an_actor_given_up_on_can_be_released_and_its_name_spawned_again(cluster: Coupling) -> None:
    """docs/reliability.md, lifecycle: release() gives back a failed actor's handle; "the name may be spawned again"."""
    cp = cluster
    tag = f"reuse-{time.monotonic_ns() % 10**7}"
    w = three_workers(cp)
    ch = cp.channel(f"q-{tag}", Queue(2))
    name = f"sink-{tag}"
    sink = cp.spawn(SeqSink, name=name, inputs={"data": ch}, workers=w[2])
    sink.start()
    kill_worker(cp, w[2])
    until("the supervisor gives up", lambda: any(e.kind == "gave-up" and e.actor == name for e in cp.supervisor.events), 30)
    errors = []
    try:
        sink.release()
    except Exception as e:  # noqa: BLE001
        errors.append(e)
    w = three_workers(cp)
    again = cp.spawn(SeqSink, name=name, inputs={"data": ch}, workers=w[0])
    try:
        again.start()
        assert again.status().state == "running"
    finally:
        again.release()
    # (release() raising ActorFailed for the given-up instance is acceptable as long as the name is free)

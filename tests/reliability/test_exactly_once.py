"""Exactly-once across the restart of an actor that merges inputs (runtime/dataplane/lineage.py).

A ``Merger`` forwards what it takes from a fan-in channel, or from two
channels it polls, with its running count and a draw from its checkpointed
random generator: what it sends depends on the order of its takes. Its worker
is SIGKILLed at a point between two of its checkpoints chosen by hypothesis.
The sink must then get the merger's sequence numbers once each, in order, and
their contents must be those of one consistent run: every input forwarded
exactly once, the count equal to the sequence number plus one, and the draws
equal to the generator's sequence. Before input-order logging, 4 runs in 4 lost
one input and forwarded another twice.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator

import cloudpickle
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import merge_actors
from chaos_cluster import chaos_coupling, kill_worker, stop_all, three_workers, until
from coupler.runtime.coupling import Coupling
from coupler.runtime.policies import Queue
from merge_actors import Merger, Sink, Source, value

cloudpickle.register_pickle_by_value(merge_actors)

N = 60  # values per source
PERIOD = 0.02  # seconds per source step: a run streams for about N * PERIOD seconds
RUNS = int(os.environ.get("COUPLER_EXACTLY_ONCE_RUNS", "4"))  # kill points per topology (20 in the soak)
MERGER_SEED = 7


_until = until


@pytest.fixture(scope="module")
def cluster() -> Iterator[Coupling]:
    with chaos_coupling(checkpoint_interval=0.4, poll=0.2, backoff=0.1, restarts=1000) as cp:
        yield cp


def _workers(cp: Coupling) -> list[str]:
    return three_workers(cp, wait=20)


def _kill_between_checkpoints(cp: Coupling, victim: object, sink: object, at: int) -> None:
    """SIGKILL ``victim``'s worker once the sink has ``at`` messages, right after a checkpoint of the victim."""
    _until(f"{at} messages at the sink", lambda: sink.status().info["count"] >= at)
    before = cp.supervisor.last_checkpoint(victim.name) or {}
    _until("a fresh checkpoint", lambda: (cp.supervisor.last_checkpoint(victim.name) or {}).get("time") != before.get("time"), 10)
    time.sleep(0.15)  # mid-interval: takes and sends after the checkpoint that the restart must repeat
    kill_worker(cp, victim.status().worker)


def _input_state(dask_worker) -> dict:  # type: ignore[no-untyped-def]
    """What each Queue buffer of a worker holds and waits for (for a timeout's message)."""
    from coupler.runtime.dataplane.endpoint import ENDPOINT_NAME

    ep = dask_worker.plugins[ENDPOINT_NAME]
    out = {}
    for (ch, cid), buf in list(ep.buffers.items()):
        credits, marks, cursor = getattr(buf, "credits", None), getattr(buf, "marks", None), getattr(buf, "_cursor", None)
        order = None if cursor is None else cursor.order
        out[cid] = {
            "held": [(m.source, m.seq) for m in list(getattr(buf, "_items", []))][:12],
            "order_head": None if order is None else order.head(),
            "order_left": 0 if order is None else len(order),
            "granted": {} if credits is None else dict(credits.granted),
            "demand": {} if credits is None else dict(credits.demand),
            "taken": {} if marks is None else dict(marks.taken),
            "received": dict(getattr(buf, "last_seq", {})),
            "duplicates": buf.stats.duplicates,
        }
    out["links"] = {str(k): {x: v for x, v in link.stats().items() if x in ("acked", "messages", "pending", "credits")}
                    for k, link in list(ep.dispatch.links.items())}
    out["logs"] = {str(k): [it.header["seq"] for it in b.log.replay()][-6:] for k, b in ep.dispatch.outboxes.items() if b.log}
    out["owed"] = {str(k): len(b.owed) for k, b in ep.dispatch.outboxes.items() if b.owed}
    return out


def _wait_all(cp: Coupling, sink: object, n: int, refs: list) -> None:
    try:
        _until("every input at the sink", lambda: sink.status().info["count"] >= n)
    except TimeoutError as e:
        states = {r.name: (r.status().state, r.status().steps, r.status().error[-600:]) for r in refs}
        raise TimeoutError(f"{e}; actors {states}; buffers {cp.client.run(_input_state)}") from None


def _check_merger_output(got: list, merger: str, expected_inputs: Counter, n_out: int) -> None:
    mine = [g for g in got if g[0] == merger]
    assert [q for _, q, *_ in mine] == list(range(n_out)), "merger seqs must arrive once each, in order"
    assert Counter(v for _, _, v, _, _ in mine) == expected_inputs, "every input forwarded exactly once"
    assert [n for *_, n, _ in mine] == [float(q + 1) for q in range(n_out)], "the running count of one consistent run"
    draws = np.random.default_rng(MERGER_SEED).standard_normal(n_out)
    np.testing.assert_array_equal([d for *_, d in mine], draws)  # each draw once, in order


# Each example kills a worker: generate kill points, do not shrink (a failure prints its kill point).
_RUNS = dict(deadline=None, derandomize=True, phases=(Phase.explicit, Phase.generate), suppress_health_check=[HealthCheck.function_scoped_fixture])


@settings(max_examples=RUNS, **_RUNS)
@given(at=st.integers(min_value=5, max_value=2 * N - 40))
def test_a_fan_in_merger_killed_between_checkpoints_forwards_every_input_once(cluster: Coupling, at: int) -> None:
    cp = cluster
    tag = f"fan{at}-{time.monotonic_ns() % 10**6}"
    w = _workers(cp)
    data, out = cp.channel(f"in-{tag}", Queue(8)), cp.channel(f"out-{tag}", Queue(8))
    sink = cp.spawn(Sink, name=f"sink-{tag}", inputs={"data": out}, workers=w[0])
    merger = cp.spawn(Merger, 1.0, MERGER_SEED, name=f"merger-{tag}", inputs={"data": data}, outputs={"out": out}, workers=w[2])
    sources = [cp.spawn(Source, N, s, PERIOD, name=f"src{s}-{tag}", outputs={"out": data}, workers=w[s - 1]) for s in (1, 2)]
    for r in [sink, merger, *sources]:
        r.start()
    try:
        _kill_between_checkpoints(cp, merger, sink, at)
        _until("the merger's restart", lambda: merger.generation == 1)
        _wait_all(cp, sink, 2 * N, [sink, merger, *sources])
        time.sleep(0.3)  # a duplicate arriving late would show up as an extra message
        expected = Counter(value(s, i) + 1.0 for s in (1, 2) for i in range(N))
        _check_merger_output(sink.call("record"), merger.name, expected, 2 * N)
    finally:
        stop_all(sink, merger, *sources)


@settings(max_examples=max(2, RUNS // 2), **_RUNS)
@given(at=st.integers(min_value=5, max_value=2 * N - 40), victim=st.sampled_from(["d", "b"]))
def test_a_diamond_with_a_member_killed_between_checkpoints_delivers_once(cluster: Coupling, at: int, victim: str) -> None:
    """A -> B, A -> C (broadcast), B + C -> D (two inputs D polls) -> sink; kill D or B."""
    cp = cluster
    tag = f"dia{victim}{at}-{time.monotonic_ns() % 10**6}"
    w = _workers(cp)
    a, bd, cd, out = (cp.channel(f"{c}-{tag}", Queue(8)) for c in ("a", "bd", "cd", "out"))
    sink = cp.spawn(Sink, name=f"sink-{tag}", inputs={"data": out}, workers=w[0])
    d = cp.spawn(Merger, 0.0, MERGER_SEED, name=f"d-{tag}", inputs={"b": bd, "c": cd}, outputs={"out": out}, workers=w[2])
    b = cp.spawn(Merger, 1.0, 1, name=f"b-{tag}", inputs={"data": a}, outputs={"out": bd}, workers=w[1] if victim == "b" else w[0])
    c = cp.spawn(Merger, 2.0, 2, name=f"c-{tag}", inputs={"data": a}, outputs={"out": cd}, workers=w[0])
    src = cp.spawn(Source, N, 1, PERIOD, name=f"a-{tag}", outputs={"out": a}, workers=w[0])
    for r in [sink, d, b, c, src]:
        r.start()
    killed = {"d": d, "b": b}[victim]
    try:
        _kill_between_checkpoints(cp, killed, sink, at)
        _until("the restart", lambda: killed.generation == 1)
        _wait_all(cp, sink, 2 * N, [sink, d, b, c, src])
        time.sleep(0.3)
        expected = Counter([value(1, i) + 1.0 for i in range(N)] + [value(1, i) + 2.0 for i in range(N)])
        _check_merger_output(sink.call("record"), d.name, expected, 2 * N)
    finally:
        stop_all(sink, d, b, c, src)


def test_two_actors_killed_one_after_the_other_lose_and_repeat_nothing(cluster: Coupling) -> None:
    """The merger is killed, then -- once it runs again -- the sink (or, if the merger's successor
    shares the sink's worker, the sources): one failure at a time, two different actors."""
    cp = cluster
    tag = f"two-{time.monotonic_ns() % 10**6}"
    w = _workers(cp)
    data, out = cp.channel(f"in-{tag}", Queue(8)), cp.channel(f"out-{tag}", Queue(8))
    sink = cp.spawn(Sink, name=f"sink-{tag}", inputs={"data": out}, workers=w[1])
    merger = cp.spawn(Merger, 1.0, MERGER_SEED, name=f"merger-{tag}", inputs={"data": data}, outputs={"out": out}, workers=w[2])
    sources = [cp.spawn(Source, N, s, PERIOD, name=f"src{s}-{tag}", outputs={"out": data}, workers=w[0]) for s in (1, 2)]
    for r in [sink, merger, *sources]:
        r.start()
    try:
        _kill_between_checkpoints(cp, merger, sink, 20)
        _until("the merger's restart", lambda: merger.generation == 1)
        second = sink if merger.status().worker != sink.status().worker else sources[0]
        _kill_between_checkpoints(cp, second, sink, 60)
        _until(f"{second.name}'s restart", lambda: second.generation == 1)
        _wait_all(cp, sink, 2 * N, [sink, merger, *sources])
        time.sleep(0.3)
        expected = Counter(value(s, i) + 1.0 for s in (1, 2) for i in range(N))
        _check_merger_output(sink.call("record"), merger.name, expected, 2 * N)
    finally:
        stop_all(sink, merger, *sources)

"""Kills of a fan-in merger where no checkpoint of it is newer than the one it restarted from.

- the merger's successor is killed again right after its restart, before a
  checkpoint of its own (the second successor must recover the same order);
- the merger is killed before any checkpoint at all (long interval: it
  restarts from scratch and must repeat its whole recorded order).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import cloudpickle
import numpy as np
import pytest

import merge_actors
from chaos_cluster import chaos_coupling, kill_worker, three_workers, until
from coupler.runtime.coupling import Coupling
from coupler.runtime.policies import Queue
from merge_actors import Merger, Sink, Source, value

cloudpickle.register_pickle_by_value(merge_actors)

N = 60
PERIOD = 0.02
SEED = 7


def _check(got: list, last: str, expected_inputs: Counter, n_out: int) -> None:
    mine = [g for g in got if g[0] == last]
    seqs = [q for _, q, *_ in mine]
    assert seqs == list(range(n_out)), f"dup={[q for q, c in Counter(seqs).items() if c > 1]} missing={sorted(set(range(n_out)) - set(seqs))}"
    got_inputs = Counter(v for _, _, v, _, _ in mine)
    assert got_inputs == expected_inputs, f"extra {got_inputs - expected_inputs}, missing {expected_inputs - got_inputs}"
    assert [n for *_, n, _ in mine] == [float(q + 1) for q in range(n_out)]
    np.testing.assert_array_equal([d for *_, d in mine], np.random.default_rng(SEED).standard_normal(n_out))


def _run(cp: Coupling, tag: str, kills: list[float], wait_checkpoint: bool) -> None:
    w = three_workers(cp)
    data, out = cp.channel(f"in-{tag}", Queue(8)), cp.channel(f"out-{tag}", Queue(8))
    sink = cp.spawn(Sink, name=f"sink-{tag}", inputs={"data": out}, workers=w[0])
    # the merger may live on w[2] or w[1] only: its successor never shares the sink's and sources' worker w[0]
    merger = cp.spawn(Merger, 1.0, SEED, name=f"merger-{tag}", inputs={"data": data}, outputs={"out": out}, workers=[w[2], w[1]])
    srcs = [cp.spawn(Source, N, s, PERIOD, name=f"src{s}-{tag}", outputs={"out": data}, workers=w[0]) for s in (1, 2)]
    refs = [sink, merger, *srcs]
    for r in refs:
        r.start()
    try:
        until("25 at the sink", lambda: sink.status().info["count"] >= 25)
        if wait_checkpoint:
            before = cp.supervisor.last_checkpoint(merger.name) or {}
            until("a fresh checkpoint", lambda: (cp.supervisor.last_checkpoint(merger.name) or {}).get("time") != before.get("time"), 10)
            time.sleep(0.15)
        for k, pause in enumerate(kills):
            worker = merger.status().worker
            if k and worker in (sink.status().worker, srcs[0].status().worker):
                pytest.skip("the successor shares a worker with another actor: a kill would take both")
            kill_worker(cp, worker)
            until(f"restart {k + 1}", lambda: merger.generation == k + 1 and merger.status().state == "running", 60)
            time.sleep(pause)
        try:
            until("every input at the sink", lambda: sink.status().info["count"] >= 2 * N, 120)
        except TimeoutError as e:
            raise TimeoutError(f"{e}: {sink.status().info['count']}; {[(r.name, r.status().state, r.status().error[-300:]) for r in refs]}") from None
        time.sleep(0.3)
        _check(sink.call("record"), merger.name, Counter(value(s, i) + 1.0 for s in (1, 2) for i in range(N)), 2 * N)
    finally:
        for r in refs:
            try:
                r.stop()
            except Exception:
                pass


@pytest.fixture(scope="module")
def cluster() -> Iterator[Coupling]:
    with chaos_coupling(checkpoint_interval=1.5, poll=0.2, backoff=0.1, restarts=1000) as cp:
        yield cp


def test_a_merger_s_successor_killed_before_its_own_first_checkpoint_delivers_once(cluster: Coupling) -> None:
    _run(cluster, f"again-{time.monotonic_ns() % 10**7}", kills=[0.05, 0.0], wait_checkpoint=True)


@pytest.fixture(scope="module")
def no_checkpoints() -> Iterator[Coupling]:
    with chaos_coupling(checkpoint_interval=3600, poll=0.2, backoff=0.1, restarts=1000) as cp:
        yield cp


def test_a_merger_killed_before_any_checkpoint_delivers_once(no_checkpoints: Coupling) -> None:
    _run(no_checkpoints, f"nock-{time.monotonic_ns() % 10**7}", kills=[0.0], wait_checkpoint=False)

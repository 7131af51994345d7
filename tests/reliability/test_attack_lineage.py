"""Input-order logging (runtime/dataplane/lineage.py) with consumers the other tests do not use.

A fan-in merger is SIGKILLed between two of its checkpoints while its output goes

- to a work-sharing ``Queue`` of two sinks (each output at exactly one member), or
- to the coupling script's own subscription (a relay actor holds the takes).

Across the consumers, the merger's numbers must arrive once each, with the
contents of one consistent run (test_exactly_once.py's check).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import cloudpickle
import numpy as np
import pytest

import attack_actors
import merge_actors
from chaos_cluster import chaos_coupling, fresh_checkpoint, fresh_tag, kill_worker, stop_all, three_workers, until
from coupler.runtime.coupling import Coupling
from coupler.runtime.policies import Queue
from merge_actors import Merger, Sink, Source, value
from pools import assert_each_once, start_pool, taken

cloudpickle.register_pickle_by_value(merge_actors)
cloudpickle.register_pickle_by_value(attack_actors)

N = 60
PERIOD = 0.02
SEED = 7


@pytest.fixture(scope="module")
def cluster() -> Iterator[Coupling]:
    with chaos_coupling(checkpoint_interval=0.4, poll=0.2, backoff=0.1, restarts=1000) as cp:
        yield cp


def _kill_mid_interval(cp: Coupling, victim: object, ready: object) -> None:
    until("enough at the consumers", ready)
    fresh_checkpoint(cp, victim)
    time.sleep(0.15)
    kill_worker(cp, victim.status().worker)


def _check(mine: list, expected_inputs: Counter, n_out: int) -> None:
    mine = sorted(mine, key=lambda g: g[1])
    seqs = [q for _, q, *_ in mine]
    dup = sorted(q for q, c in Counter(seqs).items() if c > 1)
    assert seqs == list(range(n_out)), f"dup={dup} missing={sorted(set(range(n_out)) - set(seqs))}"
    got = Counter(v for _, _, v, _, _ in mine)
    assert got == expected_inputs, f"extra {got - expected_inputs}, missing {expected_inputs - got}"
    assert [n for *_, n, _ in mine] == [float(q + 1) for q in range(n_out)], "the running count of one consistent run"
    np.testing.assert_array_equal([d for *_, d in mine], np.random.default_rng(SEED).standard_normal(n_out))


@pytest.mark.parametrize("members", [2, 3])
def test_a_merger_feeding_a_work_sharing_pool_killed_between_checkpoints_delivers_once(cluster: Coupling, members: int) -> None:
    """Each member drops what it had itself; only the members' receipts say what *another* member had.

    Without them (runtime/dataplane/receipts.py) the merger's successor sent an
    output again to a member that had not had it: processed twice (CI, 1 run in 4).
    """
    cp = cluster
    tag = fresh_tag("pool")
    w = three_workers(cp)
    data, out = cp.channel(f"in-{tag}", Queue(8)), cp.channel(f"out-{tag}", Queue(4, shared=True))
    sinks = [cp.spawn(Sink, name=f"sink{k}-{tag}", inputs={"data": out}, workers=w[k % 2]) for k in range(members)]
    merger = cp.spawn(Merger, 1.0, SEED, name=f"merger-{tag}", inputs={"data": data}, outputs={"out": out}, workers=w[2])
    srcs = [cp.spawn(Source, N, s, PERIOD, name=f"src{s}-{tag}", outputs={"out": data}, workers=w[s - 1]) for s in (1, 2)]
    refs = [*sinks, merger, *srcs]
    for r in refs:
        r.start()

    def total() -> int:
        return sum(s.status().info["count"] for s in sinks)

    try:
        _kill_mid_interval(cp, merger, lambda: total() >= 30)
        until("the merger's restart", lambda: merger.generation == 1)
        try:
            until("every output at a member", lambda: total() >= 2 * N, 120)
        except TimeoutError as e:
            raise TimeoutError(f"{e}: {total()} of {2 * N}; {[(r.name, r.status().state, r.status().error[-300:]) for r in refs]}") from None
        time.sleep(0.5)
        mine = [g for s in sinks for g in s.call("record") if g[0] == merger.name]
        _check(mine, Counter(value(s, i) + 1.0 for s in (1, 2) for i in range(N)), 2 * N)
    finally:
        stop_all(*refs)


@pytest.mark.parametrize("pause", [0.05, 0.3])
def test_a_plain_producer_of_a_work_sharing_pool_killed_between_checkpoints_delivers_once(cluster: Coupling, pause: float) -> None:
    """No merger: the producer's own repeat after its restart goes where the members' receipts say."""
    cp = cluster
    sinks, src = start_pool(cp, fresh_tag("src-pool"), 2, 2 * N, 3, PERIOD)
    try:
        until("enough at the members", lambda: taken(sinks) >= 30)
        fresh_checkpoint(cp, src)
        time.sleep(pause)
        kill_worker(cp, src.status().worker)
        until("the producer's restart", lambda: src.generation == 1)
        until("every message at a member", lambda: taken(sinks) >= 2 * N, 120)
        time.sleep(0.5)
        got = assert_each_once(sinks, src.name, 2 * N)
        assert sorted(v for _, _, v in got) == [value(3, i) for i in range(2 * N)]
    finally:
        stop_all(*sinks, src)


def test_a_merger_feeding_the_script_killed_between_checkpoints_delivers_once(cluster: Coupling) -> None:
    cp = cluster
    tag = fresh_tag("drv")
    w = three_workers(cp)
    data, out = cp.channel(f"in-{tag}", Queue(8)), cp.channel(f"out-{tag}", Queue(8))
    sub = cp.subscribe(out, timeout=30)
    relay_at = cp.supervisor._records[sub.relay.name].worker
    others = [x for x in w if x != relay_at]
    merger = cp.spawn(Merger, 1.0, SEED, name=f"merger-{tag}", inputs={"data": data}, outputs={"out": out}, workers=others[0])
    srcs = [cp.spawn(Source, N, s, PERIOD, name=f"src{s}-{tag}", outputs={"out": data}, workers=others[1]) for s in (1, 2)]
    refs = [merger, *srcs]
    for r in refs:
        r.start()
    got: list[tuple] = []

    def take(timeout: float) -> None:
        m = sub.receive(timeout=timeout)
        got.append((m.source, m.seq, float(m.data["v"]), float(m.data["n"]), float(m.data["draw"])))

    try:
        while len(got) < 25:
            take(30)
        before = cp.supervisor.last_checkpoint(merger.name) or {}
        while (cp.supervisor.last_checkpoint(merger.name) or {}).get("time") == before.get("time"):
            take(30)  # keep taking: the merger is held up by a full queue otherwise
        t0 = time.monotonic()
        while time.monotonic() - t0 < 0.15:
            take(30)
        kill_worker(cp, merger.status().worker)
        deadline = time.monotonic() + 120
        while len(got) < 2 * N and time.monotonic() < deadline:
            try:
                take(5)
            except TimeoutError:
                continue
        try:
            take(1)  # a late duplicate would show up here
        except TimeoutError:
            pass
        assert merger.generation == 1
        arrival = [g[1] for g in got if g[0] == merger.name]
        assert arrival == sorted(arrival), "the script takes the merger's numbers in order"
        _check([g for g in got if g[0] == merger.name], Counter(value(s, i) + 1.0 for s in (1, 2) for i in range(N)), 2 * N)
    finally:
        stop_all(*refs)
        sub.close()

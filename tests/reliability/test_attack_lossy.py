"""Lossy policies under kills the other tests do not take.

- one of two consumers of a lossy channel is lost: the other keeps getting new
  values all along, the producers go on, the successor is fed;
- the same consumer lost twice (its second successor is fed too);
- a lossy producer's worker is lost: its consumer keeps running and gets the
  restarted producer's values.
"""

from __future__ import annotations

from collections.abc import Iterator

import cloudpickle
import pytest

import lossy_actors
from chaos_cluster import chaos_coupling, fresh_tag, kill_worker, stop_all, three_workers, until
from coupler.runtime.coupling import Coupling
from coupler.runtime.policies import Latest, Policy, Reservoir, Window
from lossy_actors import Reader, Ticker

cloudpickle.register_pickle_by_value(lossy_actors)

POLICIES = [Latest(), Reservoir(64, seed=0), Window(64)]
IDS = ["latest", "reservoir", "window"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Coupling]:
    with chaos_coupling(checkpoint_interval=0.5, poll=0.2, backoff=0.1, restarts=100) as cp:
        yield cp


def _running(refs: list) -> None:
    for t in refs:
        st = t.status()
        assert st.state == "running", f"{t.name} must outlive the loss, got {st.state}: {st.error[-500:]}"


@pytest.mark.parametrize("policy", POLICIES, ids=IDS)
def test_the_other_consumer_of_a_lossy_channel_stays_fed_while_one_is_lost_twice(cluster: Coupling, policy: Policy) -> None:
    cp = cluster
    tag = fresh_tag(type(policy).__name__.lower())
    w = three_workers(cp)
    ch = cp.channel(f"two-{tag}", policy)
    sample = not isinstance(policy, Latest)
    victim = cp.spawn(Reader, sample, name=f"victim-{tag}", inputs={"data": ch}, workers=w[0])
    other = cp.spawn(Reader, sample, name=f"other-{tag}", inputs={"data": ch}, workers=w[1])
    tickers = [cp.spawn(Ticker, name=f"tick{k}-{tag}", outputs={"out": ch}, workers=w[k + 1]) for k in (0, 1)]
    refs = [victim, other, *tickers]
    for r in refs:
        r.start()
    try:
        for generation in (1, 2):
            until("the victim reads", lambda: victim.status().info["reads"] >= 10)
            kill_worker(cp, victim.status().worker)
            seen = other.status().info["newest"]
            until("the other consumer gets newer values while the victim is away", lambda: other.status().info["newest"] > seen + 20, 30)
            until(f"the victim's restart {generation}", lambda: victim.generation == generation)
            _running([other, *tickers])
            at = max(t.status().info["i"] for t in tickers)
            until("new values at the victim's successor", lambda: victim.status().info["newest"] > at + 5, 60)
            if victim.status().worker in (other.status().worker, *(t.status().worker for t in tickers)):
                break  # a second kill would take another actor with it
        _running([other, *tickers])
    finally:
        stop_all(*refs)


@pytest.mark.parametrize("policy", POLICIES, ids=IDS)
def test_a_lost_lossy_producer_is_restarted_and_its_consumer_keeps_running(cluster: Coupling, policy: Policy) -> None:
    cp = cluster
    tag = fresh_tag("p" + type(policy).__name__.lower())
    w = three_workers(cp)
    ch = cp.channel(f"prod-{tag}", policy)
    sample = not isinstance(policy, Latest)
    reader = cp.spawn(Reader, sample, name=f"reader-{tag}", inputs={"data": ch}, workers=w[0])
    victim = cp.spawn(Ticker, name=f"victim-{tag}", outputs={"out": ch}, workers=w[2])
    other = cp.spawn(Ticker, name=f"other-{tag}", outputs={"out": ch}, workers=w[1])
    refs = [reader, victim, other]
    for r in refs:
        r.start()
    try:
        until("the reader reads", lambda: reader.status().info["reads"] >= 10)
        kill_worker(cp, w[2])
        until("the producer's restart", lambda: victim.generation == 1)
        until("the successor sends", lambda: victim.status().info["i"] > 0 and victim.status().state == "running", 30)
        _running([reader, victim, other])
        reads = reader.status().info["reads"]
        until("the reader goes on reading", lambda: reader.status().info["reads"] > reads + 20, 30)
        _running([reader, victim, other])
        assert cp.channels()[ch] is not None
    finally:
        stop_all(*refs)

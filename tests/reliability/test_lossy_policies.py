"""Lossy policies never kill producers: a lost Latest/Reservoir/Window consumer costs only the values in flight.

The Augmentation set-up: simulators stream into a learner's ``Reservoir``.
When the learner's worker is SIGKILLed, the supervisor restarts the learner;
its producers must keep running through the loss (they used to fail for good
with ``ConsumerGone``), and the restarted consumer gets new values.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import cloudpickle
import pytest

import lossy_actors
from chaos_cluster import chaos_coupling, kill_worker, until
from coupler.runtime.coupling import Coupling
from coupler.runtime.policies import Latest, Policy, Reservoir, Window
from lossy_actors import Reader, Ticker

cloudpickle.register_pickle_by_value(lossy_actors)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Coupling]:
    with chaos_coupling(checkpoint_interval=0.5, poll=0.2, backoff=0.1, restarts=100) as cp:
        yield cp


@pytest.mark.parametrize("policy", [Latest(), Reservoir(64, seed=0), Window(64)], ids=["latest", "reservoir", "window"])
def test_the_producers_of_a_lost_lossy_consumer_keep_running_and_feed_its_successor(cluster: Coupling, policy: Policy) -> None:
    cp = cluster
    tag = type(policy).__name__.lower()
    cp.client.wait_for_workers(3, timeout=60)
    w = cp.workers()
    ch = cp.channel(f"lossy-{tag}", policy)
    reader = cp.spawn(Reader, not isinstance(policy, Latest), name=f"reader-{tag}", inputs={"data": ch}, workers=w[0])
    tickers = [cp.spawn(Ticker, name=f"tick{k}-{tag}", outputs={"out": ch}, workers=w[k + 1]) for k in (0, 1)]
    for r in [reader, *tickers]:
        r.start()
    try:
        until("the reader to read", lambda: reader.status().info["reads"] >= 10)
        kill_worker(cp, w[0])
        until("the reader's restart", lambda: reader.generation == 1)
        at_restart = max(t.status().info["i"] for t in tickers)
        until("new values at the restarted reader", lambda: reader.status().info["newest"] > at_restart + 5)
        for t in tickers:
            st = t.status()
            assert st.state == "running", f"{t.name} must outlive its consumer's loss, got {st.state}: {st.error}"
        steps = [t.status().info["i"] for t in tickers]
        time.sleep(0.5)
        assert all(t.status().info["i"] > s for t, s in zip(tickers, steps)), "the producers go on sending"
    finally:
        for r in [reader, *tickers]:
            r.stop()

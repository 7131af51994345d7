"""A channel closed while its consumer drains it, then the consumer's worker lost.

The broker forgets a closed channel once no consumer can use it any more. A
consumer lost with its worker can use it no more, so the loss forgets the
channel as the consumer's last detach would have. It used to stay in the
broker for good when the consumer was not restarted (nothing detached it).
A restarted consumer then finds the channel closed and empty, and ends as its
predecessor would have. The messages its predecessor had not processed are
lost: closing a channel drops its replay logs (docs/reliability.md, Lifecycle).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import cloudpickle
import pytest

import supervision_actors
from chaos_cluster import chaos_coupling, kill_worker, three_workers, until
from coupler.runtime.control.actor_ref import ActorRef
from coupler.runtime.coupling import Coupling
from coupler.runtime.errors import ActorFailed
from coupler.runtime.policies import Queue
from supervision_actors import Counter, Tally

cloudpickle.register_pickle_by_value(supervision_actors)

N = 20


@pytest.fixture(scope="module")
def cluster() -> Iterator[Coupling]:
    with chaos_coupling(checkpoint_interval=0.3, poll=0.2, backoff=0.1, restarts=1) as cp:
        yield cp


def _broker_channels(cp: Coupling) -> set[str]:
    return set(cp.client.sync(cp.client.scheduler.coupler_snapshot)["channels"])


@pytest.mark.parametrize("restarted", [True, False], ids=["restarted", "not-restarted"])
def test_a_closed_channel_whose_draining_consumer_is_lost_is_forgotten(cluster: Coupling, restarted: bool) -> None:
    cp = cluster
    w = three_workers(cp)
    tag = "restarted" if restarted else "given-up"
    ch = cp.channel(f"close-loss-{tag}", Queue(64))
    # A consumer on its own worker, slow enough to hold most of the stream when the channel closes.
    tally = cp.spawn(Tally, 0.25, name=f"tally-{tag}", inputs={"inp": ch}, workers=w[1])
    counter = cp.spawn(Counter, N, name=f"counter-{tag}", outputs={"out": ch}, workers=w[0])
    tally.start()
    counter.start()
    assert counter.wait(30).state == "finished"
    until("the consumer started taking", lambda: tally.status().info["count"] >= 1, timeout=30)
    cp.close_channel(ch)
    assert ch in _broker_channels(cp)  # its consumer still drains it
    policy = cp.supervisor.policy
    if not restarted:
        # One cluster for both cases (a start costs ~10 s of CI): the supervisor reads its policy at each loss.
        cp.supervisor.policy = dataclasses.replace(policy, max_restarts=0)
    try:
        kill_worker(cp, w[1])
        _forgotten_and_ended(cp, ch, tally, restarted)
    finally:
        cp.supervisor.policy = policy


def _forgotten_and_ended(cp: Coupling, ch: str, tally: ActorRef, restarted: bool) -> None:
    until("the closed channel is forgotten in the broker", lambda: ch not in _broker_channels(cp), timeout=60)
    if restarted:
        # The successor attaches to the forgotten channel, finds it closed and empty, and finishes.
        status = tally.wait(60)
        assert status.state == "finished" and tally.generation == 1
        assert status.info["count"] < N  # what the predecessor had not processed went with the closed channel
    else:
        with pytest.raises(ActorFailed):
            tally.wait(60)
    assert ch not in cp.channels()

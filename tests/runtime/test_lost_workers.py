"""A lost worker's nanny is closed only when no worker of its name came back (runtime/launch/lost_workers.py)."""

from __future__ import annotations

import os
import signal
import time

import dask
import pytest
from distributed import Client
from hypothesis import given, settings
from hypothesis import strategies as st

from coupler.runtime.launch.cluster import EmbeddedCluster
from coupler.runtime.launch.lost_workers import LostWorkers

NAMES = ["a", "b", "c"]
_event = st.tuples(st.sampled_from(["arrive", "leave", "judge"]), st.sampled_from(NAMES), st.integers(0, 5))


@settings(max_examples=300, deadline=None)
@given(st.lists(_event, max_size=60))
def test_a_nanny_is_closed_only_if_nothing_of_its_name_arrived_since_the_loss_and_none_is_connected(events) -> None:
    """Any order of arrivals, departures and judgements, against a log of what happened since each loss."""
    rule = LostWorkers()
    connected = {n: 0 for n in NAMES}  # workers of each name connected now
    losses = []  # (loss, index in the log)
    log: list[tuple[str, str]] = []
    for kind, name, pick in events:
        if kind == "arrive":
            rule.arrived(name)
            connected[name] += 1
            log.append(("arrive", name))
        elif kind == "leave" and connected[name]:
            connected[name] -= 1
            losses.append((rule.lost(name), len(log)))
            log.append(("leave", name))
        elif kind == "judge" and losses:
            loss, at = losses[pick % len(losses)]
            came_back = ("arrive", loss.name) in log[at:]
            now = [n for n, k in connected.items() for _ in range(k)]
            assert rule.gone_for_good(loss, now) == (not came_back and not connected[loss.name])


def _workers_by_name(client: Client) -> dict[object, str]:
    return {info["name"]: addr for addr, info in client.scheduler_info(n_workers=-1)["workers"].items()}


def _kill(client: Client, address: str) -> None:
    pid = client.run(os.getpid, workers=[address])[address]
    os.kill(pid, signal.SIGKILL)


def _until(what: str, ready, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout} s for {what}")
        time.sleep(0.02)


def test_a_worker_that_dies_again_as_its_first_death_is_judged_keeps_its_nanny() -> None:
    """The case Dask's own rule got wrong: the first death's check runs while the nanny restarts the worker again.

    With ``lost-worker-timeout`` T, worker 0 is killed, restarted by its nanny, and
    killed again just before T has passed since the first death, so that at T no
    worker named 0 is connected (its second restart is under way). Its nanny must
    stay, and the cluster must get back to two workers. (Dask's ``SpecCluster``
    closed the nanny here: the cluster stayed at one worker.)
    """
    timeout = 3.0
    with dask.config.set({"distributed.deploy.lost-worker-timeout": f"{timeout}s"}), EmbeddedCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster, Client(cluster) as client:
        client.wait_for_workers(2, timeout=60)
        for attempt in range(3):
            first = _workers_by_name(client)[0]
            _kill(client, first)
            lost_at = time.monotonic()
            _until("worker 0's first replacement", lambda: _workers_by_name(client).get(0) not in (None, first))
            second = _workers_by_name(client)[0]
            if time.monotonic() > lost_at + timeout - 0.4:
                client.wait_for_workers(2, timeout=60)
                continue  # the restart took too long to set the case up; try again
            time.sleep(lost_at + timeout - 0.2 - time.monotonic())
            _kill(client, second)
            _until("worker 0 to leave", lambda: _workers_by_name(client).get(0) != second, 10)
            _until("worker 0's second replacement", lambda: _workers_by_name(client).get(0) not in (None, second), 60)
            back_at = time.monotonic()
            if back_at < lost_at + timeout:
                client.wait_for_workers(2, timeout=60)
                continue  # it came back before the first death was judged: not the case under test
            time.sleep(1.0)  # the first death's check has run by now
            assert 0 in cluster.workers, "worker 0's nanny was closed while it restarted its worker"
            client.wait_for_workers(2, timeout=30)
            assert sorted(_workers_by_name(client)) == [0, 1]
            return
        pytest.fail("could not kill worker 0 again within its first death's timeout in 3 attempts")

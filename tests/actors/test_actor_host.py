"""The actor host's run loop lives in its own thread: control calls stay responsive."""

from __future__ import annotations

import time

import pytest

from helper_actors import Blocker, Collector, Producer
from coupler.runtime import ActorFailed, Coupling, Queue


def test_a_blocked_run_loop_does_not_block_other_actors_on_the_worker(coupling: Coupling, unique: str) -> None:
    w = coupling.workers()[0]
    ch = coupling.channel(f"nb-{unique}", Queue(4))
    blocker = coupling.spawn(Blocker, name=f"blocker-{unique}", workers=w)
    other = coupling.spawn(Collector, name=f"other-{unique}", inputs={"inp": ch}, workers=w)
    blocker.start()
    assert blocker.call("in_step")  # its step is now running and does not return until stopped
    # Were the loop inside a Dask actor method, these would wait forever (one actor thread per worker).
    fut = other._actor.start()
    assert fut.result(timeout=10)["state"] == "running"
    assert other._actor.status().result(timeout=10)["state"] == "running"
    assert blocker._actor.status().result(timeout=10)["state"] == "running"
    assert other.pause().state == "paused" and other.resume().state == "running"
    assert other.stop(10).state == "stopped"  # interrupts its blocking receive()
    assert blocker.stop(10).state == "stopped"


def test_pause_resume_and_lifecycle(coupling: Coupling, unique: str) -> None:
    ch = coupling.channel(f"life-{unique}", Queue(1000))
    w = coupling.workers()
    coupling.spawn(Collector, name=f"col-{unique}", inputs={"inp": ch}, workers=w[1])  # attached: room for every message
    prod = coupling.spawn(Producer, 300, name=f"prod-{unique}", outputs={"out": ch}, workers=w[0])
    assert prod.status().state == "created"
    prod.start()
    prod.pause()
    time.sleep(0.2)  # a step already under way completes
    paused_at = prod.status().info["sent"]
    time.sleep(0.3)
    assert prod.status().info["sent"] == paused_at < 300  # no step while paused
    prod.resume()
    final = prod.wait(30)
    assert final.state == "finished" and final.info["sent"] == 300 and final.stopped_at >= final.started_at


def test_a_failing_run_loop_reports_its_traceback(coupling: Coupling, unique: str) -> None:
    ch = coupling.channel(f"fail-{unique}", Queue(4))
    # float64 data on a float32 channel: the producer's first send fixes float32, the
    # bad producer then fails inside its run loop with a SpecMismatch.
    good = coupling.spawn(Producer, 0, name=f"good-{unique}", outputs={"out": ch})
    col = coupling.spawn(Collector, name=f"col-{unique}", inputs={"inp": ch})
    import numpy as np

    good.call("send_now", {"x": np.zeros(16, np.float32)})
    bad = coupling.spawn(Producer, 5, size=3, name=f"bad-{unique}", outputs={"out": ch})
    bad.start()
    with pytest.raises(ActorFailed, match="SpecMismatch"):
        bad.wait(30)
    assert bad.status().state == "failed"
    col.stop()


def _forwarded_meta(cp: Coupling, tag: str) -> list[list[str]]:
    """The meta keys of 3 messages that a forwarding actor sent on."""
    from helper_actors import Forwarder

    w = cp.workers()
    a, b = cp.channel(f"fwd-in-{tag}", Queue(8)), cp.channel(f"fwd-out-{tag}", Queue(8))
    col = cp.spawn(Collector, name=f"fwd-col-{tag}", inputs={"inp": b}, workers=w[0])
    fwd = cp.spawn(Forwarder, name=f"fwd-{tag}", inputs={"inp": a}, outputs={"out": b}, workers=w[-1])
    prod = cp.spawn(Producer, 3, name=f"fwd-prod-{tag}", outputs={"out": a}, workers=w[0])
    fwd.start()
    prod.start()
    assert prod.wait(30).state == "finished"
    metas = [col.call("meta_now", 10) for _ in range(3)]
    fwd.stop(10)
    return metas


def test_an_actor_that_sends_logs_its_takes_only_with_retention(coupling: Coupling, unique: str) -> None:
    """Input-order logging exists for replays (docs/reliability.md): without retention there is none, so no takes note."""
    import dask

    from coupler.runtime.dataplane.lineage import META_KEY

    assert all(META_KEY in keys for keys in _forwarded_meta(coupling, unique))  # retention on (the default)
    with dask.config.set({"coupler.delivery.retain": False}), Coupling(
        n_workers=2, threads_per_worker=1, dashboard_address=":0", env={"DASK_COUPLER__DELIVERY__RETAIN": "False"}
    ) as cp:
        assert not any(META_KEY in keys for keys in _forwarded_meta(cp, unique))

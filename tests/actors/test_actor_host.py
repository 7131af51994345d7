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

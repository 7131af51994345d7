"""Chaos on a real Slurm: `scancel` the batch job hosting the learner in the middle of a coupled run.

Two one-core worker jobs (all this CI node fits): the learner in one, a simulator
in the other. The learner's job is cancelled while samples stream on a
``Queue``; the supervisor restarts the learner from its checkpoint on the
remaining worker, and the run completes with every message trained on exactly
once (sequence numbers, checksum, and weights equal to an offline replay).
"""

from __future__ import annotations

import os
import subprocess
import time

import cloudpickle
import dask.config
import numpy as np
import pytest

from coupler.runtime.launch.cluster import JobOptions, close_cluster, start_cluster, wait_for_workers
from coupler.runtime.coupling import Coupling
from coupler.runtime.policies import Queue
from slurm_support import REPO, wait_until_gone

pytestmark = pytest.mark.system

RELIABILITY = REPO / "tests" / "reliability"


def test_scancel_of_the_learners_job_loses_and_repeats_nothing(slurm: None, jobqueue_config: None) -> None:
    import sys

    sys.path.insert(0, str(RELIABILITY))
    import chaos_actors
    from chaos_actors import QueueLearner, Simulator, checksum, sample, sgd_step

    cloudpickle.register_pickle_by_value(chaos_actors)
    settings = {
        "coupler.supervision.poll-interval": 0.5,
        "coupler.supervision.checkpoint-interval": 1,
        "coupler.supervision.restart-backoff": 0.5,
        # Dask pickles actor classes by reference: the jobs must import the test actors too.
        "jobqueue.slurm.job-script-prologue": [f"export PYTHONPATH={RELIABILITY}:${{PYTHONPATH:-}}"],
    }
    n, seed = 200, 7  # 8 s of samples: the cancel comes after a checkpoint of 80 (~4 s in), mid-stream
    with dask.config.set(settings):
        cluster = start_cluster("slurm", JobOptions.from_config(jobs=2))
        try:
            with Coupling(cluster) as cp:
                wait_for_workers(cp.client, 2, timeout="180s")
                job_of = cp.client.run(lambda: os.environ.get("SLURM_JOB_ID", ""))
                w = sorted(job_of)
                ch = cp.channel("slurm-chaos", Queue(8))
                learner = cp.spawn(QueueLearner, name="learner", inputs={"data": ch}, workers=w[0])
                sim = cp.spawn(Simulator, n, seed, 0.04, name="sim", outputs={"out": ch}, workers=w[1])
                learner.start()
                sim.start()
                deadline = time.monotonic() + 120
                while len((cp.supervisor.last_checkpoint("learner") or {}).get("state", {}).get("trained", [])) < 80:
                    assert time.monotonic() < deadline, "no learner checkpoint covering 80 messages within 120 s"
                    time.sleep(0.2)
                victim = job_of[w[0]]
                subprocess.run(["scancel", victim], check=True, timeout=30)
                assert sim.wait(240).state == "finished"
                deadline = time.monotonic() + 120
                while learner.status().info["count"] < n:
                    assert time.monotonic() < deadline, "the learner did not train on every message"
                    time.sleep(0.2)
                time.sleep(0.5)
                rec = learner.call("record")
                events = cp.supervisor.events
                learner.stop()
        finally:
            close_cluster(cluster)
    assert wait_until_gone({victim}) == set()
    trained = rec["trained"]
    assert [q for _, q in trained] == list(range(n)) and {s for s, _ in trained} == {"sim"}
    assert rec["total"] == pytest.approx(sum(checksum(sample(seed, i)) for i in range(n)), rel=1e-12)
    wts = np.zeros_like(rec["w"])
    for _, q in trained:
        d = sample(seed, q)
        wts = sgd_step(wts, d["x"], d["y"])
    np.testing.assert_allclose(rec["w"], wts, rtol=1e-12, atol=0)
    assert 80 <= rec["restored_at"] < n  # resumed from its checkpoint
    restarted = [e for e in events if e.kind == "restarted" and e.actor == "learner"]
    assert len(restarted) == 1 and restarted[0].source == w[0] and "checkpoint" in restarted[0].detail, events

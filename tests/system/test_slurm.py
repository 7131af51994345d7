"""A coupled workflow on a real Slurm: actors inside batch jobs, the coupler command, GPU job scripts."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dask.config
import pytest
from distributed import Client

from coupler.runtime.launch.cluster import JobOptions, close_cluster, start_cluster, wait_for_workers
from slurm_support import JOBQUEUE_YAML, REPO, SMALL_AUGMENTATION, squeue_jobs, wait_until_gone

pytestmark = pytest.mark.system


class Watcher(threading.Thread):
    """Polls squeue and the broker while a run goes on: which jobs ran, where each actor was."""

    def __init__(self, client: Client | None = None, interval: float = 0.3) -> None:
        super().__init__(daemon=True)
        self.client, self.interval = client, interval
        self.jobs: dict[str, tuple[str, str]] = {}
        self.actor_workers: dict[str, str] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.jobs.update(squeue_jobs())
            if self.client is not None:
                try:
                    snap = self.client.sync(self.client.scheduler.coupler_snapshot)
                except Exception:  # the broker is installed by the script's Coupling, a moment later
                    snap = None
                snap = snap if isinstance(snap, dict) else {}
                for name, a in snap.get("actors", {}).items():
                    if a.get("worker"):
                        self.actor_workers[name] = a["worker"]
            time.sleep(self.interval)

    def stop(self) -> None:
        self.done.set()
        self.join(10)


def test_coupler_run_on_slurm_runs_the_actors_inside_its_jobs(slurm: None, tmp_path: Path) -> None:
    """The README command, at a small size: ``coupler run --cluster slurm --jobs 2`` submits two worker jobs,
    the augmentation script's actors run inside them, it learns something, and no job is left after.

    One run checks both the command and where the actors ran (it was two tests, each starting
    its own two Slurm jobs and running the script: the command goes through the same
    ``start_cluster`` and ``run_script`` as a script given a cluster by hand).
    """
    before = set(squeue_jobs())
    out = tmp_path / "results.json"
    cmd = [
        str(Path(sys.executable).parent / "coupler"), "--config", str(JOBQUEUE_YAML),
        "run", "examples/augmentation.py", "--cluster", "slurm", "--jobs", "2",
        "--", *SMALL_AUGMENTATION, "--json", str(out),
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    announced = threading.Event()

    def read() -> None:  # the command prints its scheduler's address once the workers joined, before the script runs
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "slurm cluster at tcp://" in line:
                announced.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    watcher = Watcher()
    watcher.start()
    client: Client | None = None
    job_of: dict[str, str] = {}
    try:
        deadline = time.monotonic() + 240
        while not announced.wait(0.2) and proc.poll() is None:
            assert time.monotonic() < deadline, "coupler run printed no cluster address in 240 s:\n" + "".join(lines)[-3000:]
        if announced.is_set():
            address = re.search(r"slurm cluster at (tcp://[^;\s]+)", "".join(lines)).group(1)  # type: ignore[union-attr]
            client = Client(address, timeout=30)
            job_of = client.run(lambda: os.environ.get("SLURM_JOB_ID", ""))
            watcher.client = client
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        reader.join(10)
        pytest.fail(f"coupler run did not finish in 240 s:\n{''.join(lines)[-3000:]}")
    finally:
        watcher.stop()
        if client is not None:
            client.close()
    reader.join(10)
    log = "".join(lines)
    assert proc.returncode == 0, log[-3000:]
    ours = {j for j, (name, _) in watcher.jobs.items() if j not in before and name == "coupler-worker"}  # the name examples/jobqueue.yaml sets
    assert len(ours) == 2, f"expected 2 worker jobs in squeue during the run; saw {watcher.jobs}"
    cluster_jobs = set(job_of.values())
    assert cluster_jobs == ours and "" not in cluster_jobs, (job_of, ours)  # each worker is its own Slurm job
    assert "learner" in watcher.actor_workers and any(n.startswith("heat-") for n in watcher.actor_workers), watcher.actor_workers
    for name, worker in watcher.actor_workers.items():
        assert job_of.get(worker) in cluster_jobs, f"actor {name} ran on {worker}, not in a Slurm job of this cluster"
    results = json.loads(out.read_text())
    assert results["samples_streamed"] > 0 and results["training_steps"] > 0
    assert results["heldout_rel_l2"] < results["persistence_rel_l2"]  # it learned something on the way
    assert "slurm cluster at tcp://127.0.0.1:" in log
    assert wait_until_gone(ours) == set(), "coupler run left jobs in squeue"


def test_gpu_job_script_requests_gpus_and_gives_each_worker_one(jobqueue_config: None, tmp_path: Path) -> None:
    """The generated script for 2-GPU jobs; then its worker command run for real (no GPU, no sbatch needed)."""
    with dask.config.set({"jobqueue.slurm.cores": 2}):
        cluster = start_cluster("slurm", JobOptions(jobs=0, gpus_per_job=2, walltime="01:00:00"))
        try:
            script = cluster.job_script()
            lines = script.splitlines()
            assert "#SBATCH --gres=gpu:2" in lines
            assert "#SBATCH -t 01:00:00" in lines
            assert "export XLA_PYTHON_CLIENT_PREALLOCATE=false" in lines
            assert 'export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0,1}"' in lines
            assert "export COUPLER_GPUS_PER_JOB=2" in lines
            command = lines[-1]
            for part in ("--nworkers 2", "--resources GPU=1", "--preload coupler.runtime.launch.devices",
                         "--lifetime 3180s", "--lifetime-stagger 120s", "--interface lo"):
                assert part in command, f"{part!r} not in the worker command {command!r}"

            # Slurm would export the allocated GPUs; without GPUs, pretend it gave devices 3 and 5.
            path = tmp_path / "job.sh"
            path.write_text(script.replace("dummy-name", "gpu-job"))
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": "3,5"}
            job = subprocess.Popen(["bash", str(path)], env=env, start_new_session=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                with Client(cluster) as client:
                    client.wait_for_workers(2, timeout=60)
                    seen = client.run(lambda: (os.environ["CUDA_VISIBLE_DEVICES"], os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"]))
                    workers = client.scheduler_info(n_workers=-1)["workers"]
            finally:
                os.killpg(job.pid, signal.SIGTERM)
                job.wait(30)
        finally:
            close_cluster(cluster)
    assert sorted(seen.values()) == [("3", "false"), ("5", "false")]  # one GPU each, no preallocation
    assert sorted(w["name"] for w in workers.values()) == ["gpu-job-0", "gpu-job-1"]
    assert all(w["resources"] == {"GPU": 1} for w in workers.values())


def test_a_queue_pipeline_outlives_slurm_jobs_with_a_short_walltime(slurm: None, jobqueue_config: None) -> None:
    """Jobs of 40 s walltime retire (dask's --lifetime) and are replaced; the actors move; nothing is lost."""
    from coupler.runtime import Coupling, Queue
    from supervision_actors import Counter, Tally
    settings = {
        "coupler.jobqueue.lifetime-margin": "8s",   # lifetime = 40 - 8 - 2 = 30 s, +-2 s
        "coupler.jobqueue.lifetime-stagger": "2s",
        # A hand-over ends the actor's loop and keeps its final checkpoint in the driver; the
        # successor waits for a worker (a new job) if none is up, so the margin only has to
        # cover the hand-over itself (at most handover-timeout) and a poll.
        "coupler.supervision.retire-margin": 10,
        "coupler.supervision.poll-interval": 0.5,
        "coupler.supervision.handover-timeout": 6,
        "coupler.supervision.checkpoint-interval": 0,
        # Dask pickles the actor classes by reference: the jobs must import this test helper module.
        "jobqueue.slurm.job-script-prologue": [f"export PYTHONPATH={REPO / 'tests'}:${{PYTHONPATH:-}}"],
    }
    n, size = 450, 8
    with dask.config.set(settings):
        # One job first, the second 10 s later: on this 2-CPU node only two 1-core jobs
        # fit, and staggered starts leave a worker to move to whenever one retires. The
        # first job's actors move at 18-22 s, it ends at 28-32 s and its replacement (the
        # third job) had a worker about 16 s later in a run here (~48 s), inside the stream
        # (~60 s of data, and the second job's actors wait for the third job: ~70 s).
        cluster = start_cluster("slurm", JobOptions.from_config(jobs=1, walltime="00:00:40"))
        try:
            with Coupling(cluster) as cp:
                wait_for_workers(cp.client, 1, timeout="120s")
                jobs_seen: set[str] = set()
                ch = cp.channel("slurm-walltime", Queue(16))
                tally = cp.spawn(Tally, name="tally", inputs={"inp": ch})
                counter = cp.spawn(Counter, n, size, 0.11, name="counter", outputs={"out": ch})  # ~60 s of data
                tally.start()
                counter.start()
                time.sleep(10)
                cluster.adapt(minimum_jobs=2, maximum_jobs=2)
                deadline = time.monotonic() + 240
                while counter.status().info.get("i", 0) < n or tally.status().info.get("count", 0) < n:
                    assert time.monotonic() < deadline, "the stream did not finish within 240 s"
                    jobs_seen |= {j for j in cp.client.run(lambda: os.environ.get("SLURM_JOB_ID", "")).values() if j}
                    time.sleep(1)
                record = tally.call("record")
                events = cp.supervisor.events
        finally:
            close_cluster(cluster)
    got = record["got"]
    assert [v for _, _, v in got] == [float(i) for i in range(n)]  # in order, none lost, none twice
    assert [q for _, q, _ in got] == list(range(n))
    assert record["checksum"] == size * n * (n - 1) / 2
    moves = [e for e in events if e.kind == "moved"]
    assert moves, f"no actor was moved off a retiring job: {events}"
    assert not [e for e in events if e.kind in ("restarted", "gave-up")], events
    assert len(jobs_seen) >= 3, f"expected at least one replaced job, saw jobs {jobs_seen}"

"""A coupled workflow on a real Slurm: actors inside batch jobs, the coupler command, GPU job scripts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dask.config
import pytest
from distributed import Client

from coupler.runtime.launch.cli import run_script
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


def test_augmentation_actors_run_inside_slurm_jobs(slurm: None, jobqueue_config: None, tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    before = set(squeue_jobs())
    cluster = start_cluster("slurm", JobOptions.from_config(jobs=2))
    try:
        client = Client(cluster)
        wait_for_workers(client, 2, timeout="120s")
        job_of = client.run(lambda: os.environ.get("SLURM_JOB_ID", ""))
        cluster_jobs = set(job_of.values())
        assert len(cluster_jobs) == 2 and "" not in cluster_jobs, job_of  # each worker is its own Slurm job

        watcher = Watcher(client)
        watcher.start()
        try:
            # As `coupler run` does: the script runs as __main__ here (so its classes travel to the
            # workers by value) with this cluster as the default of its Coupling().
            status = run_script(str(REPO / "examples" / "augmentation.py"), [*SMALL_AUGMENTATION, "--json", str(out)],
                                cluster.scheduler_address)
        finally:
            watcher.stop()
        client.close()
    finally:
        close_cluster(cluster)

    seen = set(watcher.jobs) - before
    assert cluster_jobs <= seen, f"squeue never showed the workers' jobs {cluster_jobs}; it showed {watcher.jobs}"
    assert {watcher.jobs[j][0] for j in cluster_jobs} == {"coupler-worker"}  # the name examples/jobqueue.yaml sets
    assert "learner" in watcher.actor_workers and any(n.startswith("heat-") for n in watcher.actor_workers)
    for name, worker in watcher.actor_workers.items():
        assert job_of.get(worker) in cluster_jobs, f"actor {name} ran on {worker}, not in a Slurm job of this cluster"
    assert status == 0
    results = json.loads(out.read_text())
    assert results["samples_streamed"] > 0 and results["training_steps"] > 0
    assert results["heldout_rel_l2"] < results["persistence_rel_l2"]  # it learned something on the way
    assert wait_until_gone(cluster_jobs) == set(), "cluster.close() left jobs in squeue"


def test_coupler_run_on_slurm_from_the_command_line(slurm: None, tmp_path: Path) -> None:
    """The README command, at a small size."""
    before = set(squeue_jobs())
    out = tmp_path / "results.json"
    cmd = [
        str(Path(sys.executable).parent / "coupler"), "--config", str(JOBQUEUE_YAML),
        "run", "examples/augmentation.py", "--cluster", "slurm", "--jobs", "2",
        "--", *SMALL_AUGMENTATION, "--json", str(out),
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watcher = Watcher()
    watcher.start()
    try:
        log, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        proc.kill()
        log, _ = proc.communicate()
        pytest.fail(f"coupler run did not finish in 240 s:\n{log[-3000:]}")
    finally:
        watcher.stop()
    assert proc.returncode == 0, log[-3000:]
    ours = {j for j, (name, _) in watcher.jobs.items() if j not in before and name == "coupler-worker"}
    assert len(ours) == 2, f"expected 2 worker jobs in squeue during the run; saw {watcher.jobs}"
    results = json.loads(out.read_text())
    assert results["samples_streamed"] > 0 and results["training_steps"] > 0
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

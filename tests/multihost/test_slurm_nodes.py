"""``coupler run --cluster slurm --jobs 3`` on a Slurm of three nodes that are three (emulated) hosts.

The Slurm is ``.ci/slurm-multi-up.sh``'s: one slurmd per network namespace, each with
its own address, hostname and private ``/dev/shm``, so a job's worker really sits on
another host than its neighbours and than the scheduler (in the root namespace, where
``coupler run`` runs). Each job holds two workers, so one host also has a same-host
pair: the stream from its neighbour goes through that node's own /dev/shm, the one
from another node over TCP only. Outside CI, and without root or that Slurm, the test
skips with the reason; under ``CI=true`` it fails (tests/services.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "system"))

import slurm_nodes  # noqa: E402
from services import require  # noqa: E402
from slurm_support import squeue_jobs, wait_until_gone  # noqa: E402

pytestmark = [pytest.mark.multihost, pytest.mark.system]

NODES = 3
SCRIPT = Path(__file__).resolve().with_name("slurm_stream.py")


class JobWatcher(threading.Thread):
    """Polls the several-node Slurm's squeue while a run goes on: every job seen, by id."""

    def __init__(self, interval: float = 0.3) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.jobs: dict[str, tuple[str, str]] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                self.jobs.update(squeue_jobs(slurm_nodes.slurm_env()))
            except (subprocess.SubprocessError, OSError):
                pass  # one failed look (slurmctld busy): the next one counts
            time.sleep(self.interval)

    def stop(self) -> None:
        self.done.set()
        self.join(10)


def test_coupler_run_places_three_jobs_on_three_hosts_and_streams_between_them(tmp_path: Path) -> None:
    require(f"a Slurm of {NODES} nodes on emulated hosts", slurm_nodes.problem(NODES))
    env = slurm_nodes.slurm_env()
    # sbatch passes the driver's environment to the jobs: the workers import the helper
    # actors that tasks refer to by module (not every task ships them by value).
    env["PYTHONPATH"] = os.pathsep.join([str(slurm_nodes.REPO / "tests"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    out = tmp_path / "record.json"
    n = 40
    before = set(squeue_jobs(env))
    cmd = [
        str(Path(sys.executable).parent / "coupler"), "--config", str(slurm_nodes.JOBQUEUE_YAML),
        "run", str(SCRIPT), "--cluster", "slurm", "--jobs", str(NODES),
        "--", "--json", str(out), "--messages", str(n),
    ]  # fmt: skip
    watcher = JobWatcher()
    watcher.start()
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=slurm_nodes.REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        log, _ = proc.communicate(timeout=100)
    except subprocess.TimeoutExpired:
        proc.kill()  # its jobs are cancelled below, and by .ci/slurm-multi-down.sh at the latest
        log, _ = proc.communicate()
        subprocess.run(["scancel", *sorted(set(watcher.jobs) - before)], env=env, timeout=15, check=False)
        pytest.fail(f"coupler run did not finish in 100 s:\n{log[-4000:]}")
    finally:
        watcher.stop()
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, log[-4000:]
    assert f"slurm cluster at tcp://{slurm_nodes.BRIDGE_ADDR}:" in log  # the scheduler on the bridge, as configured
    record = json.loads(out.read_text())

    # Three jobs of two workers, each job on a node of its own, each worker on its node's host.
    facts, workers = record["facts"], record["workers"]
    assert len(workers) == 2 * NODES, workers
    names = slurm_nodes.node_names(NODES)
    assert sorted(f["node"] for f in facts.values()) == sorted(2 * names), facts  # Slurm placed the jobs on 3 nodes
    ours = {f["job"] for f in facts.values()}
    assert len(ours) == NODES and ours <= set(watcher.jobs) - before, (facts, watcher.jobs)
    assert {watcher.jobs[j][0] for j in ours} == {"coupler-multi-worker"}
    assert len({(f["node"], f["job"]) for f in facts.values()}) == NODES, facts  # a job's two workers share its node
    for address, f in facts.items():
        assert f["hostname"] == f["node"], f  # the job runs on its node's host (its UTS namespace)
        assert workers[address]["host"] == slurm_nodes.node_addr(f["node"]), (address, f)  # and binds its address
    # Each host has its own /dev/shm, none the driver's.
    shm_of = {f["node"]: f["shm_dev"] for f in facts.values()}
    assert all(shm_of[f["node"]] == f["shm_dev"] for f in facts.values()), facts
    assert len(set(shm_of.values()) | {record["driver_shm_dev"]}) == NODES + 1, record

    # Two streams into one consumer: from another host over TCP only, from its own host through
    # that host's /dev/shm. Every message once, in order, intact.
    host_of = {a: f["hostname"] for a, f in facts.items()}
    prods, consumer = record["producers"], record["consumer"]
    assert sorted(prods) == ["far", "near"], prods
    assert host_of[prods["far"]["worker"]] != host_of[consumer] == host_of[prods["near"]["worker"]], (prods, consumer)
    assert prods["near"]["worker"] != consumer
    got = record["received"]
    assert len(got) == 2 * n, f"expected {2 * n} messages; got {len(got)}"
    for name, p in prods.items():
        assert p["end"] == "finished", (name, p)
        mine = [(seq, value) for src, seq, _, value, _ in got if src == name]
        assert mine == [(i, p["ident"] * 1e6 + i) for i in range(n)], f"{name}: {mine[:10]}..."
    assert prods["far"]["link_figures"] == [n, 0], "a cross-host link must not use shared memory"
    messages, through_shm = prods["near"]["link_figures"]
    assert messages == n and through_shm > 0, "a same-host link inside a Slurm node uses that node's /dev/shm"

    # Nothing left: no job in squeue, no coupler segment in any host's /dev/shm.
    assert wait_until_gone(ours, env=env) == set(), "coupler run left jobs in squeue"
    left = {node: [s for s in slurm_nodes.shm_names(node) if s.startswith("coupler-")] for node in names}
    assert left == {node: [] for node in names}, f"coupler segments left in the hosts' /dev/shm: {left}"
    phases = ", ".join(f"{k} {v:.1f} s" for k, v in record["phases"].items())
    print(f"coupler run on {NODES} Slurm nodes: {elapsed:.1f} s in all; in the script: {phases}; two streams of {n} messages {record['seconds']:.2f} s "
          f"(near: {through_shm} of {messages} through /dev/shm)")

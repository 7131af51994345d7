"""What the system tests need to know about the local Slurm and the example configuration."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path


REPO = Path(__file__).resolve().parents[2]
#: The configuration the README documents; the tests use the same file so the docs are tested.
JOBQUEUE_YAML = REPO / "examples" / "jobqueue.yaml"
#: The augmentation example at a size that runs in well under a minute on 2 cores (the
#: quick demo's sizes with the 4 s of training docs/tutorials/augmentation.md runs).
SMALL_AUGMENTATION = [
    "--grid", "16", "--members", "4", "--blocks", "4", "--k", "10",
    "--train-seconds", "4", "--capacity", "256", "--batch-size", "8",
]


def slurm_problem() -> str | None:
    """Why Slurm cannot run jobs here, or ``None`` when it can."""
    missing = [c for c in ("sbatch", "squeue", "scancel", "sinfo") if shutil.which(c) is None]
    if missing:
        return f"Slurm commands not found ({', '.join(missing)}); start one with `sudo .ci/slurm-up.sh`"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 15 s (slurmctld not running?)"
    if out.returncode != 0:
        return f"sinfo failed: {out.stderr.strip()}"
    states = {s.strip().rstrip("*~#!%$@^-") for s in out.stdout.split()}
    if not states & {"idle", "mixed", "allocated", "completing"}:
        return f"no Slurm node can run jobs (node states: {sorted(states) or 'none'})"
    return None


def squeue_jobs(env: Mapping[str, str] | None = None) -> dict[str, tuple[str, str]]:
    """This user's jobs: id -> (name, state).

    Args:
        env: the environment of ``squeue`` (default this process's); its ``SLURM_CONF``
            picks the Slurm (e.g. the several-node one of tests/multihost/slurm_nodes.py).
    """
    out = subprocess.run(
        ["squeue", "-h", f"--user={os.getuid()}", "-o", "%i %j %T"], capture_output=True, text=True, timeout=15, check=True,
        env=None if env is None else dict(env),
    )
    jobs = {}
    for line in out.stdout.splitlines():
        job, name, state = line.split()
        jobs[job] = (name, state)
    return jobs


def wait_until_gone(jobs: set[str], timeout: float = 20.0, env: Mapping[str, str] | None = None) -> set[str]:
    """Wait for ``jobs`` to leave ``squeue`` (run with ``env``, see :func:`squeue_jobs`); return those still there after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        left = jobs & set(squeue_jobs(env))
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.3)

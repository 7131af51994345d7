"""The several-node Slurm on emulated hosts that ``.ci/slurm-multi-up.sh`` starts, as the tests see it.

Its names and places are those of ``.ci/slurm-multi-env.sh``, read from that file so
that the script and the tests cannot disagree. Slurm commands reach this Slurm, not
the single-node one of ``.ci/slurm-up.sh``, through ``SLURM_CONF`` in their
environment (:func:`slurm_env`); this process's own environment is left alone.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ENV_FILE = REPO / ".ci" / "slurm-multi-env.sh"
#: Settings for `coupler --config`: workers on the nodes' interface, the scheduler on the bridge.
JOBQUEUE_YAML = Path(__file__).resolve().with_name("slurm_nodes.yaml")


def settings(path: Path = ENV_FILE) -> dict[str, str]:
    """The ``KEY=value`` lines of ``.ci/slurm-multi-env.sh`` (comments dropped)."""
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Z_]+)=(\S*)", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


SETTINGS = settings()
#: The Dask scheduler must listen here: the bridge's address, which every node reaches.
BRIDGE_ADDR = SETTINGS["CTLD_ADDR"]


def node_names(n: int) -> list[str]:
    """The names (hostname, network namespace, Slurm node) of the first ``n`` nodes."""
    return [f"{SETTINGS['NODE_PREFIX']}{i}" for i in range(1, n + 1)]


def node_addr(name: str) -> str:
    """A node's address on the bridge."""
    return f"{SETTINGS['NET']}.{name[len(SETTINGS['NODE_PREFIX']):]}"


def slurm_env() -> dict[str, str]:
    """This process's environment with ``SLURM_CONF`` of the several-node Slurm."""
    return {**os.environ, "SLURM_CONF": SETTINGS["SLURM_CONF"]}


def problem(n: int) -> str | None:
    """Why the several-node Slurm cannot run ``n`` jobs on ``n`` nodes here, or ``None`` when it can."""
    if not sys.platform.startswith("linux"):
        return f"emulated hosts need Linux; this is {sys.platform}"
    if os.geteuid() != 0:
        return f"needs root: its nodes' processes are inspected in their namespaces (uid {os.geteuid()}); .ci/run runs it as root"
    missing = [c for c in ("sbatch", "squeue", "sinfo", "nsenter") if shutil.which(c) is None]
    if missing:
        return f"commands not found ({', '.join(missing)}); start it with `sudo .ci/slurm-multi-up.sh`"
    if not Path(SETTINGS["SLURM_CONF"]).is_file():
        return f"no {SETTINGS['SLURM_CONF']}; start it with `sudo .ci/slurm-multi-up.sh`"
    ctld_pid = Path(SETTINGS["STATE"]) / "slurmctld.pid"
    if not _running(ctld_pid):
        return f"its slurmctld is not running (no live pid in {ctld_pid}); start it with `sudo .ci/slurm-multi-up.sh`"
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True, timeout=15, env=slurm_env())
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 15 s (its slurmctld not running? `sudo .ci/slurm-multi-up.sh`)"
    if out.returncode != 0:
        return f"sinfo failed: {out.stderr.strip()} (start it with `sudo .ci/slurm-multi-up.sh`)"
    states = dict(line.split() for line in out.stdout.splitlines() if line.strip())
    idle = [name for name in node_names(n) if states.get(name, "").rstrip("*~#!%$@^-") == "idle"]
    if len(idle) < n:
        return f"expected {n} idle nodes {node_names(n)}; sinfo says {states or 'nothing'} (`sudo .ci/slurm-multi-up.sh {n}`)"
    return None


def _running(pid_file: Path) -> bool:
    """Whether the pid in ``pid_file`` names a live process (not a zombie)."""
    try:
        stat = Path(f"/proc/{int(pid_file.read_text().strip())}/stat").read_text()
    except (OSError, ValueError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def slurmd_pid(node: str) -> int:
    """The pid of ``node``'s slurmd (from its pid file): a process in the node's namespaces.

    Raises:
        RuntimeError: no live slurmd for ``node``.
    """
    pid_file = Path(SETTINGS["STATE"]) / f"slurmd-{node}.pid"
    if not _running(pid_file):
        raise RuntimeError(f"no live slurmd for {node} (no live pid in {pid_file})")
    return int(pid_file.read_text().strip())


def shm_names(node: str) -> list[str]:
    """What is in ``node``'s private ``/dev/shm`` (seen from inside its mount namespace).

    Raises:
        RuntimeError: the listing failed.
    """
    out = subprocess.run(
        ["nsenter", "-t", str(slurmd_pid(node)), "--mount", "--", "ls", "-A", "/dev/shm"], capture_output=True, text=True, timeout=30
    )
    if out.returncode != 0:
        raise RuntimeError(f"listing {node}'s /dev/shm failed: {out.stderr.strip()}")
    return sorted(out.stdout.split())

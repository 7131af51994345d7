"""A coupling whose workers sit on emulated hosts (emulated_hosts.py).

The scheduler and the driver run in the root namespace, on the hosts' bridge; one
Dask worker (no nanny, one thread) runs in each host. Outside CI, without root,
tests using it skip with the reason; under ``CI=true`` they fail (tests/services.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cloudpickle
import dask
from distributed import LocalCluster

# The reliability tests' deterministic simulator and checkpointed learner serve here too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reliability"))

import chaos_actors  # noqa: E402
import emulated_hosts  # noqa: E402
import helper_actors  # noqa: E402
import host_actors  # noqa: E402
from checks import wait_for  # noqa: E402
from coupler.runtime import Coupling  # noqa: E402
from emulated_hosts import EmulatedHosts, Host  # noqa: E402
from services import require  # noqa: E402

for _module in (chaos_actors, helper_actors, host_actors):  # the workers cannot import test modules
    cloudpickle.register_pickle_by_value(_module)

#: Supervision fast enough for a test: a lost actor restarts within about a second.
SUPERVISION = {
    "coupler.supervision.poll-interval": 0.3,
    "coupler.supervision.checkpoint-interval": 0.5,
    "coupler.supervision.restart-backoff": 0.2,
    "coupler.supervision.max-restarts": 5,
    "coupler.supervision.retire-margin": 6,  # the walltime test's worker lives 12 s
    "coupler.supervision.handover-timeout": 5,
}


@dataclass
class HostCluster:
    """A coupling with one worker per emulated host.

    Attributes:
        hosts: the hosts.
        coupling: the driver's coupling (scheduler in the root namespace).
        worker_env: ``DASK_...`` settings every worker is started with.
        procs: each host's current primary worker process, by host index.
        names: the Dask name of each host's current primary worker, by host index.
    """

    hosts: EmulatedHosts
    coupling: Coupling
    worker_env: dict[str, str]
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    _started: int = 0

    @property
    def scheduler(self) -> str:
        """The scheduler's address, on the bridge."""
        return self.coupling.client.scheduler.address

    def host(self, i: int) -> Host:
        """Host ``i`` (1-based)."""
        return self.hosts.hosts[i - 1]

    def _names(self) -> dict[str, str]:
        info = self.coupling.client.scheduler_info(n_workers=-1)["workers"]
        return {addr: str(w["name"]) for addr, w in info.items()}

    def address(self, host: Host) -> str:
        """The address of ``host``'s live worker.

        Raises:
            LookupError: the scheduler knows no worker on that host.
        """
        name = self.names.get(host.index)
        found = [a for a, n in self._names().items() if n == name]
        if not found:
            raise LookupError(f"no live primary worker on {host.hostname} (expected {name}); the scheduler has {self._names()}")
        return found[0]

    def host_of(self, address: str) -> Host:
        """The host whose address ``address`` (a worker's) is on."""
        ip = address.split("://")[1].rsplit(":", 1)[0]
        return next(h for h in self.hosts.hosts if h.ip == ip)

    def start_worker(self, host: Host, *args: str, primary: bool = True) -> str:
        """Start a worker on ``host`` (extra ``dask worker`` arguments ``args``); return its address once it joined.

        Args:
            host: where.
            args: more ``dask worker`` arguments (e.g. ``--lifetime``).
            primary: it becomes the host's worker that :meth:`address` names (else it is an extra
                one, stopped with the hosts).
        """
        self._started += 1
        name = f"{host.hostname}-w{self._started}"
        # The driver's sys.path, as LocalCluster's spawned workers get it: test modules whose
        # classes travel by reference inside a task (not only by value) import there too.
        env = {**self.worker_env, "PYTHONPATH": os.pathsep.join(os.path.abspath(p) for p in sys.path if p)}
        proc = self.hosts.popen(
            host,
            [sys.executable, "-m", "distributed.cli.dask_worker", self.scheduler, "--host", host.ip, "--name", name,
             "--nthreads", "1", "--no-nanny", "--no-dashboard", *args],
            f"worker-{name}", env={**os.environ, **env},
        )  # fmt: skip
        if primary:
            self.procs[host.index], self.names[host.index] = proc, name
        wait_for(f"worker {name} to join", lambda: name in self._names().values(), logs=self.hosts.logs)
        return next(a for a, n in self._names().items() if n == name)

    def kill_worker(self, host: Host) -> None:
        """SIGKILL ``host``'s primary worker process (by the pid this cluster started it with)."""
        self.kill_worker_process(self.procs.pop(host.index))

    @staticmethod
    def kill_worker_process(proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL a worker process this cluster started, unless it has ended; reap it."""
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def ensure_workers(self) -> None:
        """Restart the worker of every host whose worker is gone (an earlier test killed or cut it off).

        A worker the scheduler removed during a cut may still be running, on its way
        to shutting itself down: it is replaced too (waiting for it to rejoin is waiting
        for something that does not happen).
        """
        known = set(self._names().values())
        for h in self.hosts.hosts:
            proc = self.procs.get(h.index)
            if proc is not None and proc.poll() is None and self.names.get(h.index) not in known:
                self.kill_worker_process(proc)
                proc = None
            if proc is None or proc.poll() is not None:
                self.start_worker(h)
        wait_for("every host's worker", lambda: set(self.names.values()) <= set(self._names().values()), logs=self.hosts.logs)

    def link_stats(self) -> dict[str, list[dict[str, Any]]]:
        """Every live worker's data-plane links' stats, by worker address."""

        def stats(dask_worker: Any) -> list[dict[str, Any]]:
            from coupler.runtime.dataplane.endpoint import ENDPOINT_NAME

            ep = dask_worker.plugins[ENDPOINT_NAME]
            return [dict(link.stats(), peer=key) for key, link in ep.dispatch.links.items()]

        return self.coupling.client.run(stats)

    def shm_left(self) -> dict[str, list[str]]:
        """What is in each host's private /dev/shm, by hostname (the hosts' own view, not the driver's)."""
        return {h.hostname: self.hosts.shm_names(h) for h in self.hosts.hosts}


def host_cluster(n: int, scheduler_config: dict[str, Any], worker_env: dict[str, str]) -> Iterator[HostCluster]:
    """``n`` emulated hosts with one worker each and a coupling on them; all removed after.

    Args:
        n: hosts.
        scheduler_config: dask settings for the scheduler and the driver (this process).
        worker_env: ``DASK_...`` environment variables for the workers.
    """
    require("emulated hosts", emulated_hosts.problem())
    with (
        dask.config.set({**SUPERVISION, **scheduler_config}),
        EmulatedHosts(n) as hosts,
        LocalCluster(n_workers=0, host=hosts.bridge_ip, dashboard_address=":0") as cluster,
        Coupling(cluster) as cp,
    ):
        hc = HostCluster(hosts, cp, worker_env)
        for h in hosts.hosts:
            hc.start_worker(h)
        yield hc

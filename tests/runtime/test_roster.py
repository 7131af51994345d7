"""The supervisor's roster asks a worker that has not reported yet for its retirement time."""

from __future__ import annotations

import time

import psutil
from distributed import Client, LocalCluster

from coupler.runtime.control.roster import WorkerRoster


def test_a_worker_without_reports_is_asked_for_its_retirement_time() -> None:
    # A plain Dask scheduler has no coupler broker, so no worker has reported: the roster asks the workers.
    # (It called the worker's function without the worker, and every answer was a TypeError it ignored.)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0", lifetime="1 hour") as cluster:
        with Client(cluster) as client:
            roster = WorkerRoster(client, retire_margin=60.0, clock=time.time)
            roster.refresh()
            (addr,) = roster.live
            # An in-process worker: its process is this one, and its lifetime counts from the process's start.
            assert roster.retire_times() == {addr: psutil.Process().create_time() + 3600.0}
            assert not roster.retiring(addr, time.time())

"""Dask peers: plain Dask actors (``dask-actor``) and ``distributed.Queue`` (``dask-queue``).

Both run on a 2-worker ``LocalCluster`` of processes like coupler's, producers
on the first worker, consumers on the second, and the client talks to workers
directly (``direct_to_workers=True``).

- ``dask-actor``: actor A calls actor B's method with the array; streaming keeps
  8 calls in flight per consumer (pipelined), ping-pong one call at a time
  (B returns the array). Fan-in: 8 source actors call one sink; broadcast: one
  source calls 4 sinks for every message.
- ``dask-queue``: producer tasks ``put`` arrays on a ``distributed.Queue`` (which
  goes through the scheduler), a consumer task ``get`` s them. Fan-in: 8
  producer tasks (the workers have 8 threads for that). There is no broadcast.
"""

from __future__ import annotations

import itertools
import os
from typing import Any, Callable

import cloudpickle
from distributed import Client, Event, LocalCluster, Queue

import _dask_workers
from _common import (
    BROADCAST,
    BROADCAST_CONSUMERS,
    FAN_IN,
    FAN_IN_PRODUCERS,
    PAYLOADS,
    PINGPONG,
    PINGPONG_PAYLOAD,
    STREAM,
    Budget,
    MiB,
    Row,
    latency_row,
    merge_windows,
    rate_row,
    run_cells,
)

cloudpickle.register_pickle_by_value(_dask_workers)

INFLIGHT = 8
_ids = itertools.count()


def _queue_size(nbytes: int) -> int:
    return max(2, min(64, (512 * MiB) // nbytes))


class DaskBench:
    """The Dask peers' workloads on one client.

    Args:
        client: a client of a cluster with at least two workers.
        budget: run sizes.
        timeout: seconds any one measurement may take.
    """

    def __init__(self, client: Client, budget: Budget, timeout: float = 120.0) -> None:
        self.client, self.budget, self.timeout = client, budget, timeout
        workers = sorted(client.scheduler_info(n_workers=-1)["workers"])
        self.w0, self.w1 = workers[0], workers[1]

    def _actor(self, cls: type, worker: str) -> Any:
        return self.client.submit(cls, actor=True, workers=[worker], pure=False).result()

    # -- dask-actor ----------------------------------------------------------------------
    def actor_stream(self, nbytes: int, producers: int, consumers: int, workload: str) -> Row:
        sinks = [self._actor(_dask_workers.DaskSink, self.w1) for _ in range(consumers)]
        sources = [self._actor(_dask_workers.DaskSource, self.w0) for _ in range(producers)]
        per_source = max(2, self.budget.max_msgs(nbytes) // producers)
        for f in [s.warmup(sinks, nbytes, self.budget.warmup(nbytes)) for s in sources]:
            f.result(timeout=self.timeout)
        futs = [s.stream(sinks, nbytes, self.budget.seconds, per_source, INFLIGHT) for s in sources]
        starts = [f.result(timeout=self.timeout)["start"] for f in futs]
        count, start, last = merge_windows(starts, [s.result().result(timeout=self.timeout) for s in sinks])
        return rate_row(
            "dask-actor", workload, nbytes, count, start, last, producers=producers, consumers=consumers, inflight=INFLIGHT
        )

    def actor_pingpong(self, nbytes: int) -> Row:
        sink = self._actor(_dask_workers.DaskSink, self.w1)
        source = self._actor(_dask_workers.DaskSource, self.w0)
        rtts = source.pingpong(sink, nbytes, self.budget.pingpong_rounds, self.budget.pingpong_warmup).result(timeout=self.timeout)
        return latency_row("dask-actor", nbytes, rtts, note="A awaits B.echo(x), one call at a time")

    # -- dask-queue -----------------------------------------------------------------------
    def queue_stream(self, nbytes: int, producers: int, workload: str) -> Row:
        name = f"bench-q-{os.getpid()}-{next(_ids)}"
        q = Queue(name, client=self.client, maxsize=_queue_size(nbytes))
        per = max(2, self.budget.max_msgs(nbytes) // producers)
        cons = self.client.submit(_dask_workers.queue_consume, name, producers, workers=[self.w1], pure=False)
        prods = [
            self.client.submit(
                _dask_workers.queue_produce, name, nbytes, self.budget.seconds, per, self.budget.warmup(nbytes), workers=[self.w0], pure=False
            )
            for _ in range(producers)
        ]
        ready = Queue(f"{name}-ready", client=self.client)
        for _ in range(producers):
            ready.get(timeout=self.timeout)
        Event(f"{name}-go", client=self.client).set()
        starts = [r["start"] for r in self.client.gather(prods)]
        count, start, last = merge_windows(starts, [cons.result(timeout=self.timeout)])
        del q
        return rate_row("dask-queue", workload, nbytes, count, start, last, producers=producers)

    def queue_pingpong(self, nbytes: int) -> Row:
        ping, pong = (f"bench-{k}-{os.getpid()}-{next(_ids)}" for k in ("ping", "pong"))
        rounds, warmup = self.budget.pingpong_rounds, self.budget.pingpong_warmup
        echo = self.client.submit(_dask_workers.queue_echo, ping, pong, rounds + warmup, workers=[self.w1], pure=False)
        rtts = self.client.submit(_dask_workers.queue_ping, ping, pong, nbytes, rounds, warmup, workers=[self.w0], pure=False).result(
            timeout=self.timeout
        )
        echo.result(timeout=self.timeout)
        return latency_row("dask-queue", nbytes, rtts, note="put/get through the scheduler")


def run(system: str, budget: Budget, workloads: list[str], payloads: dict[str, list[str]], report: Callable[[str], None]) -> list[Row]:
    """Start a 2-worker cluster and measure ``system`` (``dask-actor`` or ``dask-queue``) on it."""
    cells: list[tuple[str, Callable[[DaskBench], Row]]] = []  # measured once the cluster is up
    for wl, producers, consumers in ((STREAM, 1, 1), (FAN_IN, FAN_IN_PRODUCERS, 1), (BROADCAST, 1, BROADCAST_CONSUMERS)):
        if wl not in workloads or (system == "dask-queue" and wl == BROADCAST):
            continue
        for p in payloads.get(wl, []):
            n = PAYLOADS[p]
            if system == "dask-actor":
                fn = lambda b, n=n, pr=producers, c=consumers, wl=wl: b.actor_stream(n, pr, c, wl)  # noqa: E731
            else:
                fn = lambda b, n=n, pr=producers, wl=wl: b.queue_stream(n, pr, wl)  # noqa: E731
            cells.append((f"{wl} {p}", fn))
    if PINGPONG in workloads:
        n = PAYLOADS[PINGPONG_PAYLOAD]
        cells.append((f"{PINGPONG} {PINGPONG_PAYLOAD}", (lambda b: b.actor_pingpong(n)) if system == "dask-actor" else (lambda b: b.queue_pingpong(n))))
    if not cells:
        return []
    with LocalCluster(n_workers=2, threads_per_worker=FAN_IN_PRODUCERS, processes=True, dashboard_address=":0") as cluster:
        with Client(cluster, direct_to_workers=True) as client:
            bench = DaskBench(client, budget)
            return run_cells([(f"{system} {label}", lambda fn=fn: fn(bench)) for label, fn in cells], report, budget)

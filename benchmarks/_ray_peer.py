"""Ray peer: actor A calls actor B's method with the array (optional; skipped without Ray).

Ray copies an argument larger than its inline limit once into the node's
shared-memory object store; the consumer gets a read-only view of it. Streaming
keeps 8 calls in flight per consumer, ping-pong one (B returns the array).
Fan-in: 8 source actors call one sink; broadcast: the source puts the array in
the store once and passes the same reference to 4 sinks, Ray's natural way.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Callable

import numpy as np

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
    Cell,
    Row,
    SystemSkipped,
    latency_row,
    merge_windows,
    rate_row,
    run_cells,
)

INFLIGHT = 8
_TIMEOUT = 120.0
_TOUCH = 1024


class RaySink:
    """Receives arrays through a method call and touches them."""

    def __init__(self) -> None:
        self.count, self.last, self.checksum = 0, 0.0, 0.0

    def put(self, x: np.ndarray, warm: bool = False) -> None:
        if warm:
            return
        self.checksum += float(x[:_TOUCH].sum()) + float(x[-1])
        self.count += 1
        self.last = time.time()

    def echo(self, x: np.ndarray) -> np.ndarray:
        return x

    def result(self) -> dict[str, Any]:
        """Counted messages and when the last arrived; resets the counters for the next run."""
        out = {"count": self.count, "last": self.last, "checksum": self.checksum}
        self.count, self.last, self.checksum = 0, 0.0, 0.0
        return out


class RaySource:
    """Calls its sinks' ``put`` with arrays, several calls in flight."""

    def ready(self) -> bool:
        return True

    def warmup(self, sinks: list[Any], nbytes: int, warmup: int) -> None:
        import ray

        x = np.ones(nbytes // 4, np.float32)
        for _ in range(warmup):
            ray.get([s.put.remote(x, True) for s in sinks])

    def stream(self, sinks: list[Any], nbytes: int, seconds: float, max_msgs: int, inflight: int) -> dict[str, Any]:
        import ray

        x = np.ones(nbytes // 4, np.float32)
        pending: deque[Any] = deque()
        t0 = time.monotonic()
        start = time.time()
        sent = 0
        while sent < max_msgs and time.monotonic() - t0 < seconds:
            x[0] = sent
            ref = ray.put(x) if len(sinks) > 1 else x  # one store copy shared by every sink
            for s in sinks:
                pending.append(s.put.remote(ref))
            sent += 1
            while len(pending) >= inflight * len(sinks):
                ray.get(pending.popleft())
        ray.get(list(pending))
        return {"sent": sent, "start": start}

    def pingpong(self, sink: Any, nbytes: int, rounds: int, warmup: int) -> list[float]:
        import ray

        x = np.ones(nbytes // 4, np.float32)
        rtts = []
        for i in range(warmup + rounds):
            t0 = time.perf_counter()
            y = ray.get(sink.echo.remote(x))
            dt = time.perf_counter() - t0
            float(y[-1])
            if i >= warmup:
                rtts.append(dt)
        return rtts


class RayBench:
    """The Ray workloads on a local Ray instance.

    The actors (8 sources, 4 sinks: each a process) are started once, before
    anything is timed, and reused by every measurement.
    """

    def __init__(self, budget: Budget) -> None:
        import ray

        self.ray = ray
        self.budget = budget
        self.sinks = [ray.remote(num_cpus=0)(RaySink).remote() for _ in range(BROADCAST_CONSUMERS)]
        self.sources = [ray.remote(num_cpus=0)(RaySource).remote() for _ in range(FAN_IN_PRODUCERS)]
        ray.get([s.ready.remote() for s in self.sources] + [s.result.remote() for s in self.sinks], timeout=_TIMEOUT)

    def close(self) -> None:
        for a in self.sinks + self.sources:
            self.ray.kill(a)

    def stream(self, nbytes: int, producers: int, consumers: int, workload: str) -> Row:
        ray = self.ray
        sinks, sources = self.sinks[:consumers], self.sources[:producers]
        ray.get([s.warmup.remote(sinks, nbytes, self.budget.warmup(nbytes)) for s in sources], timeout=_TIMEOUT)
        per = max(2, self.budget.max_msgs(nbytes) // producers)
        starts = [
            r["start"] for r in ray.get([s.stream.remote(sinks, nbytes, self.budget.seconds, per, INFLIGHT) for s in sources], timeout=_TIMEOUT)
        ]
        count, start, last = merge_windows(starts, ray.get([s.result.remote() for s in sinks], timeout=_TIMEOUT))
        return rate_row("ray", workload, nbytes, count, start, last, producers=producers, consumers=consumers, inflight=INFLIGHT)

    def pingpong(self, nbytes: int) -> Row:
        rtts = self.ray.get(self.sources[0].pingpong.remote(self.sinks[0], nbytes, self.budget.pingpong_rounds, self.budget.pingpong_warmup), timeout=_TIMEOUT)
        return latency_row("ray", nbytes, rtts, note="A: ray.get(B.echo.remote(x)), one call at a time")


def run(budget: Budget, workloads: list[str], payloads: dict[str, list[str]], report: Callable[[str], None]) -> list[Row]:
    """Start a local Ray instance (2 CPUs) and measure every asked workload.

    Raises:
        SystemSkipped: if Ray is not installed.
    """
    try:
        import ray
    except ImportError:
        raise SystemSkipped("Ray is not installed (optional: pip install 'ray>=2.60')") from None
    cells: list[tuple[str, Callable[[RayBench], Row]]] = []
    for wl, producers, consumers in ((STREAM, 1, 1), (FAN_IN, FAN_IN_PRODUCERS, 1), (BROADCAST, 1, BROADCAST_CONSUMERS)):
        if wl in workloads:
            for p in payloads.get(wl, []):
                cells.append((f"{wl} {p}", lambda b, n=PAYLOADS[p], pr=producers, c=consumers, wl=wl: b.stream(n, pr, c, wl)))
    if PINGPONG in workloads:
        cells.append((f"{PINGPONG} {PINGPONG_PAYLOAD}", lambda b: b.pingpong(PAYLOADS[PINGPONG_PAYLOAD])))
    if not cells:
        return []
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        bench = RayBench(budget)
        wrapped: list[Cell] = [(f"ray {label}", lambda fn=fn: fn(bench)) for label, fn in cells]
        rows = run_cells(wrapped, report, budget)
        bench.close()
        return rows
    finally:
        ray.shutdown()

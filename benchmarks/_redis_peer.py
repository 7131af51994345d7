"""Redis peer: producer and consumer processes exchanging raw bytes through a Redis list.

This is how SmartSim-style staging moves tensors: the producer ``RPUSH`` es the
array's bytes (a memoryview, no copy on the client side), the consumer
``BLPOP`` s them and rebuilds the numpy array (``np.frombuffer``) before it
touches it. The benchmark starts its own ``redis-server`` on a free loopback
port with persistence off and stops it at the end; redis-py must have hiredis.

Producers and consumers run in a pool of processes started once (so that
process start-up is not timed, and quick runs stay quick). Protocol on a
list: every producer first pushes ``warmup`` payloads (skipped by the
consumer), reports ready on a ``ready`` list and waits for its token on a
``go`` list (so all producers stream together), streams, and pushes an empty
value as its end marker. Broadcast pushes every message to one list per
consumer (one pipelined round trip). Ping-pong bounces a payload between a
``ping`` and a ``pong`` list.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor
import shutil
import socket
import subprocess
import time
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
    Row,
    SystemSkipped,
    latency_row,
    merge_windows,
    rate_row,
    run_cells,
)

_CTX = mp.get_context("spawn")  # the parent may hold threads: never fork it
_TIMEOUT = 120.0
_TOUCH = 1024


def _client(port: int) -> Any:
    import redis

    return redis.Redis(host="127.0.0.1", port=port, socket_keepalive=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A throw-away ``redis-server`` on loopback (no RDB, no AOF).

    Raises:
        SystemSkipped: if the binary or redis-py (with hiredis) is missing.
        RuntimeError: if the server does not answer within 10 s.
    """

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemSkipped("redis-server not found on PATH (Debian/Ubuntu: apt-get install redis-server)")
        try:
            import redis  # noqa: F401
        except ImportError:
            raise SystemSkipped("redis-py is not installed (pip install -e '.[bench]')") from None
        try:
            import hiredis  # noqa: F401
        except ImportError:
            raise SystemSkipped("hiredis is not installed (pip install -e '.[bench]'); redis-py alone would understate Redis") from None
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--protected-mode", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        r = _client(self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                r.ping()
                break
            except Exception:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.close()
                    raise RuntimeError(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.05)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _produce(port: int, keys: list[str], nbytes: int, warmup: int, seconds: float, max_msgs: int, tag: str) -> dict[str, Any]:
    r = _client(port)
    x = np.ones(nbytes // 4, np.float32)
    view = memoryview(x).cast("B")
    pipe = r.pipeline(transaction=False)

    def push(value: Any) -> None:
        if len(keys) == 1:
            r.rpush(keys[0], value)
        else:
            for k in keys:
                pipe.rpush(k, value)
            pipe.execute()

    for _ in range(warmup):
        push(view)
    r.rpush(f"{tag}-ready", 1)
    r.blpop([f"{tag}-go"])
    t0 = time.monotonic()
    start = time.time()
    sent = 0
    while sent < max_msgs and time.monotonic() - t0 < seconds:
        x[0] = sent
        push(view)
        sent += 1
    push(b"")  # end marker
    return {"sent": sent, "start": start}


def _consume(port: int, key: str, producers: int, skip: int) -> dict[str, Any]:
    r = _client(port)
    count, last, checksum, ended, seen = 0, 0.0, 0.0, 0, 0
    while ended < producers:
        _, value = r.blpop([key])
        seen += 1
        if seen <= skip:
            continue
        if not value:
            ended += 1
            continue
        x = np.frombuffer(value, np.float32)
        checksum += float(x[:_TOUCH].sum()) + float(x[-1])
        count += 1
        last = time.time()
    return {"count": count, "last": last, "checksum": checksum}


def stream(pool: ProcessPoolExecutor, port: int, nbytes: int, producers: int, consumers: int, workload: str, budget: Budget) -> Row:
    """``producers`` processes push to ``consumers`` processes (each gets every message)."""
    tag = f"bench-{os.getpid()}-{time.monotonic_ns()}"
    keys = [f"{tag}-{i}" for i in range(consumers)]
    warmup = budget.warmup(nbytes)
    per = max(2, budget.max_msgs(nbytes) // producers)
    cons = [pool.submit(_consume, port, k, producers, producers * warmup) for k in keys]
    prods = [pool.submit(_produce, port, keys, nbytes, warmup, budget.seconds, per, tag) for _ in range(producers)]
    r = _client(port)
    for _ in prods:
        if r.blpop([f"{tag}-ready"], timeout=_TIMEOUT) is None:
            raise TimeoutError(f"redis producers not warmed up within {_TIMEOUT} s")
    r.rpush(f"{tag}-go", *([1] * producers))
    start_times = [f.result(timeout=_TIMEOUT)["start"] for f in prods]
    res = [f.result(timeout=_TIMEOUT) for f in cons]
    r.delete(*keys, f"{tag}-ready", f"{tag}-go")
    count, start, last = merge_windows(start_times, res)
    return rate_row("redis", workload, nbytes, count, start, last, producers=producers, consumers=consumers, note="RPUSH/BLPOP raw bytes")


def _pong(port: int, ping: str, pong: str) -> None:
    r = _client(port)
    while True:
        _, value = r.blpop([ping])
        r.rpush(pong, value)
        if not value:
            return


def _ping(port: int, ping: str, pong: str, nbytes: int, rounds: int, warmup: int) -> list[float]:
    r = _client(port)
    x = np.ones(nbytes // 4, np.float32)
    view = memoryview(x).cast("B")
    rtts = []
    for i in range(warmup + rounds):
        t0 = time.perf_counter()
        r.rpush(ping, view)
        _, value = r.blpop([pong])
        np.frombuffer(value, np.float32)[-1]  # noqa: B018  (rebuild and read the reply)
        if i >= warmup:
            rtts.append(time.perf_counter() - t0)
    r.rpush(ping, b"")
    return rtts


def pingpong(pool: ProcessPoolExecutor, port: int, nbytes: int, budget: Budget) -> Row:
    """Round trips between two processes through a ``ping`` and a ``pong`` list."""
    tag = f"bench-{os.getpid()}-{time.monotonic_ns()}"
    ping, pong = f"{tag}-ping", f"{tag}-pong"
    b = pool.submit(_pong, port, ping, pong)
    rtts = pool.submit(_ping, port, ping, pong, nbytes, budget.pingpong_rounds, budget.pingpong_warmup).result(timeout=_TIMEOUT)
    b.result(timeout=_TIMEOUT)
    _client(port).delete(ping, pong)
    return latency_row("redis", nbytes, rtts, note="RPUSH then BLPOP the reply")


def run(budget: Budget, workloads: list[str], payloads: dict[str, list[str]], report: Callable[[str], None]) -> list[Row]:
    """Start redis-server and measure every asked workload through it.

    Raises:
        SystemSkipped: if redis-server, redis-py or hiredis is missing.
    """
    cells: list[tuple[str, Callable[[ProcessPoolExecutor, int], Row]]] = []
    for wl, producers, consumers in ((STREAM, 1, 1), (FAN_IN, FAN_IN_PRODUCERS, 1), (BROADCAST, 1, BROADCAST_CONSUMERS)):
        if wl in workloads:
            for p in payloads.get(wl, []):
                cells.append(
                    (f"{wl} {p}", lambda pool, port, n=PAYLOADS[p], pr=producers, c=consumers, wl=wl: stream(pool, port, n, pr, c, wl, budget))
                )
    if PINGPONG in workloads:
        cells.append((f"{PINGPONG} {PINGPONG_PAYLOAD}", lambda pool, port: pingpong(pool, port, PAYLOADS[PINGPONG_PAYLOAD], budget)))
    if not cells:
        return []
    with RedisServer() as server, ProcessPoolExecutor(FAN_IN_PRODUCERS + 1, mp_context=_CTX) as pool:
        # Start every pool process now, before anything is timed.
        list(pool.map(time.sleep, [0.2] * (FAN_IN_PRODUCERS + 1)))
        return run_cells([(f"redis {label}", lambda fn=fn: fn(pool, server.port)) for label, fn in cells], report, budget)

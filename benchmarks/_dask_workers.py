"""Worker-side code of the Dask peers: plain Dask actors and ``distributed.Queue`` tasks.

Shipped to the workers by value (``cloudpickle``), so it imports only numpy,
distributed and the standard library. Consumers touch every payload the way
coupler's benchmark consumers do and record the wall-clock window of the
counted messages.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

import numpy as np
from distributed import Event, Queue, get_client

_TOUCH = 1024


def touch(x: np.ndarray) -> float:
    """Read a payload as a consumer would start to use it."""
    flat = x.reshape(-1)
    return float(flat[:_TOUCH].sum()) + float(flat[-1])


class Window:
    """Counted messages and the wall-clock window in which they arrived."""

    def __init__(self) -> None:
        self.count, self.first, self.last, self.checksum = 0, 0.0, 0.0, 0.0

    def hit(self, x: np.ndarray) -> None:
        now = time.time()
        self.checksum += touch(x)
        if self.count == 0:
            self.first = now
        self.count += 1
        self.last = now

    def as_dict(self) -> dict[str, Any]:
        return {"count": self.count, "first": self.first, "last": self.last, "checksum": self.checksum}


class DaskSink:
    """A plain Dask actor that receives arrays through a method call."""

    def __init__(self) -> None:
        self.window = Window()

    def put(self, x: np.ndarray, warm: bool = False) -> None:
        if not warm:
            self.window.hit(x)

    def echo(self, x: np.ndarray) -> np.ndarray:
        return x

    def result(self) -> dict[str, Any]:
        return self.window.as_dict()


class DaskSource:
    """A plain Dask actor that calls its sinks' ``put`` with arrays, several calls in flight.

    Its methods are ``async`` so that they run on the worker's event loop, where
    actor handles can be awaited (a synchronous method would hold the one
    actor thread of its worker while it waits).
    """

    async def warmup(self, sinks: list[Any], nbytes: int, warmup: int) -> None:
        """Uncounted calls first (connections, allocations)."""
        x = np.ones(nbytes // 4, np.float32)
        for _ in range(warmup):
            await asyncio.gather(*(s.put(x, True) for s in sinks))

    async def stream(self, sinks: list[Any], nbytes: int, seconds: float, max_msgs: int, inflight: int) -> dict[str, Any]:
        """Call ``put`` on every sink for each message; returns counted messages sent and the start time."""
        x = np.ones(nbytes // 4, np.float32)
        pending: deque[Any] = deque()
        t0 = time.monotonic()
        start = time.time()
        sent = 0
        while sent < max_msgs and time.monotonic() - t0 < seconds:
            for s in sinks:
                pending.append(s.put(x))
            sent += 1
            while len(pending) >= inflight * len(sinks):
                await pending.popleft()
        while pending:
            await pending.popleft()
        return {"sent": sent, "start": start}

    async def pingpong(self, sink: Any, nbytes: int, rounds: int, warmup: int) -> list[float]:
        """Call ``echo`` one at a time; returns the timed round trips in seconds."""
        x = np.ones(nbytes // 4, np.float32)
        rtts = []
        for i in range(warmup + rounds):
            t0 = time.perf_counter()
            y = await sink.echo(x)
            dt = time.perf_counter() - t0
            touch(y)
            if i >= warmup:
                rtts.append(dt)
        return rtts


def queue_produce(name: str, nbytes: int, seconds: float, max_msgs: int, warmup: int) -> dict[str, Any]:
    """Put arrays on a ``distributed.Queue`` (a task); the last item is ``"end"``.

    After the warm-up it reports on the queue ``<name>-ready`` and waits for the
    event ``<name>-go``, so that all producers stream together.
    """
    client = get_client()
    q = Queue(name, client=client)
    x = np.ones(nbytes // 4, np.float32)
    for _ in range(warmup):
        q.put(("warm", x))
    Queue(f"{name}-ready", client=client).put(1)
    Event(f"{name}-go", client=client).wait()
    t0 = time.monotonic()
    start = time.time()
    sent = 0
    while sent < max_msgs and time.monotonic() - t0 < seconds:
        q.put(("msg", x))
        sent += 1
    q.put(("end", None))
    return {"sent": sent, "start": start}


def queue_consume(name: str, producers: int) -> dict[str, Any]:
    """Get arrays from a ``distributed.Queue`` until every producer's ``"end"``."""
    q = Queue(name, client=get_client())
    w = Window()
    ended = 0
    while ended < producers:
        kind, x = q.get()
        if kind == "msg":
            w.hit(x)
        elif kind == "end":
            ended += 1
    return w.as_dict()


def queue_echo(ping: str, pong: str, rounds: int) -> None:
    """Reply to ``rounds`` items of ``ping`` on ``pong``."""
    client = get_client()
    qi, qo = Queue(ping, client=client), Queue(pong, client=client)
    for _ in range(rounds):
        qo.put(qi.get())


def queue_ping(ping: str, pong: str, nbytes: int, rounds: int, warmup: int) -> list[float]:
    """Time round trips through two ``distributed.Queue`` s."""
    client = get_client()
    qi, qo = Queue(pong, client=client), Queue(ping, client=client)
    x = np.ones(nbytes // 4, np.float32)
    rtts = []
    for i in range(warmup + rounds):
        t0 = time.perf_counter()
        qo.put(x)
        touch(qi.get())
        if i >= warmup:
            rtts.append(time.perf_counter() - t0)
    return rtts

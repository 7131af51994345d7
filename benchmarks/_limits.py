"""The machine's limits: raw TCP over loopback between two processes, and memcpy.

These are what a transport could reach at best: ``tcp-raw`` streams the same
payloads with ``sendall``/``recv_into`` into a preallocated buffer (no framing,
no serialization) and bounces 1 B and 4 KiB for the round trip; ``memcpy`` is
one ``np.copyto`` of the payload, single-threaded.

``memcpy-fresh`` (4 KiB) is what keeping small messages costs in memory: each copy goes into
memory the process never used before and stays there, as in a replay log that
fills (up to ``coupler.delivery.retain-bytes``), in a new process each time so
that no memory freed earlier is reused. Its gap to ``memcpy`` is the page
faults and zeroing that retention pays per kept message on this machine.
"""

from __future__ import annotations

import multiprocessing as mp
import socket
import time
from typing import Any, Callable

import numpy as np

from coupler.runtime.dataplane.settings import DeliveryConfig

from _common import COPY, Cell, PAYLOADS, PINGPONG, STREAM, Budget, Row, latency_row, payload_label, rate_row, run_cells

_CTX = mp.get_context("spawn")  # the parent holds threads (Dask, JAX): never fork it
RETAIN_BYTES = DeliveryConfig().retain_bytes  # what a replay log keeps at most by default
# The small payload of the retention target (coupler-alo / coupler). Not 16 MiB: a large
# message is kept in its shared-memory segment, filled by several threads, and a new
# anonymous mapping per copy on one thread is no model of that (here 9.5 against 750
# copies a second, where the data plane's new segments cost 5-7 ms against 1 ms).
RETENTION_PAYLOADS = ("4KiB",)
_TIMEOUT = 120.0


def _listen() -> socket.socket:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    return srv


def _recv_exact(conn: socket.socket, view: memoryview) -> bool:
    """Fill ``view``; ``False`` at a clean end of stream before the first byte."""
    got = 0
    while got < len(view):
        n = conn.recv_into(view[got:])
        if n == 0:
            if got == 0:
                return False
            raise ConnectionError(f"stream ended inside a message ({got} of {len(view)} bytes)")
        got += n
    return True


def _stream_receiver(nbytes: int, warmup: int, ports: Any, results: Any) -> None:
    srv = _listen()
    ports.put(srv.getsockname()[1])
    conn, _ = srv.accept()
    buf = np.empty(nbytes // 4, np.float32)
    view = memoryview(buf).cast("B")
    count, last, checksum, seen = 0, 0.0, 0.0, 0  # the window starts at the sender's start
    while _recv_exact(conn, view):
        seen += 1
        if seen <= warmup:
            continue
        checksum += float(buf[:1024].sum()) + float(buf[-1])  # touch it, as every consumer does
        count += 1
        last = time.time()
    conn.close()
    srv.close()
    results.put({"count": count, "last": last, "checksum": checksum})


def _stream_sender(port: int, nbytes: int, warmup: int, seconds: float, max_msgs: int, starts: Any) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    x = np.ones(nbytes // 4, np.float32)
    for _ in range(warmup):
        sock.sendall(x)
    t0 = time.monotonic()
    starts.put(time.time())
    for i in range(max_msgs):
        x[0] = i
        sock.sendall(x)
        if time.monotonic() - t0 >= seconds:
            break
    sock.shutdown(socket.SHUT_WR)
    sock.close()


def tcp_stream(nbytes: int, budget: Budget) -> Row:
    """Stream ``nbytes`` messages from one process to another over loopback TCP."""
    ports, results, starts = _CTX.Queue(), _CTX.Queue(), _CTX.Queue()
    warmup = budget.warmup(nbytes)
    rx = _CTX.Process(target=_stream_receiver, args=(nbytes, warmup, ports, results), daemon=True)
    rx.start()
    port = ports.get(timeout=_TIMEOUT)
    tx = _CTX.Process(target=_stream_sender, args=(port, nbytes, warmup, budget.seconds, budget.max_msgs(nbytes), starts), daemon=True)
    tx.start()
    start = starts.get(timeout=_TIMEOUT)
    res = results.get(timeout=_TIMEOUT)
    tx.join(_TIMEOUT)
    rx.join(_TIMEOUT)
    return rate_row("tcp-raw", STREAM, nbytes, res["count"], start, res["last"], note="sendall/recv_into, loopback")


def _echo_server(nbytes: int, ports: Any) -> None:
    srv = _listen()
    ports.put(srv.getsockname()[1])
    conn, _ = srv.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    view = memoryview(bytearray(nbytes))
    while _recv_exact(conn, view):
        conn.sendall(view)
    conn.close()
    srv.close()


def _echo_client(port: int, nbytes: int, rounds: int, warmup: int, results: Any) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    out = bytes(nbytes)
    view = memoryview(bytearray(nbytes))
    rtts = []
    for i in range(warmup + rounds):
        t0 = time.perf_counter()
        sock.sendall(out)
        _recv_exact(sock, view)
        if i >= warmup:
            rtts.append(time.perf_counter() - t0)
    sock.close()
    results.put(rtts)


def tcp_pingpong(nbytes: int, budget: Budget) -> Row:
    """Round trips of ``nbytes`` between two processes over loopback TCP (``TCP_NODELAY``)."""
    ports, results = _CTX.Queue(), _CTX.Queue()
    srv = _CTX.Process(target=_echo_server, args=(nbytes, ports), daemon=True)
    srv.start()
    port = ports.get(timeout=_TIMEOUT)
    cli = _CTX.Process(target=_echo_client, args=(port, nbytes, budget.pingpong_rounds, budget.pingpong_warmup, results), daemon=True)
    cli.start()
    rtts = results.get(timeout=_TIMEOUT)
    cli.join(_TIMEOUT)
    srv.join(_TIMEOUT)
    return latency_row("tcp-raw", nbytes, rtts, workload=PINGPONG, note="echo, TCP_NODELAY")


def memcpy(nbytes: int, budget: Budget) -> Row:
    """Single-threaded ``np.copyto`` of ``nbytes`` into a preallocated array."""
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault the pages in before timing
    n, t0 = 0, time.perf_counter()
    deadline = t0 + min(budget.seconds, 1.0)
    while True:
        np.copyto(dst, src)
        n += 1
        if time.perf_counter() >= deadline and n >= 3:
            break
    seconds = time.perf_counter() - t0
    mps = n / seconds
    return Row("memcpy", COPY, payload_label(nbytes), nbytes, mps, mps * nbytes / 1e9, n_msgs=n, seconds=seconds, note="np.copyto, one thread")


def _fresh_copies(nbytes: int, keep_bytes: int, seconds: float, results: Any) -> None:
    src = np.ones(nbytes // 4, np.float32)
    kept = []
    n, t0 = 0, time.perf_counter()
    while (n + 1) * nbytes <= keep_bytes or n < 3:
        dst = np.empty_like(src)
        np.copyto(dst, src)
        kept.append(dst)  # kept, as a replay log keeps it: its memory is not reused
        n += 1
        if time.perf_counter() - t0 >= seconds and n >= 3:
            break
    results.put((n, time.perf_counter() - t0))


def memcpy_fresh(nbytes: int, budget: Budget, keep_bytes: int = RETAIN_BYTES) -> Row:
    """``np.copyto`` of ``nbytes`` into new memory each time, every copy kept (up to ``keep_bytes``), in a new process."""
    results = _CTX.Queue()
    proc = _CTX.Process(target=_fresh_copies, args=(nbytes, keep_bytes, min(budget.seconds, 1.0), results), daemon=True)
    proc.start()
    n, seconds = results.get(timeout=_TIMEOUT)
    proc.join(_TIMEOUT)
    mps = n / seconds
    return Row(
        "memcpy-fresh", COPY, payload_label(nbytes), nbytes, mps, mps * nbytes / 1e9, n_msgs=n, seconds=seconds,
        note=f"np.copyto into new memory, kept (up to {keep_bytes >> 20} MiB), one thread",
    )


def run(budget: Budget, workloads: list[str], payloads: dict[str, list[str]], report: Callable[[str], None]) -> list[Row]:
    """Raw TCP streaming and round trips, and memcpy, at the payloads the plan streams."""
    cells: list[Cell] = []
    if STREAM in workloads:
        for p in payloads.get(STREAM, []):
            cells.append((f"tcp-raw {STREAM} {p}", lambda n=PAYLOADS[p]: tcp_stream(n, budget)))
        for p in payloads.get(STREAM, []):
            cells.append((f"memcpy {p}", lambda n=PAYLOADS[p]: memcpy(n, budget)))
        for p in [p for p in payloads.get(STREAM, []) if p in RETENTION_PAYLOADS]:
            cells.append((f"memcpy-fresh {p}", lambda n=PAYLOADS[p]: memcpy_fresh(n, budget)))
    if PINGPONG in workloads:
        for n in (1, PAYLOADS["4KiB"]):
            cells.append((f"tcp-raw {PINGPONG} {payload_label(n)}", lambda n=n: tcp_pingpong(n, budget)))
    return run_cells(cells, report, budget)

"""The ``coupler-xhost`` system: coupler between two emulated hosts, next to raw TCP over the same link.

Two hosts are network namespaces on a bridge, each with its own address, hostname
and ``/dev/shm`` (``tests/multihost/emulated_hosts.py``), with one Dask worker
each and the scheduler in the root namespace. ``coupler-xhost`` rows stream
(1:1) and ping-pong from the worker on host 1 to the one on host 2; the
``tcp-raw-xhost`` rows send the same payloads with ``sendall``/``recv_into`` (an
echo, for ping-pong) between Dask tasks on those two workers, so both cross the
same veth pairs and bridge. ``--xhost-rate`` puts a ``tbf`` rate limit on both
hosts' links (e.g. ``10gbit``, ``1gbit``) to show a slower network. Every cell,
16 MiB included, runs ``budget.repeats`` times in interleaved rounds, and the
median run is its row (``_common.run_cells``).

Needs root (namespaces); otherwise the system is skipped with the reason.
"""

from __future__ import annotations

import itertools
import os
import random
import socket
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import dask.config
import numpy as np
from distributed import LocalCluster

from _common import PAYLOADS, PINGPONG, PINGPONG_PAYLOAD, STREAM, Budget, Cell, Row, SystemSkipped, latency_row, rate_row, run_cells
from _coupler_system import CouplerBench
from coupler.runtime import Coupling

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "multihost"))  # the emulated-hosts helper
import emulated_hosts  # noqa: E402

SYSTEM, RAW = "coupler-xhost", "tcp-raw-xhost"
_TIMEOUT = 120.0
_ports = itertools.count(random.randrange(20000, 40000))  # fresh namespaces: nothing else listens there


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


def _accept(ip: str, port: int) -> tuple[socket.socket, socket.socket]:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((ip, port))
    srv.listen(1)
    srv.settimeout(_TIMEOUT)
    conn, _ = srv.accept()
    return srv, conn


def _connect(ip: str, port: int) -> socket.socket:
    """Connect, retrying while the peer task has not started listening yet."""
    deadline = time.monotonic() + _TIMEOUT
    while True:
        try:
            return socket.create_connection((ip, port), timeout=_TIMEOUT)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _stream_receiver(ip: str, port: int, nbytes: int, warmup: int) -> dict[str, Any]:
    srv, conn = _accept(ip, port)
    buf = np.empty(nbytes // 4, np.float32)
    view = memoryview(buf).cast("B")
    count, last, seen, checksum = 0, 0.0, 0, 0.0
    while _recv_exact(conn, view):
        seen += 1
        if seen <= warmup:
            continue
        checksum += float(buf[:1024].sum()) + float(buf[-1])  # touch it, as every consumer does
        count, last = count + 1, time.time()
    conn.close()
    srv.close()
    return {"count": count, "last": last}


def _stream_sender(ip: str, port: int, nbytes: int, warmup: int, seconds: float, max_msgs: int) -> float:
    sock = _connect(ip, port)
    x = np.ones(nbytes // 4, np.float32)
    for _ in range(warmup):
        sock.sendall(x)
    start, t0 = time.time(), time.monotonic()
    for i in range(max_msgs):
        x[0] = i
        sock.sendall(x)
        if time.monotonic() - t0 >= seconds:
            break
    sock.shutdown(socket.SHUT_WR)
    sock.close()
    return start


def _echo_server(ip: str, port: int, nbytes: int) -> None:
    srv, conn = _accept(ip, port)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    view = memoryview(bytearray(nbytes))
    while _recv_exact(conn, view):
        conn.sendall(view)
    conn.close()
    srv.close()


def _echo_client(ip: str, port: int, nbytes: int, rounds: int, warmup: int) -> list[float]:
    sock = _connect(ip, port)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    out, view = bytes(nbytes), memoryview(bytearray(nbytes))
    rtts = []
    for i in range(warmup + rounds):
        t0 = time.perf_counter()
        sock.sendall(out)
        _recv_exact(sock, view)
        if i >= warmup:
            rtts.append(time.perf_counter() - t0)
    sock.close()
    return rtts


class RawTcp:
    """Raw TCP between Dask tasks on two workers on different hosts (the same link coupler uses).

    Args:
        cp: the coupling.
        sender: the worker on the sending host.
        receiver: the worker on the receiving host, and its host's address.
        budget: run sizes.
    """

    def __init__(self, cp: Coupling, sender: str, receiver: tuple[str, str], budget: Budget, note: str) -> None:
        self.cp, self.sender, (self.receiver, self.ip), self.budget, self.note = cp, sender, receiver, budget, note

    def stream(self, nbytes: int) -> Row:
        """1:1 stream of ``nbytes`` messages."""
        port, warmup = next(_ports), self.budget.warmup(nbytes)
        submit = self.cp.client.submit
        rx = submit(_stream_receiver, self.ip, port, nbytes, warmup, workers=[self.receiver], pure=False)
        tx = submit(_stream_sender, self.ip, port, nbytes, warmup, self.budget.seconds, self.budget.max_msgs(nbytes),
                    workers=[self.sender], pure=False)  # fmt: skip
        start, res = tx.result(_TIMEOUT), rx.result(_TIMEOUT)
        return rate_row(RAW, STREAM, nbytes, res["count"], start, res["last"], note=f"sendall/recv_into across hosts{self.note}")

    def pingpong(self, nbytes: int) -> Row:
        """Round trips of ``nbytes`` to an echo on the other host (``TCP_NODELAY``)."""
        port = next(_ports)
        submit = self.cp.client.submit
        srv = submit(_echo_server, self.ip, port, nbytes, workers=[self.receiver], pure=False)
        rtts = submit(_echo_client, self.ip, port, nbytes, self.budget.pingpong_rounds, self.budget.pingpong_warmup, workers=[self.sender], pure=False).result(_TIMEOUT)
        srv.result(_TIMEOUT)
        return latency_row(RAW, nbytes, rtts, workload=PINGPONG, note=f"echo, TCP_NODELAY, across hosts{self.note}")


def run(budget: Budget, workloads: list[str], payloads: list[str], report: Callable[[str], None], rate: str | None = None) -> list[Row]:
    """Start two emulated hosts with a worker each; measure coupler and raw TCP between them.

    Args:
        budget: run sizes.
        workloads: of ``stream-1:1`` and ``pingpong``, those to run.
        payloads: stream payload labels.
        report: prints progress and per-cell failures.
        rate: a ``tbf`` rate for both hosts' links (e.g. ``"1gbit"``), or ``None``.

    Returns:
        One row per measured cell.

    Raises:
        SystemSkipped: emulated hosts cannot be made here (not root, no namespaces).
    """
    problem = emulated_hosts.problem()
    if problem is not None:
        raise SystemSkipped(f"{SYSTEM}: {problem}")
    note = f", tbf {rate}" if rate else ""
    # The rows compared with raw TCP run without at-least-once retention, as in coupler-tcp.
    env = {"DASK_COUPLER__DELIVERY__RETAIN": "False", "PYTHONPATH": os.pathsep.join(os.path.abspath(p) for p in sys.path if p)}
    with (
        dask.config.set({"coupler.delivery.retain": False}),
        emulated_hosts.EmulatedHosts(2) as hosts,
        LocalCluster(n_workers=0, host=hosts.bridge_ip, dashboard_address=":0") as cluster,
    ):
        for h in hosts.hosts:
            if rate:
                hosts.limit_rate(h, rate)
            hosts.start_worker(h, cluster.scheduler_address, env=env)
        with Coupling(cluster) as cp:
            cp.client.wait_for_workers(2, timeout=_TIMEOUT)
            by_ip = {a.split("://")[1].rsplit(":", 1)[0]: a for a in cp.workers()}
            sender, receiver = by_ip[hosts.hosts[0].ip], by_ip[hosts.hosts[1].ip]
            bench = CouplerBench(cp, SYSTEM, budget)
            bench.producer_worker, bench.consumer_worker = sender, receiver  # host 1 -> host 2, as the raw rows
            raw = RawTcp(cp, sender, (receiver, hosts.hosts[1].ip), budget, note)
            cells: list[Cell] = []
            if STREAM in workloads:
                for p in payloads:
                    cells += [(f"{SYSTEM} {STREAM} {p}", lambda n=PAYLOADS[p]: bench.stream(n)),
                              (f"{RAW} {STREAM} {p}", lambda n=PAYLOADS[p]: raw.stream(n))]  # fmt: skip
            if PINGPONG in workloads:
                n = PAYLOADS[PINGPONG_PAYLOAD]
                cells += [(f"{SYSTEM} {PINGPONG} {PINGPONG_PAYLOAD}", lambda: bench.pingpong(n)),
                          (f"{RAW} {PINGPONG} {PINGPONG_PAYLOAD}", lambda: raw.pingpong(n))]  # fmt: skip
            # Its target rests on the 16 MiB pair: repeat it (interleaved with raw TCP, the median
            # kept) even where the budget repeats only small payloads, as --quick does; one
            # 0.8 s run of 16 MiB messages over a veth pair varies by 10 % on a shared machine.
            rows = run_cells(cells, report, replace(budget, repeat_max_bytes=max(budget.repeat_max_bytes, PAYLOADS["16MiB"])))
    for r in rows:
        if r.system == SYSTEM and rate:
            r.note = (r.note + note).lstrip(", ")
    return rows


def ratios(rows: list[Row]) -> list[Any]:
    """coupler-xhost against raw TCP over the same link: the 16 MiB target (>= 0.85), and 4 KiB and ping-pong as figures."""
    from _ratios import Ratio

    by = {(r.system, r.workload, r.payload): r for r in rows}
    out = []
    for workload, payload, field, target, op in (
        (STREAM, "16MiB", "gb_per_s", 0.85, ">="),
        (STREAM, "4KiB", "gb_per_s", None, ">="),
        (PINGPONG, PINGPONG_PAYLOAD, "p50_us", None, "<="),
    ):
        name = f"{payload} {workload} {field}, across hosts: {SYSTEM} / {RAW}"
        a, b = by.get((SYSTEM, workload, payload)), by.get((RAW, workload, payload))
        va, vb = (getattr(a, field), getattr(b, field)) if a and b else (None, None)
        if not va or not vb:
            out.append(Ratio(name, None, target, op, "n/a", f"not measured: {SYSTEM} or {RAW} {workload} {payload}"))
            continue
        value = va / vb
        status = "info" if target is None else ("PASS" if (value >= target if op == ">=" else value <= target) else "MISS")
        out.append(Ratio(name, value, target, op, status, f"{va:.4g} / {vb:.4g}"))
    return out

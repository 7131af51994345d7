"""What the data port's defences cost: opening an authenticated link, and checking a batch against its spec.

Two rows per figure, measured in the same run and process:

- ``handshake``: a producer connects to a consumer's worker and passes the
  handshake (CHALLENGE, HELLO signed with HMAC-SHA256, WELCOME signed), on
  loopback without TLS, between this thread and a server thread. Its baseline
  ``hello-only`` is the handshake's former shape on the same loopback: connect,
  one HELLO frame, one WELCOME frame back.
- ``check-batch``: :class:`~coupler.runtime.dataplane.wire.BatchChecker` on the header of
  a batch of ``n`` messages (what every batch now costs the receiver), against
  its baseline ``batch-size``, :func:`~coupler.runtime.dataplane.wire.batch_size` alone
  (what was checked before).

Usage: ``python benchmarks/data_port.py [--quick | --smoke] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from coupler.runtime.dataplane import auth, wire
from coupler.runtime.dataplane.auth import StreamKey, new_secret
from coupler.runtime.message import Spec

SPEC = Spec.of({"x": np.zeros(1024, np.float32)})  # 4 KiB messages


def _median_us(fn: Callable[[], None], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def handshake(repeat: int) -> tuple[float, float]:
    """Median microseconds of an authenticated handshake, and of the bare hello exchange it replaced."""
    key = StreamKey(new_secret())
    hello = {"channel": "bench", "consumer": "c/in", "spec": SPEC.to_wire(), "probe": None, "pid": 1}
    server = socket.create_server(("127.0.0.1", 0))
    address = server.getsockname()[:2]
    authenticated = threading.Event()  # which handshake the server thread answers

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                reader = wire.FrameReader(conn)
                if authenticated.is_set():
                    _, nonce = auth.accept_stream(conn, reader, key, time.monotonic() + 5)
                    auth.welcome(conn, key, nonce, {"status": "OK", "shm": False})
                else:
                    reader.read()
                    wire.send_frame(conn, wire.WELCOME, {"status": "OK", "shm": False})
                try:
                    reader.read()  # until the client closes
                except (wire.StreamClosed, OSError):
                    pass

    def connect() -> socket.socket:
        s = socket.create_connection(address)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def signed() -> None:
        with connect() as s:
            auth.open_stream(s, key, hello)

    def bare() -> None:
        with connect() as s:
            wire.send_frame(s, wire.HELLO, hello)
            wire.FrameReader(s, 64 << 10).read()

    threading.Thread(target=serve, daemon=True).start()
    try:
        results: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(3):  # interleaved: both see the same machine load
            for on, fn in ((True, signed), (False, bare)):
                authenticated.set() if on else authenticated.clear()
                fn()  # warm up
                results[on].append(_median_us(fn, repeat))
        return statistics.median(results[True]), statistics.median(results[False])
    finally:
        server.close()


def check_cost(n: int, repeat: int) -> tuple[float, float]:
    """Median microseconds of BatchChecker.check and of batch_size on one batch header of ``n`` messages."""
    offsets, total, _ = wire.batch_payload(SPEC, [[np.zeros(1024, np.float32)] for _ in range(n)])
    headers = [{"timestamp": 0.0, "step": i, "source": "sim", "seq": i, "meta": {}, "sent_at": time.time()} for i in range(n)]
    header = {"c": wire.header_columns(headers), "offs": offsets, "len": total}
    inner = 100
    check = wire.BatchChecker(SPEC).check

    def checked() -> None:
        for _ in range(inner):
            check(header)

    def sized() -> None:
        for _ in range(inner):
            wire.batch_size(header)

    return _median_us(checked, repeat) / inner, _median_us(sized, repeat) / inner


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="fewer repetitions (a few seconds)")
    mode.add_argument("--smoke", action="store_true", help="a handful of repetitions (for tests)")
    parser.add_argument("--json", metavar="PATH", help="write rows and ratios as JSON")
    args = parser.parse_args(argv)
    repeat = 5 if args.smoke else 50 if args.quick else 200
    rows: list[dict[str, Any]] = []
    ratios: list[dict[str, Any]] = []
    auth_us, bare_us = handshake(repeat)
    rows += [{"figure": "handshake", "case": "authenticated", "us": auth_us}, {"figure": "handshake", "case": "hello-only", "us": bare_us}]
    ratios.append({"name": "handshake: authenticated - hello-only, us", "value": auth_us - bare_us})
    for n in (1, 64, 1024):
        checked, sized = check_cost(n, max(3, repeat // 10))
        rows += [{"figure": f"check-batch n={n}", "case": "BatchChecker", "us": checked},
                 {"figure": f"check-batch n={n}", "case": "batch_size", "us": sized}]
        ratios.append({"name": f"batch of {n}: BatchChecker - batch_size, us per message", "value": (checked - sized) / n})
    print(f"{'figure':<20} {'case':<15} {'us':>10}")
    print("-" * 47)
    for r in rows:
        print(f"{r['figure']:<20} {r['case']:<15} {r['us']:>10.2f}")
    print()
    for q in ratios:
        print(f"{q['name']:<60} {q['value']:>8.3f}")
    result = {"mode": "smoke" if args.smoke else "quick" if args.quick else "full", "rows": rows, "ratios": ratios}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()

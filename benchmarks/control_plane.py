"""Control-plane benchmark: how many broker operations per second the scheduler serves.

The broker (a scheduler extension) handles channel declarations, producer and
consumer registrations, detaches, routing lookups and actor name claims;
it never sees a payload. This measures, on a real LocalCluster:

- ``in-scheduler``: the handlers themselves, called in the scheduler process
  (what the broker costs per operation);
- ``client-serial``: one client calling them one at a time over Dask comms
  (latency bound: each call is a round trip);
- ``client-concurrent``: one async client with many calls in flight (what the
  scheduler sustains when many actors register at once, e.g. at start-up).

Each row is one kind of operation: ``declare`` (a new channel), ``attach``
(a producer registers), ``attach+detach`` (a consumer comes and goes, which
also pushes routing tables to the producers' workers), ``routing`` and
``claim-actor`` (a spawn claims its name). It prints a table and writes JSON (``--json PATH``)::

    python benchmarks/control_plane.py --ops 2000 --json control.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from distributed import Client

from coupler.runtime import Coupling, Queue
from coupler.runtime.policies import policy_to_wire

QUEUE = policy_to_wire(Queue(64))


async def _in_scheduler(dask_scheduler: Any, n: int, tag: str) -> dict[str, float]:
    """Run each handler ``n`` times inside the scheduler; ops/s per kind."""
    broker = dask_scheduler.plugins["coupler-broker"]
    out: dict[str, float] = {}

    async def timed(kind: str, fn: Any) -> None:
        t = time.perf_counter()
        for i in range(n):
            r = fn(i)
            if asyncio.iscoroutine(r):
                r = await r
            if r.get("status") != "OK":
                raise RuntimeError(f"{kind} failed: {r}")
        out[kind] = n / (time.perf_counter() - t)

    async def attach_detach(i: int) -> dict[str, Any]:
        # On channels without producers: the routing pushes then go nowhere, so this
        # measures the broker and not fake workers' connection timeouts.
        await broker.attach(f"{tag}-cons{i}", "consumer", f"c{i}", "tcp://127.0.0.1:1", "127.0.0.1:1", "h")
        return await broker.detach(f"{tag}-cons{i}", f"c{i}", address="tcp://127.0.0.1:1")

    await timed("declare", lambda i: (broker.declare(f"{tag}-ch{i}", QUEUE), broker.declare(f"{tag}-cons{i}", QUEUE))[0])
    await timed("routing", lambda i: broker.routing(f"{tag}-ch{i}"))
    await timed("claim-actor", lambda i: broker.claim_actor(f"{tag}-a{i}", ""))
    # A producer registers from a live worker: the broker refuses one it does not know (fencing).
    worker = next(iter(dask_scheduler.workers))
    await timed("attach", lambda i: broker.attach(f"{tag}-ch{i}", "producer", f"p{i}", worker))
    await timed("attach+detach", attach_detach)
    return out


async def _client_ops(address: str, n: int, tag: str, concurrency: int) -> dict[str, float]:
    """The same operations from a client over Dask comms, ``concurrency`` calls in flight."""
    out: dict[str, float] = {}
    async with Client(address, asynchronous=True) as client:
        sem = asyncio.Semaphore(concurrency)

        async def run(kind: str, make: Any) -> None:
            async def one(i: int) -> None:
                async with sem:
                    reply = await make(i)
                    if reply.get("status") != "OK":
                        raise RuntimeError(f"{kind} failed: {reply}")

            t = time.perf_counter()
            if concurrency == 1:
                for i in range(n):
                    await one(i)
            else:
                await asyncio.gather(*(one(i) for i in range(n)))
            out[kind] = n / (time.perf_counter() - t)

        s = client.scheduler
        await run("declare", lambda i: s.coupler_declare(name=f"{tag}-ch{i}", policy=QUEUE))
        for i in range(n):  # channels without producers, for attach+detach (see _in_scheduler)
            await s.coupler_declare(name=f"{tag}-cons{i}", policy=QUEUE)
        await run("routing", lambda i: s.coupler_routing(name=f"{tag}-ch{i}"))
        await run("claim-actor", lambda i: s.coupler_claim_actor(name=f"{tag}-a{i}", run=""))
        worker = next(iter((await s.identity())["workers"]))  # a producer registers from a live worker
        await run("attach", lambda i: s.coupler_attach(name=f"{tag}-ch{i}", role="producer", ident=f"p{i}", address=worker))

        async def attach_detach(i: int) -> dict[str, Any]:
            await s.coupler_attach(name=f"{tag}-cons{i}", role="consumer", ident=f"c{i}", address="tcp://127.0.0.1:1", stream="127.0.0.1:1", host="h")
            return await s.coupler_detach(name=f"{tag}-cons{i}", ident=f"c{i}", address="tcp://127.0.0.1:1")

        await run("attach+detach", attach_detach)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print a table; write JSON if asked.

    Returns:
        The exit status.
    """
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ops", type=int, default=2000, help="operations per kind and mode (default 2000)")
    ap.add_argument("--concurrency", type=int, default=64, help="calls in flight in client-concurrent mode")
    ap.add_argument("--json", metavar="PATH", help="write the rows as JSON here")
    args = ap.parse_args(argv)
    if args.ops < 1 or args.concurrency < 1:
        ap.error("--ops and --concurrency must be >= 1")

    rows: list[dict[str, Any]] = []
    with Coupling(n_workers=1, dashboard_address=":0") as cp:
        address = cp.client.scheduler.address
        modes = {
            "in-scheduler": cp.client.run_on_scheduler(_in_scheduler, n=args.ops, tag="bench-s"),
            "client-serial": asyncio.run(_client_ops(address, args.ops, "bench-c1", 1)),
            "client-concurrent": asyncio.run(_client_ops(address, args.ops, "bench-cn", args.concurrency)),
        }
    for mode, rates in modes.items():
        for kind, rate in rates.items():
            rows.append({"mode": mode, "operation": kind, "ops_per_s": rate, "ops": args.ops})

    print(f"{'mode':<18} {'operation':<15} {'ops/s':>10}")
    for r in rows:
        print(f"{r['mode']:<18} {r['operation']:<15} {r['ops_per_s']:>10.0f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": "control_plane", "ops": args.ops, "concurrency": args.concurrency, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""GPU transport benchmark: JAX arrays on a GPU through coupler channels, next to the device-to-host limit.

Run on a machine with a GPU (one is enough: its two workers share it)::

    python benchmarks/gpu_transport.py --json gpu.json

Per payload size it measures, in one run, with fresh arrays made on the GPU
for every message:

- ``d2h-limit``: the producer only copies each array to host, by DMA into
  pinned memory: the least any path through host memory costs;
- ``d2h-pageable``: the same with ``np.asarray``, a copy into pageable memory;
- ``coupler other-worker``: to a consumer on another worker of the same host
  (one device-to-host copy, then shared memory), which touches the data;
- ``coupler other-worker to-device``: the same, with the consumer putting each
  payload on its GPU (``jax.device_put``): device to device through host;
- ``... to-device pinned``: the same through ``coupler.learners.to_device``
  (staged in pinned host memory, then DMA);
- ``coupler same-worker``: to a consumer on the producer's worker, host copy;
- ``coupler same-worker device-to-device``: the same with
  ``coupler.transport.device-to-device`` on: the consumer gets the array on the GPU.

Ratios are to ``d2h-limit`` of the same size, measured in the same run.
Without a GPU it runs all the same on JAX's CPU device (a check that it works;
its figures then say nothing about GPUs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any

import cloudpickle
import dask.config

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _gpu_actors  # noqa: E402

from coupler.runtime import Coupling, Queue  # noqa: E402

cloudpickle.register_pickle_by_value(_gpu_actors)
MiB = 1 << 20
SIZES = {"1MiB": MiB, "16MiB": 16 * MiB, "128MiB": 128 * MiB}
COUNTS = {"1MiB": 8, "16MiB": 60, "128MiB": 12}


def _run(cp: Coupling, tag: str, nbytes: int, n: int, *, limit: str = "", same_worker: bool = False, to_device: str = "") -> dict[str, Any]:
    w = cp.workers()
    ch = cp.channel(f"gpu-{tag}", Queue(4))
    cons = None
    if not limit:
        cons = cp.spawn(_gpu_actors.GpuConsumer, to_device, name=f"gcons-{tag}", inputs={"in": ch}, workers=w[0] if same_worker else w[1])
        cons.start()
    prod = cp.spawn(_gpu_actors.GpuProducer, nbytes, n, limit, name=f"gprod-{tag}", outputs={} if limit else {"out": ch}, workers=w[0])
    prod.start()
    if prod.wait(300).state != "finished":
        raise RuntimeError(f"{tag}: producer did not finish: {prod.status()}")
    window = prod.call("result")
    end = window["end"]
    got = {"count": n, "on_device": 0}
    if cons is not None:
        if cons.wait(120).state != "finished":
            raise RuntimeError(f"{tag}: consumer did not finish: {cons.status()}")
        got = cons.call("result")
        end = got["last"]
        if got["count"] != n:
            raise RuntimeError(f"{tag}: consumer got {got['count']} of {n} messages")
    seconds = end - window["start"]
    return {"msgs_per_s": n / seconds, "gb_per_s": n * nbytes / seconds / 1e9, "seconds": seconds, "n_msgs": n,
            "platform": window["platform"], "received_on_device": got["on_device"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", dest="json_path", default=None, metavar="PATH")
    p.add_argument("--sizes", default="16MiB,128MiB", help=f"payload sizes, of {', '.join(SIZES)}")
    args = p.parse_args(argv)
    sizes = [s for s in args.sizes.split(",") if s]
    rows: list[dict[str, Any]] = []
    settings = {"coupler.local.gpus": ["0", "0"], "coupler.delivery.retain": False}  # two workers share GPU 0
    for d2d in (False, True):
        with dask.config.set({**settings, "coupler.transport.device-to-device": d2d}), Coupling(dashboard_address=":0") as cp:
            for label in sizes:
                nbytes, n = SIZES[label], COUNTS[label]
                cases = (
                    [("d2h-limit", dict(limit="pinned")), ("d2h-pageable", dict(limit="pageable")), ("coupler other-worker", {}),
                     ("coupler other-worker to-device", dict(to_device="plain")),
                     ("coupler other-worker to-device pinned", dict(to_device="pinned")), ("coupler same-worker", dict(same_worker=True))]
                    if not d2d else [("coupler same-worker device-to-device", dict(same_worker=True))]
                )
                for system, kw in cases:
                    r = _run(cp, f"{int(d2d)}-{label}-{len(rows)}", nbytes, n, **kw)
                    row = {"system": system, "workload": "stream-1:1", "payload": label, "payload_bytes": nbytes, **r}
                    rows.append(row)
                    print(f"  {system:40s} {label:>7s}  {r['msgs_per_s']:9.1f} msg/s  {r['gb_per_s']:7.2f} GB/s  "
                          f"on {r['platform']}, received on device: {r['received_on_device']}", flush=True)
    limits = {r["payload"]: r["gb_per_s"] for r in rows if r["system"] == "d2h-limit"}
    print(f"\n{'system':40s} {'payload':>7s} {'GB/s':>8s} {'x d2h-limit':>12s}")
    for r in rows:
        r["ratio_to_d2h_limit"] = r["gb_per_s"] / limits[r["payload"]]
        print(f"{r['system']:40s} {r['payload']:>7s} {r['gb_per_s']:8.2f} {r['ratio_to_d2h_limit']:12.2f}")
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump({"host": platform.node(), "time": time.time(), "rows": rows}, f, indent=1)
        print(f"wrote {args.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

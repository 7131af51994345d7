"""Producers on two Slurm nodes stream a ``Queue`` channel to one consumer; run by ``coupler run``.

``tests/multihost/test_slurm_nodes.py`` runs it as
``coupler --config slurm_nodes.yaml run slurm_stream.py --cluster slurm --jobs 3 -- --json OUT``;
its ``Coupling()`` joins the cluster ``coupler run`` started. It only records; the test
judges. OUT gets: every worker's facts as seen from inside its job (hostname, Slurm
node and job, /dev/shm's device), the scheduler's view of the workers (address,
host), where each actor ran, what the consumer received, and each producer's link
figures (messages, of which through shared memory). One producer ("far") sits on
another host than the consumer; with two workers per job a second one ("near")
shares the consumer's host and so its /dev/shm.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import cloudpickle

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the helper actors
import helper_actors  # noqa: E402
from coupler.runtime import Coupling, Queue  # noqa: E402
from helper_actors import Collector, Producer  # noqa: E402

cloudpickle.register_pickle_by_value(helper_actors)  # the jobs cannot import test modules


def worker_facts() -> dict[str, Any]:
    """Runs in each worker: where it is, as its own process sees it."""
    return {
        "hostname": socket.gethostname(),
        "node": os.environ.get("SLURMD_NODENAME", ""),
        "job": os.environ.get("SLURM_JOB_ID", ""),
        "shm_dev": os.stat("/dev/shm").st_dev,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", required=True, help="where to write the record")
    p.add_argument("--messages", type=int, default=40, help="messages per producer")
    p.add_argument("--size", type=int, default=1 << 17, help="float32 values per message (default: 512 KiB, above inline-max)")
    args = p.parse_args(argv)

    t0 = time.monotonic()
    phases: dict[str, float] = {}  # seconds since the script began, for the test's timing line
    with Coupling() as cp:
        phases["joined"] = time.monotonic() - t0
        workers = cp.client.scheduler_info(n_workers=-1)["workers"]
        facts = cp.client.run(worker_facts)
        by_host: dict[str, list[str]] = {}
        for a in sorted(workers):
            by_host.setdefault(facts[a]["hostname"], []).append(a)
        # The consumer sits on a host with two workers if there is one: its neighbour sends
        # through that host's /dev/shm ("near"), a worker of another host over TCP ("far").
        home = max(sorted(by_host), key=lambda h: len(by_host[h]))
        consumer_at = by_host[home][0]
        places = {"far": next(ws[0] for h, ws in sorted(by_host.items()) if h != home)}
        if len(by_host[home]) > 1:
            places["near"] = by_host[home][1]
        ch = cp.channel("slurm-nodes", Queue(8))
        consumer = cp.spawn(Collector, name="consumer", inputs={"inp": ch}, workers=consumer_at)
        producers = {
            name: cp.spawn(Producer, args.messages, ident=i + 1, size=args.size, name=name, outputs={"out": ch}, workers=at)
            for i, (name, at) in enumerate(sorted(places.items()))
        }
        phases["spawned"] = time.monotonic() - t0
        started = time.monotonic()
        consumer.start()
        for ref in producers.values():
            ref.start()
        ends = {name: ref.wait(60).state for name, ref in producers.items()}
        deadline = time.monotonic() + 60
        while len(consumer.call("received")) < args.messages * len(producers) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # a duplicate arriving late would show up as an extra message
        record = {
            "workers": {a: {"host": w["host"], "name": str(w["name"])} for a, w in workers.items()},
            "facts": facts,
            "driver_shm_dev": os.stat("/dev/shm").st_dev,
            "consumer": consumer.status().worker,
            "producers": {
                name: {"worker": ref.status().worker, "ident": i + 1, "end": ends[name], "link_figures": list(ref.call("link_figures"))}
                for i, (name, ref) in enumerate(sorted(producers.items()))
            },
            "received": consumer.call("received"),
            "seconds": time.monotonic() - started,
        }
        consumer.stop()
        phases["streamed"] = time.monotonic() - t0
    phases["closed"] = time.monotonic() - t0
    record["phases"] = phases
    Path(args.json).write_text(json.dumps(record))


if __name__ == "__main__":
    main()

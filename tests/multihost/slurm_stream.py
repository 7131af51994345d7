"""A producer and a consumer on two Slurm nodes stream a ``Queue`` channel; run by ``coupler run``.

``tests/multihost/test_slurm_nodes.py`` runs it as
``coupler --config slurm_nodes.yaml run slurm_stream.py --cluster slurm --jobs 3 -- --json OUT``;
its ``Coupling()`` joins the cluster ``coupler run`` started. It only records; the test
judges. OUT gets: every worker's facts as seen from inside its job (hostname, Slurm
node and job, /dev/shm's device), the scheduler's view of the workers (address,
host), where each actor ran, what the consumer received, and the producer's link
figures (messages, of which through shared memory).
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
    p.add_argument("--messages", type=int, default=40)
    p.add_argument("--size", type=int, default=1 << 17, help="float32 values per message (default: 512 KiB, above inline-max)")
    args = p.parse_args(argv)

    t0 = time.monotonic()
    phases: dict[str, float] = {}  # seconds since the script began, for the test's timing line
    with Coupling() as cp:
        phases["joined"] = time.monotonic() - t0
        workers = cp.client.scheduler_info(n_workers=-1)["workers"]
        facts = cp.client.run(worker_facts)
        producer_at = sorted(workers)[0]
        # The consumer goes to a worker on another host than the producer's.
        consumer_at = next(a for a in sorted(workers) if facts[a]["hostname"] != facts[producer_at]["hostname"])
        ch = cp.channel("slurm-nodes", Queue(8))
        consumer = cp.spawn(Collector, name="consumer", inputs={"inp": ch}, workers=consumer_at)
        producer = cp.spawn(Producer, args.messages, ident=1, size=args.size, name="producer", outputs={"out": ch}, workers=producer_at)
        phases["spawned"] = time.monotonic() - t0
        started = time.monotonic()
        consumer.start()
        producer.start()
        producer_end = producer.wait(60).state
        deadline = time.monotonic() + 60
        while len(consumer.call("received")) < args.messages and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # a duplicate arriving late would show up as an extra message
        record = {
            "workers": {a: {"host": w["host"], "name": str(w["name"])} for a, w in workers.items()},
            "facts": facts,
            "driver_shm_dev": os.stat("/dev/shm").st_dev,
            "placement": {"producer": producer.status().worker, "consumer": consumer.status().worker},
            "producer_end": producer_end,
            "received": consumer.call("received"),
            "link_figures": list(producer.call("link_figures")),
            "seconds": time.monotonic() - started,
        }
        consumer.stop()
        phases["streamed"] = time.monotonic() - t0
    phases["closed"] = time.monotonic() - t0
    record["phases"] = phases
    Path(args.json).write_text(json.dumps(record))


if __name__ == "__main__":
    main()

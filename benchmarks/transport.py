"""Transport benchmark: coupler channels next to Dask actors, distributed.Queue, Redis, Ray and the machine's limits.

One invocation runs the same workloads over every system, one system at a
time, prints one table row per (system, workload, payload) and the issue's
targets as ratios of figures measured in this run, and writes both as JSON::

    python benchmarks/transport.py --quick --json bench.json
    python benchmarks/transport.py --systems coupler,limits --workloads stream-1:1

Workloads: ``stream-1:1`` (4 KiB, 1 MiB, 16 MiB, 128 MiB float32 payloads),
``pingpong`` (4 KiB round trips, p50/p99), ``fan-in-8:1``, ``broadcast-1:4``
and ``heat2d-1024`` (a Heat2D simulator's step rate while publishing its
field). See benchmarks/README.md for what each system measures and its setup.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the helper modules sit next to this script

from _common import (  # noqa: E402
    BROADCAST,
    FAN_IN,
    FULL,
    PINGPONG,
    QUICK,
    SMOKE,
    STREAM,
    WORKLOADS,
    Budget,
    Row,
    SystemSkipped,
)

SYSTEMS = ("coupler", "coupler-tcp", "coupler-alo", "coupler-xhost", "dask-actor", "dask-queue", "redis", "ray", "limits")
SMOKE_SYSTEMS = ("coupler", "limits")

# Payloads per workload and mode; the large ones are kept where a target needs them.
PLANS: dict[str, dict[str, list[str]]] = {
    "full": {
        STREAM: ["4KiB", "1MiB", "16MiB", "128MiB"],
        FAN_IN: ["4KiB", "1MiB", "16MiB"],
        BROADCAST: ["4KiB", "1MiB", "16MiB"],
    },
    "quick": {STREAM: ["4KiB", "1MiB", "16MiB", "128MiB"], FAN_IN: ["4KiB", "1MiB"], BROADCAST: ["4KiB", "1MiB"]},
    "smoke": {STREAM: ["4KiB", "1MiB"], FAN_IN: [], BROADCAST: []},
}
# coupler-tcp exists to compare with raw TCP, coupler-alo to show what at-least-once
# retention costs (the other coupler rows run without it, like every peer): they stream only.
TCP_PLANS = {"full": ["4KiB", "1MiB", "16MiB", "128MiB"], "quick": ["4KiB", "16MiB"], "smoke": ["4KiB"]}
# coupler-xhost (two emulated hosts, as root) streams what its target needs, with raw TCP over the same link.
XHOST_PLANS = {"full": ["4KiB", "16MiB"], "quick": ["4KiB", "16MiB"], "smoke": ["4KiB"]}
SMOKE_WORKLOADS = (STREAM, PINGPONG)


def _say(line: str) -> None:
    print(line, flush=True)


def run_system(system: str, budget: Budget, mode: str, workloads: list[str], xhost_rate: str | None = None) -> list[Row]:
    """Measure one system (imports it only now: a missing optional one skips, not fails).

    Args:
        xhost_rate: a ``tbf`` rate for coupler-xhost's links (``None``: none).

    Raises:
        SystemSkipped: the system cannot run on this machine.
    """
    plan = PLANS[mode]
    if system == "coupler":
        import _coupler_system

        return _coupler_system.run(system, budget, workloads, plan, True, _say)
    if system == "coupler-tcp":
        import _coupler_system

        return _coupler_system.run(system, budget, [w for w in workloads if w == STREAM], {STREAM: TCP_PLANS[mode]}, False, _say)
    if system == "coupler-alo":
        import _coupler_system

        return _coupler_system.run(
            system, budget, [w for w in workloads if w == STREAM], {STREAM: TCP_PLANS[mode]}, True, _say, retain=True
        )
    if system == "coupler-xhost":
        import _xhost

        return _xhost.run(budget, [w for w in workloads if w in (STREAM, PINGPONG)], XHOST_PLANS[mode], _say, rate=xhost_rate)
    if system in ("dask-actor", "dask-queue"):
        import _dask_peers

        return _dask_peers.run(system, budget, workloads, plan, _say)
    if system == "redis":
        import _redis_peer

        return _redis_peer.run(budget, workloads, plan, _say)
    if system == "ray":
        import _ray_peer

        return _ray_peer.run(budget, workloads, plan, _say)
    if system == "limits":
        import _limits

        return _limits.run(budget, workloads, plan, _say)
    raise ValueError(f"unknown system {system!r}; expected one of {', '.join(SYSTEMS)}")


def _fmt(v: float | None, digits: int = 3) -> str:
    if v is None:
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}"


def format_table(rows: list[Row]) -> str:
    """The rows side by side, grouped by workload and payload so systems line up."""
    head = f"{'workload':<14} {'payload':<8} {'system':<12} {'msgs/s':>10} {'GB/s':>7} {'p50 us':>8} {'p99 us':>8}  notes"
    lines = [head, "-" * len(head)]
    order = {w: i for i, w in enumerate((*WORKLOADS, "memcpy"))}
    for r in sorted(rows, key=lambda r: (order.get(r.workload, 99), r.payload_bytes, r.payload, SYSTEMS_ORDER.get(r.system, 99))):
        extra = ""
        if "steps_per_s" in r.extra:
            extra = f"steps/s {r.extra['steps_per_s']:.1f}" + (f", loss {100 * r.extra['slowdown']:.1f} %" if "slowdown" in r.extra else "")
        lines.append(
            f"{r.workload:<14} {r.payload:<8} {r.system:<12} {_fmt(r.msgs_per_s):>10} {_fmt(r.gb_per_s):>7} "
            f"{_fmt(r.p50_us):>8} {_fmt(r.p99_us):>8}  {extra}"
        )
    return "\n".join(lines)


SYSTEMS_ORDER = {
    s: i
    for i, s in enumerate(
        ("coupler", "coupler-tcp", "coupler-alo-fill", "coupler-alo", "coupler-xhost", "tcp-raw-xhost", "dask-actor", "dask-queue", "redis", "ray", "tcp-raw", "memcpy", "memcpy-fresh")
    )
}


def format_ratios(ratios: list[Any]) -> str:
    """One line per target: figure, bound, PASS/MISS."""
    lines = []
    for q in ratios:
        val = "-" if q.value is None else f"{q.value:.3g}"
        bound = "" if q.target is None else f"{q.op} {q.target:g}"
        lines.append(f"{q.status:<5} {q.name:<58} {val:>8} {bound:<10} ({q.detail})")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="short runs, fewer payloads (under 3 minutes on 2 cores)")
    mode.add_argument("--smoke", action="store_true", help="a few seconds per system: coupler and limits, 4 KiB/1 MiB streams and ping-pong (for tests)")
    p.add_argument("--systems", default=None, help=f"comma-separated subset of: {', '.join(SYSTEMS)}")
    p.add_argument("--workloads", default=None, help=f"comma-separated subset of: {', '.join(WORKLOADS)}")
    p.add_argument("--xhost-rate", default=None, metavar="RATE", help="coupler-xhost: tbf rate limit on both hosts' links, e.g. 10gbit or 1gbit")
    p.add_argument("--json", dest="json_path", default=None, metavar="PATH", help="write rows, ratios and skips as JSON")
    args = p.parse_args(argv)
    for opt, allowed in (("systems", SYSTEMS), ("workloads", WORKLOADS)):
        val = getattr(args, opt)
        if val is not None:
            items = [s.strip() for s in val.split(",") if s.strip()]
            bad = [s for s in items if s not in allowed]
            if bad:
                p.error(f"--{opt}: unknown {', '.join(bad)}; expected a subset of {', '.join(allowed)}")
            setattr(args, opt, items)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the process exit status (0 even when targets are missed)."""
    import _ratios

    args = parse_args(argv)
    mode = "smoke" if args.smoke else ("quick" if args.quick else "full")
    budget = {"smoke": SMOKE, "quick": QUICK, "full": FULL}[mode]
    systems = args.systems or list(SMOKE_SYSTEMS if args.smoke else SYSTEMS)
    workloads = args.workloads or list(SMOKE_WORKLOADS if args.smoke else WORKLOADS)
    t_start = time.monotonic()
    rows: list[Row] = []
    skipped: dict[str, str] = {}
    for system in systems:
        t0 = time.monotonic()
        _say(f"== {system}")
        try:
            got = run_system(system, budget, mode, workloads, args.xhost_rate)
        except SystemSkipped as e:
            skipped[system] = str(e)
            _say(f"   skipped: {e}")
            continue
        rows += got
        _say(f"   {len(got)} rows in {time.monotonic() - t0:.1f} s")
    ratios = _ratios.compute(rows)
    if "coupler-xhost" in systems:
        import _xhost

        ratios += _xhost.ratios(rows)
    wall = time.monotonic() - t_start
    _say("")
    _say(format_table(rows))
    _say("")
    _say("targets (ratios of figures measured in this run):")
    _say(format_ratios(ratios))
    for system, why in skipped.items():
        _say(f"skipped {system}: {why}")
    _say(f"mode {mode}, {wall:.0f} s wall")
    if args.json_path:
        doc = {
            "mode": mode,
            "wall_s": wall,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "systems": systems,
            "workloads": workloads,
            "skipped": skipped,
            "rows": [r.as_dict() for r in rows],
            "ratios": [q.as_dict() for q in ratios],
        }
        with open(args.json_path, "w") as f:
            json.dump(doc, f, indent=1)
        _say(f"wrote {args.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

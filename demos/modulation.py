"""Modulation on Gray-Scott, end to end on the embedded local cluster.

A ``SteeringActor`` decides which feed and kill rates ``(F, k)`` to simulate; a
pool of ``SimulatorPoolActor`` members takes the tasks from a work-sharing
channel (each task to exactly one member), runs Gray-Scott and sends back the
pattern amplitude. The steerer refits a deep ensemble each time results arrive
and proposes the next batch while the pool keeps running; with an optimising
strategy it also broadcasts cancellations of running tasks that can no longer
beat the best amplitude found.

    channels:  tasks   Queue(1, shared=True)   steerer -> one pool member
               results Queue(256)              pool members -> steerer
               cancel  Queue(64)               steerer -> every pool member

Run ``coupler demo modulation`` (``--help`` for the options). It prints
the best point found, what the pool did, how long steering overlapped the
simulations, and writes a PNG of the sampled points (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import numpy as np
from coupler.demos.progress import advance, progress_bar

from coupler.actors.pool import SimulationStudy, SimulatorPoolActor, TaskStatus
from coupler.actors.steering import SteeringActor, overlap_seconds
from coupler.learners.acquisition import (
    ExpectedImprovement,
    GridSweep,
    MaxUncertainty,
    ParameterSpace,
    RandomSweep,
    Strategy,
    UpperConfidenceBound,
)
from coupler.learners.ensemble import EnsembleConfig
from coupler.learners.gp import GPConfig
from coupler.learners.samplers import SobolSweep
from coupler.physics.gray_scott import GrayScott, params_from_vector, pattern_amplitude
from coupler.runtime import Coupling, Queue
from coupler.demos.quick import parse_with_quick

STRATEGIES = ("ei", "ucb", "max-std", "random", "sobol", "grid")


# Mapping a plateau with cliffs: deeper members on lower Fourier frequencies (the
# settings benchmarks/modulation_vs_sweep.py measured for its map task).
MAP_ENSEMBLE = EnsembleConfig(fourier_scale=0.5, depth=4)


def make_strategy(name: str, space: ParameterSpace, budget: int, seed: int) -> Strategy:
    """The acquisition strategy called ``name`` (one of ``STRATEGIES``)."""
    if name == "ei":
        return ExpectedImprovement(space, seed=seed)
    if name == "ucb":
        return UpperConfidenceBound(space, seed=seed)
    if name == "max-std":
        return MaxUncertainty(space, seed=seed)
    if name == "random":
        return RandomSweep(space, seed=seed)
    if name == "sobol":
        return SobolSweep(space, seed=seed)
    return GridSweep(space, max(2, int(budget**0.5)))


def surrogate(args: argparse.Namespace) -> EnsembleConfig | GPConfig:
    """The guided strategies' model: a GP, or a deep ensemble (the map's settings for max-std)."""
    if args.surrogate == "gp":
        return GPConfig()
    return MAP_ENSEMBLE if args.strategy == "max-std" else EnsembleConfig()


def plot(path: str, space: ParameterSpace, history: list[dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 5), constrained_layout=True)
    for status, marker, label in ((TaskStatus.OK, "o", "done"), (TaskStatus.CANCELLED, "x", "cancelled"), (TaskStatus.FAILED, "s", "failed")):
        pts = [h for h in history if h["status"] == status]
        if not pts:
            continue
        xy = np.array([h["x"] for h in pts])
        colour = [h["qoi"] for h in pts] if status == TaskStatus.OK else "black"
        cmap = "viridis" if status == TaskStatus.OK else None  # one colour for the others
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=colour, marker=marker, cmap=cmap, label=label, s=30)
        if status == TaskStatus.OK:
            fig.colorbar(sc, ax=ax, label="pattern amplitude")
    ax.set_xlim(space.lower[0], space.upper[0])
    ax.set_ylim(space.lower[1], space.upper[1])
    ax.set_xlabel(space.names[0])
    ax.set_ylabel(space.names[1])
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --quick: small enough for a smoke run (the wheel test runs one) in well under a minute.
QUICK = {"budget": 8, "members": 2, "batch": 2, "grid": 16, "steps": 500}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--strategy", choices=STRATEGIES, default="ei", help="acquisition strategy (default ei)")
    p.add_argument("--budget", type=int, default=40, help="simulations in total (default 40)")
    p.add_argument("--members", type=int, default=4, help="simulator actors in the pool (default 4)")
    p.add_argument("--batch", type=int, default=2, help="tasks proposed at a time (default 2)")
    p.add_argument("--grid", type=int, default=32, help="Gray-Scott grid points per side (default 32)")
    p.add_argument("--steps", type=int, default=4000, help="Gray-Scott steps per simulation (default 4000)")
    p.add_argument("--workers", type=int, default=2, help="local worker processes (default 2)")
    p.add_argument("--out", type=str, default="artifacts", help="folder of the PNG (default artifacts/)")
    p.add_argument("--json", type=str, default="", help="also write the results to this JSON file")
    p.add_argument("--surrogate", choices=("ensemble", "gp"), default="ensemble",
                   help="model of the guided strategies: deep ensemble or Gaussian process (default ensemble)")
    p.add_argument("--seed", type=int, default=0)
    return parse_with_quick(p, argv, QUICK)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    space = ParameterSpace((0.02, 0.05), (0.08, 0.07), ("F", "k"))
    study = SimulationStudy(
        GrayScott(n=args.grid, seed_fraction=0.5), params_from_vector, pattern_amplitude, steps=args.steps,
        bounds=(space.lower, space.upper),
    )  # fmt: skip
    strategy = make_strategy(args.strategy, space, args.budget, args.seed)
    t_start = time.perf_counter()
    with Coupling(n_workers=args.workers) as cp:
        print(f"coupler: dashboard at {cp.dashboard_link}", flush=True)
        cp.channel("tasks", Queue(1, shared=True))
        cp.channel("results", Queue(256))
        cp.channel("cancel", Queue(64))
        workers = cp.workers()
        pool = [
            cp.spawn(SimulatorPoolActor, study, name=f"gray-scott-{i}", chunk_steps=500,
                     inputs={"tasks": "tasks", "cancel": "cancel"}, outputs={"results": "results"},
                     workers=workers[i % len(workers)])  # fmt: skip
            for i in range(args.members)
        ]
        for member in pool:
            member.start()
        steer = cp.spawn(
            SteeringActor, space, strategy, name="steerer", budget=args.budget,
            in_flight=2 * args.members, batch=args.batch,
            ensemble=surrogate(args) if strategy.uses_model else None,
            seed=args.seed,
            inputs={"results": "results"}, outputs={"tasks": "tasks", "cancel": "cancel"}, workers=workers[0],
        )  # fmt: skip
        steer.start()
        bar = progress_bar(total=args.budget, desc="simulations answered", unit="sim")
        while True:
            st = steer.status()
            if st.state == "failed":
                steer.wait()  # raises ActorFailed with the remote traceback
            best = st.info.get("best_qoi")
            advance(bar, st.info.get("issued", 0) - st.info.get("pending", 0), fits=st.info.get("fits", 0),
                    best=f"{best:.4f}" if best is not None else "-")
            if st.done:
                break
            time.sleep(0.5)
        bar.close()
        history = steer.call("history")
        activity = steer.call("steering_activity")
        final = steer.status()
        cp.close_channel("tasks")  # the pool's normal end of work
        pool_info = {m.name: m.wait(60).info for m in pool}

    wall = time.perf_counter() - t_start
    sims = [(h["started"], h["finished"]) for h in history if h["started"] > 0]
    steering = [(s, e) for _, s, e in activity]
    statuses = [h["status"] for h in history]
    results = {
        "strategy": args.strategy,
        "simulations": len(history),
        "ok": statuses.count(TaskStatus.OK),
        "failed": statuses.count(TaskStatus.FAILED),
        "cancelled": statuses.count(TaskStatus.CANCELLED),
        "best_qoi": final.info.get("best_qoi"),
        "best_x": final.info.get("best_x"),
        "fits": final.info.get("fits"),
        "steering_seconds": sum(e - s for s, e in steering),
        "steering_seconds_while_simulating": overlap_seconds(steering, sims),
        "proposals_while_simulating": sum(1 for h in history if any(s < h["proposed_at"] < e for s, e in sims)),
        "wall_seconds": wall,
        # Steering's share of the time the pool was busy (first start to last finish): what it costs
        # the study, whether or not it overlapped the simulations.
        "steering_share": sum(e - s for s, e in steering) / max(max(e for _, e in sims) - min(s for s, _ in sims), 1e-9),
        "seconds_per_simulation": sum(e - s for s, e in sims) / max(len(sims), 1),
        "pool": pool_info,
    }
    print()
    print(f"Modulation on Gray-Scott {args.grid}x{args.grid} ({args.steps} steps): {args.strategy}, {args.members} pool members")
    print(f"  {'simulations (ok / failed / cancelled)':<44}{results['simulations']:>6} ({results['ok']} / {results['failed']} / {results['cancelled']})")
    best_x = results["best_x"] or [float("nan")] * 2
    print(f"  {'best pattern amplitude':<44}{results['best_qoi'] or float('nan'):>10.4f} at F={best_x[0]:.4f}, k={best_x[1]:.4f}")
    print(f"  {'surrogate fits':<44}{results['fits']:>6}")
    print(f"  {'steering seconds (fit + propose)':<44}{results['steering_seconds']:>10.2f}")
    print(f"  {'  of which while simulations ran':<44}{results['steering_seconds_while_simulating']:>10.2f}")
    print(f"  {'tasks proposed while others ran':<44}{results['proposals_while_simulating']:>6}")
    print(f"  {'seconds per simulation':<44}{results['seconds_per_simulation']:>10.2f}")
    print(f"  {'steering / time the pool was busy':<44}{100 * results['steering_share']:>9.1f}%")
    print(f"  {'tasks per member':<44}{', '.join(str(i['ok'] + i['failed'] + i['cancelled']) for i in pool_info.values())}")
    print(f"  {'wall time (s)':<44}{wall:>10.1f}")
    os.makedirs(args.out, exist_ok=True)
    png = os.path.join(args.out, f"modulation_{args.strategy}.png")
    plot(png, space, history, f"{args.strategy}: {len(history)} Gray-Scott runs")
    print(f"  sample locations: {png}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()

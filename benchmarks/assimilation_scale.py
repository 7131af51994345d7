"""Ensembles spread over workers against the single vmapped actor: analysis cycles per second and where the time goes.

For each model and ensemble size, the same twin experiment (a truth
``ObservationSource`` streaming as fast as it is taken) runs

- **vmapped**: one :class:`AssimilationActor` holding the whole ensemble as one
  array (one ``vmap``-ed forecast on one worker), and
- **spread over W workers** (W = 1, 2, 4): W :class:`MemberBlockActor` s, one
  per worker, each forecasting ``members / W`` members, and an
  :class:`EnsembleFilterActor` on the first worker that gathers the forecasts,
  computes the analysis and scatters the members back.

Reported per run: cycles per second (after the warm-up cycles, which include
compilation) and, for the spread runs, the mean seconds per cycle in
*forecast* (the slowest block's own compute time), *gather* (the filter's wait
beyond it: transfers, scheduling, the slowest block's start), *analysis* and
*scatter*; and the ratio to the vmapped actor's rate. Models: Lorenz-96
(n = 40, all observed, DEnKF infl 1.01 -- the gain form stays cheap at 1024
members, where the ETKF's N x N eigendecomposition would dominate) and the 2-D
vorticity field (32 x 32, 64 observations on a sub-grid, LETKF radius 3).

All workers are processes of one ``LocalCluster`` on this machine, one
thread each: with fewer cores than workers, spreading cannot speed anything
up, and the figures measure the data path's overhead, not a scaling.

Run: ``python benchmarks/assimilation_scale.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import numpy as np

from coupler.actors.assimilation import AssimilationActor
from coupler.actors.ensemble_members import TIMING_KEYS, EnsembleFilterActor, MemberBlockActor, block_input, block_output
from coupler.actors.observation import ObservationSource
from coupler.physics.assimilation import FilterConfig, LinearObservation
from coupler.physics.assimilation_model import AssimilationModel, Lorenz96Model, VorticityModel
from coupler.runtime import Coupling, Latest, Queue

L96 = Lorenz96Model()
FIELD = VorticityModel(n=32, dt=0.05, steps=4)
FIELD_OBS = LinearObservation.subgrid(FIELD.grid, stride=4)
SETUPS: dict[str, tuple[AssimilationModel, LinearObservation | None, FilterConfig]] = {
    "lorenz96": (L96, None, FilterConfig("denkf", 1.01)),
    "vorticity32": (FIELD, FIELD_OBS, FilterConfig("letkf", 1.05, obs_std=0.3, localization=3.0, local_block=2)),
}


def _wait_done(refs: list[Any], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for ref in refs:
        while not ref.status().done:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{ref.name} did not finish within {timeout} s: {ref.status()}")
            time.sleep(0.1)
        ref.wait(30)  # raises with the remote traceback if it failed


def _rate(wall: np.ndarray, warmup: int) -> float:
    return float((len(wall) - 1 - warmup) / (wall[-1] - wall[warmup]))


def run_vmapped(cp: Coupling, tag: str, setup: str, members: int, cycles: int, warmup: int) -> dict[str, Any]:
    """One AssimilationActor with the whole ensemble; its cycles per second."""
    model, obs, filt = SETUPS[setup]
    ch = cp.channel(f"obs-{tag}", Queue(maxsize=8))
    w = cp.workers()
    da = cp.spawn(AssimilationActor, model, name=f"da-{tag}", cycles=cycles, members=members, filter=filt, obs=obs,
                  inputs={"obs": ch}, workers=w[0])
    src = cp.spawn(ObservationSource, model, name=f"truth-{tag}", cycles=cycles, obs=obs, obs_std=filt.obs_std,
                   outputs={"obs": ch}, workers=w[0])
    da.start()
    src.start()
    _wait_done([da, src], 600)
    hist = da.call("history")
    return {"model": setup, "members": members, "mode": "vmapped", "workers": 1, "blocks": 1,
            "cycles_per_s": _rate(hist["wall"], warmup), "rmse_last": float(np.mean(hist["rmse_analysis"][-5:]))}


def run_spread(cp: Coupling, tag: str, setup: str, members: int, workers: int, cycles: int, warmup: int) -> dict[str, Any]:
    """Members in one block per worker, the filter on the first worker; rate and time split."""
    model, obs, filt = SETUPS[setup]
    w = cp.workers()[:workers]
    size = members // workers
    obs_ch = cp.channel(f"obs-{tag}", Queue(maxsize=8))
    blocks = []
    for b in range(workers):
        cp.channel(f"m{b}-{tag}", Latest())
        cp.channel(f"f{b}-{tag}", Latest())
        blocks.append(cp.spawn(MemberBlockActor, model, name=f"block{b}-{tag}", block=b, inputs={"members": f"m{b}-{tag}"},
                               outputs={"forecast": f"f{b}-{tag}"}, workers=w[b]))
    filt_actor = cp.spawn(
        EnsembleFilterActor, model, name=f"filter-{tag}", cycles=cycles, blocks=workers, block_size=size, filter=filt,
        obs=obs, gather_timeout=120.0, inputs={"obs": obs_ch, **{block_input(b): f"f{b}-{tag}" for b in range(workers)}},
        outputs={block_output(b): f"m{b}-{tag}" for b in range(workers)}, workers=w[0],
    )
    src = cp.spawn(ObservationSource, model, name=f"truth-{tag}", cycles=cycles, obs=obs, obs_std=filt.obs_std,
                   outputs={"obs": obs_ch}, workers=w[0])
    for blk in blocks:
        blk.start()
    filt_actor.start()
    src.start()
    _wait_done([filt_actor, src], 600)
    hist = filt_actor.call("history")
    for blk in blocks:
        blk.stop()
    split = {f"{k}_s": float(np.mean(hist[k][warmup + 1 :])) for k in TIMING_KEYS}
    return {"model": setup, "members": size * workers, "mode": "spread", "workers": workers, "blocks": workers,
            "cycles_per_s": _rate(hist["wall"], warmup), "rmse_last": float(np.nanmean(hist["rmse"][-5:])), **split}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller ensembles, fewer cycles, 1 and 2 workers")
    p.add_argument("--l96-members", type=int, nargs="*", default=None, help="Lorenz-96 ensemble sizes (default 256 1024)")
    p.add_argument("--field-members", type=int, nargs="*", default=None, help="2-D field ensemble sizes (default 16 64)")
    p.add_argument("--workers", type=int, nargs="*", default=None, help="worker counts (default 1 2 4)")
    p.add_argument("--cycles", type=int, default=0, help="cycles per run (default 40, quick 15)")
    p.add_argument("--json", type=str, default="", help="also write the results to this JSON file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    l96 = args.l96_members if args.l96_members is not None else ([64, 256] if args.quick else [256, 1024])
    field = args.field_members if args.field_members is not None else ([16] if args.quick else [16, 64])
    counts = args.workers or ([1, 2] if args.quick else [1, 2, 4])
    cycles = args.cycles or (15 if args.quick else 40)
    warmup = min(5, cycles // 3)
    for m in l96 + field:
        bad = [c for c in counts if m % c]
        if bad:
            raise ValueError(f"{m} members do not split evenly over {bad} workers")
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    with Coupling(n_workers=max(counts), threads_per_worker=1, dashboard_address=":0") as cp:
        runs = [("lorenz96", m) for m in l96] + [("vorticity32", m) for m in field]
        for i, (setup, members) in enumerate(runs):
            base = run_vmapped(cp, f"v{i}", setup, members, cycles, warmup)
            rows.append(base)
            for c in counts:
                row = run_spread(cp, f"s{i}w{c}", setup, members, c, cycles, warmup)
                row["ratio_vs_vmapped"] = row["cycles_per_s"] / base["cycles_per_s"]
                rows.append(row)
    print(f"Assimilation cycles per second, {cycles} cycles per run ({warmup} warm-up left out); "
          f"{os.cpu_count()} CPU cores, one thread per worker")
    print(f"  {'model':<13}{'members':>8}{'mode':>9}{'workers':>8}{'cycles/s':>10}{'vs vmap':>9}"
          f"{'forecast':>10}{'gather':>9}{'analysis':>10}{'scatter':>9}  (ms per cycle)")
    for r in rows:
        split = "".join(f"{1e3 * r[f'{k}_s']:>{w}.1f}" for k, w in zip(TIMING_KEYS[:4], (10, 9, 10, 9))) if r["mode"] == "spread" else ""
        ratio = f"{r['ratio_vs_vmapped']:>9.2f}" if "ratio_vs_vmapped" in r else f"{'':>9}"
        print(f"  {r['model']:<13}{r['members']:>8}{r['mode']:>9}{r['workers']:>8}{r['cycles_per_s']:>10.1f}{ratio}{split}")
    print(f"  wall time {time.perf_counter() - t0:.0f} s")
    results = {"rows": rows, "cycles": cycles, "warmup": warmup, "cpu_count": os.cpu_count()}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()

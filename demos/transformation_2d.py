"""Transformation on a 2-D field: a live, sparse observation stream corrects a running vorticity ensemble.

A hidden truth -- 2-D Navier-Stokes vorticity on a 32 x 32 periodic grid,
Kolmogorov-forced -- streams noisy observations of one point in 16 (every 4th
point along each axis, 64 values, error std 0.3) at a set wall-clock rate. An
:class:`AssimilationActor` on another worker runs a 16-member ensemble of the
same model from independent random fields and corrects it live with the LETKF
(localisation radius 3 grid points, inflation 1.05, random rotation). The
model, the observation operator and the filter are plain objects from
``coupler.physics``; no adapter code.

The script prints the analysis error as it goes and writes a PNG with the
truth, the observations, the forecast and the analysis at the last cycle, and
the error over time, to ``--out``.

Run: ``coupler demo transformation_2d -- [--cycles 40] [--rate 5] [--out artifacts]``.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from coupler.actors.assimilation import AssimilationActor  # noqa: E402
from coupler.actors.observation import ObservationSource  # noqa: E402
from coupler.physics.assimilation import FilterConfig, LinearObservation  # noqa: E402
from coupler.physics.assimilation_model import VorticityModel  # noqa: E402
from coupler.runtime import Coupling, Queue  # noqa: E402
from coupler.demos.quick import parse_with_quick  # noqa: E402


# --quick: small enough for a smoke run (the wheel test runs one) in well under a minute.
QUICK = {"cycles": 8, "rate": 10.0}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cycles", type=int, default=40, help="observations streamed (default 40)")
    p.add_argument("--rate", type=float, default=5.0, help="observations per wall-clock second (default 5)")
    p.add_argument("--n", type=int, default=32, help="grid points per side (default 32)")
    p.add_argument("--stride", type=int, default=4, help="observe every stride-th point along each axis (default 4)")
    p.add_argument("--members", type=int, default=16)
    p.add_argument("--obs-std", type=float, default=0.3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=str, default="artifacts", help="folder for transformation_2d.png (default artifacts)")
    return parse_with_quick(p, argv, QUICK)


def plot(path: str, hist: dict[str, Any], obs: LinearObservation, n: int, interval: float) -> None:
    """Truth, observations, forecast and analysis at the last cycle; RMSE and spread over time."""
    last = -1
    truth, fc, an = (hist[k][last].reshape(n, n) for k in ("truth", "forecast", "analysis"))
    lim = float(np.max(np.abs(truth)))
    fig = plt.figure(figsize=(13, 7))
    panels = (("truth", truth), ("forecast (ensemble mean)", fc), ("analysis (ensemble mean)", an))
    for i, (title, field) in enumerate(panels):
        ax = fig.add_subplot(2, 4, 1 + i if i == 0 else 2 + i)
        ax.imshow(field, cmap="RdBu_r", vmin=-lim, vmax=lim, origin="lower")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
    ax = fig.add_subplot(2, 4, 2)
    rows, cols = np.unravel_index(obs.index(), (n, n))
    ax.set_facecolor("0.85")
    ax.scatter(cols, rows, c=hist["y"][last], cmap="RdBu_r", vmin=-lim, vmax=lim, s=28, marker="s")
    ax.set_xlim(-0.5, n - 0.5), ax.set_ylim(-0.5, n - 0.5), ax.set_aspect("equal")
    ax.set_title(f"observations ({obs.size} of {n * n}, noisy)", fontsize=9)
    ax.set_xticks([]), ax.set_yticks([])
    ax = fig.add_subplot(2, 1, 2)
    t = hist["cycle"] * interval
    ax.plot(t, hist["rmse_forecast"], "C0-", label="forecast RMSE")
    ax.plot(t, hist["rmse_analysis"], "C3-", label="analysis RMSE")
    ax.plot(t, hist["spread"], "C2:", label="ensemble spread")
    ax.plot(t, np.sqrt(np.mean(hist["truth"] ** 2, axis=1)), "k--", lw=0.8, label="truth rms")
    ax.set_xlabel("model time"), ax.set_ylabel("vorticity"), ax.set_yscale("log")
    ax.legend(fontsize=8, loc="upper right")
    fig.suptitle("2-D vorticity, live LETKF from sparse observations: last cycle and errors over time")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    model = VorticityModel(n=args.n, dt=0.05, steps=4)
    obs = LinearObservation.subgrid(model.grid, stride=args.stride)
    filt = FilterConfig("letkf", 1.05, obs_std=args.obs_std, localization=3.0, rotation=True, local_block=2)
    os.makedirs(args.out, exist_ok=True)
    with Coupling(n_workers=args.workers) as cp:
        print(f"coupler: dashboard at {cp.dashboard_link}", flush=True)
        cp.channel("obs", Queue(maxsize=16))
        workers = cp.workers()
        da = cp.spawn(AssimilationActor, model, name="da-2d", cycles=args.cycles, members=args.members, filter=filt,
                      obs=obs, seed=args.seed, inputs={"obs": "obs"}, workers=workers[0])
        source = cp.spawn(ObservationSource, model, name="truth-2d", cycles=args.cycles, obs=obs, obs_std=args.obs_std,
                          seed=args.seed + 1, rate=args.rate, outputs={"obs": "obs"}, workers=workers[-1])
        da.start()
        source.start()
        shown = 0
        while not da.status().done:
            for ref in (da, source):
                if ref.status().state == "failed":
                    ref.wait()  # raises with the remote traceback
            cycle = da.status().info.get("cycle", 0)
            if cycle >= shown + 10:
                shown = cycle
                print(f"  cycle {cycle:4d}/{args.cycles}", flush=True)
            time.sleep(0.5)
        da.wait(30)
        hist = da.call("history")

    path = os.path.join(args.out, "transformation_2d.png")
    plot(path, hist, obs, args.n, model.interval)
    print()
    print(f"Vorticity {args.n}x{args.n}, {obs.size} observations per cycle (error {args.obs_std}), {args.members} members, LETKF")
    print(f"  {'cycles':<12}{'forecast RMSE':>15}{'analysis RMSE':>15}{'spread':>10}")
    for q in np.array_split(np.arange(len(hist["cycle"])), 4):
        print(f"  {f'{q[0] + 1}-{q[-1] + 1}':<12}{np.mean(hist['rmse_forecast'][q]):>15.3f}"
              f"{np.mean(hist['rmse_analysis'][q]):>15.3f}{np.mean(hist['spread'][q]):>10.3f}")
    print(f"  truth rms {np.sqrt(np.mean(hist['truth'] ** 2)):.2f}; plot: {path}")
    return {"history": hist, "png": path}


if __name__ == "__main__":
    main()

"""Transformation on Lorenz-96: a live observation stream corrects a running, imperfect model.

A hidden truth (Lorenz-96, F = 8) streams noisy observations of its 40
variables at a set wall-clock rate. Two assimilation actors take the same
stream (every consumer of a ``Queue`` channel gets every message); both run a
40-member DEnKF with a forecast model that is structurally wrong (F = 6):

- ``da-plain`` assimilates only;
- ``da-learned`` also sends its analysis increments to a ``LearnerActor``
  that trains a small correction network online and pushes its weights back
  through a ``Latest`` channel into the running ensemble.

The script prints both forecast and analysis errors as learning proceeds and
writes a PNG (truth vs analysis, RMSE over time) to ``--out``.

Run: ``coupler demo transformation -- [--cycles 1500] [--rate 100] [--out artifacts]``.
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
from coupler.demos.progress import advance, progress_bar  # noqa: E402

from coupler.actors.assimilation import AssimilationActor  # noqa: E402
from coupler.actors.learner import LearnerActor  # noqa: E402
from coupler.actors.observation import ObservationSource  # noqa: E402
from coupler.learners.correction import CorrectionConfig, MakeCorrectionTrainer  # noqa: E402
from coupler.physics.assimilation import FilterConfig  # noqa: E402
from coupler.physics.assimilation_model import Lorenz96Model  # noqa: E402
from coupler.runtime import Coupling, Latest, Queue, Window  # noqa: E402
from coupler.demos.quick import parse_with_quick  # noqa: E402


# --quick: small enough for a smoke run (the wheel test runs one) in well under a minute.
QUICK = {"cycles": 300, "rate": 50.0}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cycles", type=int, default=1500, help="observations streamed (default 1500)")
    p.add_argument("--rate", type=float, default=100.0, help="observations per wall-clock second (default 100)")
    p.add_argument("--truth-forcing", type=float, default=8.0)
    p.add_argument("--model-forcing", type=float, default=6.0, help="the forecast model's (wrong) forcing (default 6)")
    p.add_argument("--inflation", type=float, default=1.1)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=str, default="artifacts", help="folder for transformation.png (default artifacts)")
    return parse_with_quick(p, argv, QUICK)


def plot(path: str, plain: dict[str, Any], learned: dict[str, Any], dt: float) -> None:
    """Truth vs analysis of one variable, and forecast/analysis RMSE of both runs over time."""
    t = learned["cycle"] * dt
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    ax1.plot(t, learned["truth"][:, 0], "k-", lw=1.2, label="truth $x_0$")
    ax1.plot(t, plain["analysis"][:, 0], "C0-", lw=0.8, alpha=0.8, label="analysis, no correction")
    ax1.plot(t, learned["analysis"][:, 0], "C3--", lw=0.8, label="analysis, learned correction")
    ax1.set_ylabel("$x_0$")
    ax1.legend(loc="upper right", fontsize=8)

    def smooth(a: np.ndarray, w: int = 25) -> np.ndarray:
        # A centred running mean that averages only what exists at the ends (no zero padding).
        ok = np.isfinite(a)
        kernel = np.ones(w)
        return np.convolve(np.where(ok, a, 0.0), kernel, mode="same") / np.maximum(np.convolve(ok, kernel, mode="same"), 1)

    for hist, colour, label in ((plain, "C0", "no correction"), (learned, "C3", "learned correction")):
        ax2.plot(t, smooth(hist["rmse_forecast"]), colour + "-", label=f"forecast RMSE, {label}")
        ax2.plot(t, smooth(hist["rmse_analysis"]), colour + ":", label=f"analysis RMSE, {label}")
    ax2.axhline(1.0, color="grey", lw=0.8, ls="--", label="observation error")
    ax2.set_xlabel("model time")
    ax2.set_ylabel("RMSE (25-cycle mean)")
    ax2.legend(loc="upper right", fontsize=8)
    fig.suptitle("Lorenz-96: live DEnKF with a wrong model (F=6 vs 8), with and without an online-learned correction")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    truth_model = Lorenz96Model(forcing=args.truth_forcing)
    model = Lorenz96Model(forcing=args.model_forcing)
    config = CorrectionConfig()
    filt = FilterConfig("denkf", inflation=args.inflation)
    example = {"forecast": np.zeros((64, model.n), np.float32), "increment": np.zeros((64, model.n), np.float32)}
    os.makedirs(args.out, exist_ok=True)
    with Coupling(n_workers=args.workers) as cp:
        print(f"coupler: dashboard at {cp.dashboard_link}", flush=True)
        cp.channel("obs", Queue(maxsize=64))
        cp.channel("increments", Window(capacity=4000, seed=args.seed))
        cp.channel("correction", Latest())
        workers = cp.workers()
        learner = cp.spawn(
            LearnerActor, MakeCorrectionTrainer(config, seed=args.seed), name="learner", batch_size=64,
            min_samples=128, publish_every=20, warmup=example,
            inputs={"data": "increments"}, outputs={"weights": "correction"}, workers=workers[-1],
        )
        common = dict(cycles=args.cycles, members=40, filter=filt, seed=args.seed, workers=workers[0])
        plain = cp.spawn(AssimilationActor, model, name="da-plain", inputs={"obs": "obs"}, **common)
        learned = cp.spawn(
            AssimilationActor, model, name="da-learned", correction=config,
            inputs={"obs": "obs", "weights": "correction"}, outputs={"increments": "increments"}, **common,
        )
        source = cp.spawn(
            ObservationSource, truth_model, name="truth", cycles=args.cycles, seed=args.seed + 1,
            rate=args.rate, outputs={"obs": "obs"}, workers=workers[-1],
        )
        learner.start()
        print("coupler: compiling the learner's training step ...", flush=True)
        while not learner.status().info.get("ready"):
            if learner.status().state == "failed":
                learner.wait()
            time.sleep(0.2)
        plain.start()
        learned.start()
        source.start()
        bar = progress_bar(total=args.cycles, desc="cycles", unit="obs")
        while not (plain.status().done and learned.status().done):
            for ref in (plain, learned, source, learner):
                if ref.status().state == "failed":
                    ref.wait()  # raises with the remote traceback
            st = learned.status().info
            advance(bar, st.get("cycle", 0), weights=st.get("weights_version", 0), train_steps=learner.status().info.get("train_steps", 0))
            time.sleep(0.5)
        st = learned.status().info  # the final count, which the last poll may have missed
        advance(bar, st.get("cycle", 0), weights=st.get("weights_version", 0), train_steps=learner.status().info.get("train_steps", 0))
        bar.close()
        h_plain, h_learned = plain.call("history"), learned.call("history")
        learner.stop()

    path = os.path.join(args.out, "transformation.png")
    plot(path, h_plain, h_learned, model.interval)
    quarters = np.array_split(np.arange(args.cycles), 4)
    print()
    print("Forecast / analysis RMSE by quarter of the run (observation error 1.0)")
    print(f"  {'quarter':<10}{'no correction':>22}{'learned correction':>24}")
    for i, q in enumerate(quarters):
        a = f"{np.nanmean(h_plain['rmse_forecast'][q]):.3f} / {np.nanmean(h_plain['rmse_analysis'][q]):.3f}"
        b = f"{np.nanmean(h_learned['rmse_forecast'][q]):.3f} / {np.nanmean(h_learned['rmse_analysis'][q]):.3f}"
        print(f"  {i + 1:<10}{a:>22}{b:>24}")
    print(f"  weights received by da-learned: {int(h_learned['weights_version'][-1])} learner steps' worth")
    print(f"  plot: {path}")
    return {"plain": h_plain, "learned": h_learned, "png": path}


if __name__ == "__main__":
    main()

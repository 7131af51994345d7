"""The learner on its device while fine simulations stream in: how much of the time it keeps the device busy.

Issue 22's device check (`docs/augmentation.md`, "The learner on a GPU"). Fine
Kolmogorov runs, the correction's ``CoarseGrainedNavierStokes`` of
``correction_online_vs_offline.py`` (64^2 seen on 16^2, windows of 9 frames),
run as ``SimulatorActor`` ensembles on the CPU workers and stream their windows
into a ``Reservoir``. A ``LearnerActor`` trains the coarse-solver correction from
it, unrolled through the coarse solver, on the worker that owns the GPU where
there is one (else on a CPU worker of its own). The learner is not paced: each
step samples the reservoir, which the simulations keep refreshing.

Per model and batch size, once the training step is compiled:

- training steps per second and windows streamed per second;
- **learner busy**: the time inside its training steps over the span from the
  first step's start to the last one's end (each step returns its loss as a
  Python float, so the device has finished the step when it returns; the rest is
  sampling the reservoir, recording, and waiting for the first samples);
- **GPU utilisation**: the mean of ``nvidia-smi``'s ``utilization.gpu``, sampled
  every 100 ms over the same span, where ``nvidia-smi`` exists (the share of
  time a kernel ran on the device: the measure the issue's 80 % aim is about);
- fresh windows per training step.

Without a GPU the learner's device is a CPU core and the GPU column is empty:
that run only shows the code path and the learner's own overhead.

``python benchmarks/augmentation_gpu.py [--models closure tendency] [--batch 8 64] [--steps 300] [--sim-workers 3] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

import jax
import numpy as np

from coupler.actors.learner import LearnerActor
from coupler.actors.simulator import SimulatorActor
from coupler.learners.solver_correction import CoarseCorrectionConfig
from coupler.learners.spectral_closure import SpectralClosureConfig
from coupler.learners.subgrid_tendency import SubgridTendencyConfig
from coupler.runtime import Coupling, Reservoir
from coupler.runtime.launch.cluster import workers_with

from _runtime_training import stream_while_training  # noqa: E402  (sibling scripts)
from correction_online_vs_offline import CorrectionSetup, _matrix, _params, correction_setup  # noqa: E402

MODELS: dict[str, Any] = {
    "closure": SpectralClosureConfig(hidden=32, depth=2),
    "cnn": CoarseCorrectionConfig(width=8, depth=3, log_nu_center=-3.5),
    # the CNN that explains 75-85 % of the 16^2 subgrid tendency a priori (augmentation_speedup.py --model tendency)
    "tendency": SubgridTendencyConfig(width=32, depth=5),
}
"""Correction models, from about 1.2k weights (the spectral closure) to the a-priori CNN (about 37k)."""


@dataclass
class GpuSampler:
    """``nvidia-smi``'s GPU utilisation every ``period_ms``, as ``(time.time(), percent)`` rows, in a thread.

    Attributes:
        period_ms: sampling period.
        rows: the samples so far.
    """

    period_ms: int = 100
    rows: list[tuple[float, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    @staticmethod
    def available() -> bool:
        """Whether ``nvidia-smi`` is on the path."""
        return shutil.which("nvidia-smi") is not None

    def start(self) -> None:
        """Start ``nvidia-smi -lms`` and the thread that reads it (no-op without ``nvidia-smi``)."""
        if not self.available():
            return
        self._proc = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", str(self.period_ms)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        self._thread = threading.Thread(target=self._read, name="nvidia-smi reader", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            first = line.split(",")[0].strip()  # one GPU per learner: the first listed
            try:
                self.rows.append((time.time(), float(first)))
            except ValueError:
                continue  # "[N/A]" or a warning line

    def stop(self) -> None:
        """Stop ``nvidia-smi`` and join the reader."""
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(10)
        if self._thread is not None:
            self._thread.join(10)

    def mean_between(self, t0: float, t1: float) -> float | None:
        """Mean utilisation (percent) of the samples taken in ``[t0, t1]``; ``None`` without any."""
        vals = [u for t, u in self.rows if t0 <= t <= t1]
        return float(np.mean(vals)) if vals else None


def measure(setup: CorrectionSetup, cp: Coupling, *, model: str, batch: int, steps: int, sim_actors: int, seed: int,
            progress: bool = True) -> dict[str, Any]:
    """One row: train ``steps`` steps of ``model`` at batch ``batch`` while simulations stream windows in.

    Args:
        setup: the stream's problem (simulator, ranges, reservoir capacity, ensemble size).
        cp: the coupling; the learner takes its GPU worker if it has one, else its last worker.
        model: a key of :data:`MODELS`.
        batch: windows per training step.
        steps: training steps measured (after compilation).
        sim_actors: simulator actors streaming at once (one per CPU worker, round robin).
        seed: seed of the model and of the streamed runs' parameters.
        progress: print a line every 15 s.

    Returns:
        The row (see the module docstring), with the learner's device.

    Raises:
        RuntimeError: if the learner stops before it has trained ``steps`` steps.
    """
    setup = replace(setup, model=MODELS[model], batch_size=batch, train_steps=steps)
    tag = f"{model}-{batch}-{time.monotonic_ns()}"
    channel = cp.channel(f"windows-{tag}", Reservoir(capacity=setup.capacity, seed=seed))
    gpus = workers_with(cp.client, {"GPU": 1})
    workers = cp.workers()
    learner_worker = gpus[0] if gpus else workers[-1]
    sim_workers = [w for w in workers if w != learner_worker] or workers
    n = setup.simulator.coarse_n
    example = {"field": np.zeros((batch, setup.unroll + 1, n, n), np.float32), "params": np.full((batch, 3), 0.02, np.float32)}
    learner = cp.spawn(
        LearnerActor, setup.trainer(seed), name=f"learner-{tag}", batch_size=batch, min_samples=min(batch, setup.capacity),
        max_steps=steps, warmup=example, inputs={"data": channel}, workers=learner_worker,
    )
    stream_key = jax.random.fold_in(jax.random.key(seed), 104_729)

    def launch(i: int) -> Any:
        params = _params(setup, jax.random.fold_in(stream_key, i), setup.members)
        ref = cp.spawn(
            SimulatorActor, setup.simulator, params, name=f"sim-{tag}-{i}", steps=setup.blocks * setup.unroll,
            publish_every=setup.unroll, field="window", features=_matrix(params), ensemble=True, seed=i,
            outputs={"fields": channel}, workers=sim_workers[i % len(sim_workers)],
        )
        ref.start()
        return ref

    sampler = GpuSampler()
    try:  # the row owns its learner and channel: nothing outlives it
        learner.start()
        deadline = time.monotonic() + 600
        while not (st := learner.status()).info.get("ready"):  # compilation is not part of the measurement
            if st.done or time.monotonic() > deadline:
                raise RuntimeError(f"learner {tag} did not compile its step: {st}")
            time.sleep(0.2)
        device = st.device
        sampler.start()
        try:
            launched = stream_while_training(learner, launch, actors=sim_actors, label=f"{model} batch {batch}", progress=progress)
        finally:
            sampler.stop()
        final = learner.wait(30)
        if final.info.get("train_steps", 0) < steps:
            raise RuntimeError(f"learner {tag} stopped after {final.info.get('train_steps')} of {steps} steps: {final}")
        history = learner.call("history")
    finally:
        learner.release()
        cp.close_channel(channel)
    t0, t1 = history[0][0], history[-1][0]
    span = max(t1 - t0, 1e-9)
    received = history[-1][3] - history[0][3]
    util = sampler.mean_between(t0, t1)
    return {
        "model": model,
        "batch": batch,
        "device": device,
        "steps": len(history),
        "steps_per_s": (len(history) - 1) / span,
        "learner_busy": final.info["busy_share"],
        "gpu_util_percent": util,
        "gpu_samples": len([1 for t, _ in sampler.rows if t0 <= t <= t1]),
        "windows_per_s": received / span,
        "fresh_windows_per_step": received / max(len(history) - 1, 1),
        "simulations": launched * setup.members,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["closure", "tendency"])
    p.add_argument("--batch", type=int, nargs="+", default=[8, 64], help="windows per training step (default 8 64)")
    p.add_argument("--steps", type=int, default=300, help="training steps per row (default 300)")
    p.add_argument("--sim-workers", type=int, default=3, help="CPU workers that run the simulations (default 3)")
    p.add_argument("--members", type=int, default=8, help="runs per simulator actor (an ensemble, vmapped)")
    p.add_argument("--capacity", type=int, default=512, help="the reservoir's capacity in windows (default 512)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a tiny run of the code path (seconds of training)")
    p.add_argument("--json", default="", help="also write the rows to this JSON file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    setup = replace(correction_setup(quick=True), members=args.members)
    if args.quick:
        args.steps, args.batch, args.sim_workers = min(args.steps, 20), args.batch[:1], min(args.sim_workers, 1)
        setup = replace(setup, members=2, blocks=2)
    # the reservoir holds offline_sims * blocks windows (CorrectionSetup.capacity)
    setup = replace(setup, offline_sims=max(1, args.capacity // setup.blocks))
    rows = []
    gpus = bool(GpuSampler.available())
    # with GPUs the embedded cluster gives the first worker the GPU; the others see none and simulate on the CPU
    with Coupling(n_workers=args.sim_workers + 1, threads_per_worker=1, dashboard_address=":0") as cp:
        for model in args.models:
            for batch in args.batch:
                row = measure(setup, cp, model=model, batch=batch, steps=args.steps, sim_actors=args.sim_workers, seed=args.seed)
                rows.append(row)
                util = "-" if row["gpu_util_percent"] is None else f"{row['gpu_util_percent']:.0f} %"
                print(f"{model} batch {batch} on {row['device']}: {row['steps_per_s']:.1f} steps/s, learner busy "
                      f"{100 * row['learner_busy']:.0f} %, GPU {util}, {row['windows_per_s']:.0f} windows/s streamed", flush=True)
    print()
    print("| model | batch | device | steps/s | learner busy | GPU utilisation (nvidia-smi) | windows/s streamed | fresh windows / step |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        util = "-" if r["gpu_util_percent"] is None else f"{r['gpu_util_percent']:.0f} % ({r['gpu_samples']} samples)"
        print(f"| {r['model']} | {r['batch']} | {r['device']} | {r['steps_per_s']:.1f} | {100 * r['learner_busy']:.0f} % | "
              f"{util} | {r['windows_per_s']:.0f} | {r['fresh_windows_per_step']:.2f} |")
    if not gpus:
        print("no nvidia-smi here: the learner ran on a CPU core; the GPU aim (>= 80 % busy) needs a GPU machine")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "sim_workers": args.sim_workers, "members": setup.members, "capacity": setup.capacity,
                       "steps": args.steps, "nvidia_smi": gpus}, f, indent=2, default=str)
    return rows


if __name__ == "__main__":
    main()

"""Online vs offline training of a field surrogate, at the same compute and memory budget.

The experiment of Melissa (Meyer et al., ICML 2023; SC23), on our runtime:

* **offline** -- generate ``N`` simulations, store every training pair, split
  them *by simulation* into train (80 %) and validation (20 %), and train with
  early stopping: one validation pass per epoch, stop after ``patience`` epochs
  without improvement, keep the best weights. ``N`` is the largest set that
  fits the memory budget: ``N * blocks`` pairs = the budget.
* **online** -- a real ``Coupling`` on a ``LocalCluster``: ``SimulatorActor``
  ensembles (fresh parameters and initial fields for every member) stream
  pairs into a ``Reservoir`` channel whose capacity *is the same memory
  budget*; a ``PacedLearnerActor`` trains from it while they run. The stream
  is a fixed simulation budget, ``stream_sims`` runs (far more than ``N``:
  the simulations run beside the learner, as in Melissa, and nothing has to
  store them), paced evenly over the training steps: step ``i`` waits until
  its share has arrived (``_online_row.samples_due``).

Both train the same model with the same optimiser and batch size for at most
the same number of optimiser steps (the compute budget). Every budget is
counted in steps and samples, not seconds, so the result does not depend on
how loaded the machine is (only the wall times do). Both are scored on the
same held-out simulations (fresh seeds) by the mean relative L2 error of the
``K``-step prediction. The table reports that error, its ratio, the unique
samples each saw, the samples per second into the learner (arrivals, and
drawn in mini-batches), the learner process's CPU use, and per setup the mean
and standard error of the online error reduction over the seeds.

Setups: ``ns-correction`` (the coarse-solver correction of
``augmentation_speedup.py``, trained through the coarse solver; in
``correction_online_vs_offline.py``), ``ns-subgrid`` (the subgrid-tendency CNN
of that benchmark's ``--model tendency``, fitted a priori to the exact subgrid
tendency of fine runs seen on 16^2; same script), ``navier-stokes`` (``NavierStokes2D`` on a 32x32 grid, ``FNO2D``; a
wide parameter space of viscosity, forcing and random initial vorticity) and
``heat-melissa`` (the Melissa heat setup: ``Heat2D`` on a 100x100 grid, 100
simulations offline, our ``ConvSurrogate``).

``--seeds N`` repeats every setup with seeds ``seed .. seed+N-1`` (fresh offline,
online and held-out runs each) and reports the mean and standard error of the
online error reduction.

Run: ``python benchmarks/augmentation_online_vs_offline.py [--quick] [--seeds 3] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import cloudpickle
import jax
import numpy as np
import psutil

from coupler.actors.simulator import SimulatorActor
from coupler.learners.fno import FNOConfig
from coupler.learners.online import ModelFactory, OnlineTrainer, OptimizerConfig, SurrogateConfig
from coupler.physics.heat import Heat2D
from coupler.physics.navier_stokes import NavierStokes2D
from coupler.runtime import Coupling, Reservoir

import correction_online_vs_offline as correction  # noqa: E402  (a sibling script)
import _online_row  # noqa: E402
from _online_row import PacedLearnerActor, keep_blocks, mean_and_se, online_row, stream_until_trained  # noqa: E402

# The workers cannot import these scripts: ship their functions by value.
if __name__ != "__main__":
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
cloudpickle.register_pickle_by_value(correction)
cloudpickle.register_pickle_by_value(_online_row)

VALIDATION_FRACTION = 0.2
TEST_SIMS = 48


@dataclass(frozen=True)
class Setup:
    """One surrogate-learning problem and its budgets.

    Attributes:
        name: row label.
        simulator: a pure simulator (``Heat2D``, ``NavierStokes2D``).
        draw: ``(simulator, key) -> params`` of one run (vmapped for ensembles).
        features: ``params`` (batched) -> ``(n, P)`` float32 conditioning vectors.
        field: key of ``simulator.observe``.
        k: solver steps one surrogate prediction spans.
        blocks: pairs per simulation.
        model: the surrogate's ``ModelFactory``.
        offline_sims: simulations the memory budget stores (``offline_sims * blocks`` pairs).
        train_steps: optimiser steps allowed (the compute budget).
        stream_sims: simulations the online stream runs (its simulation budget; the learner is
            paced so that they arrive evenly over ``train_steps``, see ``_online_row.samples_due``).
        batch_size: mini-batch size.
        members: ensemble members per simulator actor (vmapped).
        sim_actors: simulator actors running at once.
        learning_rate: peak learning rate (same for both).
        patience: offline early stopping, epochs without validation improvement.
    """

    name: str
    simulator: Any
    draw: Callable[[Any, jax.Array], Any]
    features: Callable[[Any], np.ndarray]
    field: str
    k: int
    blocks: int
    model: ModelFactory
    offline_sims: int
    train_steps: int
    stream_sims: int
    batch_size: int = 16
    members: int = 16
    sim_actors: int = 1
    learning_rate: float = 3e-3
    patience: int = 10

    @property
    def capacity(self) -> int:
        """The memory budget in pairs: what offline stores and the reservoir holds."""
        return self.offline_sims * self.blocks

    @property
    def stream_samples(self) -> int:
        """The online stream's size in pairs (the simulation budget)."""
        return self.stream_sims * self.blocks

    def optimizer(self) -> OptimizerConfig:
        """The optimiser both runs use (cosine decay over the whole budget)."""
        return OptimizerConfig(learning_rate=self.learning_rate, warmup_steps=20, decay_steps=self.train_steps)


# -- the two setups ---------------------------------------------------------------------------------
NS_VISCOSITY = (0.005, 0.05)
NS_AMPLITUDE = (0.5, 2.0)


def _ns_draw(sim: NavierStokes2D, key: jax.Array) -> Any:
    return sim.random_params(key, NS_VISCOSITY, NS_AMPLITUDE)


def _ns_features(params: Any) -> np.ndarray:
    """``[log nu, A]`` scaled to about [-1, 1] over the drawn ranges."""
    lo, hi = np.log(NS_VISCOSITY)
    log_nu = (np.log(np.asarray(params.viscosity)) - (lo + hi) / 2) / ((hi - lo) / 2)
    amp = (np.asarray(params.forcing_amplitude) - sum(NS_AMPLITUDE) / 2) / ((NS_AMPLITUDE[1] - NS_AMPLITUDE[0]) / 2)
    return np.stack([log_nu, amp], axis=-1).astype(np.float32)


def _heat_draw(sim: Heat2D, key: jax.Array) -> Any:
    return sim.random_params(key)


def _heat_features(params: Any) -> np.ndarray:
    return np.asarray(params.diffusivity, np.float32)[:, None]


def navier_stokes_setup(quick: bool) -> Setup:
    """NavierStokes2D 32x32, FNO; 32 stored simulations x 16 pairs = a 512-pair budget."""
    return Setup(
        name="navier-stokes",
        simulator=NavierStokes2D(n=32, dt=0.03),
        draw=_ns_draw,
        features=_ns_features,
        field="w",
        k=10,
        blocks=16,
        model=FNOConfig(modes=8, width=16, depth=4, n_params=2, hidden=32, field_scale=3.0),
        offline_sims=32,
        train_steps=300 if quick else 800,
        stream_sims=608 if quick else 1600,  # 32 fresh pairs per step, what the stream kept up with unpaced
    )


def heat_setup(quick: bool) -> Setup:
    """The Melissa heat setup: Heat2D 100x100, 100 stored simulations (x 10 pairs)."""
    return Setup(
        name="heat-melissa",
        simulator=Heat2D(n=100),
        draw=_heat_draw,
        features=_heat_features,
        field="u",
        k=100,
        blocks=10,
        model=SurrogateConfig(),
        offline_sims=100,
        train_steps=100 if quick else 400,
        stream_sims=256 if quick else 1024,
    )


# -- data ----------------------------------------------------------------------------------------------
def draw_params(setup: Setup, key: jax.Array, n: int) -> Any:
    """``n`` parameter sets stacked along a leading axis."""
    return jax.vmap(functools.partial(setup.draw, setup.simulator))(jax.random.split(key, n))


def simulate_pairs(setup: Setup, key: jax.Array, sims: int) -> dict[str, np.ndarray]:
    """Run ``sims`` simulations; pairs ``(x_t, x_{t+k})`` shaped ``(sims, blocks, ...)``.

    The initial states come from the same ``init`` keys a ``SimulatorActor`` would use.
    """
    sim = setup.simulator
    params = draw_params(setup, key, sims)
    state = jax.vmap(sim.init)(jax.random.split(jax.random.fold_in(key, 1), sims), params)
    advance = jax.jit(jax.vmap(lambda s, p: jax.lax.fori_loop(0, setup.k, lambda _, x: sim.step(x, p), s)))
    observe = jax.vmap(lambda s: sim.observe(s)[setup.field])
    xs, ys = [], []
    for _ in range(setup.blocks):
        nxt = advance(state, params)
        xs.append(np.asarray(observe(state)))
        ys.append(np.asarray(observe(nxt)))
        state = nxt
    feats = np.repeat(setup.features(params)[:, None], setup.blocks, axis=1)
    return {"input": np.stack(xs, 1), "target": np.stack(ys, 1), "params": feats}


def flatten(pairs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``(sims, blocks, ...)`` -> ``(sims * blocks, ...)``."""
    return {k: v.reshape((-1,) + v.shape[2:]) for k, v in pairs.items()}


def heldout_error(trainer: OnlineTrainer, test: dict[str, np.ndarray], chunk: int = 64) -> float:
    """Mean relative L2 error of ``trainer`` over ``test`` (evaluated in chunks of one shape)."""
    n = len(test["input"])
    errs = []
    for i in range(0, n, chunk):
        rows = np.resize(np.arange(i, min(i + chunk, n)), chunk)  # one shape: one compilation
        errs.append(trainer.evaluate({k: v[rows] for k, v in test.items()})[: min(chunk, n - i)])
    return float(np.mean(np.concatenate(errs)))


# -- offline -------------------------------------------------------------------------------------------
def thinned_store(setup: Setup, key: jax.Array, pairs_per_run: int) -> dict[str, np.ndarray]:
    """The memory budget filled with ``pairs_per_run`` pairs from each of ``capacity // pairs_per_run`` runs.

    The other way to fill the same memory: more runs, fewer pairs of each
    (drawn at random from each run's blocks), for a store that covers the
    parameter space better at the cost of more simulation. Shaped like
    :func:`simulate_pairs` with ``blocks = pairs_per_run``.
    """
    return keep_blocks(simulate_pairs(setup, key, setup.capacity // pairs_per_run), pairs_per_run, key)


def run_offline(setup: Setup, test: dict[str, np.ndarray], seed: int, pairs_per_run: int = 0) -> dict[str, Any]:
    """Train on stored simulations with early stopping (see the module docstring).

    ``pairs_per_run`` 0 stores ``offline_sims`` whole runs (Melissa's offline
    baseline); ``k > 0`` fills the same memory from more runs (:func:`thinned_store`).
    """
    key = jax.random.key(seed)
    data = simulate_pairs(setup, key, setup.offline_sims) if not pairs_per_run else thinned_store(setup, key, pairs_per_run)
    sims = len(data["input"])
    n_val = max(1, round(VALIDATION_FRACTION * sims))
    train = flatten({k: v[n_val:] for k, v in data.items()})
    val = flatten({k: v[:n_val] for k, v in data.items()})
    trainer = OnlineTrainer(setup.model, setup.optimizer(), seed=seed)
    b = setup.batch_size
    trainer.warmup({k: v[:b] for k, v in train.items()})
    heldout_error(trainer, val)  # compile the evaluation outside the timed loop
    rng = np.random.default_rng(seed)
    n = len(train["input"])
    best, best_weights, best_step, stale, steps, epochs = np.inf, trainer.get_weights(), 0, 0, 0, 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    while steps < setup.train_steps and stale < setup.patience:
        order = rng.permutation(n)
        for i in range(0, max(n - b + 1, 1), b):
            if steps >= setup.train_steps:
                break
            rows = np.resize(order[i : i + b], b)  # a set smaller than a batch repeats rows
            trainer.step({k: v[rows] for k, v in train.items()})
            steps += 1
        epochs += 1
        err = heldout_error(trainer, val)
        if err < best:
            best, best_weights, best_step, stale = err, trainer.get_weights(), steps, 0
        else:
            stale += 1
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    trainer.set_weights(best_weights)
    return {
        "mode": "offline" if not pairs_per_run else f"offline, {pairs_per_run} pair(s) per run",
        "heldout_rel_l2": heldout_error(trainer, test),
        "validation_rel_l2": float(best),
        "simulations": sims,
        "unique_samples": int(n),
        "stored_samples": int(n + len(val["input"])),
        "train_steps": steps,
        "best_step": best_step,
        "epochs": epochs,
        "early_stopped": bool(stale >= setup.patience),
        "train_seconds": wall,
        "arrival_samples_per_s": None,
        "batch_samples_per_s": steps * b / wall,
        "learner_cpu_cores": cpu / wall,
    }


# -- online --------------------------------------------------------------------------------------------
def _process_cpu_seconds() -> float:
    """CPU seconds (user + system) of the calling process; runs on a worker via ``client.run``."""
    t = psutil.Process().cpu_times()
    return t.user + t.system


def run_online(setup: Setup, cp: Coupling, test: dict[str, np.ndarray], seed: int, progress: bool = True) -> dict[str, Any]:
    """Train while simulator actors stream fresh runs into a Reservoir of the same capacity."""
    tag = f"{setup.name}-{seed}-{time.monotonic_ns()}"
    channel = cp.channel(f"pairs-{tag}", Reservoir(capacity=setup.capacity, seed=seed))
    workers = cp.workers()
    learner_worker, sim_workers = workers[-1], (workers[:-1] or workers)
    shape = test["input"].shape[1:]
    b = setup.batch_size
    example = {
        "input": np.zeros((b, *shape), np.float32),
        "target": np.zeros((b, *shape), np.float32),
        "params": np.zeros((b, test["params"].shape[-1]), np.float32),
    }
    min_samples = 2 * b
    stream = setup.stream_samples
    learner = cp.spawn(
        PacedLearnerActor,
        functools.partial(OnlineTrainer, setup.model, setup.optimizer(), seed=seed),
        name=f"learner-{tag}",
        stream_samples=stream,
        batch_size=b,
        min_samples=min_samples,
        max_steps=setup.train_steps,
        warmup=example,
        inputs={"data": channel},
        workers=learner_worker,
    )
    # Parameters for the stream come from their own key: never the offline or test runs.
    stream_key = jax.random.fold_in(jax.random.key(seed), 7919)

    def launch(i: int) -> Any:
        key = jax.random.fold_in(stream_key, i)
        params = draw_params(setup, key, setup.members)
        ref = cp.spawn(
            SimulatorActor,
            setup.simulator,
            params,
            name=f"sim-{tag}-{i}",
            steps=setup.blocks * setup.k,
            publish_every=setup.k,
            field=setup.field,
            features=setup.features(params),
            mode="pairs",
            ensemble=True,
            seed=int(jax.random.randint(key, (), 0, 2**30)),
            outputs={"fields": channel},
            workers=sim_workers[i % len(sim_workers)],
        )
        ref.start()
        return ref

    try:  # the run owns its learner and channel: nothing outlives it
        learner.start()
        while not learner.status().info.get("ready"):
            if learner.status().state == "failed":
                learner.wait()  # raises with the remote traceback
            time.sleep(0.2)
        cpu0 = cp.client.run(_process_cpu_seconds, workers=[learner_worker])[learner_worker]
        launched = stream_until_trained(
            learner, launch, run_samples=setup.members * setup.blocks, stream_samples=stream, max_steps=setup.train_steps,
            min_samples=min_samples, sim_actors=setup.sim_actors, label=f"{setup.name} online", progress=progress,
        )
        final = learner.wait(30)
        cpu1 = cp.client.run(_process_cpu_seconds, workers=[learner_worker])[learner_worker]
        history = learner.call("history")
        trainer = OnlineTrainer(setup.model, setup.optimizer(), seed=seed)
        trainer.set_weights(learner.call("weights"))
    finally:
        learner.release()
        cp.close_channel(channel)
    return online_row(
        history, final.info.get("train_steps", history[-1][1]) if history else 0, heldout_error(trainer, test),
        simulations=launched * setup.members, stored_samples=setup.capacity, batch_size=b,
        learner_cpu_cores=(cpu1 - cpu0) / max(final.stopped_at - history[0][0], 1e-9) if history else None,
    )


# -- driver --------------------------------------------------------------------------------------------
def run_setup(setup: Setup, cp: Coupling, seed: int, test_sims: int = TEST_SIMS) -> dict[str, Any]:
    """Offline and online for one setup, on the same ``test_sims`` held-out simulations; both rows and the ratio."""
    test = flatten(simulate_pairs(setup, jax.random.key(10_000 + seed), test_sims))
    persistence = float(np.mean(np.sqrt(((test["input"] - test["target"]) ** 2).sum((1, 2)) / (test["target"] ** 2).sum((1, 2)))))
    offline = run_offline(setup, test, seed)
    online = run_online(setup, cp, test, seed)
    return {
        "setup": setup.name,
        "grid": list(test["input"].shape[1:]),
        "memory_budget_pairs": setup.capacity,
        "step_budget": setup.train_steps,
        "stream_budget_pairs": setup.stream_samples,
        "persistence_rel_l2": persistence,
        "rows": [offline, online],
        "online_over_offline_error": online["heldout_rel_l2"] / offline["heldout_rel_l2"],
        "online_error_reduction": 1 - online["heldout_rel_l2"] / offline["heldout_rel_l2"],
    }


def _fmt(v: Any, width: int, precision: int) -> str:
    return f"{'-':>{width}}" if v is None else f"{v:>{width}.{precision}f}"


def print_table(results: list[dict[str, Any]]) -> None:
    """The comparison table, one block per setup."""
    head = f"{'setup':<15}{'mode':<9}{'held-out rel L2':>16}{'sims':>8}{'unique samples':>16}{'steps':>7}" \
           f"{'arrivals/s':>12}{'batch samples/s':>17}{'learner CPU':>13}{'train s':>9}  note"
    print(head)
    print("-" * len(head))
    for res in results:
        for row in res["rows"]:
            note = (f"early stop after {row['epochs']} epochs (best step {row['best_step']})" if row["early_stopped"]
                    else f"{row['epochs']} epochs, budget reached" if row["mode"] == "offline" else "Reservoir stream")
            print(f"{res['setup']:<15}{row['mode']:<9}{100 * row['heldout_rel_l2']:>15.2f}%{row['simulations']:>8,d}"
                  f"{row['unique_samples']:>16,d}{row['train_steps']:>7,d}{_fmt(row['arrival_samples_per_s'], 12, 1)}"
                  f"{row['batch_samples_per_s']:>17.1f}{_fmt(row['learner_cpu_cores'], 12, 2)}c{row['train_seconds']:>9.1f}  {note}")
        print(f"{'':<15}online/offline error ratio {res['online_over_offline_error']:.3f} "
              f"(online {100 * res['online_error_reduction']:+.1f} % lower); {res.get('baseline', 'persistence')} "
              f"{100 * res['persistence_rel_l2']:.2f}%; "
              f"memory budget {res['memory_budget_pairs']} pairs, stream {res.get('stream_budget_pairs', '-')}, grid {res['grid']}")
    for name, s in summarize_seeds(results).items():
        print(f"{name}: online error reduction {100 * s['mean']:+.1f} % +- {100 * s['se']:.1f} % (mean +- SE over "
              f"{s['seeds']} seeds; target >= 15 %)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller step budgets (a few minutes on 2 cores)")
    p.add_argument("--setups", default="ns-correction,navier-stokes,heat-melissa", help="comma-separated setups to run")
    p.add_argument("--correction-model", default="closure", choices=sorted(correction.MODELS),
                   help="the ns-correction setup's learned model")
    p.add_argument("--seeds", type=int, default=1, help="repeat each setup with this many seeds (mean and SE)")
    p.add_argument("--steps", type=int, default=0, help="override every setup's step budget")
    p.add_argument("--offline-sims", type=int, default=0, help="override every setup's stored simulations")
    p.add_argument("--stream-sims", type=int, default=0, help="override every setup's online simulation budget (runs)")
    p.add_argument("--blocks", type=int, default=0, help="override pairs per simulation")
    p.add_argument("--grid", type=int, default=0, help="override the grid size (both setups)")
    p.add_argument("--workers", type=int, default=2, help="local worker processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    return p.parse_args(argv)


def build_setups(args: argparse.Namespace) -> list[Any]:
    """The requested setups with the command line's overrides applied.

    Raises:
        ValueError: for an unknown setup name.
    """
    known = {"ns-correction": correction.correction_setup, "ns-subgrid": correction.tendency_setup, "navier-stokes": navier_stokes_setup, "heat-melissa": heat_setup}
    out = []
    for name in filter(None, args.setups.split(",")):
        if name not in known:
            raise ValueError(f"unknown setup {name!r}; expected one of {sorted(known)}")
        s = known[name](args.quick)
        if isinstance(s, correction.CorrectionSetup) and s.target is correction.Target.WINDOW:
            s = replace(s, model=correction.MODELS[args.correction_model])
        s = correction.with_overrides(s, train_steps=args.steps, offline_sims=args.offline_sims,
                                       stream_sims=args.stream_sims, blocks=args.blocks)
        if isinstance(s, correction.CorrectionSetup):
            out.append(s)
            continue
        if args.grid:
            s = replace(s, simulator=replace(s.simulator, n=args.grid))
        out.append(s)
    return out


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    setups = build_setups(args)
    results = []
    with Coupling(n_workers=args.workers, threads_per_worker=1, dashboard_address=":0") as cp:
        for setup in setups:
            for seed in range(args.seed, args.seed + args.seeds):
                print(f"{setup.name} seed {seed}: budget {setup.train_steps} steps x {setup.batch_size}, "
                      f"{setup.capacity} samples in memory", flush=True)
                run = correction.run_setup if isinstance(setup, correction.CorrectionSetup) else run_setup
                results.append({**run(setup, cp, seed), "seed": seed})
    print()
    print_table(results)
    summary = summarize_seeds(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"quick": args.quick, "results": results, "summary": summary, "device": jax.devices()[0].platform}, f, indent=2)
    return results


def summarize_seeds(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per setup: mean and standard error (``std / sqrt(n)``, ``ddof=1``; 0 for one seed) of the error reduction."""
    out = {}
    for name in dict.fromkeys(r["setup"] for r in results):
        x = [r["online_error_reduction"] for r in results if r["setup"] == name]
        mean, se = mean_and_se(x)
        out[name] = {"mean": mean, "se": se, "seeds": len(x)}
    return out


if __name__ == "__main__":
    main()

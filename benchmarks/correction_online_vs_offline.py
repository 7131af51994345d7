"""Online vs offline training of the coarse-solver correction, at the same compute and memory budget.

The ``ns-correction`` setup of ``augmentation_online_vs_offline.py``: the same
experiment (Melissa's, Meyer et al. 2023) for the learned model of
``augmentation_speedup.py`` instead of a field surrogate.

* samples are windows of coarse-grained fine Kolmogorov runs
  (``CoarseGrainedNavierStokes``: fine 64^2, coarse 16^2) and the run's
  parameters; the model is trained through the coarse solver, unrolled over the
  window (``SolverCorrectionTrainer``). With ``--model tendency`` (the setup
  ``ns-subgrid``) they are instead a coarse frame and the exact subgrid
  tendency there, and the subgrid-tendency CNN is fitted to it a priori
  (``SubgridFitTrainer``);
* **offline** stores ``offline_sims`` runs' windows (the memory budget), splits
  them by run into train and validation, trains with early stopping and keeps
  the best weights;
* **online** streams fresh runs from ``SimulatorActor`` ensembles into a
  ``Reservoir`` of the same capacity, a ``LearnerActor`` trains from it for the
  same number of optimiser steps;
* the held-out error is the mean, over held-out windows, of the relative L2
  error of the corrected coarse rollout over the window (the plain coarse
  solver's is reported as the baseline); for ``ns-subgrid``, the mean relative
  L2 error of the predicted subgrid tendency (the plain solver predicts none:
  1.0).

Run alone, it compares the two on this setup with the problem's ranges and
budgets from the command line (``augmentation_online_vs_offline.py`` runs it
with the defaults beside the other setups):
``python benchmarks/correction_online_vs_offline.py [--quick] [--seeds 3] [--model cnn|tendency]
[--viscosity 0.008 0.04] [--amplitude 0.5 1.5] [--offline-sims 8] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import enum
import json
import time
from dataclasses import dataclass, field, replace
from typing import Any

import cloudpickle
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from coupler.actors.simulator import SimulatorActor
from coupler.learners.online import OptimizerConfig
from coupler.learners.solver_correction import CoarseCorrectionConfig, SolverCorrectionConfig, corrected_rollout
from coupler.learners.spectral_closure import SpectralClosureConfig
from coupler.learners.subgrid_tendency import SubgridFitConfig, SubgridTendencyConfig, tendency_error
from coupler.physics.coarse_graining import CoarseGrainedNavierStokes
from coupler.physics.navier_stokes import NavierStokes2D
from coupler.runtime import Coupling, Reservoir

import _online_row  # noqa: E402  (a sibling module of these scripts)
from _online_row import PacedLearnerActor, keep_blocks, mean_and_se, online_row, stream_until_trained  # noqa: E402

# The workers cannot import the sibling module: ship it by value.
cloudpickle.register_pickle_by_value(_online_row)

VALIDATION_FRACTION = 0.2
MODELS = {
    "closure": SpectralClosureConfig(hidden=32, depth=2),
    "cnn": CoarseCorrectionConfig(width=8, depth=3, log_nu_center=-3.5),
    "tendency": SubgridTendencyConfig(width=32, depth=5),
}
"""The learned models: the spectral closure (about 1.2k weights), the additive CNN (both trained through the
solver), or the subgrid-tendency CNN (29k weights, fitted a priori: ``tendency_setup``)."""


class Target(enum.Enum):
    """What a setup's samples are and how its model learns from them."""

    WINDOW = "window"
    """Windows of coarse frames; the model is trained through the coarse solver (a posteriori)."""
    SUBGRID = "subgrid"
    """A coarse frame and the exact subgrid tendency there; the model is fitted to it (a priori)."""


@dataclass(frozen=True)
class CorrectionSetup:
    """The correction's online-vs-offline problem and its budgets.

    Attributes:
        name: row label.
        simulator: the fine run seen on the coarse grid (for ``Target.WINDOW`` its ``window`` is unroll + 1;
            for ``Target.SUBGRID`` one of its steps is the time between samples).
        target: what the samples are and how the model learns (``Target``).
        viscosity, amplitude: ranges of the drawn parameters.
        model: the learned model's factory.
        blocks: samples (windows or pairs) per simulation.
        offline_sims: simulations the memory budget stores (``offline_sims * blocks`` windows).
        train_steps: optimiser steps allowed (the compute budget).
        stream_sims: runs the online stream simulates (its simulation budget, in runs of ``blocks``
            windows), paced evenly over ``train_steps`` (``_online_row.samples_due``).
        batch_size, members, sim_actors, learning_rate, patience: as in the surrogate setups.
        thinned: with ``k > 0``, a third row: offline with the same memory filled with ``k`` samples from
            each of ``capacity // k`` runs (more simulation, better coverage; :func:`thinned_store`).
    """

    name: str
    simulator: CoarseGrainedNavierStokes
    target: Target = Target.WINDOW
    viscosity: tuple[float, float] = (1.5e-2, 3e-2)
    amplitude: tuple[float, float] = (0.8, 1.2)
    model: Any = field(default_factory=lambda: MODELS["closure"])
    blocks: int = 4
    offline_sims: int = 8
    train_steps: int = 200
    stream_sims: int = 128
    batch_size: int = 8
    members: int = 8
    sim_actors: int = 1
    learning_rate: float = 3e-3
    patience: int = 10
    thinned: int = 0

    @property
    def capacity(self) -> int:
        """The memory budget in windows: what offline stores and the reservoir holds."""
        return self.offline_sims * self.blocks

    @property
    def stream_samples(self) -> int:
        """The online stream's size in windows (the simulation budget)."""
        return self.stream_sims * self.blocks

    @property
    def unroll(self) -> int:
        """Coarse steps of the training rollout (the window less one)."""
        return self.simulator.window - 1

    @property
    def field(self) -> str:
        """The simulator's observation the samples are."""
        return self.target.value

    @property
    def publish_every(self) -> int:
        """Coarse steps between samples: a whole window, or one step between subgrid pairs."""
        return self.unroll if self.target is Target.WINDOW else 1

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """One sample's field: ``(window, n, n)`` frames, or ``(2, n, n)`` vorticity and subgrid tendency."""
        n = self.simulator.coarse_n
        return (self.simulator.window if self.target is Target.WINDOW else 2, n, n)

    def trainer(self, seed: int) -> SolverCorrectionConfig | SubgridFitConfig:
        """The trainer factory both runs use (cosine decay over the whole budget)."""
        opt = OptimizerConfig(learning_rate=self.learning_rate, warmup_steps=20, decay_steps=self.train_steps)
        if self.target is Target.SUBGRID:
            return SubgridFitConfig(self.simulator.coarse_n, self.model, opt, seed=seed)
        return SolverCorrectionConfig(self.simulator.coarse(), self.model, opt, unroll=self.unroll, seed=seed)


def correction_setup(quick: bool) -> CorrectionSetup:
    """Fine 64^2 -> coarse 16^2 (3/2-rule), windows of 9 frames, the spectral closure of the speed-up benchmark."""
    fine = NavierStokes2D(n=64, dt=0.02)
    cg = CoarseGrainedNavierStokes(fine, coarse_n=16, substeps=4, window=9, spinup=500, coarse_dealias="pad")
    return CorrectionSetup(name="ns-correction", simulator=cg, train_steps=150 if quick else 400, stream_sims=48 if quick else 128)


def tendency_setup(quick: bool) -> CorrectionSetup:
    """Fine 64^2 seen on 16^2 (3/2 rule), the ``--quick16`` regime; the subgrid-tendency CNN fitted a priori.

    Each run gives 20 (frame, subgrid tendency) pairs 0.5 time units apart after
    15 of spin-up (``subgrid_apriori.py --cnn``'s sampling, where 24 runs
    overfit and 64 did not). Offline stores 8 runs (160 pairs) and trains the
    whole budget keeping its best validation weights; online streams 256 runs
    over 4000 steps (full mode; at half of both, 2000 steps and 128 runs, online
    was 13.6 % +- 1.6 % lower, at 4000 and 256 19.9 % +- 0.4 %: docs/augmentation.md).
    """
    fine = NavierStokes2D(n=64, dt=0.02)
    cg = CoarseGrainedNavierStokes(fine, coarse_n=16, substeps=25, window=2, spinup=750, coarse_dealias="pad")
    return CorrectionSetup(
        name="ns-subgrid", simulator=cg, target=Target.SUBGRID, viscosity=(2e-2, 4e-2), model=MODELS["tendency"],
        blocks=20, offline_sims=8, train_steps=500 if quick else 4000, stream_sims=48 if quick else 256,
        batch_size=32, learning_rate=1e-3, patience=100_000,
    )


def _params(setup: CorrectionSetup, key: jax.Array, sims: int) -> Any:
    fine = setup.simulator.fine
    draw = lambda k: fine.random_params(k, viscosity_range=setup.viscosity, amplitude_range=setup.amplitude)  # noqa: E731
    return jax.vmap(draw)(jax.random.split(key, sims))


def _matrix(params: Any) -> np.ndarray:
    return np.stack([np.asarray(params.viscosity), np.asarray(params.forcing_amplitude), np.asarray(params.drag)], -1).astype(np.float32)


def simulate_samples(setup: CorrectionSetup, key: jax.Array, sims: int) -> dict[str, np.ndarray]:
    """``sims`` runs' samples, as a simulator actor publishes them.

    Returns:
        ``{"field": (sims, blocks) + sample_shape, "params": (sims, blocks, 3)}``: non-overlapping windows,
        or (frame, subgrid tendency) pairs ``publish_every`` coarse steps apart.
    """
    cg = setup.simulator
    params = _params(setup, key, sims)
    state = jax.jit(jax.vmap(cg.init))(jax.random.split(jax.random.fold_in(key, 1), sims), params)
    advance = jax.jit(jax.vmap(lambda s, p: jax.lax.fori_loop(0, setup.publish_every, lambda _, x: cg.step(x, p), s)))
    observe = jax.jit(jax.vmap(lambda s: cg.observe(s)[setup.field]))
    out = []
    for _ in range(setup.blocks):
        state = advance(state, params)
        out.append(np.asarray(observe(state)))
    return {"field": np.stack(out, 1), "params": np.repeat(_matrix(params)[:, None], setup.blocks, axis=1)}


def thinned_store(setup: CorrectionSetup, key: jax.Array, per_run: int) -> dict[str, np.ndarray]:
    """The memory budget filled with ``per_run`` samples from each of ``capacity // per_run`` runs.

    Shaped like :func:`simulate_samples` with ``blocks = per_run`` (``_online_row.keep_blocks``).

    Raises:
        ValueError: unless ``0 < per_run <= blocks``.
    """
    if not 0 < per_run <= setup.blocks:  # before simulating anything
        raise ValueError(f"expected 0 < samples per run <= blocks={setup.blocks}, got {per_run}")
    return keep_blocks(simulate_samples(setup, key, setup.capacity // per_run), per_run, key)


def _flatten(data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v.reshape((-1,) + v.shape[2:]) for k, v in data.items()}


@nnx.jit(static_argnames=("coarse", "steps"))
def _rollout_error(model: Any, field: jax.Array, params: jax.Array, coarse: NavierStokes2D, steps: int) -> jax.Array:
    traj = jnp.swapaxes(corrected_rollout(coarse, model, field[:, 0], params, steps), 0, 1)
    num = jnp.sum((traj - field[:, 1:]) ** 2, axis=(1, 2, 3))
    return jnp.mean(jnp.sqrt(num / jnp.sum(field[:, 1:] ** 2, axis=(1, 2, 3))))


def heldout_error(setup: CorrectionSetup, model: Any, test: dict[str, np.ndarray]) -> float:
    """The model's mean relative L2 error on ``test`` (``model=None``: the plain coarse solver).

    ``Target.WINDOW``: the corrected rollout's error over each window. ``Target.SUBGRID``: the
    predicted subgrid tendency's error (``tendency_error``; the plain solver predicts none, 1.0).
    """
    if setup.target is Target.SUBGRID:
        return tendency_error(model, test["field"], test["params"])
    f, p = jnp.asarray(test["field"]), jnp.asarray(test["params"])
    coarse = setup.simulator.coarse()
    if model is None:
        traj = jnp.swapaxes(corrected_rollout(coarse, None, f[:, 0], p, setup.unroll), 0, 1)
        num = jnp.sum((traj - f[:, 1:]) ** 2, axis=(1, 2, 3))
        return float(jnp.mean(jnp.sqrt(num / jnp.sum(f[:, 1:] ** 2, axis=(1, 2, 3)))))
    return float(_rollout_error(model, f, p, coarse, setup.unroll))


def run_offline(setup: CorrectionSetup, test: dict[str, np.ndarray], seed: int, per_run: int = 0) -> tuple[dict[str, Any], Any]:
    """Train on stored runs with early stopping (one validation pass per epoch), keeping the best weights.

    ``per_run`` 0 stores ``offline_sims`` whole runs (Melissa's offline baseline); ``k > 0`` fills the
    same memory with ``k`` samples from each of more runs (:func:`thinned_store`).

    Returns:
        The result row and the trained model.
    """
    key = jax.random.key(seed)
    data = thinned_store(setup, key, per_run) if per_run else simulate_samples(setup, key, setup.offline_sims)
    sims = len(data["field"])
    n_val = max(1, round(VALIDATION_FRACTION * sims))
    train = _flatten({k: v[n_val:] for k, v in data.items()})
    val = _flatten({k: v[:n_val] for k, v in data.items()})
    trainer = setup.trainer(seed)()
    b = setup.batch_size
    trainer.warmup({k: v[:b] for k, v in train.items()})
    rng = np.random.default_rng(seed)
    n = len(train["field"])
    best, best_weights, best_step, stale, steps, epochs = np.inf, trainer.get_weights(), 0, 0, 0, 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    while steps < setup.train_steps and stale < setup.patience:
        order = rng.permutation(n)
        for i in range(0, max(n - b + 1, 1), b):
            if steps >= setup.train_steps:
                break
            trainer.step({k: v[np.resize(order[i : i + b], b)] for k, v in train.items()})
            steps += 1
        epochs += 1
        err = heldout_error(setup, trainer.model, val)
        if err < best:
            best, best_weights, best_step, stale = err, trainer.get_weights(), steps, 0
        else:
            stale += 1
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    trainer.set_weights(best_weights)
    return {
        "mode": "offline" if not per_run else f"offline, {per_run} per run",
        "heldout_rel_l2": heldout_error(setup, trainer.model, test),
        "validation_rel_l2": float(best),
        "simulations": sims,
        "unique_samples": int(n),
        "stored_samples": int(n + len(val["field"])),
        "train_steps": steps,
        "best_step": best_step,
        "epochs": epochs,
        "early_stopped": bool(stale >= setup.patience),
        "train_seconds": wall,
        "arrival_samples_per_s": None,
        "batch_samples_per_s": steps * b / wall,
        "learner_cpu_cores": cpu / wall,
    }, trainer.model


def run_online(
    setup: CorrectionSetup, cp: Coupling, test: dict[str, np.ndarray], seed: int, progress: bool = True
) -> tuple[dict[str, Any], Any]:
    """Train while fine simulator actors stream fresh runs' samples into a Reservoir of the same capacity.

    Returns:
        The result row and the trained model.
    """
    tag = f"{setup.name}-{seed}-{time.monotonic_ns()}"
    channel = cp.channel(f"windows-{tag}", Reservoir(capacity=setup.capacity, seed=seed))
    workers = cp.workers()
    learner_worker, sim_workers = workers[-1], (workers[:-1] or workers)
    b = setup.batch_size
    example = {"field": np.zeros((b,) + setup.sample_shape, np.float32), "params": np.full((b, 3), 0.02, np.float32)}
    min_samples = 2 * b
    learner = cp.spawn(
        PacedLearnerActor, setup.trainer(seed), name=f"learner-{tag}", stream_samples=setup.stream_samples, batch_size=b,
        min_samples=min_samples, max_steps=setup.train_steps, warmup=example, inputs={"data": channel}, workers=learner_worker,
    )
    stream_key = jax.random.fold_in(jax.random.key(seed), 7919)  # never the offline or test runs

    def launch(i: int) -> Any:
        key = jax.random.fold_in(stream_key, i)
        params = _params(setup, key, setup.members)
        ref = cp.spawn(
            SimulatorActor, setup.simulator, params, name=f"sim-{tag}-{i}",
            steps=setup.blocks * setup.publish_every, publish_every=setup.publish_every, field=setup.field,
            features=_matrix(params), ensemble=True, seed=int(jax.random.randint(key, (), 0, 2**30)),
            outputs={"fields": channel}, workers=sim_workers[i % len(sim_workers)],
        )
        ref.start()
        return ref

    try:  # the run owns its learner and channel: nothing outlives it
        learner.start()
        launched = stream_until_trained(
            learner, launch, run_samples=setup.members * setup.blocks, stream_samples=setup.stream_samples,
            max_steps=setup.train_steps, min_samples=min_samples, sim_actors=setup.sim_actors,
            label=f"{setup.name} online", progress=progress,
        )
        final = learner.wait(30)
        history = learner.call("history")
        trainer = setup.trainer(seed)()
        trainer.set_weights(learner.call("weights"))
    finally:
        learner.release()
        cp.close_channel(channel)
    return online_row(
        history, final.info.get("train_steps", history[-1][1]) if history else 0, heldout_error(setup, trainer.model, test),
        simulations=launched * setup.members, stored_samples=setup.capacity, batch_size=b, learner_cpu_cores=None,
    ), trainer.model


def a_posteriori(
    setup: CorrectionSetup, models: dict[str, Any], seed: int, runs: int = 16, horizon: float = 12.0
) -> list[dict[str, Any]]:
    """The trained models inside the padded coarse solver on held-out runs, beside the plain solvers.

    ``augmentation_speedup.evaluate`` as for ``QUICK16``, with this setup's grids and ranges: per row
    the time until the mean vorticity correlation with the fine reference drops below 0.95, the final
    relative L2 error and the runs that blew up. Window models step at the windows'
    coarse step; the a-priori subgrid model at ``QUICK16``'s (0.08), the 16^2 solver's usual step.

    Args:
        setup: the problem (its simulator's grids, its parameter ranges).
        models: row name -> trained model.
        seed: the held-out runs' seed (their key is one the training and test runs never use).
        runs: held-out runs.
        horizon: time units compared (``QUICK16``'s is 12).
    """
    import augmentation_speedup as speedup  # a sibling script; only this option needs it

    cg = setup.simulator
    dt = cg.dt if setup.target is Target.WINDOW else speedup.QUICK16.coarse_dt
    ev = replace(speedup.QUICK16, coarse_n=cg.coarse_n, fine_n=cg.fine.n, coarse_dt=dt, viscosity=setup.viscosity,
                 amplitude=setup.amplitude, coarse_dealias=cg.coarse_dealias, eval_runs=runs, eval_time=horizon, repeats=1,
                 plain_steps=(1,))
    rows = speedup.evaluate(ev, {name: (m, 0.0) for name, m in models.items()}, jax.random.key(20_000 + seed))
    keep = ("method", "resolution", "time_to_corr_095", "censored", "rel_l2_final", "unstable_runs", "wall_s_per_time_unit")
    return [{k: r[k] for k in keep} for r in rows]


def run_setup(
    setup: CorrectionSetup, cp: Coupling, seed: int, test_sims: int = 16, posteriori_runs: int = 0, horizon: float = 12.0
) -> dict[str, Any]:
    """Offline and online on the same held-out runs; their rows, the ratio, and the plain coarse solver's error.

    With ``setup.thinned``, a third row (the thinned offline store) and its ratio, ``thinned_error_reduction``.
    With ``posteriori_runs``, ``"a_posteriori"``: the trained models inside the solver over ``horizon`` time
    units (:func:`a_posteriori`).
    """
    test = _flatten(simulate_samples(setup, jax.random.key(10_000 + seed), test_sims))
    offline, offline_model = run_offline(setup, test, seed)
    online, online_model = run_online(setup, cp, test, seed)
    extra: dict[str, Any] = {}
    models = {"offline": offline_model, "online": online_model}
    if setup.thinned:
        thinned, models["offline, thinned"] = run_offline(setup, test, seed, per_run=setup.thinned)
        extra["thinned_error_reduction"] = 1 - online["heldout_rel_l2"] / thinned["heldout_rel_l2"]
    if posteriori_runs:
        extra["a_posteriori"] = a_posteriori(setup, models, seed, posteriori_runs, horizon)
    n = setup.simulator.coarse_n
    return {
        "setup": setup.name,
        "grid": [n, n],
        "memory_budget_pairs": setup.capacity,
        "step_budget": setup.train_steps,
        "stream_budget_pairs": setup.stream_samples,
        "target": setup.target.value,
        "baseline": "plain coarse solver",
        "persistence_rel_l2": heldout_error(setup, None, test),
        "rows": [offline, online] + ([thinned] if setup.thinned else []),
        "online_over_offline_error": online["heldout_rel_l2"] / offline["heldout_rel_l2"],
        "online_error_reduction": 1 - online["heldout_rel_l2"] / offline["heldout_rel_l2"],
        **extra,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the quick step budget (150 instead of 400)")
    p.add_argument("--model", default="closure", choices=sorted(MODELS), help="the learned model (default closure)")
    p.add_argument("--viscosity", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="range of the drawn viscosity (default: the setup's, 0.015 0.03; tendency 0.02 0.04)")
    p.add_argument("--amplitude", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="range of the drawn forcing amplitude (default: the setup's, 0.8 1.2)")
    p.add_argument("--steps", type=int, default=0, help="override the step budget")
    p.add_argument("--offline-sims", type=int, default=0, help="override the stored simulations (the memory budget)")
    p.add_argument("--stream-sims", type=int, default=0, help="override the runs the online stream simulates (its simulation budget)")
    p.add_argument("--patience", type=int, default=0,
                   help="override offline early stopping's patience in epochs (a large value: train the whole budget, keep the best)")
    p.add_argument("--thinned", type=int, default=0, metavar="K",
                   help="also train offline on the same memory filled with K samples from each of more runs")
    p.add_argument("--a-posteriori", type=int, default=0, metavar="RUNS",
                   help="also run the trained models inside the coarse solver on RUNS held-out runs (correlation time)")
    p.add_argument("--horizon", type=float, default=12.0, help="time units the --a-posteriori runs are compared over")
    p.add_argument("--seeds", type=int, default=1, help="seeds seed .. seed+N-1 (mean and SE of the reduction)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    return p.parse_args(argv)


def with_overrides(setup: Any, **fields: Any) -> Any:
    """``setup`` (a dataclass) with each field in ``fields`` that was given (not ``None``, 0 or empty) replaced."""
    return replace(setup, **{k: v for k, v in fields.items() if v})


def setup_from_args(args: argparse.Namespace) -> CorrectionSetup:
    """``correction_setup`` with the command line's model (``tendency``: ``tendency_setup``), ranges and budgets."""
    base = tendency_setup(args.quick) if args.model == "tendency" else replace(correction_setup(args.quick), model=MODELS[args.model])
    return with_overrides(
        base,
        viscosity=tuple(args.viscosity or ()),
        amplitude=tuple(args.amplitude or ()),
        train_steps=args.steps,
        offline_sims=args.offline_sims,
        stream_sims=args.stream_sims,
        patience=args.patience,
        thinned=args.thinned,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    setup = setup_from_args(args)
    results = []
    with Coupling(n_workers=args.workers, threads_per_worker=1, dashboard_address=":0") as cp:
        for seed in range(args.seed, args.seed + args.seeds):
            res = {**run_setup(setup, cp, seed, posteriori_runs=args.a_posteriori, horizon=args.horizon), "seed": seed}
            offline, online, *thinned = res["rows"]
            print(f"seed {seed}: offline {100 * offline['heldout_rel_l2']:.2f}% (best step {offline['best_step']}, "
                  f"{offline['simulations']} runs stored), online {100 * online['heldout_rel_l2']:.2f}% "
                  f"({online['unique_samples']} samples from {online['simulations']} runs), online lower by "
                  f"{100 * res['online_error_reduction']:+.1f}%, plain coarse solver {100 * res['persistence_rel_l2']:.2f}%",
                  flush=True)
            for row in thinned:
                print(f"  {row['mode']}: {100 * row['heldout_rel_l2']:.2f}% ({row['simulations']} runs, best step "
                      f"{row['best_step']}); online lower by {100 * res['thinned_error_reduction']:+.1f}%", flush=True)
            for row in res.get("a_posteriori", ()):
                print(f"  in the solver: {row['method']:<22} {row['resolution']:>4}^2  t(corr < 0.95) "
                      f"{row['time_to_corr_095']:6.2f}{'+' if row['censored'] else ' '}  rel L2 at the end "
                      f"{row['rel_l2_final']:.3f}  blew up {row['unstable_runs']}", flush=True)
            results.append(res)
    mean, se = mean_and_se([r["online_error_reduction"] for r in results])
    summary = {"mean": mean, "se": se, "seeds": len(results), "model": args.model,
               "viscosity": list(setup.viscosity), "amplitude": list(setup.amplitude), "step_budget": setup.train_steps,
               "memory_budget_windows": setup.capacity, "stream_budget_windows": setup.stream_samples,
               "patience": setup.patience, "thinned": setup.thinned}
    print(f"online error reduction {100 * mean:+.1f} % +- {100 * se:.1f} % (mean +- SE over {len(results)} seeds; "
          "target >= 15 %)")
    if setup.thinned:
        summary["thinned_mean"], summary["thinned_se"] = mean_and_se([r["thinned_error_reduction"] for r in results])
        print(f"against the thinned store ({setup.thinned} per run): online lower by {100 * summary['thinned_mean']:+.1f} % "
              f"+- {100 * summary['thinned_se']:.1f} %")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"quick": args.quick, "results": results, "summary": summary}, f, indent=2, default=float)
    return summary


if __name__ == "__main__":
    main()

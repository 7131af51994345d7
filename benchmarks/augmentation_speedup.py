"""Does a learned correction make a coarse Navier-Stokes solver pay off? Accuracy against wall time.

2D Kolmogorov flow (``NavierStokes2D``: forcing ``A sin(k_f y)``, drag, a range
of viscosities and amplitudes). A fine solver is the reference. The learned
model (by default the spectral eddy-viscosity closure of
``learners.spectral_closure``; ``--model cnn`` for the additive CNN of
``learners.solver_correction``) lives inside the coarse solver, which forms its
advection product by the 3/2 rule (``dealias="pad"``) so that every mode of the
coarse grid is evolved. It is trained on fine runs restricted to the coarse
grid, once with one-step training and once unrolled through the coarse solver
(solver-in-the-loop, Um et al. 2020), then run on held-out initial conditions
and parameters next to plain solvers at 1x, 2x, 4x (and 8x where the reference
is finer) the coarse resolution, as in Kochkov et al., PNAS 2021, Fig. 2. The
plain rows use both dealiasing rules: ``plain`` (the 2/3 rule, the usual
choice) and ``plain-pad`` (the 3/2 rule), so the table separates what the
padded product alone gives from what the learned model adds.

Per row: wall seconds per simulated time unit and run (all held-out runs
advance together as one vmapped batch; every row is compiled before any is
timed, then the rows are timed in interleaved rounds and the fastest counts;
the time is divided by the runs), the vorticity correlation with the reference over time
(on the coarse grid, after the sharp spectral filter), the time until the mean
correlation first drops below 0.95 (``time_to_corr_095``; equal to the horizon
and ``censored`` when it never does), and the relative L2 error at the end.
The summary names the finest plain resolution whose time-to-0.95 (at that grid's
own step) the best corrected solver matches or beats, and the wall-time ratio
against the cheapest plain solver on that grid, at any step, that is as accurate.
``training_s`` of a corrected row is the time to get that model here: the fine
training simulations plus the optimiser steps (in this process). ``--online``
adds a ``corrected-online-...`` row per single-stage schedule, the same model
trained through the runtime (simulator actors stream fine runs into a learner
actor, ``_runtime_training.py``); its ``training_s`` is the time to that model
through the runtime, simulations and compilation included.

Run: ``python benchmarks/augmentation_speedup.py [--quick] [--json out.json]``.
``--quick``: coarse 32, reference 128, 16 held-out runs, the additive CNN on the
padded solver at twice the plain step (the regime is stated at ``QUICK``; 20-30
minutes on a shared 2-core machine). ``--quick16``: coarse 16, reference 64, 64
held-out runs, the spectral closure (the earlier measured setup of
docs/augmentation.md). Default: coarse 32, reference 128 (the old additive-CNN
setup). ``--tiny`` only exercises the code path (the smoke test).
``--model closure interp``: one or several learned models (``MODELS``; ``interp`` is the learned
interpolation of ``learners.learned_interpolation``, ``closure-interp`` it on top of the closure, ``tendency`` the
subgrid-tendency CNN of ``learners.subgrid_tendency``),
each trained with every schedule on the same windows. ``--eval-runs N``: the evaluation runs.
``--schedules 1 32 8,32,64``: the trainings, one row each (an unroll length, or a
curriculum of them over one training). ``--validation``: evaluate on runs drawn
from another key than the held-out runs, for choosing a configuration (the
held-out runs only report). ``--ic-bound``: add the reference solver started
from the coarse initial field (``reference-coarse-ic``; see ``evaluate``).
``--plain-steps 1 2`` (the default): every plain solver also at twice its own step (``plain-2dt``;
``1 2 4`` adds four times, where plain 32^2 of ``--quick16`` is still as accurate; the frames are then
compared every common multiple of all the steps);
the speed-up is against the cheapest plain row as accurate as the matched one
(see ``summarize``). ``--learned-step K``: the corrected solver's step in plain
coarse steps.
``blew up`` counts held-out runs whose field went non-finite (a step past the
solver's stability limit); they count as decorrelated from then on.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from coupler.learners.online import OptimizerConfig
from coupler.learners.solver_correction import CoarseCorrectionConfig, SolverCorrectionConfig, corrected_rollout
from coupler.learners.learned_interpolation import ClosedLearnedInterpolationConfig, LearnedInterpolationConfig
from coupler.learners.mixed_closure import MixedClosureConfig
from coupler.learners.spectral_closure import ClosureWithCorrectionConfig, SpectralClosureConfig
from coupler.learners.subgrid_tendency import SubgridTendencyConfig
from coupler.physics.coarse_graining import CoarseGrainedNavierStokes
from coupler.physics.navier_stokes import NavierStokes2D, NavierStokesParams, spectral_resample

THRESHOLD = 0.95
HELD_OUT_KEY = 1
VALIDATION_KEY = 2
"""``fold_in`` keys of the evaluation runs (the training runs use 0): the held-out set reports, the
validation set (``--validation``) chooses configurations."""
ONLINE_KEY = 3
"""``fold_in`` key of the runs ``--online`` streams (none of them is a training or an evaluation run)."""


@dataclass(frozen=True)
class Setup:
    """Sizes of one benchmark run.

    Attributes:
        coarse_n: the coarse grid; ``fine_n`` the reference grid (a power-of-two multiple).
        coarse_dt: the coarse time step (each plain solver at ``r`` x the resolution uses ``coarse_dt / r``).
        viscosity, amplitude: ranges of the log-uniform viscosity and uniform forcing amplitude.
        forcing_wavenumber: ``k_f`` of the Kolmogorov force ``A sin(k_f y)``.
        spinup: time units of fine simulation before a run's first frame (developed turbulence).
        train_runs, train_time: fine training runs and the time units each one simulates.
        window: coarse frames per training window (at least the unroll length + 1).
        train_steps, batch_size, learning_rate: optimiser budget (the same for both trainings).
        eval_runs, eval_time: held-out runs and the horizon they are compared over.
        frame_every: coarse steps between compared frames.
        model: the learned model (``SpectralClosureConfig``: a spectral eddy viscosity;
            ``CoarseCorrectionConfig``: an additive CNN).
        repeats: timed rounds of every row (the fastest counts).
        coarse_dealias: the corrected coarse solver's dealiasing (``"pad"``: the 3/2 rule, so
            every mode of the coarse grid is evolved; the plain rows show both rules).
        learned_step: the corrected solver's time step in plain coarse steps (``coarse_dt``): a
            learned model may step further than the CFL step the plain solvers use, as in
            Stachenfeld et al., ICLR 2022. Its training windows are taken at that step, and a
            plain row on the coarse grid at the same step shows what the step alone gives.
        unroll: steps of the solver-in-the-loop training (0: ``window - 1``).
        plain_steps: the time steps of the plain rows, in multiples of each grid's own step
            (``coarse_dt * coarse_n / n``): ``(1, 2)`` (the default) adds a ``plain-2dt`` and a
            ``plain-pad-2dt`` row per grid. A finer plain solver may stay as accurate at a longer step; the
            summary's speed-up is against the cheapest plain row that is as accurate, so
            without these rows it would flatter the corrected solver.
    """

    coarse_n: int = 32
    fine_n: int = 128
    coarse_dt: float = 0.02
    viscosity: tuple[float, float] = (1.5e-3, 4e-3)
    amplitude: tuple[float, float] = (0.8, 1.2)
    forcing_wavenumber: int = 4
    spinup: float = 15.0
    train_runs: int = 16
    train_time: float = 20.0
    window: int = 5
    train_steps: int = 1500
    batch_size: int = 16
    learning_rate: float = 1e-3
    eval_runs: int = 16
    eval_time: float = 8.0
    frame_every: int = 4
    model: Any = CoarseCorrectionConfig(width=16, depth=3, log_nu_center=-6.0)
    coarse_dealias: str = "truncate"
    repeats: int = 5
    learned_step: int = 1
    unroll: int = 0
    plain_steps: tuple[int, ...] = (1, 2)

    def __post_init__(self) -> None:
        if self.learned_step < 1 or self.frame_every % self.learned_step:
            raise ValueError(f"learned_step must be >= 1 and divide frame_every={self.frame_every}, got {self.learned_step}")
        if not self.plain_steps or any(m < 1 or self.frame_every % m for m in self.plain_steps):
            raise ValueError(f"plain_steps must be >= 1 and divide frame_every={self.frame_every}, got {self.plain_steps}")

    def coarse_grained(self) -> CoarseGrainedNavierStokes:
        """The fine reference seen on the coarse grid at the corrected solver's step (``learned_step`` plain steps)."""
        ratio = self.fine_n // self.coarse_n
        fine = NavierStokes2D(n=self.fine_n, dt=self.coarse_dt / ratio, forcing_wavenumber=self.forcing_wavenumber)
        return CoarseGrainedNavierStokes(
            fine, self.coarse_n, substeps=ratio * self.learned_step, window=self.window,
            spinup=round(self.spinup / fine.dt), coarse_dealias=self.coarse_dealias,
        )


# The 16^2 regime of the previous measurements (docs/augmentation.md, ``--quick16``): viscosity 0.02-0.04 at
# k_f = 4 and a Courant number of about 0.3. Plain 32^2 keeps a correlation above 0.95 several times longer
# than plain 16^2 there; at lower viscosity nothing on 16^2 stays correlated for long, at higher ones plain
# 16^2 is already accurate.
QUICK16 = Setup(
    coarse_n=16,
    fine_n=64,
    coarse_dt=0.08,
    viscosity=(2e-2, 4e-2),
    train_time=20.0,
    window=33,
    train_steps=600,
    learning_rate=3e-3,
    eval_runs=64,
    eval_time=12.0,
    frame_every=2,
    model=SpectralClosureConfig(hidden=32, depth=2),
    coarse_dealias="pad",
)

# The 32^2 regime (``--quick``): coarse 32^2 against a 128^2 reference, as Kochkov et al. advise (the coarse
# grid resolves the forcing scale and an octave above it, so what it misses is closer to slaved small-scale
# motion). Viscosity 0.008-0.016 at k_f = 4, Courant number about 0.2 for the plain solvers (dt 0.04 on
# 32^2): there plain 32^2 (2/3 rule) decorrelates after about 5 time units, the padded 32^2 after about 8,
# and plain 64^2 stays above 0.95 for 10 or more (measured on 8 runs, docs/augmentation.md); at 0.004-0.008
# the padded 32^2 solver falls below 0.95 at about 4 and plain 64^2 at about 8, less room for a small model
# to learn. The corrected solver steps twice as far (dt 0.08): on 32^2 the plain solver's accuracy does not
# change with that step (the "-2dt" row), so the model's cost is paid once per 0.08 time units.
QUICK = Setup(
    coarse_n=32,
    fine_n=128,
    coarse_dt=0.04,
    viscosity=(8e-3, 1.6e-2),
    spinup=15.0,
    train_runs=16,
    train_time=20.0,
    window=17,
    unroll=16,
    train_steps=400,
    batch_size=8,
    learning_rate=3e-3,
    eval_runs=16,
    eval_time=12.0,
    frame_every=4,
    model=CoarseCorrectionConfig(width=16, depth=3, field_scale=4.0, log_nu_center=-4.6),
    coarse_dealias="pad",
    learned_step=2,
    repeats=3,
)
DEMO = replace(QUICK16, train_runs=8, window=17, train_steps=200, eval_runs=16, repeats=3)
"""A smaller ``QUICK16`` for a demo (fewer training runs and steps, 16 held-out runs); same regime and rows."""

MODELS = {
    "closure": SpectralClosureConfig(hidden=32, depth=2),
    "closure-state": SpectralClosureConfig(state_features=True),
    "cnn": CoarseCorrectionConfig(width=8, depth=3, log_nu_center=-3.9),
    "closure-cnn": ClosureWithCorrectionConfig(SpectralClosureConfig(hidden=32, depth=2)),
    "mixed": MixedClosureConfig(hidden=32, depth=2, features=("similarity",)),
    "mixed-gradient": MixedClosureConfig(hidden=32, depth=2, features=("similarity", "gradient")),
    "interp": LearnedInterpolationConfig(width=8, depth=3),
    # The CNN that explains 75-85 % of the 16^2 subgrid tendency a priori (benchmarks/subgrid_apriori.py --cnn).
    "tendency": SubgridTendencyConfig(width=32, depth=5),
    "closure-interp": ClosedLearnedInterpolationConfig(SpectralClosureConfig(hidden=32, depth=2), LearnedInterpolationConfig(width=8, depth=3)),
}
"""The learned models ``--model`` picks from (the setup's own when not given)."""

TINY = replace(QUICK16, fine_n=32, learned_step=2, spinup=2.0, train_runs=2, train_time=1.0, window=5, train_steps=3, batch_size=2, eval_runs=2, eval_time=0.8, frame_every=2, model=SpectralClosureConfig(hidden=4, depth=1))


def draw_params(setup: Setup, key: jax.Array, runs: int) -> NavierStokesParams:
    """``runs`` parameter sets (batched leaves)."""
    fine = setup.coarse_grained().fine
    return jax.vmap(lambda k: fine.random_params(k, viscosity_range=setup.viscosity, amplitude_range=setup.amplitude))(
        jax.random.split(key, runs)
    )


def as_matrix(params: NavierStokesParams) -> jax.Array:
    """``(runs, 3)``: viscosity, amplitude, drag (the correction's parameter layout)."""
    return jnp.stack([params.viscosity, params.forcing_amplitude, params.drag], axis=-1).astype(jnp.float32)


def training_windows(setup: Setup, key: jax.Array) -> tuple[dict[str, np.ndarray], float]:
    """Non-overlapping coarse-grained windows of the training runs, and the seconds they took."""
    cg = setup.coarse_grained()
    t0 = time.perf_counter()
    params = draw_params(setup, jax.random.fold_in(key, 0), setup.train_runs)
    state = jax.jit(jax.vmap(cg.init))(jax.random.split(jax.random.fold_in(key, 1), setup.train_runs), params)
    k = setup.window - 1
    advance = jax.jit(jax.vmap(lambda s, p: jax.lax.fori_loop(0, k, lambda _, x: cg.step(x, p), s)))
    windows = []
    for _ in range(max(1, round(setup.train_time / (k * cg.dt)))):
        state = advance(state, params)
        windows.append(np.asarray(state.frames))
    field = np.concatenate(windows)
    p = np.tile(np.asarray(as_matrix(params)), (len(windows), 1))
    return {"field": field, "params": p}, time.perf_counter() - t0


def train(setup: Setup, data: dict[str, np.ndarray], unroll: int | tuple[int, ...], seed: int) -> tuple[Any, float, float]:
    """Train a correction; returns the model, the seconds and the last 10 steps' mean loss.

    Raises:
        FloatingPointError: when a step's loss is not finite (training diverged).

    ``unroll`` may be a curriculum ``(K1, K2, ...)``: ``train_steps`` split evenly
    over stages of increasing unroll length, the same model and optimiser state
    carried through (the learning-rate schedule spans all stages).
    """
    stages = (unroll,) if isinstance(unroll, int) else tuple(unroll)
    optimizer = OptimizerConfig(learning_rate=setup.learning_rate, warmup_steps=min(50, setup.train_steps), decay_steps=setup.train_steps)
    coarse = setup.coarse_grained().coarse()
    trainer = SolverCorrectionConfig(coarse, setup.model, optimizer, unroll=stages[0], seed=seed)()
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    losses = []
    for i, k in enumerate(stages):
        trainer.set_unroll(k)
        steps = setup.train_steps // len(stages) + (i < setup.train_steps % len(stages))
        for _ in range(steps):
            rows = rng.integers(0, len(data["field"]), setup.batch_size)
            # One-step training sees every pair of the window, unrolled training k + 1 consecutive frames
            # from a random start in the window (all of it when k = window - 1, the default): the same
            # data, and at most the same solver steps per optimiser step.
            if k == 1:
                field = data["field"][rows]
            else:
                start = int(rng.integers(0, data["field"].shape[1] - k))
                field = data["field"][rows, start : start + k + 1]
            losses.append(trainer.step({"field": field, "params": data["params"][rows]}))
            if not np.isfinite(losses[-1]):
                # Go no further: a model trained into NaN would make every row after it meaningless.
                raise FloatingPointError(
                    f"training diverged at step {len(losses)} (unroll {k}, learning rate {setup.learning_rate}): "
                    f"loss {losses[-1]}; expected a finite loss (lower the setup's learning_rate or the unroll)"
                )
    return trainer.model, time.perf_counter() - t0, float(np.mean(losses[-10:]))


def correlation(a: jax.Array, b: jax.Array) -> jax.Array:
    """Pearson-free vorticity correlation ``<a, b> / (|a| |b|)`` over the last two axes."""
    num = jnp.sum(a * b, axis=(-2, -1))
    return num / jnp.sqrt(jnp.sum(a * a, axis=(-2, -1)) * jnp.sum(b * b, axis=(-2, -1)))


def _timed(runs: list[tuple[Any, tuple[Any, ...], int]]) -> tuple[list[jax.Array], list[float]]:
    """Every ``fn(*args)`` of ``runs`` (``(fn, args, repeats)``) and its fastest of ``repeats`` timed runs.

    All are compiled (and run once) before any timing, then timed in interleaved
    rounds, so that a burst of load on a shared machine hits every row alike; the
    minimum over rounds is the cost.
    """
    outs = [jax.block_until_ready(fn(*args)) for fn, args, _ in runs]
    best = [float("inf")] * len(runs)
    for r in range(max(k for *_, k in runs)):
        for i, (fn, args, repeats) in enumerate(runs):
            if r >= repeats:
                continue
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            best[i] = min(best[i], time.perf_counter() - t0)
    return outs, best


def row(
    setup: Setup, method: str, resolution: int, frames: jax.Array, reference: jax.Array, wall: float, **extra: Any
) -> dict[str, Any]:
    """One result row from the frames ``(F, runs, n_c, n_c)`` of a method and of the reference."""
    per_run = correlation(frames, reference)
    # A run that blew up (a step past its stability limit) has decorrelated: NaN must not read as "still >= 0.95".
    finite = jnp.isfinite(per_run)
    corr = np.asarray(jnp.mean(jnp.where(finite, per_run, 0.0), axis=1))
    frame_time = setup.frame_every * setup.coarse_dt
    below = np.nonzero(corr < THRESHOLD)[0]
    censored = len(below) == 0
    ttc = setup.eval_time if censored else float(below[0]) * frame_time  # last frame time still >= 0.95
    rel = jnp.linalg.norm(frames[-1] - reference[-1], axis=(-2, -1)) / jnp.linalg.norm(reference[-1], axis=(-2, -1))
    return {
        "method": method,
        "resolution": resolution,
        "wall_s_per_time_unit": wall / setup.eval_time / setup.eval_runs,
        "time_to_corr_095": ttc,
        "censored": censored,
        "rel_l2_final": float(jnp.mean(rel)),
        "unstable_runs": int(jnp.sum(~jnp.all(finite, axis=0))),
        "correlation": [round(float(c), 4) for c in corr],
        **extra,
    }


def evaluate(
    setup: Setup, models: dict[str, tuple[Any, float]], key: jax.Array, ic_bound: bool = False
) -> list[dict[str, Any]]:
    """Rows of the plain solvers, the corrected coarse solvers and the reference on held-out runs.

    ``ic_bound`` adds the row ``reference-coarse-ic``: the reference solver started from the
    initial field filtered to the coarse grid. No candidate (the summary ignores it): exact
    dynamics from what the coarse grid knows at the start, while every finer plain solver
    starts with more modes. A practical, not a strict, bound on any coarse model: a model could
    still infer some of the dropped modes from the kept ones (they are zero here).
    """
    cg = setup.coarse_grained()
    fine, coarse = cg.fine, cg.coarse()
    params = draw_params(setup, jax.random.fold_in(key, 0), setup.eval_runs)
    pm = as_matrix(params)
    start = jax.jit(jax.vmap(cg.init))(jax.random.split(jax.random.fold_in(key, 1), setup.eval_runs), params).fine.w
    n_frames = round(setup.eval_time / (setup.frame_every * setup.coarse_dt))

    # (method, grid, solver or None, model or None): plain rows on both dealiasing rules, the corrected ones.
    specs: list[tuple[str, int, NavierStokes2D | None, Any]] = []
    n = setup.coarse_n
    while n < setup.fine_n:
        for dealias, method in (("truncate", "plain"), ("pad", "plain-pad")):
            multiples = set(setup.plain_steps)
            if n == setup.coarse_n and dealias == coarse.dealias:
                # The corrected solver's long step without the model: what the step alone costs in accuracy.
                multiples.add(setup.learned_step)
            for m in sorted(multiples):
                if n == setup.coarse_n and dealias == coarse.dealias and m == setup.learned_step:
                    sim = coarse
                else:
                    sim = NavierStokes2D(
                        n=n, dt=m * setup.coarse_dt * setup.coarse_n / n, forcing_wavenumber=fine.forcing_wavenumber, dealias=dealias
                    )
                specs.append((method if m == 1 else f"{method}-{m}dt", n, sim, None))
        n *= 2
    specs.append(("reference", setup.fine_n, fine, None))
    if ic_bound:
        specs.append(("reference-coarse-ic", setup.fine_n, fine, None))
    specs += [(name, setup.coarse_n, coarse, model) for name, (model, _) in models.items()]
    runs = []
    for method, n, sim, model in specs:
        assert sim is not None
        # Solver steps per compared frame (a frame every ``frame_every * coarse_dt`` time units).
        every = round(setup.frame_every * setup.coarse_dt / sim.dt)
        w0 = spectral_resample(spectral_resample(start, setup.coarse_n) if method == "reference-coarse-ic" else start, n)
        if model is None:
            fn = jax.jit(functools.partial(lambda sim, every, w: corrected_rollout(sim, None, w, pm, n_frames * every)[every - 1 :: every], sim, every))
            # The reference is timed once: it is no candidate, and the costliest row by far.
            runs.append((fn, (w0,), 1 if sim is fine else setup.repeats))
        else:
            graph, state = nnx.split(model)
            fn = jax.jit(functools.partial(
                lambda graph, every, w, s: corrected_rollout(coarse, nnx.merge(graph, s), w, pm, n_frames * every)[every - 1 :: every], graph, every
            ))
            runs.append((fn, (w0, state), setup.repeats))
    outs, walls = _timed(runs)
    frames = [spectral_resample(o, setup.coarse_n) for o in outs]
    reference = frames[[m for m, *_ in specs].index("reference")]
    return [
        row(setup, method, n, f, reference, wall, **({"training_s": models[method][1]} if method in models else {}))
        for (method, n, _, _), f, wall in zip(specs, frames, walls)
    ]


def _step_multiple(method: str) -> int:
    """The ``m`` of a ``...-{m}dt`` row (1: the grid's own, CFL-limited step)."""
    tail = method.rsplit("-", 1)[-1]
    return int(tail[:-2]) if tail.endswith("dt") and tail[:-2].isdigit() else 1


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The best corrected row, the finest plain grid it matches, the wall ratio, and whether learning was needed.

    The corrected solver matches a grid when it gets at least as far as one of the grid's
    plain solvers at that grid's own step (``plain``, ``plain-pad``): the accuracy of a solver
    with that resolution. The speed-up is against the cheapest plain row on that grid, at any
    step, that is at least as accurate as the matched solver: a finer solver that keeps its
    accuracy at a longer step (``plain-2dt``) is the baseline then, and a long-step row that
    lost accuracy or blew up never is.

    The reference is no candidate (it is the truth: its time is the horizon by
    construction). ``censored_match``: the corrected and the matched row both
    stayed above 0.95 to the horizon, so the match holds up to the horizon only.
    ``learned_adds``: the corrected solver beats every plain solver on its own
    grid, the padded one and the long-step ones included; without it the match is
    the numerics' doing, not the learned model's. ``payoff`` needs a finer
    matched grid, a learned gain and a speed-up above 1.
    """
    corrected = [r for r in rows if r["method"].startswith("corrected")]
    best = max(corrected, key=lambda r: (r["time_to_corr_095"], -r["rel_l2_final"]))
    plain = [r for r in rows if r["method"].startswith("plain")]
    own_grid = [r for r in plain if r["resolution"] == best["resolution"]]
    best_plain_own = max((r["time_to_corr_095"] for r in own_grid), default=0.0)
    learned_adds = best["time_to_corr_095"] > best_plain_own
    base = {
        "best_corrected": best["method"],
        "coarse_plain_time_to_corr_095": best_plain_own,
        "learned_adds": learned_adds,
    }
    matched = [r for r in plain if _step_multiple(r["method"]) == 1 and r["time_to_corr_095"] <= best["time_to_corr_095"]]
    if not matched:
        return {**base, "matched_resolution": None, "speedup_at_matched_accuracy": None, "payoff": False}
    finest = max(r["resolution"] for r in matched)
    # The most accurate solver of that grid the corrected one still matches; then the cheapest way to its accuracy.
    accuracy = max(r["time_to_corr_095"] for r in matched if r["resolution"] == finest)
    as_good = [r for r in plain if r["resolution"] == finest and r["time_to_corr_095"] >= accuracy]
    target = min(as_good, key=lambda r: r["wall_s_per_time_unit"])
    speedup = target["wall_s_per_time_unit"] / best["wall_s_per_time_unit"]
    return {
        **base,
        "matched_resolution": target["resolution"],
        "matched_method": target["method"],
        "matched_time_to_corr_095": accuracy,
        "matched_resolution_factor": target["resolution"] / best["resolution"],
        "speedup_at_matched_accuracy": speedup,
        "censored_match": bool(best["censored"] and target["censored"]),
        "payoff": bool(target["resolution"] > best["resolution"] and learned_adds and speedup > 1),
    }


def print_table(rows: list[dict[str, Any]], summary: dict[str, Any], setup: Setup, eval_set: str = "held-out") -> None:
    print(f"\nKolmogorov flow, {setup.eval_runs} {eval_set} runs, horizon {setup.eval_time} time units, reference {setup.fine_n}^2")
    print(f"{'method':<34}{'grid':>6}{'ms/time unit/run':>18}{'t(corr<0.95)':>14}{'rel L2 end':>12}{'training s':>12}{'blew up':>9}")
    for r in rows:
        t = f"{r['time_to_corr_095']:.2f}{'+' if r['censored'] else ''}"
        tr = f"{r['training_s']:.0f}" if "training_s" in r else "-"
        print(f"{r['method']:<34}{r['resolution']:>6}{1e3 * r['wall_s_per_time_unit']:>18.3f}{t:>14}{r['rel_l2_final']:>12.3f}{tr:>12}{r['unstable_runs']:>9}")
    name = summary["best_corrected"]
    if summary["matched_resolution"] is None:
        print(f"{name} matches no plain solver's time to correlation 0.95")
    elif summary["matched_resolution"] == setup.coarse_n:
        print(f"{name} matches only a plain solver on its own {setup.coarse_n}^2 grid: no payoff")
    else:
        s = summary["speedup_at_matched_accuracy"]
        word = f"{s:.2f}x faster" if s >= 1 else f"{1 / s:.2f}x slower"
        print(
            f"{name} matches plain {summary['matched_resolution']}^2 ({summary['matched_resolution_factor']:.0f}x resolution, "
            f"t = {summary['matched_time_to_corr_095']:.2f}) and is {word} than the cheapest "
            f"{summary['matched_resolution']}^2 solver as accurate ({summary['matched_method']})"
            + (" (both stay above 0.95 to the horizon)" if summary["censored_match"] else "")
        )
    if not summary["learned_adds"]:
        print(
            f"but a plain solver on the {setup.coarse_n}^2 grid already reaches {summary['coarse_plain_time_to_corr_095']:.2f}: "
            "the learned model adds nothing to the time to 0.95 (no learned payoff)"
        )
    print(f"payoff: {'yes' if summary['payoff'] else 'no'}")
    print("('+': correlation never fell below 0.95 within the horizon)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="coarse 32, reference 128, 16 held-out runs (10-20 minutes on 2 shared cores)")
    size.add_argument("--quick16", action="store_true", help="coarse 16, reference 64, 64 held-out runs (the earlier measured setup)")
    size.add_argument("--tiny", action="store_true", help="code path only (seconds; the smoke test)")
    size.add_argument("--demo", action="store_true", help="QUICK made smaller for a demo (16 held-out runs)")
    p.add_argument("--unroll", type=int, default=0, help="unroll length of the solver-in-the-loop training (default: the setup's, else window - 1)")
    p.add_argument("--train-steps", type=int, default=0, help="override the optimiser steps of each training")
    p.add_argument("--train-runs", type=int, default=0, help="override the number of fine training runs")
    p.add_argument("--eval-runs", type=int, default=0, help="override the number of held-out (or validation) runs")
    p.add_argument(
        "--model", default=[], nargs="+", choices=list(MODELS),
        help="the learned model(s) (default: the setup's); with several, every model is trained with every "
             "schedule on the same data and its rows are named 'corrected-MODEL-...'",
    )
    p.add_argument("--viscosity", default="", help="override the viscosity range, 'lo,hi'")
    p.add_argument("--forcing-wavenumber", type=int, default=0, help="override k_f of the Kolmogorov forcing (default 4)")
    p.add_argument("--eval-time", type=float, default=0.0, help="override the horizon (time units)")
    p.add_argument(
        "--learned-step", type=int, default=0,
        help="override the corrected solver's step, in plain coarse steps (it must divide the frame interval)",
    )
    p.add_argument(
        "--plain-steps", type=int, nargs="+", default=None,
        help="the plain rows' steps in multiples of each grid's own step, e.g. '1 2' (default: the setup's)",
    )
    p.add_argument(
        "--schedules", nargs="+", default=None,
        help="the trainings, one row each: an unroll length ('1': one-step) or a curriculum 'K1,K2,...' "
             "(train steps split evenly over the stages); default: '1' and the unroll length",
    )
    p.add_argument(
        "--validation", action="store_true",
        help="evaluate on validation runs (other seeds than the held-out set): for choosing a configuration",
    )
    p.add_argument(
        "--ic-bound", action="store_true",
        help="add the reference solver started from the coarse initial field (the bound of any coarse model)",
    )
    p.add_argument(
        "--online", action="store_true",
        help="also train each single-stage schedule through the runtime (simulator actors stream fine runs into a "
             "learner actor); its row's training s is the time to that model, simulations included",
    )
    p.add_argument("--workers", type=int, default=2, help="worker processes of the local cluster --online starts (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    return p.parse_args(argv)


def train_online(
    setup: Setup, choices: list[tuple[str, Any]], schedules: list[tuple[int, ...]], args: argparse.Namespace,
    models: dict[str, tuple[Any, float]], key: jax.Array,
) -> dict[str, dict[str, Any]]:
    """``--online``: each model and single-stage schedule trained again through the runtime, added to ``models``.

    Returns:
        Per added row: the simulations streamed, the windows the learner received and its final loss.
    """
    from coupler.runtime import Coupling

    from _runtime_training import train_through_runtime

    out: dict[str, dict[str, Any]] = {}
    with Coupling(n_workers=args.workers, threads_per_worker=1, dashboard_address=":0") as cp:
        for label, config in choices:
            for stages in schedules:
                if len(stages) > 1:
                    print(f"--online: the curriculum {stages} is trained in this process only", flush=True)
                    continue
                name = ("corrected-online-1step" if stages == (1,) else f"corrected-online-unroll{stages[0]}")
                name = f"corrected-online-{label}{name[len('corrected-online'):]}" if len(choices) > 1 else name
                run = train_through_runtime(replace(setup, model=config), cp, stages[0], args.seed, key=key)
                print(f"{name}: {setup.train_steps} steps through the runtime in {run.seconds:.1f} s "
                      f"({run.simulations} fine runs streamed, {run.windows} windows), final loss {run.loss:.2e}", flush=True)
                models[name] = (run.model, run.seconds)
                out[name] = {"simulations": run.simulations, "windows": run.windows, "loss": run.loss, "seconds": run.seconds}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    setup = TINY if args.tiny else DEMO if args.demo else QUICK if args.quick else QUICK16 if args.quick16 else Setup()
    unroll = args.unroll or setup.unroll or setup.window - 1
    schedules = [tuple(int(k) for k in s.split(",")) for s in args.schedules] if args.schedules else [(1,), (unroll,)]
    setup = replace(setup, window=max(setup.window, max(max(s) for s in schedules) + 1))
    if args.train_steps:
        setup = replace(setup, train_steps=args.train_steps)
    if args.train_runs:
        setup = replace(setup, train_runs=args.train_runs)
    if args.viscosity:
        lo, hi = (float(v) for v in args.viscosity.split(","))
        setup = replace(setup, viscosity=(lo, hi))
    if args.forcing_wavenumber:
        setup = replace(setup, forcing_wavenumber=args.forcing_wavenumber)
    if args.eval_time:
        setup = replace(setup, eval_time=args.eval_time)
    if args.eval_runs:
        setup = replace(setup, eval_runs=args.eval_runs)
    if args.learned_step or args.plain_steps:
        learned_step = args.learned_step or setup.learned_step
        plain_steps = tuple(args.plain_steps or setup.plain_steps)
        # Frames at a common multiple of every step, so that every row is compared at the same times.
        every = math.lcm(setup.frame_every, learned_step, *plain_steps)
        setup = replace(setup, frame_every=every, learned_step=learned_step, plain_steps=plain_steps)
    choices = [(name, MODELS[name]) for name in args.model] or [("", setup.model)]
    setup = replace(setup, model=choices[0][1])
    key = jax.random.key(args.seed)
    data, data_s = training_windows(setup, jax.random.fold_in(key, 0))
    print(f"training data: {data['field'].shape[0]} windows of {setup.window} frames in {data_s:.1f} s", flush=True)
    models = {}
    for label, config in choices:
        for stages in schedules:
            name = "corrected-1step" if stages == (1,) else f"corrected-unroll{'-'.join(map(str, stages))}"
            name = f"corrected-{label}{name[len('corrected'):]}" if len(choices) > 1 else name
            model, train_s, loss = train(replace(setup, model=config), data, stages, args.seed)
            print(f"{name}: {setup.train_steps} steps in {train_s:.1f} s, final loss {loss:.2e}", flush=True)
            models[name] = (model, data_s + train_s)
    online: dict[str, dict[str, Any]] = {}
    if args.online:
        online = train_online(setup, choices, schedules, args, models, jax.random.fold_in(key, ONLINE_KEY))
    # The held-out runs are never used to choose a configuration: --validation draws other runs for that.
    rows = evaluate(
        setup, models, jax.random.fold_in(key, VALIDATION_KEY if args.validation else HELD_OUT_KEY), ic_bound=args.ic_bound
    )
    summary = summarize(rows)
    print_table(rows, summary, setup, "validation" if args.validation else "held-out")
    result = {
        "rows": rows,
        "summary": summary,
        "setup": {**asdict(setup), "model": asdict(setup.model)},
        "models": {label or "default": asdict(config) for label, config in choices},
        "eval_set": "validation" if args.validation else "held-out",
        "online": online,
        "schedules": [list(s) for s in schedules],
        "mode": "tiny" if args.tiny else "demo" if args.demo else "quick" if args.quick else "quick16" if args.quick16 else "full",
        "device": jax.devices()[0].platform,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])

"""Augmentation on 2D turbulence: an FNO trained online, then a hybrid solver.

1. An ensemble of ``NavierStokes2D`` runs (random viscosity, Kolmogorov forcing
   amplitude and initial vorticity, spun up past the initial transient)
   streams pairs ``(w_t, w_{t+K})`` into a ``Reservoir`` channel; a learner
   actor trains an ``FNO2D`` on them while they run and publishes its weights
   on a ``Latest`` channel every few steps.
2. Meanwhile a ``HybridSimulatorActor`` on held-out parameters takes those
   weights as they arrive and does half of its K-step blocks with the surrogate.
3. Afterwards, replacing ``k`` of every ``m`` blocks is timed against the solver
   alone on held-out runs (both blocks one jitted call each, warmed up, best of
   interleaved rounds), with the error against the solver (relative L2 and
   vorticity correlation), and a PNG shows truth, surrogate and hybrid.

Why the defaults (64x64, dt 0.015, K=20, an FNO of width 12 and depth 3) can
pay: the pseudo-spectral solver is cheap per step, about 22 FFTs of one field,
while an FNO layer costs two FFTs per channel, so the width-16, depth-4 FNO of
earlier versions cost as much as 10 solver steps on 32x32 and K=10 saved
nothing. On a finer grid the stable step shrinks with the grid spacing (CFL),
so a fixed physical time takes ~N steps of ~N^2 log N work, and one pass
costs ~N^2 log N: on 64x64 a 20-step jump (t = 0.3) costs several passes of
the smaller FNO. Longer jumps are cheaper still but much harder to predict:
in trials on 32x32, K=20 and K=30 gave 22% to 44% one-jump error.

Run: ``coupler demo augmentation_turbulence -- [--train-steps 1200] [--out artifacts]``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from coupler.actors.base import ActorHost
from coupler.actors.hybrid import HybridSchedule, HybridSimulatorActor
from coupler.actors.learner import LearnerActor
from coupler.actors.simulator import SimulatorActor
from coupler.learners.fno import FNOConfig
from coupler.learners.online import OnlineTrainer, OptimizerConfig
from coupler.physics.navier_stokes import NavierStokes2D
from coupler.runtime import Coupling, Latest, Reservoir
from coupler.demos.quick import parse_with_quick

VISCOSITY = (0.005, 0.05)
AMPLITUDE = (0.5, 2.0)
MIN_CORRELATION = 0.9  # a hybrid is named in the headline only if its final vorticity correlation reaches this


@dataclass(frozen=True)
class SpunUpNavierStokes(NavierStokes2D):
    """``NavierStokes2D`` whose runs start ``spin_up`` steps after the random initial field.

    The random field of ``init`` grows into forced turbulence over a few time
    units; training and held-out runs both start after that transient, in
    statistically steady Kolmogorov flow, where the surrogate is meant to work.
    The clock and the step count start at zero after the spin-up.

    Args:
        spin_up: solver steps taken inside ``init`` (0: ``NavierStokes2D.init``).
        **kwargs: the fields of ``NavierStokes2D``.
    """

    spin_up: int = 0

    def init(self, key: jax.Array, params: Any) -> Any:
        state = self.advance(super().init(key, params), params, self.spin_up)
        return state._replace(t=jnp.zeros((), jnp.float32), step=jnp.zeros((), jnp.int32))


class FieldMonitor(ActorHost):
    """Keeps the newest field of its ``"fields"`` input (the hybrid's output) and a count."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.received = 0

    def step(self) -> bool:
        self.inputs["fields"].receive()
        self.received += 1
        return True

    def info(self) -> dict[str, Any]:
        return {"received": self.received}


def draw(sim: NavierStokes2D, key: jax.Array, n: int) -> Any:
    """``n`` parameter sets (stacked)."""
    return jax.vmap(lambda k: sim.random_params(k, VISCOSITY, AMPLITUDE))(jax.random.split(key, n))


def features(params: Any) -> np.ndarray:
    """``[log nu, A]`` scaled to about [-1, 1] (the surrogate's conditioning)."""
    lo, hi = np.log(VISCOSITY)
    log_nu = (np.log(np.asarray(params.viscosity)) - (lo + hi) / 2) / ((hi - lo) / 2)
    amp = (np.asarray(params.forcing_amplitude) - sum(AMPLITUDE) / 2) / ((AMPLITUDE[1] - AMPLITUDE[0]) / 2)
    return np.stack([log_nu, amp], axis=-1).astype(np.float32)


def rel_l2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt(((a - b) ** 2).sum((-2, -1)) / (b**2).sum((-2, -1)))


def train_online(args: argparse.Namespace, sim: NavierStokes2D, config: FNOConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Steps 1 and 2: online training with a hybrid actor picking up the weights live."""
    with Coupling(n_workers=args.workers, threads_per_worker=1, dashboard_address=":0") as cp:
        print(f"coupler: dashboard at {cp.dashboard_link}", flush=True)
        cp.channel("pairs", Reservoir(capacity=args.capacity, seed=args.seed))
        cp.channel("weights", Latest())
        cp.channel("hybrid-fields", Latest())
        workers = cp.workers()
        learner_worker, sim_worker = workers[-1], workers[0]
        n, b = args.grid, args.batch_size
        example = {"input": np.zeros((b, n, n), np.float32), "target": np.zeros((b, n, n), np.float32),
                   "params": np.zeros((b, 2), np.float32)}
        optimizer = OptimizerConfig(learning_rate=3e-3, decay_steps=args.train_steps)
        learner = cp.spawn(
            LearnerActor, functools.partial(OnlineTrainer, config, optimizer, seed=args.seed), name="learner",
            batch_size=b, min_samples=2 * b, max_steps=args.train_steps, publish_every=args.publish_every,
            warmup=example, inputs={"data": "pairs"}, outputs={"weights": "weights"}, workers=learner_worker,
        )
        learner.start()
        print("coupler: compiling the learner's training step ...", flush=True)
        while not learner.status().info.get("ready"):
            if learner.status().state == "failed":
                learner.wait()
            time.sleep(0.2)
        monitor = cp.spawn(FieldMonitor, name="monitor", inputs={"fields": "hybrid-fields"}, workers=learner_worker)
        monitor.start()
        live_params = draw(sim, jax.random.key(args.seed + 1), 4)
        hybrid = cp.spawn(
            HybridSimulatorActor, sim, live_params, name="hybrid", surrogate=config, replace=1, every=2,
            steps=10**9, publish_every=args.k, field="w", mode="snapshots", ensemble=True,
            features=features(live_params), inputs={"weights": "weights"}, outputs={"fields": "hybrid-fields"},
            workers=sim_worker,
        )
        hybrid.start()
        launched, active, next_report = 0, [], 0.0
        while not learner.status().done:
            for ref in [r for r in active if r.status().done]:
                active.remove(ref)
            if not active:
                params = draw(sim, jax.random.fold_in(jax.random.key(args.seed), launched), args.members)
                ref = cp.spawn(
                    SimulatorActor, sim, params, name=f"ns-{launched}", steps=args.blocks * args.k,
                    publish_every=args.k, field="w", features=features(params), mode="pairs", ensemble=True,
                    seed=launched, outputs={"fields": "pairs"}, workers=sim_worker,
                )
                ref.start()
                active.append(ref)
                launched += 1
            if time.monotonic() >= next_report:
                li, hi = learner.status().info, hybrid.status().info
                print(f"  learner step {li.get('train_steps', 0)}/{args.train_steps} (received {li.get('received', 0)}); "
                      f"hybrid blocks solver {hi.get('solver_blocks', 0)} / surrogate {hi.get('surrogate_blocks', 0)}, "
                      f"weights of step {hi.get('weights_step')}", flush=True)
                next_report = time.monotonic() + 10
            time.sleep(0.25)
        learner.wait(30)
        live = hybrid.stop().info
        monitor.stop()
        for ref in active:
            ref.stop()
        weights = learner.call("weights")
        live["simulations_streamed"] = launched * args.members
        live["samples_streamed"] = int(cp.channels()["pairs"].received)
    return weights, live


def vorticity_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of two vorticity fields over the grid (the last two axes)."""
    a = a - a.mean((-2, -1), keepdims=True)
    b = b - b.mean((-2, -1), keepdims=True)
    return (a * b).sum((-2, -1)) / np.sqrt((a**2).sum((-2, -1)) * (b**2).sum((-2, -1)))


def surrogate_block(sim: NavierStokes2D, trainer: OnlineTrainer, k: int) -> Callable[[Any, jax.Array], Any]:
    """One surrogate jump of ``k`` steps as a jitted pure function of a (vmapped) state.

    The weights are an argument of the compiled function (``nnx.split``), so a
    call costs one dispatch like the solver's jitted block: no host copy and no
    Python graph traversal (which ``trainer.predict`` has).
    """
    graphdef, weights = nnx.split(trainer.model)
    jitted = jax.jit(
        lambda w, s, feats: s._replace(w=nnx.merge(graphdef, w)(s.w, feats), t=s.t + jnp.float32(k * sim.dt), step=s.step + k)
    )
    return functools.partial(jitted, weights)


@dataclass(frozen=True)
class HybridRuns:
    """The solver alone and each hybrid setting on the same held-out runs: best times and fields.

    Attributes:
        k: solver steps per block.
        schedules: the settings, the solver alone (``0/1``) first.
        seconds: best wall time of each setting over the timing rounds.
        fields: each setting's vorticity after every block, ``(blocks, runs, n, n)``.
        pass_seconds: best time of one surrogate pass (all runs at once).
        block_seconds: best time of one solver block of ``k`` steps (all runs at once).
    """

    k: int
    schedules: tuple[HybridSchedule, ...]
    seconds: tuple[float, ...]
    fields: tuple[np.ndarray, ...]
    pass_seconds: float
    block_seconds: float


def _best_of(fn: Callable[[], Any], repeats: int) -> float:
    best = float("inf")
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
    return best


def hybrid_runs(sim: NavierStokes2D, trainer: OnlineTrainer, state: Any, params: Any, feats: np.ndarray, k: int,
                blocks: int, schedules: tuple[HybridSchedule, ...], repeats: int = 5) -> HybridRuns:
    """Time the solver alone against hybrids over ``blocks`` K-step blocks of the same runs.

    Both kinds of block are one jitted call each, compiled and warmed up before
    any timing; each round runs every setting once, back to back (so machine load
    hits them alike), each run ends with ``block_until_ready``, and the fastest of
    ``repeats`` rounds counts. ``schedules`` must start with the solver alone.
    """
    if schedules[0].replace != 0:
        raise ValueError(f"the first schedule must be the solver alone (0/m), got {schedules[0]}")
    solver = jax.jit(jax.vmap(lambda s, p: sim.advance(s, p, k)))
    jump = surrogate_block(sim, trainer, k)
    f = jnp.asarray(feats)
    jax.block_until_ready(solver(state, params))  # compile both before timing
    jax.block_until_ready(jump(state, f))

    def run(schedule: HybridSchedule) -> list[jax.Array]:
        s, out = state, []
        for b in range(blocks):
            s = jump(s, f) if schedule.uses_surrogate(b) else solver(s, params)
            out.append(s.w)
        return jax.block_until_ready(out)

    best = [float("inf")] * len(schedules)
    fields: list[Any] = [None] * len(schedules)
    for _ in range(max(1, repeats)):
        for i, schedule in enumerate(schedules):
            t0 = time.perf_counter()
            fields[i] = run(schedule)
            best[i] = min(best[i], time.perf_counter() - t0)
    return HybridRuns(
        k=k, schedules=tuple(schedules), seconds=tuple(best),
        fields=tuple(np.stack([np.asarray(w) for w in per_block]) for per_block in fields),
        pass_seconds=_best_of(lambda: jump(state, f), repeats),
        block_seconds=_best_of(lambda: solver(state, params), repeats),
    )


def trade_off_rows(runs: HybridRuns) -> list[dict[str, Any]]:
    """One row per setting: the speed-up is the ratio of the measured times; errors are
    the final (and block-averaged) relative L2 and the final vorticity correlation
    against the solver alone, averaged over the runs. ``rel_l2_first`` is the error
    after the first block: one surrogate jump's error where the setting starts with one."""
    truth, t_solver = runs.fields[0], runs.seconds[0]
    blocks = truth.shape[0]
    steps_solver = blocks * runs.k
    rows = []
    for schedule, seconds, fields in zip(runs.schedules, runs.seconds, runs.fields):
        steps = runs.k * sum(not schedule.uses_surrogate(b) for b in range(blocks))
        err = rel_l2(fields, truth)  # (blocks, runs)
        rows.append({
            "k/m": f"{schedule.replace}/{schedule.every}", "solver_steps": steps,
            "step_speedup": steps_solver / steps if steps else float("inf"),
            "wall_speedup": t_solver / seconds, "wall_ms": 1e3 * seconds,
            "rel_l2_first": float(err[0].mean()), "rel_l2_final": float(err[-1].mean()), "rel_l2_mean": float(err.mean()),
            "corr_final": float(vorticity_correlation(fields[-1], truth[-1]).mean()),
        })
    return rows


def trade_off(args: argparse.Namespace, sim: NavierStokes2D, config: FNOConfig,
              weights: dict[str, Any]) -> tuple[HybridRuns, dict[str, np.ndarray]]:
    """Step 3: time and error of k-of-m hybrids on held-out runs, against the pure solver."""
    trainer = OnlineTrainer(config)
    trainer.set_weights(weights)
    params = draw(sim, jax.random.key(10_000 + args.seed), args.test_members)
    state = jax.vmap(sim.init)(jax.random.split(jax.random.key(20_000 + args.seed), args.test_members), params)
    schedules = [HybridSchedule(0, 1)] + [HybridSchedule(*map(int, s.split("/"))) for s in args.settings.split(",")]
    schedules.append(HybridSchedule(1, 1))
    runs = hybrid_runs(sim, trainer, state, params, features(params), args.k, args.rollout_blocks, tuple(schedules),
                       args.repeats)
    pictures = {"truth": runs.fields[0][-1, 0], "surrogate 1/1": runs.fields[-1][-1, 0]}
    mid = len(schedules) // 2
    pictures[f"hybrid {schedules[mid].replace}/{schedules[mid].every}"] = runs.fields[mid][-1, 0]
    return runs, pictures


def plot(pictures: dict[str, np.ndarray], t_end: float, path: str) -> None:
    """Vorticity panels side by side, one colour scale, to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lim = max(float(np.abs(f).max()) for f in pictures.values())
    fig, axes = plt.subplots(1, len(pictures), figsize=(4 * len(pictures), 4), constrained_layout=True)
    for ax, (title, field) in zip(axes, pictures.items()):
        im = ax.imshow(field.T, origin="lower", cmap="RdBu_r", vmin=-lim, vmax=lim, extent=(0, 2 * np.pi, 0, 2 * np.pi))
        ax.set_title(f"{title}, t = {t_end:.1f}")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="vorticity")
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --quick: small enough for a smoke run (the wheel test runs one) in well under a minute.
QUICK = {"grid": 16, "k": 5, "spin_up": 20, "blocks": 4, "members": 4, "train_steps": 20, "publish_every": 10,
         "capacity": 128, "batch_size": 8, "settings": "1/2", "rollout_blocks": 2, "test_members": 4, "repeats": 1}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", type=int, default=64, help="grid points per side (default 64)")
    p.add_argument("--dt", type=float, default=0.015, help="solver time step (default 0.015: CFL about 0.6 on 64x64)")
    p.add_argument("--k", type=int, default=20, help="solver steps one surrogate jump replaces (default 20)")
    p.add_argument("--spin-up", type=int, default=200,
                   help="solver steps before a run starts, past the initial transient (default 200: t = 3)")
    p.add_argument("--blocks", type=int, default=16, help="K-step blocks per streamed simulation (default 16)")
    p.add_argument("--members", type=int, default=16, help="ensemble members per simulator actor (default 16)")
    p.add_argument("--train-steps", type=int, default=1200, help="learner steps (default 1200)")
    p.add_argument("--publish-every", type=int, default=100, help="learner steps between weight broadcasts")
    p.add_argument("--capacity", type=int, default=2048, help="reservoir capacity in pairs (default 2048)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--fno-width", type=int, default=12, help="channels of the FNO's Fourier layers (default 12)")
    p.add_argument("--fno-depth", type=int, default=3, help="Fourier layers (default 3)")
    p.add_argument("--settings", default="1/4,1/2,3/4", help="k/m hybrid settings, comma-separated")
    p.add_argument("--rollout-blocks", type=int, default=8, help="blocks of the held-out hybrid runs (default 8)")
    p.add_argument("--test-members", type=int, default=16, help="held-out runs (default 16)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds; the fastest of each setting counts")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default="artifacts", help="directory of the PNG (default artifacts/)")
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    p.add_argument("--seed", type=int, default=0)
    return parse_with_quick(p, argv, QUICK)


def wall_vs_solver(speedup: float) -> str:
    """A setting's wall time against the pure solver's, said as a speed-up or as a slowdown (never a speed-up below 1)."""
    return f"{speedup:.2f}x faster" if speedup >= 1 else f"{1 / speedup:.2f}x SLOWER"


def best_setting(rows: list[dict[str, Any]], min_correlation: float = MIN_CORRELATION) -> dict[str, Any] | None:
    """The fastest hybrid faster than the solver whose final vorticity correlation reaches ``min_correlation``."""
    good = [r for r in rows if r["k/m"] != "0/1" and r["wall_speedup"] > 1 and r["corr_final"] >= min_correlation]
    return max(good, key=lambda r: r["wall_speedup"]) if good else None


def trade_off_lines(rows: list[dict[str, Any]], *, k: int, pass_ms: float, block_ms: float,
                    min_correlation: float = MIN_CORRELATION) -> list[str]:
    """The trade-off table, why a setting is slower when one is, and a headline.

    Args:
        rows: :func:`trade_off_rows` (the first is the pure solver, 0/1).
        k: solver steps per block.
        pass_ms: measured time of one surrogate pass over all runs.
        block_ms: measured time of one solver block of ``k`` steps over all runs.
        min_correlation: the final vorticity correlation a setting needs to be the headline.

    Returns:
        The printed lines.
    """
    lines = [f"  one surrogate pass {pass_ms:.1f} ms vs one block of K={k} solver steps {block_ms:.1f} ms "
             f"(the pass costs {k * pass_ms / block_ms:.1f} solver steps)",
             *[f"  one surrogate jump from the held-out start: rel. L2 {100 * r['rel_l2_first']:.1f}% against the solver"
               for r in rows[-1:] if r["solver_steps"] == 0],
             f"  {'k/m':<6}{'solver steps':>13}{'step speed-up':>15}{'wall vs solver':>16}{'wall ms':>10}"
             f"{'rel L2 final':>14}{'rel L2 mean':>13}{'corr final':>12}"]
    for r in rows:
        wall = "the solver" if r["k/m"] == "0/1" else wall_vs_solver(r["wall_speedup"])
        lines.append(f"  {r['k/m']:<6}{r['solver_steps']:>13d}{r['step_speedup']:>14.2f}x{wall:>16}"
                     f"{r['wall_ms']:>10.1f}{100 * r['rel_l2_final']:>13.2f}%{100 * r['rel_l2_mean']:>12.2f}%"
                     f"{r['corr_final']:>12.3f}")
    slower = [r["k/m"] for r in rows if r["k/m"] != "0/1" and r["wall_speedup"] < 1]
    if slower:
        lines.append(
            f"  slower than the solver: {', '.join(slower)}. Why: a surrogate block ({pass_ms:.1f} ms) "
            f"{'costs more than' if pass_ms >= block_ms else 'saves less than'} the K={k} solver block it replaces "
            f"({block_ms:.1f} ms), and the run's dispatch and copies are paid either way; a longer jump (--k) "
            "or a finer grid (--grid, where the solver's cost per time unit grows faster than the pass's) pays more."
        )
    best = best_setting(rows, min_correlation)
    faster = [r["k/m"] for r in rows if r["k/m"] != "0/1" and r["wall_speedup"] > 1]
    if best is not None:
        lines.append(
            f"  => hybrid {best['k/m']} blocks by surrogate: {best['wall_speedup']:.2f}x faster than the solver "
            f"({best['wall_ms']:.1f} ms vs {rows[0]['wall_ms']:.1f} ms), rel. L2 {100 * best['rel_l2_final']:.1f}% "
            f"and vorticity correlation {best['corr_final']:.3f} at the end"
        )
    elif faster:
        lines.append(f"  => faster settings ({', '.join(faster)}) end below vorticity correlation {min_correlation}: "
                     "none pays at that accuracy here")
    else:
        lines.append("  => no hybrid setting is faster than the solver here (why: above)")
    return lines


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    sim = SpunUpNavierStokes(n=args.grid, dt=args.dt, spin_up=args.spin_up)
    config = FNOConfig(modes=min(8, args.grid // 4), width=args.fno_width, depth=args.fno_depth, n_params=2, hidden=32,
                       field_scale=3.0)
    weights, live = train_online(args, sim, config)
    runs, pictures = trade_off(args, sim, config, weights)
    rows = trade_off_rows(runs)
    os.makedirs(args.out, exist_ok=True)
    png = os.path.join(args.out, "augmentation_turbulence.png")
    t_end = args.rollout_blocks * args.k * sim.dt
    plot(pictures, t_end, png)

    print()
    print(f"Online training: {live['simulations_streamed']} simulations, {live['samples_streamed']} pairs streamed")
    print(f"Hybrid actor during training (1 of 2 blocks by surrogate once weights arrived): "
          f"{live['solver_blocks']} solver / {live['surrogate_blocks']} surrogate blocks, "
          f"last weights of step {live['weights_step']}")
    print()
    print(f"Hybrid trade-off on {args.test_members} held-out runs ({sim.n}x{sim.n}, from t = {args.spin_up * sim.dt:.1f} "
          f"after spin-up), {args.rollout_blocks} blocks of K={args.k} steps (t = {t_end:.2f}); solver and surrogate "
          f"blocks each one jitted call, warmed up, block_until_ready, best of {args.repeats} interleaved rounds; "
          "errors against the pure solver:")
    for line in trade_off_lines(rows, k=args.k, pass_ms=1e3 * runs.pass_seconds, block_ms=1e3 * runs.block_seconds):
        print(line)
    print(f"  fields: {png}")
    results = {"live_hybrid": live, "trade_off": rows, "png": png, "grid": sim.n, "dt": sim.dt, "k": args.k,
               "heldout_runs": args.test_members, "rollout_blocks": args.rollout_blocks, "timing_repeats": args.repeats,
               "surrogate_pass_ms": 1e3 * runs.pass_seconds, "solver_block_ms": 1e3 * runs.block_seconds,
               "fno": {"width": config.width, "depth": config.depth, "modes": config.modes},
               "headline": best_setting(rows)}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, default=float)
    return results


if __name__ == "__main__":
    main()

"""Modulation benchmark: how many Gray-Scott simulations each strategy needs.

The quantity of interest is the Gray-Scott pattern amplitude (spatial std of
``v`` after a fixed time) over the feed and kill rates ``(F, k)``; it is zero
outside Pearson's pattern regimes and peaks at the tip of the pattern band,
next to a cliff. Two tasks, each averaged over ``--seeds`` seeds:

- optimum: simulations until a strategy has run one point whose amplitude is
  within ``--opt-tol`` (relative) of the best amplitude any simulation of this
  benchmark found (every strategy runs its whole budget; the count is taken
  afterwards). Steered: expected improvement on a deep ensemble. Baselines: a
  random sweep, and grid sweeps ``m x m`` for every ``m`` up to ``max_grid``.
- map: simulations until the estimated surface has an RMS error, over
  ``reference`` random points, of at most ``--map-tol`` times the surface's
  maximum. Steered: max-uncertainty on a deep ensemble (the ensemble mean is
  the map; its members are deeper and see lower Fourier frequencies than the
  optimum's, see ``Setup``). Baselines: a random sweep with the same ensemble,
  and grids with bilinear interpolation.

A grid is reported twice: the coarsest grid that reaches the goal (its nodes may
just happen to fall on the optimum) and the coarsest grid that *resolves* it --
every grid from it up to ``max_grid`` reaches the goal, whatever the alignment.
The acceptance ratios are against the resolving grid; if even ``max_grid``
does not resolve it, the grid cost is at least ``max_grid**2`` and the ratio
printed is an upper bound (``<=``).

Simulations run in-process, vmapped over a batch (the steered loop proposes a
batch, simulates it, refits, proposes again). Wall time per strategy is its
measured steering overhead (fits, proposals) plus its simulations times the
measured seconds per simulation. The reference points cost their own
simulations, counted for no strategy. Prints a table, writes JSON (``--json``)
and a PNG of where each strategy sampled (``--out``)::

    python benchmarks/modulation_vs_sweep.py --seeds 3 --json modulation.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import jax
import numpy as np

from coupler.learners.steerer import Steerer
from coupler.learners.acquisition import ExpectedImprovement, MaxUncertainty, ParameterSpace, RandomSweep, Strategy
from coupler.learners.ensemble import EnsembleConfig
from coupler.physics.gray_scott import GrayScott, run_amplitude

BIG_CHUNK = 64


@dataclass(frozen=True)
class Setup:
    """Sizes of one benchmark run (``--quick`` shrinks them)."""

    grid: int = 32
    steps: int = 4000
    reference: int = 1024
    feed: tuple[float, float] = (0.02, 0.08)
    kill: tuple[float, float] = (0.05, 0.07)
    batch: int = 4
    opt_budget: int = 120
    map_budget: int = 240
    random_budget: int = 600
    max_grid: int = 24
    opt_tol: float = 0.03
    map_tol: float = 0.10
    fit_steps: int = 300
    # The map's surrogate (both map strategies): a plateau with cliffs wants lower
    # Fourier frequencies (scale 2 rings on the flat zero region) and deeper members
    # (sharper edges from the same data). Chosen on steered designs of seeds 0 and 1
    # at 140 points (RMS error 0.116 of the max with the defaults, about 0.10 with
    # these); a step of 1e-2 was as accurate but blew a member up once.
    map_fourier_scale: float = 0.5
    map_depth: int = 4


class Oracle:
    """Runs Gray-Scott at unit-box points (vmapped, memoised) and charges their cost.

    Args:
        setup: the sizes.
        space: the parameter box.
    """

    def __init__(self, setup: Setup, space: ParameterSpace) -> None:
        sim = GrayScott(n=setup.grid, seed_fraction=0.5)
        self.space = space
        self._run = jax.jit(jax.vmap(lambda x: run_amplitude(sim, x, setup.steps)))
        self._cache: dict[bytes, float] = {}
        # Two batch shapes only (a steering batch, a sweep chunk), compiled now: the
        # timed calls then measure simulation, not compilation.
        self._sizes = (BIG_CHUNK, setup.batch)
        for size in self._sizes:
            jax.block_until_ready(self._run(np.tile(space.from_unit(np.full((1, space.dim), 0.5)), (size, 1))))
        self.simulated = 0
        self.seconds = 0.0

    def __call__(self, unit: np.ndarray) -> np.ndarray:
        """Amplitudes at ``(N, d)`` unit-box points."""
        unit = np.asarray(unit, np.float32).reshape(-1, self.space.dim)
        keys = [u.tobytes() for u in unit]
        todo = sorted({k: i for i, k in enumerate(keys) if k not in self._cache}.values())
        while todo:
            size = self._sizes[0] if len(todo) >= self._sizes[0] else self._sizes[1]
            chunk, todo = todo[:size], todo[size:]
            x = self.space.from_unit(unit[chunk])
            padded = np.concatenate([x, np.repeat(x[-1:], size - len(chunk), 0)])
            t0 = time.perf_counter()
            ys = np.asarray(self._run(padded))[: len(chunk)]
            self.seconds += (time.perf_counter() - t0) * len(chunk) / size  # padding is not charged
            self.simulated += len(chunk)
            for i, y in zip(chunk, ys):
                self._cache[keys[i]] = float(y)
        return np.array([self._cache[k] for k in keys], np.float32)

    @property
    def seconds_per_sim(self) -> float:
        return self.seconds / max(self.simulated, 1)

    def values(self) -> list[float]:
        """Every amplitude simulated so far."""
        return list(self._cache.values())


def bilinear(values: np.ndarray, unit: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of ``(m, m)`` node values (on ``linspace(0, 1, m)``) at ``(N, 2)`` points."""
    m = values.shape[0]
    g = np.clip(np.asarray(unit, np.float64) * (m - 1), 0, m - 1)
    i = np.clip(np.floor(g).astype(int), 0, m - 2)
    t = g - i
    a, b = i[:, 0], i[:, 1]
    ta, tb = t[:, 0], t[:, 1]
    return (values[a, b] * (1 - ta) * (1 - tb) + values[a + 1, b] * ta * (1 - tb)
            + values[a, b + 1] * (1 - ta) * tb + values[a + 1, b + 1] * ta * tb)  # fmt: skip


def rms_error(pred: np.ndarray, truth: np.ndarray) -> float:
    """RMS error relative to the surface's maximum."""
    return float(np.sqrt(np.mean((np.asarray(pred) - truth) ** 2)) / np.max(truth))


@dataclass
class Outcome:
    """One strategy on one task and seed."""

    strategy: str
    task: str
    seed: int
    values: list[float]  # amplitudes in the order simulated
    errors: list[tuple[int, float]]  # map: (simulations so far, map error) after each refit
    sims: int | None  # simulations to reach the goal (None: not within the budget), set by summarise
    overhead_s: float
    points: list[list[float]]


@dataclass
class GridRuns:
    """Every grid ``m x m`` for ``m = 2 .. max_grid``: its best value and its map error."""

    best: dict[int, float]
    map_error: dict[int, float]
    values: dict[int, np.ndarray]

    def needed(self, ok: Callable[[int], bool]) -> tuple[int | None, int | None]:
        """``(coarsest m that is ok, coarsest m from which every grid is ok)``, as simulation counts."""
        ms = sorted(self.best)
        lucky = next((m for m in ms if ok(m)), None)
        resolving = next((m for i, m in enumerate(ms) if all(ok(k) for k in ms[i:])), None)
        return (None if lucky is None else lucky * lucky), (None if resolving is None else resolving * resolving)


def run_grids(oracle: Oracle, space: ParameterSpace, max_m: int, ref_unit: np.ndarray, ref: np.ndarray) -> GridRuns:
    runs = GridRuns({}, {}, {})
    for m in range(2, max_m + 1):
        v = oracle(space.grid(m))
        runs.best[m] = float(v.max())
        runs.map_error[m] = rms_error(bilinear(v.reshape(m, m), ref_unit), ref)
        runs.values[m] = v.reshape(m, m)
    return runs


def steered(oracle: Oracle, steerer: Steerer, batch: int, budget: int, error: Callable[[Steerer], float] | None) -> tuple[list[tuple[int, float]], float, list[float]]:
    """Propose a batch, simulate it, refit; ``budget`` simulations in all.

    Returns:
        ``(simulations so far, error(steerer))`` after each refit (when ``error`` is given),
        the steering overhead in seconds, and every value in the order simulated.
    """
    overhead, values, errors = 0.0, [], []
    while len(steerer.tasks) < budget:
        t0 = time.perf_counter()
        recs = steerer.propose(min(batch, budget - len(steerer.tasks)))
        overhead += time.perf_counter() - t0
        ys = oracle(steerer.space.to_unit(np.array([r.x for r in recs])))
        for r, y in zip(recs, ys):
            steerer.record(r.task, 0, float(y), finished=time.time())
            values.append(float(y))
        t0 = time.perf_counter()
        steerer.refit()
        overhead += time.perf_counter() - t0
        if error is not None:  # measurement, not steering: not charged as overhead
            errors.append((len(steerer.tasks), error(steerer)))
    return errors, overhead, values


def first_below(errors: list[tuple[int, float]], tol: float) -> int | None:
    """Simulations after which the error first was <= ``tol`` (``None``: never)."""
    return next((n for n, e in errors if e <= tol), None)


def first_hit(values: list[float], target: float) -> int | None:
    """1-based index of the first value >= ``target`` (``None``: none)."""
    return next((i + 1 for i, v in enumerate(values) if v >= target), None)


def run_seed(setup: Setup, oracle: Oracle, space: ParameterSpace, ref_unit: np.ndarray, ref: np.ndarray, seed: int) -> list[Outcome]:
    cfg = EnsembleConfig(steps_per_fit=setup.fit_steps)
    map_cfg = EnsembleConfig(steps_per_fit=setup.fit_steps, fourier_scale=setup.map_fourier_scale, depth=setup.map_depth)
    out: list[Outcome] = []

    def map_error(s: Steerer) -> float:
        assert s.model is not None
        return rms_error(s.model.predict(ref_unit)[0], ref)

    runs: list[tuple[str, str, Strategy, EnsembleConfig | None, int, Any]] = [
        ("steered (EI)", "optimum", ExpectedImprovement(space, seed=seed), cfg, setup.opt_budget, None),
        ("random", "optimum", RandomSweep(space, seed=seed), None, setup.random_budget, None),
        ("steered (max-std)", "map", MaxUncertainty(space, seed=seed), map_cfg, setup.map_budget, map_error),
        ("random + ensemble", "map", RandomSweep(space, seed=seed), map_cfg, setup.map_budget, map_error),
    ]
    for name, task, strategy, model, budget, error in runs:
        steerer = Steerer(space, strategy, model, seed)
        errors, overhead, values = steered(oracle, steerer, setup.batch, budget, error)
        out.append(Outcome(name, task, seed, values, errors, None, overhead, [r.x.tolist() for r in steerer.tasks.values()]))
    return out


def _row(task: str, name: str, sims: list[int | None], overhead: float, sec: float, grid: int | None, lower_bound: bool) -> dict[str, Any]:
    mean = None if any(s is None for s in sims) else float(np.mean(sims))  # type: ignore[arg-type]
    ratio = None if (mean is None or not grid) else mean / grid
    return {"task": task, "strategy": name, "sims": mean, "sims_all_seeds": sims,
            "wall_s": None if mean is None else overhead + mean * sec, "vs_grid": ratio,
            "vs_grid_is_upper_bound": lower_bound}  # fmt: skip


def summarise(outcomes: list[Outcome], grids: GridRuns, target: float, map_tol: float, sec: float) -> list[dict[str, Any]]:
    for o in outcomes:
        o.sims = first_hit(o.values, target) if o.task == "optimum" else first_below(o.errors, map_tol)
    goals = {
        "optimum": lambda m: grids.best[m] >= target,
        "map": lambda m: grids.map_error[m] <= map_tol,
    }
    rows = []
    for task, ok in goals.items():
        lucky, resolving = grids.needed(ok)
        bound = resolving is None
        grid_cost = max(grids.best) ** 2 if bound else resolving
        rows.append(_row(task, "grid (coarsest hit)", [lucky], 0.0, sec, grid_cost, bound))
        rows.append(_row(task, "grid (resolving)", [resolving], 0.0, sec, grid_cost, bound))
        for name in dict.fromkeys(o.strategy for o in outcomes if o.task == task):
            runs = [o for o in outcomes if o.task == task and o.strategy == name]
            rows.append(_row(task, name, [o.sims for o in runs], float(np.mean([o.overhead_s for o in runs])), sec, grid_cost, bound))
    return rows


def plot(path: str, space: ParameterSpace, grids: GridRuns, outcomes: list[Outcome], nodes: dict[str, int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finest = grids.values[max(grids.values)]
    seed0 = [o for o in outcomes if o.seed == outcomes[0].seed]
    panels = []
    for task in ("optimum", "map"):
        m = nodes[task]
        panels.append((f"grid {m}x{m}", task, space.from_unit(space.grid(m))))
        panels += [(o.strategy, o.task, np.array(o.points[: o.sims or len(o.points)])) for o in seed0 if o.task == task]
    fig, axes = plt.subplots(2, 3, figsize=(14, 8.5), constrained_layout=True)
    extent = (space.lower[0], space.upper[0], space.lower[1], space.upper[1])
    for ax, (name, task, pts) in zip(axes.ravel(), panels):
        ax.imshow(finest.T, origin="lower", extent=extent, aspect="auto", cmap="viridis")
        if len(pts):
            ax.scatter(pts[:, 0], pts[:, 1], s=8, c="red", edgecolors="white", linewidths=0.3)
        ax.set_title(f"{task}: {name} ({len(pts)} sims)")
        ax.set_xlabel(space.names[0])
        ax.set_ylabel(space.names[1])
    fig.suptitle("Gray-Scott pattern amplitude over (F, k) and where each strategy simulated until its goal (seed 0)")
    fig.savefig(path, dpi=90)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3, help="seeds averaged over (default 3)")
    p.add_argument("--quick", action="store_true", help="a tiny run that only exercises the code path")
    p.add_argument("--json", type=str, default="", help="write rows and settings to this JSON file")
    p.add_argument("--out", type=str, default="artifacts", help="folder of the PNG (default artifacts/)")
    p.add_argument("--opt-tol", type=float, default=Setup.opt_tol, help="relative tolerance on the optimum")
    p.add_argument("--map-tol", type=float, default=Setup.map_tol, help="RMS error of the map / max")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    setup = Setup(opt_tol=args.opt_tol, map_tol=args.map_tol)
    if args.quick:
        setup = Setup(grid=8, steps=60, reference=16, batch=2, opt_budget=6, map_budget=6, random_budget=6,
                      max_grid=4, opt_tol=args.opt_tol, map_tol=args.map_tol, fit_steps=5)  # fmt: skip
    space = ParameterSpace((setup.feed[0], setup.kill[0]), (setup.feed[1], setup.kill[1]), ("F", "k"))
    oracle = Oracle(setup, space)
    t0 = time.perf_counter()
    ref_unit = np.random.default_rng(12345).uniform(size=(setup.reference, space.dim)).astype(np.float32)
    ref = oracle(ref_unit)
    grids = run_grids(oracle, space, setup.max_grid, ref_unit, ref)
    print(f"reference points and grids 2..{setup.max_grid}: {oracle.simulated} simulations, "
          f"{time.perf_counter() - t0:.1f} s", flush=True)  # fmt: skip
    outcomes: list[Outcome] = []
    for seed in range(args.seeds):
        outcomes += run_seed(setup, oracle, space, ref_unit, ref, seed)
        print(f"seed {seed} done ({time.perf_counter() - t0:.1f} s so far)", flush=True)
    best_known = max(oracle.values())
    target = (1 - setup.opt_tol) * best_known
    sec = oracle.seconds_per_sim
    # The map at a few more error levels (same runs): how the ratio moves with the accuracy asked.
    other_tols = sorted({0.15, 0.12, 0.10, 0.08} - {setup.map_tol}, reverse=True)
    map_levels = {tol: [r for r in summarise(outcomes, grids, target, tol, sec) if r["task"] == "map"] for tol in other_tols}
    rows = summarise(outcomes, grids, target, setup.map_tol, sec)

    print()
    print(f"Modulation on Gray-Scott {setup.grid}x{setup.grid}, {setup.steps} steps, (F, k) in {setup.feed} x {setup.kill}; "
          f"{args.seeds} seeds; {1e3 * sec:.1f} ms per simulation (vmapped, this machine)")  # fmt: skip
    print(f"  optimum: a simulation within {100 * setup.opt_tol:.0f}% of the best amplitude found by any run "
          f"({best_known:.4f}), i.e. >= {target:.4f}")  # fmt: skip
    print(f"  map: RMS error over {setup.reference} random points <= {100 * setup.map_tol:.0f}% of the maximum "
          f"(ensemble of depth {setup.map_depth}, Fourier scale {setup.map_fourier_scale})")  # fmt: skip
    print(f"  {'task':<9}{'strategy':<22}{'sims (mean)':>12}{'per seed':>20}{'wall s':>9}{'/ resolving grid':>18}")
    for r in rows:
        sims = "not reached" if r["sims"] is None else f"{r['sims']:.1f}"
        wall = "-" if r["wall_s"] is None else f"{r['wall_s']:.1f}"
        ratio = "-" if r["vs_grid"] is None else ("<=" if r["vs_grid_is_upper_bound"] else "") + f"{r['vs_grid']:.3f}"
        per = ",".join("-" if s is None else str(s) for s in r["sims_all_seeds"])
        print(f"  {r['task']:<9}{r['strategy']:<22}{sims:>12}{per:>20}{wall:>9}{ratio:>18}")
    print("  map at other error levels (sims, mean over seeds; ratio to the resolving grid):")
    for tol, level in map_levels.items():
        cells = []
        for r in level:
            sims = "-" if r["sims"] is None else f"{r['sims']:.0f}"
            ratio = "" if r["vs_grid"] is None or r["strategy"].startswith("grid") else f" ({'<=' if r['vs_grid_is_upper_bound'] else ''}{r['vs_grid']:.2f})"
            cells.append(f"{r['strategy']} {sims}{ratio}")
        print(f"    <= {100 * tol:.0f}%: " + "; ".join(cells))
    verdict = {}
    for task, goal in (("optimum", 0.1), ("map", 1 / 3)):
        ratio = next(r["vs_grid"] for r in rows if r["task"] == task and r["strategy"].startswith("steered"))
        verdict[task] = {"ratio": ratio, "goal": goal, "met": ratio is not None and ratio <= goal}
        print(f"  acceptance {task}: steered / resolving grid = {'-' if ratio is None else f'{ratio:.3f}'} "
              f"(goal <= {goal:.3f}): {'MET' if verdict[task]['met'] else 'MISSED'}")  # fmt: skip

    os.makedirs(args.out, exist_ok=True)
    png = os.path.join(args.out, "modulation_samples.png")
    nodes = {}
    for task, ok in (("optimum", lambda m: grids.best[m] >= target), ("map", lambda m: grids.map_error[m] <= setup.map_tol)):
        _, res = grids.needed(ok)
        nodes[task] = int(round(res**0.5)) if res else setup.max_grid
    plot(png, space, grids, outcomes, nodes)
    print(f"  sample locations: {png}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"setup": asdict(setup), "seconds_per_sim": sec, "rows": rows, "acceptance": verdict,
                       "map_other_levels": {str(t): v for t, v in map_levels.items()},
                       "best_known": best_known, "target": target, "png": png}, f, indent=2)  # fmt: skip
    return rows


if __name__ == "__main__":
    main()

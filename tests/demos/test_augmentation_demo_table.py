"""The augmentation demo's hybrid-solver table: every figure in it is computed from what was measured.

No timing is asserted (which run is faster depends on the machine); the tests
check that a speed-up is the ratio of the two measured times, that the error is
the relative L2 of the two final fields, that a ratio below one is printed as a
slowdown with its reason, and that the headline names the best measured setting.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import pytest

from coupler.demos.augmentation import (
    HybridTiming,
    best_hybrid,
    ensemble_params,
    hybrid_rows,
    hybrid_run,
    hybrid_table,
    relative_l2,
)
from coupler.learners import OnlineTrainer, SurrogateConfig
from coupler.physics import Heat2D


def _timing(solver_s: float, hybrid_s: tuple[float, ...], seed: int = 0) -> HybridTiming:
    rng = np.random.default_rng(seed)
    truth = rng.normal(size=(3, 8, 8)).astype(np.float32)
    fields = tuple(truth + 0.01 * (i + 1) * rng.normal(size=truth.shape).astype(np.float32) for i in range(len(hybrid_s)))
    shares = ((1, 2), (3, 4), (7, 8))[: len(hybrid_s)]
    return HybridTiming(shares=shares, solver_seconds=solver_s, truth=truth, hybrid_seconds=hybrid_s, hybrid=fields)


def test_rows_are_the_ratio_of_the_measured_times_and_the_error_of_the_measured_fields() -> None:
    timing = _timing(0.08, (0.05, 0.03))
    rows = hybrid_rows(timing)
    assert [r["share"] for r in rows] == ["1/2", "3/4"]
    for row, seconds, fields in zip(rows, timing.hybrid_seconds, timing.hybrid):
        assert row["speedup"] == pytest.approx(timing.solver_seconds / seconds)
        assert row["solver_ms"] == pytest.approx(1e3 * timing.solver_seconds)
        assert row["hybrid_ms"] == pytest.approx(1e3 * seconds)
        assert row["error"] == pytest.approx(float(relative_l2(fields, timing.truth).mean()))
        assert row["error"] > 0


def test_the_table_prints_the_measured_figures_and_the_best_setting_as_its_headline() -> None:
    rows = hybrid_rows(_timing(0.08, (0.05, 0.03)))
    lines = hybrid_table(rows, k=160, n=64, blocks=15, runs=3, dt=4.7e-5, repeats=5)
    text = "\n".join(lines)
    assert "15 blocks of K=160 steps (64x64 grid" in text and "best of 5" in text
    assert f"{rows[0]['speedup']:.2f}x" in text and f"{rows[1]['speedup']:.2f}x" in text
    assert f"{100 * rows[1]['error']:.2f}%" in text
    assert "SLOWDOWN" not in text
    assert best_hybrid(rows) is rows[1]
    assert lines[-1].startswith("  => hybrid 3/4") and f"{rows[1]['speedup']:.2f}x faster" in lines[-1]
    assert f"rel. L2 {100 * rows[1]['error']:.2f}%" in lines[-1]


def test_a_slower_setting_is_a_slowdown_with_its_reason_and_never_the_headline() -> None:
    rows = hybrid_rows(_timing(0.02, (0.05, 0.01)))
    lines = hybrid_table(rows, k=10, n=16, blocks=4, runs=3, dt=1e-3, repeats=3)
    text = "\n".join(lines)
    assert "hybrid 1/2 blocks by surrogate: SLOWDOWN" in text and f"{1 / rows[0]['speedup']:.2f}x" in text
    assert "why: the run with surrogate blocks took" in text
    assert "speed-up" in text  # the 3/4 setting, faster here
    assert best_hybrid(rows) is rows[1]
    assert all("speed-up" not in line or float(line.split()[-1].rstrip("x")) >= 1 for line in lines)

    slower = hybrid_rows(_timing(0.01, (0.05, 0.02)))
    assert best_hybrid(slower) is None
    assert hybrid_table(slower, k=10, n=16, blocks=4, runs=3, dt=1e-3, repeats=3)[-1].startswith(
        "  => no hybrid setting is faster"
    )


def test_hybrid_run_times_the_real_solver_and_surrogate_on_the_same_runs() -> None:
    """A tiny run end to end: fields and times come from ``hybrid_run`` itself."""
    sim = Heat2D(n=8)
    params = ensemble_params(sim, jax.random.key(3), 2)
    trainer = OnlineTrainer(SurrogateConfig(width=4, depth=1, patch=2), seed=0)  # untrained: persistence
    timing = hybrid_run(sim, trainer, params, k=5, blocks=4, repeats=2)
    assert timing.shares == ((1, 2), (3, 4))
    assert timing.solver_seconds > 0 and all(s > 0 for s in timing.hybrid_seconds)
    state = jax.vmap(sim.init)(jax.random.split(jax.random.key(0), 2), params)
    expected = jax.jit(jax.vmap(lambda s, p: sim.advance(s, p, 20)))(state, params).u
    np.testing.assert_allclose(timing.truth, np.asarray(expected), rtol=1e-5, atol=1e-6)
    # An untrained surrogate is the identity, so a hybrid is the solver for fewer blocks.
    half = jax.jit(jax.vmap(lambda s, p: sim.advance(s, p, 10)))(state, params).u
    np.testing.assert_allclose(timing.hybrid[0], np.asarray(half), rtol=1e-5, atol=1e-6)
    rows = hybrid_rows(timing)
    assert rows[0]["error"] == pytest.approx(float(relative_l2(np.asarray(half), timing.truth).mean()), rel=1e-4)


def _turbulence_rows() -> list[dict[str, Any]]:
    base = {"rel_l2_mean": 0.2, "rel_l2_first": 0.1}
    return [
        {**base, "k/m": "0/1", "solver_steps": 80, "step_speedup": 1.0, "wall_speedup": 1.0, "wall_ms": 10.0,
         "rel_l2_final": 0.0, "rel_l2_mean": 0.0, "corr_final": 1.0},
        {**base, "k/m": "1/2", "solver_steps": 40, "step_speedup": 2.0, "wall_speedup": 0.85, "wall_ms": 11.8,
         "rel_l2_final": 0.31, "corr_final": 0.95},
        {**base, "k/m": "1/4", "solver_steps": 60, "step_speedup": 1.33, "wall_speedup": 1.1, "wall_ms": 9.1,
         "rel_l2_final": 0.24, "corr_final": 0.93},
        {**base, "k/m": "1/1", "solver_steps": 0, "step_speedup": float("inf"), "wall_speedup": 3.0, "wall_ms": 3.3,
         "rel_l2_final": 0.6, "corr_final": 0.7},
    ]


def test_the_turbulence_trade_off_says_a_slower_setting_is_slower_and_why() -> None:
    from coupler.demos.augmentation_turbulence import trade_off_lines, wall_vs_solver

    assert wall_vs_solver(2.0) == "2.00x faster" and wall_vs_solver(0.8) == "1.25x SLOWER"
    rows = _turbulence_rows()
    lines = trade_off_lines(rows, k=20, pass_ms=2.5, block_ms=4.0)
    table = "\n".join(lines)
    assert "0.85x" not in table  # no speed-up below 1 is printed
    assert lines[0].startswith("  one surrogate pass 2.5 ms vs one block of K=20 solver steps 4.0 ms")
    assert "12.5 solver steps" in lines[0]
    assert lines[1] == "  one surrogate jump from the held-out start: rel. L2 10.0% against the solver"  # the 1/1 row's first block
    assert "the solver" in lines[3] and "1.18x SLOWER" in lines[4] and "1.10x faster" in lines[5]
    assert "0.930" in lines[5] and "24.00%" in lines[5]
    slower = next(line for line in lines if line.startswith("  slower than the solver"))
    assert slower.startswith("  slower than the solver: 1/2.") and "Why:" in slower
    assert "slower than the solver" not in "\n".join(trade_off_lines([rows[0], rows[2]], k=20, pass_ms=2.5, block_ms=4.0))


def test_the_turbulence_headline_is_the_fastest_setting_that_keeps_the_flow() -> None:
    from coupler.demos.augmentation_turbulence import best_setting, trade_off_lines

    rows = _turbulence_rows()
    # 1/1 is fastest but decorrelated; 1/2 keeps the flow but is slower: 1/4 is the headline.
    assert best_setting(rows) is rows[2]
    last = trade_off_lines(rows, k=20, pass_ms=2.5, block_ms=4.0)[-1]
    assert last.startswith("  => hybrid 1/4 blocks by surrogate: 1.10x faster") and "correlation 0.930" in last
    assert "rel. L2 24.0%" in last
    lost = [rows[0], rows[3]]
    assert best_setting(lost) is None
    assert "none pays at that accuracy" in trade_off_lines(lost, k=20, pass_ms=2.5, block_ms=4.0)[-1]
    assert trade_off_lines([rows[0], rows[1]], k=20, pass_ms=2.5, block_ms=4.0)[-1].startswith(
        "  => no hybrid setting is faster")


def test_the_turbulence_rows_are_the_ratio_of_the_measured_times_and_the_errors_of_the_measured_fields() -> None:
    from coupler.actors.hybrid import HybridSchedule
    from coupler.demos.augmentation_turbulence import HybridRuns, rel_l2, trade_off_rows, vorticity_correlation

    rng = np.random.default_rng(0)
    truth = rng.normal(size=(4, 3, 8, 8)).astype(np.float32)
    hybrid = truth + 0.1 * rng.normal(size=truth.shape).astype(np.float32)
    runs = HybridRuns(k=20, schedules=(HybridSchedule(0, 1), HybridSchedule(1, 2)), seconds=(0.08, 0.05),
                      fields=(truth, hybrid), pass_seconds=0.002, block_seconds=0.02)
    solver, half = trade_off_rows(runs)
    assert solver["wall_speedup"] == 1.0 and solver["rel_l2_final"] == 0.0 and solver["corr_final"] == pytest.approx(1.0)
    assert half["wall_speedup"] == pytest.approx(0.08 / 0.05) and half["wall_ms"] == pytest.approx(50.0)
    assert half["solver_steps"] == 40 and half["step_speedup"] == pytest.approx(2.0)
    assert half["rel_l2_final"] == pytest.approx(float(rel_l2(hybrid[-1], truth[-1]).mean()))
    assert half["rel_l2_mean"] == pytest.approx(float(rel_l2(hybrid, truth).mean()))
    assert half["rel_l2_first"] == pytest.approx(float(rel_l2(hybrid[0], truth[0]).mean()))
    assert half["corr_final"] == pytest.approx(float(vorticity_correlation(hybrid[-1], truth[-1]).mean()))
    assert 0.9 < half["corr_final"] < 1.0


def test_the_turbulence_hybrid_runs_time_the_real_solver_and_surrogate_on_the_same_runs() -> None:
    """A tiny run end to end: an untrained FNO is the identity, so a hybrid is the solver for fewer blocks."""
    from coupler.actors.hybrid import HybridSchedule
    from coupler.demos.augmentation_turbulence import SpunUpNavierStokes, draw, features, hybrid_runs, trade_off_rows
    from coupler.learners.fno import FNOConfig

    sim = SpunUpNavierStokes(n=16, dt=0.02, spin_up=5)
    params = draw(sim, jax.random.key(1), 2)
    state = jax.vmap(sim.init)(jax.random.split(jax.random.key(2), 2), params)
    assert int(state.step[0]) == 0 and float(state.t[0]) == 0.0
    trainer = OnlineTrainer(FNOConfig(modes=4, width=4, depth=1, hidden=4), seed=0)  # zero-initialised output: identity
    runs = hybrid_runs(sim, trainer, state, params, features(params), k=3, blocks=4,
                       schedules=(HybridSchedule(0, 1), HybridSchedule(1, 2)), repeats=2)
    assert all(s > 0 for s in runs.seconds) and runs.pass_seconds > 0 and runs.block_seconds > 0
    block = jax.jit(jax.vmap(lambda s, p: sim.advance(s, p, 3)))
    two = block(block(state, params), params)
    np.testing.assert_allclose(runs.fields[1][-1], np.asarray(two.w), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(runs.fields[0][-1], np.asarray(block(block(two, params), params).w), rtol=1e-5, atol=1e-5)
    rows = trade_off_rows(runs)
    assert rows[1]["solver_steps"] == 6 and rows[1]["wall_speedup"] == pytest.approx(runs.seconds[0] / runs.seconds[1])

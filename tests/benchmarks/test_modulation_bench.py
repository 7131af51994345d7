"""The modulation benchmark's code path at a tiny size (figures are not asserted), and its helpers."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from coupler.physics.gray_scott import GrayScott, run_amplitude
from coupler.physics.heat import Heat2D

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))

import modulation_vs_sweep as bench  # noqa: E402


def test_multilinear_interpolation_is_exact_for_multilinear_functions() -> None:
    m = 4
    g = np.linspace(0, 1, m)
    f = lambda a, b, c: 1 + 2 * a - 3 * b + 4 * a * b * c - c  # noqa: E731  (degree <= 1 in each variable)
    nodes = f(g[:, None, None], g[None, :, None], g[None, None, :])
    pts = np.random.default_rng(0).uniform(size=(50, 3))
    np.testing.assert_allclose(bench.multilinear(nodes, pts), f(pts[:, 0], pts[:, 1], pts[:, 2]), rtol=1e-12)


def test_goal_counts_and_the_parameter_boxes() -> None:
    assert bench.first_hit([0.1, 0.5, 0.9, 1.0], 0.8) == 3 and bench.first_hit([0.1], 0.8) is None
    assert bench.first_below([(10, 0.3), (20, 0.09), (30, 0.05)], 0.1) == 20 and bench.first_below([(10, 0.3)], 0.1) is None
    assert bench.space_of(4).names == ("F", "k", "Du", "Dv") and bench.space_of(8).dim == 8
    assert bench.space_of(3, bench.HEAT).names == ("diffusivity", "a11", "a12")
    with pytest.raises(ValueError, match="2..8"):
        bench.space_of(9)


def test_the_eight_parameter_gray_scott_run_is_the_simulators_own_up_to_six() -> None:
    # The benchmark's own seed (rectangular, with its own u) reduces to GrayScott.init at the defaults.
    space = bench.space_of(6)
    x = space.from_unit(np.random.default_rng(0).uniform(size=(3, 6)))
    sim = GrayScott(n=8, seed_fraction=0.5)
    ours = bench.gray_scott_run(8, 40)
    for xi in x:
        assert float(ours(jnp.asarray(xi))) == pytest.approx(float(run_amplitude(sim, jnp.asarray(xi), 40)), rel=1e-6)
    eight = bench.space_of(8).from_unit(np.full((1, 8), 0.5))[0]
    assert np.isfinite(float(ours(jnp.asarray(eight))))
    # The mean of u: 1 everywhere at the start but in the seed (u = 1 - 2 seed_v there).
    start = float(bench.gray_scott_run(8, 0, "mean_u")(jnp.asarray(x[0])))
    side = 2 * max(1, round(float(x[0][4]) * 8 / 2)) - 1  # cells with |i - n/2| < half
    assert start == pytest.approx(1 - side**2 / 64 * 2 * float(x[0][5]), abs=0.02 * side**2 / 64)
    with pytest.raises(ValueError, match="qoi"):
        bench.gray_scott_run(8, 1, "max_v")


def test_the_heat_run_is_the_analytic_peak_for_one_mode() -> None:
    # One mode: u = a11 exp(-2 pi^2 a t) sin(pi x) sin(pi y); its peak on the grid is at the centre cell.
    run = bench.heat_run(15, 0.02)  # 15 interior points: the centre x = 0.5 is a node
    x = np.array([0.5, 0.8], np.float32)
    sim = Heat2D(n=15, modes=3, max_diffusivity=1.0)
    steps = round(0.02 / sim.dt)
    lam = 4 / sim.dx**2 * np.sin(np.pi * sim.dx / 2) ** 2 * 2  # the discrete eigenvalue of mode (1, 1)
    assert float(run(jnp.asarray(x))) == pytest.approx(0.8 * (1 - 0.5 * sim.dt * lam) ** steps, rel=1e-5)


def test_the_track_and_strip_runs_are_a_diffusing_gaussian_at_the_sensor() -> None:
    # Far from the plate's edges and the track's ends, a Gaussian line of std w diffuses into one of
    # variance w^2 + 2 a t and peak w / sqrt(w^2 + 2 a t) (the infinite-plate solution); FTCS on 95 points.
    grid, w, a = 95, 0.03, 0.5
    sim = Heat2D(n=grid, modes=2, max_diffusivity=1.0)
    t = round(0.0005 / sim.dt) * sim.dt  # the time the run reaches
    s2 = w**2 + 2 * a * t
    track, strip = bench.hot_track_run(grid, 0.0005), bench.hot_strip_run(grid, 0.0005)
    for offset in (0.0, 0.03):  # the track's centre line passes the sensor at this distance
        expected = w / np.sqrt(s2) * np.exp(-(offset**2) / (2 * s2))
        x = np.array([0.5, 0.5 + offset, 0.0, 0.2, a], np.float32)  # horizontal, midpoint (nearly) above the sensor
        assert float(track(jnp.asarray(x))) == pytest.approx(expected, rel=0.02)
        sx, sy = (round(c * (grid + 1)) / (grid + 1) for c in (0.4, 0.45))  # the strip's sensor node
        assert float(strip(jnp.asarray(np.array([sx, sy + offset, 0.0, w, a], np.float32)))) == pytest.approx(expected, rel=0.02)
    # b12 and b21 have a node line through the centre: the track's sensor does not see them.
    base = np.array([0.3, 0.3, 1.0, 0.1, a, 0.1, 0.0, 0.0], np.float32)
    inert = base.copy()
    inert[6:] = (0.1, -0.1)
    assert float(track(jnp.asarray(inert))) == pytest.approx(float(track(jnp.asarray(base))), abs=1e-6)


def test_verdicts_bound_the_ratio_when_a_side_is_censored() -> None:
    def rows(steered: float, s_cens: bool, rnd: float, r_cens: bool) -> list[dict]:
        out = []
        for task, names in (("optimum", ("steered (EI)", "random", "sobol")), ("map", ("steered (IVR)", "random + GP", "sobol + GP"))):
            out.append({"dims": 4, "task": task, "strategy": names[0], "sims_mean": steered, "censored": s_cens})
            out.append({"dims": 4, "task": task, "strategy": names[1], "sims_mean": rnd, "censored": r_cens})
            out.append({"dims": 4, "task": task, "strategy": names[2], "sims_mean": 2 * rnd, "censored": True})
        return out

    v = bench.verdicts(4, rows(10, False, 100, False))
    assert [(x["ratio"], x["ratio_is"], x["met"]) for x in v] == [(0.1, "=", True), (0.1, "=", True)]
    v = bench.verdicts(4, rows(30, False, 100, True))  # baseline censored: the ratio is an upper bound
    assert [(x["ratio_is"], x["met"]) for x in v] == [("<=", False), ("<=", True)]
    v = bench.verdicts(4, rows(10, True, 100, False))  # steered censored: a lower bound, never a pass
    assert [(x["ratio_is"], x["met"]) for x in v] == [(">=", False), (">=", False)]


def test_benchmark_runs_end_to_end_and_writes_its_table(tmp_path: Path) -> None:
    out = tmp_path / "modulation.json"
    # Two of the map tasks (the others differ only in their oracle, which the tests above check); every optimum
    # search, TuRBO-m with designs small enough that its regions search within the quick budget (16).
    result = bench.main(["--quick", "--dims", "4", "--seeds", "2", "--maps", "map-heat", "map-track", "--opt-strategies", "ei", "tr-ei",
                         "turbo-m", "--opt-regions", "2", "--opt-initial", "4", "--json", str(out)])  # fmt: skip
    data = json.loads(out.read_text())
    assert (data["setup"]["opt_regions"], data["setup"]["opt_initial"]) == (2, 4)
    assert data["rows"] == json.loads(json.dumps(result["rows"]))
    for r in data["rows"]:
        assert {"dims", "task", "strategy", "sims_mean", "sims_se"} <= set(r)
    strategies = {(r["dims"], r["task"], r["strategy"]) for r in data["rows"]}
    for d in (4,):
        assert {(d, "optimum", s) for s in bench.OPT_STRATEGIES + ("random", "sobol", "grid (coarsest hit)")} <= strategies
        for task in ("map-heat", "map-track"):
            assert {(d, task, s) for s in bench.MAP_STRATEGIES + ("random + GP", "sobol + GP", "grid (coarsest hit)")} <= strategies
    for r in data["rows"]:
        if not r["strategy"].startswith("grid"):
            assert len(r["sims_all_seeds"]) == 2 and r["sims_se"] >= 0 and 1 <= r["sims_mean"]
    assert {(v["dims"], v["task"]) for v in data["acceptance"]} == {(4, t) for t in ("optimum", "map-heat", "map-track")}
    for info in data["dims"]:
        assert 0 < info["steer_share_at_1s"] < 1 and 0 < info["steer_share_at_1s_cpu"] < 1 and info["target"] <= info["best_known"]


@pytest.mark.parametrize(("warp", "veto"), [("log", 1.5), ("auto", 1.2)])
def test_the_warped_gp_reaches_every_strategy_of_a_map_task(tmp_path: Path, warp: str, veto: float) -> None:
    out = tmp_path / "warped.json"
    result = bench.main(["--quick", "--dims", "4", "--seeds", "1", "--maps", "map-track", "--map-strategies", "gradient",
                         "--no-optimum", "--gp-warp", warp, "--gp-warp-veto", str(veto), "--json", str(out)])  # fmt: skip
    gp = json.loads(out.read_text())["setup"]["gp"]
    assert (gp["output_warp"], gp["warp_veto"]) == (warp, veto)
    got = {r["strategy"] for r in result["rows"]}
    assert {"steered (gradient IVR)", "random + GP", "sobol + GP"} <= got
    assert bench.parse_args([]).gp_warp == "none"  # the earlier tables' model stays the default

"""The modulation benchmark's code path at a tiny size (figures are not asserted), and its helpers."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

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
    assert bench.space_of(4).names == ("F", "k", "Du", "Dv") and bench.space_of(6).dim == 6
    with pytest.raises(ValueError, match="2..6"):
        bench.space_of(7)


def test_verdicts_bound_the_ratio_when_a_side_is_censored() -> None:
    def rows(steered: float, s_cens: bool, rnd: float, r_cens: bool) -> list[dict]:
        out = []
        for task, names in (("optimum", ("steered (EI)", "random", "sobol")), ("map", ("steered (max-std)", "random + GP", "sobol + GP"))):
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
    result = bench.main(["--quick", "--dims", "4", "--seeds", "2", "--json", str(out)])
    data = json.loads(out.read_text())
    assert data["rows"] == json.loads(json.dumps(result["rows"]))
    for r in data["rows"]:
        assert {"dims", "task", "strategy", "sims_mean", "sims_se"} <= set(r)
    strategies = {(r["dims"], r["task"], r["strategy"]) for r in data["rows"]}
    for d in (4,):
        assert {(d, "optimum", s) for s in ("steered (EI)", "random", "sobol", "grid (coarsest hit)")} <= strategies
        assert {(d, "map", s) for s in ("steered (max-std)", "random + GP", "sobol + GP", "grid (coarsest hit)")} <= strategies
    for r in data["rows"]:
        if not r["strategy"].startswith("grid"):
            assert len(r["sims_all_seeds"]) == 2 and r["sims_se"] >= 0 and 1 <= r["sims_mean"]
    assert {(v["dims"], v["task"]) for v in data["acceptance"]} == {(4, "optimum"), (4, "map")}
    for info in data["dims"]:
        assert 0 < info["steer_share_at_1s"] < 1 and 0 < info["steer_share_at_1s_cpu"] < 1 and info["target"] <= info["best_known"]

"""The modulation benchmark's code path at a tiny size (figures are not asserted), and its helpers."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))

import modulation_vs_sweep as bench  # noqa: E402


def test_bilinear_interpolation_is_exact_for_bilinear_functions() -> None:
    m = 5
    g = np.linspace(0, 1, m)
    f = lambda a, b: 1 + 2 * a - 3 * b + 4 * a * b  # noqa: E731
    nodes = f(g[:, None], g[None, :])
    pts = np.random.default_rng(0).uniform(size=(50, 2))
    np.testing.assert_allclose(bench.bilinear(nodes, pts), f(pts[:, 0], pts[:, 1]), rtol=1e-12)


def test_grid_needed_tells_a_lucky_grid_from_a_resolving_one() -> None:
    best = {2: 0.5, 3: 1.0, 4: 0.5, 5: 1.0, 6: 1.0}  # m = 3 hits by alignment, m = 4 misses
    runs = bench.GridRuns(best=best, map_error={m: 0.0 for m in best}, values={})
    assert runs.needed(lambda m: best[m] >= 0.9) == (9, 25)
    assert runs.needed(lambda m: best[m] >= 2.0) == (None, None)
    assert bench.first_hit([0.1, 0.5, 0.9, 1.0], 0.8) == 3 and bench.first_hit([0.1], 0.8) is None


def test_benchmark_runs_end_to_end_and_writes_its_table_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "modulation.json"
    rows = bench.main(["--quick", "--seeds", "2", "--json", str(out), "--out", str(tmp_path)])
    data = json.loads(out.read_text())
    strategies = {(r["task"], r["strategy"]) for r in rows}
    for task in ("optimum", "map"):
        assert {(task, "grid (coarsest hit)"), (task, "grid (resolving)")} <= strategies
    assert {("optimum", "steered (EI)"), ("optimum", "random"), ("map", "steered (max-std)"), ("map", "random + ensemble")} <= strategies
    assert all(len(r["sims_all_seeds"]) == 2 for r in rows if not r["strategy"].startswith("grid"))
    assert set(data["acceptance"]) == {"optimum", "map"} and data["target"] <= data["best_known"]
    assert (tmp_path / "modulation_samples.png").stat().st_size > 10_000

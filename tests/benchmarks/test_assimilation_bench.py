"""The assimilation benchmark's code path at a tiny size (figures are not asserted, only their form)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))

import assimilation_tables as bench  # noqa: E402


def test_benchmark_runs_end_to_end_and_writes_its_tables(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "assim.json"
    cycles = bench.SPIN_UP + 20
    # Three rows (an ensemble filter and both baselines) keep the compilation short.
    results = bench.main(["--cycles", str(cycles), "--table-seeds", "2", "--learn-cycles", str(cycles), "--seeds", "1",
                          "--rows", "DEnKF", "3D-Var", "Climatology", "--json", str(out)])
    data = json.loads(out.read_text())
    assert [r["filter"] for r in data["table1"]] == ["DEnKF N=40 infl 1.01", "3D-Var xB=0.02", "Climatology"]
    for r in data["table1"]:
        assert len(r["per_seed"]) == 2 and all(np.isfinite(r["per_seed"]))
        assert abs(r["rmse_analysis"] - np.mean(r["per_seed"])) < 1e-6
        assert isinstance(r["within_10pct"], bool) and r["published"] > 0
    assert len(data["model_error"]) == 1 and np.isfinite(results["reduction"])
    printed = capsys.readouterr().out
    assert "published" in printed and "+-" in printed and "forecast RMSE reduction" in printed


def test_twin_observations_are_the_truth_plus_unit_noise() -> None:
    truth, ys = jax.jit(lambda s: bench.twin(s, 1000))(7)
    noise = np.asarray(ys - truth)
    assert abs(noise.mean()) < 0.03 and abs(noise.std() - 1.0) < 0.03  # 40000 draws: over 5 sigma
    assert truth.shape == (1000, 40)


def test_scale_benchmark_writes_rates_and_time_split(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    import assimilation_scale as scale

    out = tmp_path / "scale.json"
    scale.main(["--l96-members", "8", "--field-members", "--workers", "2", "--cycles", "8", "--json", str(out)])
    data = json.loads(out.read_text())
    modes = [(r["mode"], r["workers"]) for r in data["rows"]]
    assert modes == [("vmapped", 1), ("spread", 2)]
    for r in data["rows"]:
        assert r["cycles_per_s"] > 0 and r["members"] == 8 and np.isfinite(r["rmse_last"])
        if r["mode"] == "spread":
            assert all(r[f"{k}_s"] >= 0 for k in ("forecast", "gather", "analysis", "scatter", "cycle_time"))
            assert r["ratio_vs_vmapped"] > 0
    assert "cycles/s" in capsys.readouterr().out

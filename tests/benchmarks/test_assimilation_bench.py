"""The assimilation benchmark's code path at a tiny size (figures are not asserted, only their form)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))

import assimilation_tables as bench  # noqa: E402


def test_benchmark_runs_end_to_end_and_writes_its_tables(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "assim.json"
    cycles = bench.SPIN_UP + 40
    results = bench.main(["--cycles", str(cycles), "--learn-cycles", str(cycles), "--seeds", "1", "--json", str(out)])
    data = json.loads(out.read_text())
    assert [r["filter"] for r in data["table1"]][:2] == ["EnKF (pert. obs), infl 1.06", "DEnKF, infl 1.01"]
    assert all(np.isfinite(r["rmse_analysis"]) for r in data["table1"])
    assert len(data["model_error"]) == 1 and np.isfinite(results["reduction"])
    printed = capsys.readouterr().out
    assert "published" in printed and "forecast RMSE reduction" in printed


def test_twin_observations_are_the_truth_plus_unit_noise() -> None:
    tw = bench.twin(seed=7, cycles=1000, members=4)
    noise = np.asarray(tw.ys - tw.truth)
    assert abs(noise.mean()) < 0.03 and abs(noise.std() - 1.0) < 0.03  # 40000 draws: over 5 sigma
    assert tw.ensemble.shape == (4, 40)

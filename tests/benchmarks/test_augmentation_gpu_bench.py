"""The learner-on-a-GPU benchmark's code path at its smallest size (figures are not asserted), and its sampler."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))

import augmentation_gpu as bench  # noqa: E402


def test_sampler_means_only_the_samples_in_the_window() -> None:
    sampler = bench.GpuSampler(rows=[(1.0, 10.0), (2.0, 50.0), (3.0, 90.0), (4.0, 0.0)])
    assert sampler.mean_between(2.0, 3.0) == 70.0
    assert sampler.mean_between(0.0, 10.0) == 37.5
    assert sampler.mean_between(5.0, 6.0) is None


def test_quick_run_writes_rows(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    rows = bench.main(["--quick", "--models", "closure", "--json", str(out)])
    data = json.loads(out.read_text())
    assert data["rows"] == json.loads(json.dumps(rows, default=str))
    (row,) = data["rows"]
    assert row["model"] == "closure" and row["batch"] == 8 and row["steps"] == 20
    assert row["device"].split(":")[0] in ("cpu", "cuda", "gpu")
    assert 0.0 < row["learner_busy"] <= 1.0 and row["steps_per_s"] > 0
    assert row["simulations"] >= 2  # at least one simulator actor of two members streamed
    assert data["capacity"] == 512  # the default reservoir, whatever the windows per run
    if not data["nvidia_smi"]:
        assert row["gpu_util_percent"] is None

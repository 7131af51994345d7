"""The GPU transport benchmark runs end to end (here on JAX's CPU device) and writes its rows."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))

import gpu_transport  # noqa: E402


def test_gpu_benchmark_writes_every_case_with_ratios(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    assert gpu_transport.main(["--sizes", "1MiB", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    systems = [r["system"] for r in rows]
    assert systems == [
        "d2h-limit", "d2h-pageable", "coupler other-worker", "coupler other-worker to-device",
        "coupler other-worker to-device pinned",
        "coupler same-worker", "coupler same-worker device-to-device",
    ]
    assert all(r["n_msgs"] == gpu_transport.COUNTS["1MiB"] and r["gb_per_s"] > 0 for r in rows)
    assert next(r for r in rows if r["system"] == "d2h-limit")["ratio_to_d2h_limit"] == 1.0

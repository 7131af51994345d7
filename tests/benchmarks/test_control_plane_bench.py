"""The control-plane benchmark runs end to end at a tiny size (figures are not asserted)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))

import control_plane  # noqa: E402


def test_control_plane_benchmark_writes_every_mode_and_operation(tmp_path: Path) -> None:
    out = tmp_path / "control.json"
    assert control_plane.main(["--ops", "20", "--concurrency", "4", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    kinds = {"declare", "routing", "claim-actor", "attach", "attach+detach"}
    for mode in ("in-scheduler", "client-serial", "client-concurrent"):
        got = {r["operation"]: r for r in rows if r["mode"] == mode}
        assert set(got) == kinds
        assert all(r["ops_per_s"] > 0 and r["ops"] == 20 for r in got.values())

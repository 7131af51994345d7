"""The speed-up benchmark's code path at a tiny size: JSON schema and sane values (not timings)."""

from __future__ import annotations

import json
import math
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))

import augmentation_speedup as bench  # noqa: E402


def test_tiny_run_writes_the_documented_json(tmp_path, capsys) -> None:
    path = tmp_path / "speedup.json"
    result = bench.main(["--tiny", "--unroll", "2", "--json", str(path)])
    on_disk = json.loads(path.read_text())
    assert on_disk["rows"] == json.loads(json.dumps(result["rows"]))
    methods = [(r["method"], r["resolution"]) for r in on_disk["rows"]]
    assert methods == [("plain", 16), ("reference", 32), ("corrected-1step", 16), ("corrected-unroll2", 16)]
    for r in on_disk["rows"]:
        assert {"method", "resolution", "wall_s_per_time_unit", "time_to_corr_095", "rel_l2_final"} <= set(r)
        assert r["wall_s_per_time_unit"] > 0 and 0 <= r["time_to_corr_095"] <= bench.TINY.eval_time
        assert math.isfinite(r["rel_l2_final"]) and len(r["correlation"]) == 10  # 0.8 time units, a frame every 2 x 0.04
    reference = on_disk["rows"][1]
    assert reference["rel_l2_final"] == 0 and reference["censored"] and all(c > 0.9999 for c in reference["correlation"])
    assert all(r["training_s"] > 0 for r in on_disk["rows"][2:])
    summary = on_disk["summary"]
    assert {"matched_resolution", "speedup_at_matched_accuracy"} <= set(summary)
    assert summary["matched_resolution"] in (None, 16, 32)
    assert summary["matched_resolution"] is None or summary["payoff"] == (summary["matched_resolution"] > 16)
    assert "held-out runs" in capsys.readouterr().out

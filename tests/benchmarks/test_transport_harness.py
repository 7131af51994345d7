"""The transport benchmark harness runs end to end in its smoke mode and writes well-formed JSON.

No timing is asserted: the machine is shared and figures are noisy; only the
shape of the output and that every figure is a positive number.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "transport.py"
ROW_KEYS = {"system", "workload", "payload", "payload_bytes", "msgs_per_s", "gb_per_s", "p50_us", "p99_us", "n_msgs", "seconds", "extra", "note"}
RATIO_KEYS = {"name", "value", "target", "op", "status", "detail"}


def _positive(v: object) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_rows_have_the_schema_and_positive_figures(smoke: tuple[dict, str]) -> None:
    doc, _ = smoke
    assert doc["mode"] == "smoke"
    rows = doc["rows"]
    assert rows, "no rows"
    for row in rows:
        assert set(row) == ROW_KEYS, row
        assert _positive(row["msgs_per_s"]), row
        assert _positive(row["payload_bytes"]), row
        assert _positive(row["n_msgs"]) and _positive(row["seconds"]), row
        if row["workload"] == "pingpong":
            assert row["gb_per_s"] is None
            assert _positive(row["p50_us"]) and _positive(row["p99_us"]) and row["p50_us"] <= row["p99_us"], row
        else:
            assert _positive(row["gb_per_s"]), row
            assert row["p50_us"] is None and row["p99_us"] is None, row
    keys = [(r["system"], r["workload"], r["payload"]) for r in rows]
    assert len(keys) == len(set(keys)), "one row per (system, workload, payload)"


def test_smoke_measures_coupler_and_the_limits(smoke: tuple[dict, str]) -> None:
    doc, _ = smoke
    cells = {(r["system"], r["workload"], r["payload"]) for r in doc["rows"]}
    for cell in [
        ("coupler", "stream-1:1", "4KiB"),
        ("coupler", "stream-1:1", "1MiB"),
        ("coupler", "pingpong", "4KiB"),
        ("tcp-raw", "stream-1:1", "4KiB"),
        ("tcp-raw", "pingpong", "1B"),
        ("memcpy", "memcpy", "4KiB"),
    ]:
        assert cell in cells, f"missing row {cell}"


def test_ratios_are_reported_with_targets_not_hard_coded(smoke: tuple[dict, str]) -> None:
    doc, stdout = smoke
    ratios = {q["name"]: q for q in doc["ratios"]}
    for q in ratios.values():
        assert set(q) == RATIO_KEYS, q
        assert q["status"] in {"PASS", "MISS", "n/a", "info", "noisy"}
        if q["status"] in {"PASS", "MISS"}:
            assert _positive(q["value"]) and q["target"] is not None
            assert q["status"] == ("PASS" if (q["value"] >= q["target"] if q["op"] == ">=" else q["value"] <= q["target"]) else "MISS")
    # Measured in smoke mode (coupler 4 KiB stream), so it has a figure.
    assert ratios["4KiB 1:1 msgs/s: coupler"]["status"] in {"PASS", "MISS"}
    # Ray is not part of the smoke run: its ratios say so instead of inventing a figure.
    assert ratios["16MiB 1:1 GB/s: coupler / ray"]["status"] == "n/a"
    assert "targets" in stdout and "stream-1:1" in stdout


def test_unknown_system_is_refused_with_the_choices() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--systems", "carrier-pigeon"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "carrier-pigeon" in proc.stderr and "coupler" in proc.stderr

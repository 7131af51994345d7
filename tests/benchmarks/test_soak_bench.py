"""The soak benchmark runs end to end at a tiny size; its JSON has the documented shape (growth is not asserted)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))

import soak  # noqa: E402
from coupler.runtime import Coupling  # noqa: E402


def test_soak_benchmark_writes_a_growth_row_per_worker(coupling: Coupling, tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    args = ["--cycles", "6", "--warmup", "2", "--messages", "3", "--kib", "64", "--json", str(out)]
    # On the session's cluster (a coupling of its own, as `coupler run --cluster` would make).
    assert soak.main([*args, "--scheduler", coupling.client.scheduler.address]) == 0
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "soak" and doc["cycles"] == 6 and doc["warmup"] == 2
    assert doc["payload_bytes"] == 64 * 1024 and doc["targets"] == soak.TARGETS
    assert len(doc["growth"]) == 2  # the producer's worker and the consumer's
    for g in doc["growth"]:
        assert set(g["passes"]) == set(soak.TARGETS)
        assert all(isinstance(g[k], float) for k in soak.TARGETS)
        assert len(doc["samples"][g["worker"]]) == 6
        assert all(s["threads"] >= 1 and s["fds"] >= 3 and s["rss_mib"] > 10 for s in doc["samples"][g["worker"]])


def test_theil_sen_slope_ignores_an_outlier() -> None:
    y = [2.0 * i + 1.0 for i in range(20)]
    y[7] += 500.0  # one cycle in which a pool refilled
    assert soak.theil_sen(y) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="at least two samples"):
        soak.theil_sen([1.0])

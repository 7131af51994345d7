"""The data-port benchmark at its smoke size: its rows and ratios have the right form (figures are not asserted)."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))

import data_port as bench  # noqa: E402


def test_the_data_port_benchmark_prints_and_writes_both_rows_of_every_figure(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "port.json"
    bench.main(["--smoke", "--json", str(out)])
    data = json.loads(out.read_text())
    assert data["mode"] == "smoke"
    figures = {(r["figure"], r["case"]) for r in data["rows"]}
    assert figures == {("handshake", "authenticated"), ("handshake", "hello-only")} | {
        (f"check-batch n={n}", case) for n in (1, 64, 1024) for case in ("BatchChecker", "batch_size")
    }
    assert all(r["us"] > 0 and math.isfinite(r["us"]) for r in data["rows"])
    assert len(data["ratios"]) == 4 and all(math.isfinite(q["value"]) for q in data["ratios"])
    printed = capsys.readouterr().out
    assert "handshake" in printed and "BatchChecker" in printed

"""The transport benchmark's coupler-xhost system runs between two emulated hosts in smoke mode and writes its rows.

Needs root for the emulated hosts (tests/multihost/emulated_hosts.py): skips with the
reason outside CI, fails under ``CI=true`` (tests/services.py). No timing is asserted.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from services import require

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "multihost"))
import emulated_hosts  # noqa: E402

pytestmark = pytest.mark.multihost


def test_coupler_xhost_smoke_rows_and_ratios(tmp_path: Path) -> None:
    require("emulated hosts", emulated_hosts.problem())
    out = tmp_path / "xhost.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "transport.py"), "--smoke", "--systems", "coupler-xhost", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["skipped"] == {}
    cells = {(r["system"], r["workload"], r["payload"]): r for r in doc["rows"]}
    expected = {(s, w, "4KiB") for s in ("coupler-xhost", "tcp-raw-xhost") for w in ("stream-1:1", "pingpong")}
    assert set(cells) == expected, sorted(cells)
    for key, r in cells.items():
        figure = r["gb_per_s"] if key[1] == "stream-1:1" else r["p50_us"]
        assert isinstance(figure, float) and math.isfinite(figure) and figure > 0, (key, r)
        assert r["n_msgs"] > 0
    ratios = {q["name"]: q for q in doc["ratios"] if "across hosts" in q["name"]}
    assert len(ratios) == 3
    assert all(q["status"] == "info" and q["value"] > 0 for q in ratios.values() if "4KiB" in q["name"])
    # The 16 MiB target is not measured in smoke mode, and says so instead of guessing.
    assert [q["status"] for q in ratios.values() if "16MiB" in q["name"]] == ["n/a"]
    assert not list(Path("/run/coupler-hosts").glob("*"))  # the hosts were removed

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


def test_small_cells_are_measured_in_interleaved_rounds_and_keep_their_median_run() -> None:
    """Repeats go round all small cells (A B, A B, A B), not one cell's runs back to back,
    and a cell's row is its median run, with every run noted."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _common import Budget, MiB, Row, run_cells

    calls: list[str] = []
    rates = {"a": iter([30.0, 10.0, 20.0]), "b": iter([5.0, 7.0, 6.0]), "big": iter([1.0, 2.0, 3.0])}
    lat = iter([300.0, 100.0, 200.0])

    def rate(name: str, nbytes: int):  # type: ignore[no-untyped-def]
        def measure() -> Row:
            calls.append(name)
            v = next(rates[name])
            return Row("s", "stream-1:1", name, nbytes, v, v * nbytes / 1e9, n_msgs=10, seconds=1.0)
        return measure

    def ping() -> Row:
        calls.append("ping")
        return Row("s", "pingpong", "4KiB", 4096, 1.0, None, p50_us=next(lat), p99_us=400.0)

    def broken() -> Row:
        calls.append("broken")
        raise RuntimeError("no luck")

    def bcast() -> Row:
        calls.append("bcast")
        return Row("s", "broadcast-1:4", "4KiB", 4096, 9.0, 1e-5)

    cells = [("a", rate("a", 4096)), ("big", rate("big", 16 * MiB)), ("b", rate("b", MiB)), ("ping", ping), ("broken", broken), ("bcast", bcast)]
    lines: list[str] = []
    rows = run_cells(cells, lines.append, Budget(seconds=1.0, pingpong_rounds=10, pingpong_warmup=20, heat_seconds=1.0, heat_rounds=1, max_bytes=MiB, repeats=3, repeat_max_bytes=MiB))
    # Large, failed and broadcast cells run once.
    assert calls == ["a", "big", "b", "ping", "broken", "bcast", "a", "b", "ping", "a", "b", "ping"]
    by = {r.payload if r.workload == "stream-1:1" else r.workload: r for r in rows}
    assert list(by) == ["a", "big", "b", "pingpong", "broadcast-1:4"]
    by["ping"] = by["pingpong"]
    assert by["a"].msgs_per_s == 20.0 and by["a"].extra["runs"] == [30.0, 10.0, 20.0] and by["a"].extra["run_spread"] == 1.0
    assert by["b"].msgs_per_s == 6.0 and by["ping"].p50_us == 200.0 and by["ping"].extra["run_figure"] == "p50_us"
    assert by["big"].msgs_per_s == 1.0 and "runs" not in by["big"].extra
    assert any("broken: FAILED" in line for line in lines) and any("(run 3/3)" in line for line in lines)
    # Of two runs (a repeat failed), the worse one: the lower rate, the higher p50.
    from _common import median_run

    pair = [Row("s", "stream-1:1", "4KiB", 4096, v, 1e-5) for v in (20.0, 10.0)]
    assert median_run(pair).msgs_per_s == 10.0
    pings = [Row("s", "pingpong", "4KiB", 4096, 1.0, None, p50_us=v, p99_us=500.0) for v in (100.0, 300.0)]
    assert median_run(pings).p50_us == 300.0


def test_the_heat_loss_is_judged_with_its_noise_estimated_from_the_reference_phases() -> None:
    """A steady drift is not noise; a loss is PASS or MISS only where twice its standard
    error keeps it on one side of the 5 % target, else noisy."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import math as m

    from _common import HEAT, Row
    from _coupler_system import phase_noise
    from _ratios import compute

    assert phase_noise([100.0, 101.0, 102.01, 103.0301]) == 0.0  # 1 % drift per phase, no noise
    assert phase_noise([100.0, 110.0]) is None  # one pair: no spread to measure
    # Alternating +-5 %: log ratios +-ln(1.05/0.95), so one phase's noise is their sd / sqrt 2.
    alt = [100 * (1.05 if i % 2 else 0.95) for i in range(7)]
    d = m.log(1.05 / 0.95)
    assert abs(phase_noise(alt) - m.sqrt(6 / 5) * d / m.sqrt(2)) < 1e-12  # sample sd of six values +-d

    def rows(loss: float, se: float) -> list[Row]:
        base = Row("coupler", HEAT, "none", 0, None, None, extra={"steps_per_s": 100.0, "spread": 0.3})
        pub = Row("coupler", HEAT, "every-10", 1 << 22, 10.0, 0.04, extra={"steps_per_s": 100 * (1 - loss), "slowdown": loss, "slowdown_se": se})
        return [base, pub]

    def verdict(loss: float, se: float) -> str:
        return next(q for q in compute(rows(loss, se)) if "every 10" in q.name).status

    assert verdict(0.00, 0.01) == "PASS"  # 0 +- 2 % is under 5 % although the reference spread 30 %
    assert verdict(0.10, 0.01) == "MISS"
    assert verdict(0.04, 0.01) == "noisy"  # 2-6 % holds the target


def test_the_retention_estimate_adds_the_fresh_memory_cost_to_each_message() -> None:
    """t / (t + extra), with extra what a copy into new memory costs over one into reused memory;
    no figure when a row is missing, and never above 1 when noise makes the fresh copy look cheaper."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _common import COPY, STREAM, Row
    from _ratios import compute

    def estimate(coupler: float, fresh: float, reused: float, drop: str = "") -> dict:
        rows = [
            Row("coupler", STREAM, "4KiB", 4096, coupler, coupler * 4096 / 1e9),
            Row("memcpy-fresh", COPY, "4KiB", 4096, fresh, fresh * 4096 / 1e9),
            Row("memcpy", COPY, "4KiB", 4096, reused, reused * 4096 / 1e9),
        ]
        q = next(q for q in compute([r for r in rows if r.system != drop]) if "retention estimate" in q.name)
        return q.as_dict()

    # 20 us per message; fresh copies 4 us against 1 us reused: 20 / (20 + 3).
    q = estimate(50_000.0, 250_000.0, 1_000_000.0)
    assert q["status"] == "info" and abs(q["value"] - 20 / 23) < 1e-12, q
    assert estimate(50_000.0, 2_000_000.0, 1_000_000.0)["value"] == 1.0
    missing = estimate(50_000.0, 250_000.0, 1_000_000.0, drop="memcpy-fresh")
    assert missing["status"] == "n/a" and missing["value"] is None and "memcpy-fresh" in missing["detail"]


def test_the_retention_rows_time_a_first_fill_and_an_interval_after_a_commit() -> None:
    """``coupler-alo-fill`` starts on a fresh channel; ``coupler-alo`` first fills the log and commits it.

    With ``retain-bytes`` of 2 MiB and 1 MiB messages, the steady row's warm-up
    sends 2 messages for the log and a queue's worth (64) more, and the
    consumer's stored checkpoint covers at least those the log held before the
    clock starts: what lets the log go.
    """
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import dask
    from _common import SMOKE, STREAM
    import _coupler_system

    notes: list[str] = []
    with dask.config.set({"coupler.delivery.retain-bytes": "2 MiB"}):
        rows = _coupler_system.run("coupler-alo", SMOKE, [STREAM], {STREAM: ["1MiB"]}, True, notes.append, retain=True)
    by_system = {r.system: r for r in rows}
    assert set(by_system) == {"coupler-alo-fill", "coupler-alo"}, notes
    fill, steady = by_system["coupler-alo-fill"], by_system["coupler-alo"]
    assert fill.extra["steady"] is False and fill.extra["warmup_messages"] == SMOKE.warmup(1 << 20)
    assert "committed_before_clock" not in fill.extra
    queue = _coupler_system.queue_size(1 << 20)
    assert steady.extra["steady"] is True and steady.extra["warmup_messages"] == 2 + queue
    # Whatever is still queued at the consumer is not taken yet; everything before it is committed.
    assert 2 <= steady.extra["committed_before_clock"] <= 2 + queue, steady.extra
    assert fill.n_msgs > 0 and steady.n_msgs > 0 and fill.gb_per_s > 0 and steady.gb_per_s > 0

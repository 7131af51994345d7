"""The learner-on-a-GPU benchmark's code path at its smallest size (figures are not asserted), and its sampler."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

from coupler.runtime import Coupling

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))

import augmentation_gpu as bench  # noqa: E402
from correction_online_vs_offline import correction_setup  # noqa: E402


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


def test_a_row_leaves_no_actor_or_channel_behind(coupling: Coupling) -> None:
    setup = replace(correction_setup(quick=True), members=2, blocks=2, offline_sims=4)
    before_actors, before_channels = set(coupling.actors()), set(coupling.channels())
    row = bench.measure(setup, coupling, model="closure", batch=4, steps=5, sim_actors=1, seed=3, progress=False)
    assert row["steps"] == 5 and 0.0 < row["learner_busy"] <= 1.0
    # The learner and every simulator actor were released, and the row's channel closed.
    assert set(coupling.actors()) == before_actors
    assert set(coupling.channels()) == before_channels


def test_sampler_reads_nvidia_smi_lines_and_skips_what_is_not_a_number(tmp_path: Path, monkeypatch) -> None:
    # A stand-in nvidia-smi on the path: it records its arguments, prints three samples (one unreadable), then idles.
    fake = tmp_path / "nvidia-smi"
    fake.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/args\necho 37\necho "[N/A]"\necho "41, 0"\nexec sleep 30\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    sampler = bench.GpuSampler(period_ms=50)
    assert sampler.available()
    sampler.start()
    try:
        deadline = time.monotonic() + 10
        while len(sampler.rows) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        sampler.stop()  # ends the idling stand-in too
    assert [u for _, u in sampler.rows] == [37.0, 41.0]
    args = (tmp_path / "args").read_text().split()
    assert "--query-gpu=utilization.gpu" in args and args[args.index("-lms") + 1] == "50"

"""The payoff benchmark's model trained through the runtime (``--online``): actors stream, a learner trains.

Figures are not asserted; what is: the learner trained the benchmark's model for its
step budget on windows the simulator actors streamed (its weights moved from their
initial values), and ``--online`` adds a row per single-stage schedule whose
training time is the runtime's.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from coupler.learners.online import OptimizerConfig
from coupler.learners.solver_correction import SolverCorrectionConfig, SolverCorrectionTrainer
from coupler.runtime import Coupling

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))

import augmentation_speedup as bench  # noqa: E402
from _runtime_training import train_through_runtime  # noqa: E402


def test_the_learner_trains_the_benchmarks_model_from_streamed_windows(coupling: Coupling) -> None:
    setup = replace(bench.TINY, train_steps=12)
    run = train_through_runtime(setup, coupling, 2, seed=0, key=jax.random.key(5), members=2, progress=False)
    assert run.windows >= setup.batch_size and run.simulations >= 2 and np.isfinite(run.loss) and run.seconds > 0
    # The same config's untrained model: the streamed training moved the weights.
    cg = replace(setup, window=3).coarse_grained()
    optimizer = OptimizerConfig(learning_rate=setup.learning_rate, warmup_steps=12, decay_steps=12)
    initial = SolverCorrectionTrainer(SolverCorrectionConfig(cg.coarse(), setup.model, optimizer, unroll=2, seed=0)).model
    moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(nnx.state(run.model)), jax.tree.leaves(nnx.state(initial)))]
    assert moved and any(moved)


def test_unroll_must_be_positive(coupling: Coupling) -> None:
    with pytest.raises(ValueError, match="unroll must be >= 1"):
        train_through_runtime(bench.TINY, coupling, 0, seed=0, key=jax.random.key(0), progress=False)


def test_online_adds_a_row_per_single_stage_schedule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "payoff.json"
    result = bench.main(["--tiny", "--online", "--schedules", "2", "1,2", "--json", str(out)])
    names = [r["method"] for r in result["rows"] if r["method"].startswith("corrected")]
    # the curriculum "1,2" is trained in this process only
    assert names == ["corrected-unroll2", "corrected-unroll1-2", "corrected-online-unroll2"]
    row = next(r for r in result["rows"] if r["method"] == "corrected-online-unroll2")
    assert row["training_s"] == pytest.approx(result["online"]["corrected-online-unroll2"]["seconds"])
    assert json.loads(out.read_text())["online"]["corrected-online-unroll2"]["windows"] > 0
    assert "trained in this process only" in capsys.readouterr().out

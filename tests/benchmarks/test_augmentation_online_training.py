"""The payoff benchmark's model trained through the runtime (``--online``): actors stream, a learner trains.

Figures are not asserted; what is: ``--online`` adds a row per single-stage
schedule whose model the learner actor trained from windows simulator actors
streamed (it is not the untrained closure, which is the plain solver at the
corrected step), and whose training time is the runtime's.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import jax
import pytest

from coupler.runtime import Coupling

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))

import augmentation_speedup as bench  # noqa: E402
from _runtime_training import train_through_runtime  # noqa: E402


def test_online_adds_a_row_per_single_stage_schedule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "payoff.json"
    result = bench.main(["--tiny", "--online", "--schedules", "2", "1,2", "--json", str(out)])
    rows = {r["method"]: r for r in result["rows"]}
    # the curriculum "1,2" is trained in this process only
    assert [m for m in rows if m.startswith("corrected")] == ["corrected-unroll2", "corrected-unroll1-2", "corrected-online-unroll2"]
    online = result["online"]["corrected-online-unroll2"]
    assert rows["corrected-online-unroll2"]["training_s"] == pytest.approx(online["seconds"])
    assert online["windows"] >= bench.TINY.batch_size and online["simulations"] >= 8
    # An untrained closure is the plain padded solver at the corrected step (tests/learners/test_spectral_closure.py):
    # the streamed training moved the model away from it.
    assert rows["corrected-online-unroll2"]["rel_l2_final"] != rows["plain-pad-2dt"]["rel_l2_final"]
    assert json.loads(out.read_text())["online"] == json.loads(json.dumps(result["online"]))
    assert "trained in this process only" in capsys.readouterr().out


def test_a_training_leaves_no_actor_or_channel_behind(coupling: Coupling) -> None:
    before_actors, before_channels = set(coupling.actors()), set(coupling.channels())
    run = train_through_runtime(bench.TINY, coupling, 2, seed=1, key=jax.random.key(7), members=2, progress=False)
    assert run.windows >= bench.TINY.batch_size and run.simulations >= 2
    # Its learner and every simulator actor were released, and its channel closed.
    assert set(coupling.actors()) == before_actors
    assert set(coupling.channels()) == before_channels


def test_unroll_must_be_positive(coupling: Coupling) -> None:
    with pytest.raises(ValueError, match="unroll must be >= 1"):
        train_through_runtime(bench.TINY, coupling, 0, seed=0, key=jax.random.key(0), progress=False)

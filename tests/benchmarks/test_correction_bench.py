"""The correction benchmark's own command line: what it changes in the setup (no run)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))

import correction_online_vs_offline as correction  # noqa: E402


def test_the_command_line_sets_the_model_the_ranges_and_the_budgets() -> None:
    default = correction.setup_from_args(correction.parse_args([]))
    assert default == correction.correction_setup(quick=False)
    args = correction.parse_args(["--quick", "--model", "cnn", "--viscosity", "0.008", "0.04", "--amplitude", "0.5", "1.5",
                                  "--offline-sims", "6", "--steps", "50", "--patience", "1000"])
    setup = correction.setup_from_args(args)
    assert setup.model == correction.MODELS["cnn"]
    assert setup.viscosity == (0.008, 0.04) and setup.amplitude == (0.5, 1.5)
    assert setup.patience == 1000 and default.patience == 10
    assert setup.train_steps == 50 and setup.offline_sims == 6 and setup.capacity == 6 * setup.blocks
    assert setup.simulator == default.simulator  # the runs themselves are the same


def test_the_online_stream_is_a_budget_of_runs_far_above_what_offline_stores() -> None:
    for quick in (True, False):
        setup = correction.correction_setup(quick)
        assert setup.stream_samples == setup.stream_sims * setup.blocks and setup.stream_sims % setup.members == 0
        assert setup.stream_sims >= 6 * setup.offline_sims  # online's fresh runs, offline's stored ones
    args = correction.parse_args(["--stream-sims", "32"])
    assert correction.setup_from_args(args).stream_samples == 32 * correction.correction_setup(False).blocks

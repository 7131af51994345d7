"""The correction benchmark's own command line: what it changes in the setup (no run)."""

from __future__ import annotations

import os
import sys
from dataclasses import replace

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))

import correction_online_vs_offline as correction  # noqa: E402
import jax  # noqa: E402
import subgrid_apriori  # noqa: E402


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


def test_the_tendency_model_has_its_own_a_priori_setup() -> None:
    setup = correction.setup_from_args(correction.parse_args(["--model", "tendency"]))
    assert setup == correction.tendency_setup(quick=False) and setup.target is correction.Target.SUBGRID
    assert setup.field == "subgrid" and setup.publish_every == 1 and setup.sample_shape == (2, 16, 16)
    assert setup.stream_sims >= 16 * setup.offline_sims and setup.patience >= setup.train_steps  # offline at its best
    window = correction.correction_setup(quick=False)
    assert window.field == "window" and window.publish_every == window.unroll and window.sample_shape == (9, 16, 16)
    assert isinstance(setup.trainer(0), correction.SubgridFitConfig)
    assert isinstance(window.trainer(0), correction.SolverCorrectionConfig)


def test_the_subgrid_samples_are_the_a_priori_analysis_pairs() -> None:
    # Two code paths to the same data: the benchmark's simulator observation and subgrid_apriori's sampler.
    base = correction.tendency_setup(quick=True)
    fine = replace(base.simulator.fine, n=32, dt=0.04)
    setup = replace(base, simulator=replace(base.simulator, fine=fine, substeps=3, spinup=10), blocks=3)
    key = jax.random.key(4)
    data = correction.simulate_samples(setup, key, 2)
    assert data["field"].shape == (2, 3, 2, 16, 16) and data["params"].shape == (2, 3, 3)
    params = correction._params(setup, key, 2)
    w, s = subgrid_apriori.sample_pairs(fine, setup.simulator.coarse(), jax.random.split(jax.random.fold_in(key, 1), 2), params,
                                        spinup=10, samples=4, every=3)
    # the benchmark's first pair is one sampling interval after the spin-up: the sampler's second
    np.testing.assert_allclose(data["field"][:, :, 0], w[:, 1:], atol=1e-5)
    np.testing.assert_allclose(data["field"][:, :, 1], s[:, 1:], atol=1e-5)
    np.testing.assert_array_equal(data["params"][:, 0], correction._matrix(params))


def test_the_thinned_store_fills_the_same_memory_from_more_runs() -> None:
    base = correction.tendency_setup(quick=True)
    fine = replace(base.simulator.fine, n=32, dt=0.04)
    setup = replace(base, simulator=replace(base.simulator, fine=fine, substeps=2, spinup=4), blocks=4, offline_sims=2)
    key = jax.random.key(7)
    store = correction.thinned_store(setup, key, 2)
    assert store["field"].shape == (4, 2) + setup.sample_shape and store["params"].shape == (4, 2, 3)
    assert store["field"].shape[0] * store["field"].shape[1] == setup.capacity  # the same memory, twice the runs
    whole = correction.simulate_samples(setup, key, 4)  # the same runs, every block
    for run in range(4):
        kept = [b for b in range(4) for j in range(2) if np.array_equal(store["field"][run, j], whole["field"][run, b])]
        assert len(set(kept)) == 2  # two different blocks of that very run
    np.testing.assert_array_equal(store["params"][:, 0], whole["params"][:, 0])
    for bad in (0, 5):
        with pytest.raises(ValueError, match="samples per run"):
            correction.thinned_store(setup, key, bad)
    assert correction.setup_from_args(correction.parse_args(["--model", "tendency", "--thinned", "1"])).thinned == 1


def test_a_posteriori_an_untrained_model_is_the_padded_coarse_solver_row() -> None:
    # The a-priori model inside the solver, evaluated beside the plain rows: untrained, it adds no tendency,
    # so its row must be the padded 16^2 solver's at the same step (the same frames, hence the same figures).
    base = correction.tendency_setup(quick=True)
    fine = replace(base.simulator.fine, n=32, dt=0.04)
    setup = replace(base, simulator=replace(base.simulator, fine=fine, substeps=2, spinup=4))
    rows = {r["method"]: r for r in correction.a_posteriori(setup, {"untrained": base.model.build(0)}, seed=0, runs=2)}
    assert set(rows) == {"plain", "plain-pad", "reference", "untrained"}
    assert rows["reference"]["rel_l2_final"] == 0 and rows["untrained"]["resolution"] == 16
    for key in ("time_to_corr_095", "censored", "unstable_runs"):
        assert rows["untrained"][key] == rows["plain-pad"][key]
    assert abs(rows["untrained"]["rel_l2_final"] - rows["plain-pad"]["rel_l2_final"]) < 1e-5
    assert rows["plain"]["rel_l2_final"] != rows["plain-pad"]["rel_l2_final"]  # the rows do differ where they should

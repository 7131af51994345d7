"""The online-vs-offline benchmark's code path at a tiny size (structure and finite values, not timing)."""

from __future__ import annotations

import math
import os
import sys
from dataclasses import replace

import numpy as np
import pytest

from coupler.learners.fno import FNOConfig
from coupler.runtime import Coupling

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))

import augmentation_online_vs_offline as bench  # noqa: E402


# End to end through a real coupling (simulator and learner actors compile in their workers):
# tens of seconds on an idle 2-core machine, minutes on a loaded one.
@pytest.mark.system
@pytest.mark.timeout(900)
def test_offline_and_online_rows_on_a_tiny_navier_stokes_setup(coupling: Coupling, capsys) -> None:
    args = bench.parse_args(["--setups", "navier-stokes", "--steps", "12", "--offline-sims", "5", "--blocks", "3", "--grid", "16"])
    (setup,) = bench.build_setups(args)
    # A tiny FNO: the test is about the code path, and compiling the real one costs seconds per process.
    setup = replace(setup, members=4, patience=2, model=FNOConfig(modes=3, width=4, depth=1, hidden=4, field_scale=3.0))
    assert setup.capacity == 15 and setup.simulator.n == 16
    result = bench.run_setup(setup, coupling, seed=0, test_sims=4)
    offline, online = result["rows"]
    assert (offline["mode"], online["mode"]) == ("offline", "online")
    # Offline stores exactly its budget: 5 simulations x 3 pairs, 1 simulation held for validation.
    assert offline["stored_samples"] == 15 and offline["unique_samples"] == 12 and offline["simulations"] == 5
    assert 1 <= offline["train_steps"] <= 12 and 1 <= offline["best_step"] <= offline["train_steps"]
    # Online ran the whole step budget from a stream of at least as many samples as it can hold.
    assert online["train_steps"] == 12 and online["stored_samples"] == 15
    assert online["unique_samples"] >= 2 * setup.batch_size and online["simulations"] >= setup.members
    for row in (offline, online):
        assert 0 < row["heldout_rel_l2"] < 10 and math.isfinite(row["batch_samples_per_s"]) and row["batch_samples_per_s"] > 0
        assert row["learner_cpu_cores"] > 0
    assert result["online_over_offline_error"] == online["heldout_rel_l2"] / offline["heldout_rel_l2"]
    assert 0 < result["persistence_rel_l2"] < 10
    capsys.readouterr()  # drop the progress lines the run printed (a slow machine prints more of them)
    bench.print_table([result])
    out = capsys.readouterr().out
    assert "online/offline error ratio" in out and out.count("navier-stokes") == 2


def test_simulated_pairs_follow_the_simulator() -> None:
    setup = replace(bench.heat_setup(quick=True), simulator=bench.Heat2D(n=8), k=3, blocks=2)
    pairs = bench.simulate_pairs(setup, bench.jax.random.key(0), sims=2)
    assert pairs["input"].shape == (2, 2, 8, 8) and pairs["params"].shape == (2, 2, 1)
    # Each block's target is the next block's input, and k solver steps away from it.
    np.testing.assert_array_equal(pairs["target"][:, 0], pairs["input"][:, 1])
    params = bench.draw_params(setup, bench.jax.random.key(0), 2)
    first = jax_advance(setup, params, pairs["input"][:, 0])
    np.testing.assert_allclose(first, pairs["target"][:, 0], rtol=1e-6, atol=1e-7)


def jax_advance(setup: bench.Setup, params, u: np.ndarray) -> np.ndarray:
    sim = setup.simulator
    state = bench.jax.vmap(sim.init)(bench.jax.random.split(bench.jax.random.key(1), 2), params)
    state = state._replace(u=bench.jax.numpy.asarray(u))
    return np.asarray(bench.jax.vmap(lambda s, p: sim.advance(s, p, setup.k))(state, params).u)


@pytest.mark.system
@pytest.mark.timeout(900)
def test_offline_and_online_rows_of_the_correction_setup(coupling: Coupling) -> None:
    # The coarse-solver correction (ns-correction) through the same comparison, tiny: fine 32^2 -> 16^2.
    args = bench.parse_args(["--setups", "ns-correction", "--steps", "6", "--offline-sims", "5", "--blocks", "2"])
    (setup,) = bench.build_setups(args)
    fine = replace(setup.simulator.fine, n=32, dt=0.04)
    setup = replace(setup, simulator=replace(setup.simulator, fine=fine, substeps=2, window=3, spinup=10), members=2, patience=2)
    result = bench.correction.run_setup(setup, coupling, seed=0, test_sims=2)
    offline, online = result["rows"]
    assert offline["stored_samples"] == 10 and offline["unique_samples"] == 8 and 1 <= offline["train_steps"] <= 6
    assert online["train_steps"] == 6 and online["stored_samples"] == 10 and online["unique_samples"] >= 2 * setup.batch_size
    for row in (offline, online):
        assert math.isfinite(row["heldout_rel_l2"]) and row["heldout_rel_l2"] > 0
    assert math.isfinite(result["persistence_rel_l2"]) and result["baseline"] == "plain coarse solver"


def test_seed_summary_is_the_mean_and_standard_error() -> None:
    results = [{"setup": "a", "online_error_reduction": v} for v in (0.1, 0.2, 0.3)] + [{"setup": "b", "online_error_reduction": 0.5}]
    s = bench.summarize_seeds(results)
    assert s["a"]["mean"] == pytest.approx(0.2) and s["a"]["se"] == pytest.approx(0.1 / np.sqrt(3)) and s["a"]["seeds"] == 3
    assert s["b"] == {"mean": 0.5, "se": 0.0, "seeds": 1}

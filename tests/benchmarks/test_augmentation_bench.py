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
    args = bench.parse_args(["--setups", "navier-stokes", "--steps", "12", "--offline-sims", "5", "--blocks", "3", "--grid", "16",
                             "--stream-sims", "16"])
    (setup,) = bench.build_setups(args)
    # A tiny FNO: the test is about the code path, and compiling the real one costs seconds per process.
    setup = replace(setup, members=4, patience=2, model=FNOConfig(modes=3, width=4, depth=1, hidden=4, field_scale=3.0))
    assert setup.capacity == 15 and setup.simulator.n == 16 and setup.stream_samples == 48
    before = set(coupling.actors()), set(coupling.channels())
    result = bench.run_setup(setup, coupling, seed=0, test_sims=4)
    # The online run released its learner (and every simulator actor) and closed its channel.
    assert (set(coupling.actors()), set(coupling.channels())) == before
    offline, online = result["rows"]
    assert (offline["mode"], online["mode"]) == ("offline", "online")
    # Offline stores exactly its budget: 5 simulations x 3 pairs, 1 simulation held for validation.
    assert offline["stored_samples"] == 15 and offline["unique_samples"] == 12 and offline["simulations"] == 5
    assert 1 <= offline["train_steps"] <= 12 and 1 <= offline["best_step"] <= offline["train_steps"]
    # Online ran the whole step budget from its whole stream (paced: the last step waits for all 48 pairs),
    # 16 simulations in 4 actors of 4 members, never one more: the budget is counted in samples.
    assert online["train_steps"] == 12 and online["stored_samples"] == 15
    assert online["unique_samples"] == 48 and online["simulations"] == 16
    for row in (offline, online):
        assert 0 < row["heldout_rel_l2"] < 10 and math.isfinite(row["batch_samples_per_s"]) and row["batch_samples_per_s"] > 0
        assert row["learner_cpu_cores"] > 0
    assert result["online_over_offline_error"] == online["heldout_rel_l2"] / offline["heldout_rel_l2"]
    assert 0 < result["persistence_rel_l2"] < 10
    capsys.readouterr()  # drop the progress lines the run printed (a slow machine prints more of them)
    bench.print_table([result])
    out = capsys.readouterr().out
    assert "online/offline error ratio" in out and out.count("navier-stokes") == 3  # two rows and the seeds' summary
    assert "navier-stokes: online error reduction" in out and "(mean +- SE over 1 seeds" in out
    assert result["stream_budget_pairs"] == 48


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
    args = bench.parse_args(["--setups", "ns-correction", "--steps", "6", "--offline-sims", "5", "--blocks", "2", "--stream-sims", "12"])
    (setup,) = bench.build_setups(args)
    fine = replace(setup.simulator.fine, n=32, dt=0.04)
    setup = replace(setup, simulator=replace(setup.simulator, fine=fine, substeps=2, window=3, spinup=10), members=2, patience=2)
    before = set(coupling.actors()), set(coupling.channels())
    result = bench.correction.run_setup(setup, coupling, seed=0, test_sims=2)
    # The online run released its learner (and every simulator actor) and closed its channel.
    assert (set(coupling.actors()), set(coupling.channels())) == before
    offline, online = result["rows"]
    assert offline["stored_samples"] == 10 and offline["unique_samples"] == 8 and 1 <= offline["train_steps"] <= 6
    assert online["train_steps"] == 6 and online["stored_samples"] == 10
    assert online["unique_samples"] == 24 and online["simulations"] == 12  # the stream budget, 12 runs x 2 windows
    for row in (offline, online):
        assert math.isfinite(row["heldout_rel_l2"]) and row["heldout_rel_l2"] > 0
    assert math.isfinite(result["persistence_rel_l2"]) and result["baseline"] == "plain coarse solver"


@pytest.mark.system
@pytest.mark.timeout(900)
def test_offline_and_online_rows_of_the_a_priori_subgrid_setup(coupling: Coupling) -> None:
    # The subgrid-tendency CNN fitted a priori (ns-subgrid), tiny: fine 32^2 -> 16^2, a narrow CNN.
    args = bench.parse_args(["--setups", "ns-subgrid", "--steps", "6", "--offline-sims", "5", "--blocks", "2", "--stream-sims", "8"])
    (setup,) = bench.build_setups(args)
    assert setup.target is bench.correction.Target.SUBGRID and setup.model == bench.correction.MODELS["tendency"]
    fine = replace(setup.simulator.fine, n=32, dt=0.04)
    setup = replace(setup, simulator=replace(setup.simulator, fine=fine, substeps=2, spinup=10), members=2, batch_size=4,
                    model=replace(setup.model, width=4, depth=2))
    before = set(coupling.actors()), set(coupling.channels())
    result = bench.correction.run_setup(setup, coupling, seed=0, test_sims=2)
    # The online run released its learner (and every simulator actor) and closed its channel.
    assert (set(coupling.actors()), set(coupling.channels())) == before
    offline, online = result["rows"]
    assert offline["stored_samples"] == 10 and offline["unique_samples"] == 8 and offline["train_steps"] == 6
    assert online["train_steps"] == 6 and online["unique_samples"] == 16 and online["simulations"] == 8
    # Trained from a model that predicts nothing (error exactly 1, the plain solver's): both moved from it.
    assert result["persistence_rel_l2"] == 1.0 and result["target"] == "subgrid"
    for row in (offline, online):
        assert math.isfinite(row["heldout_rel_l2"]) and row["heldout_rel_l2"] != 1.0


def test_seed_summary_is_the_mean_and_standard_error() -> None:
    results = [{"setup": "a", "online_error_reduction": v} for v in (0.1, 0.2, 0.3)] + [{"setup": "b", "online_error_reduction": 0.5}]
    s = bench.summarize_seeds(results)
    assert s["a"]["mean"] == pytest.approx(0.2) and s["a"]["se"] == pytest.approx(0.1 / np.sqrt(3)) and s["a"]["seeds"] == 3
    assert s["b"] == {"mean": 0.5, "se": 0.0, "seeds": 1}


def test_the_paced_stream_is_linear_in_the_step_and_ends_with_the_whole_budget() -> None:
    due = [bench._online_row.samples_due(i, min_samples=32, stream_samples=832, max_steps=101) for i in range(101)]
    assert due[0] == 32 and due[-1] == 832 and all(d == 32 + 8 * i for i, d in enumerate(due))
    assert bench._online_row.samples_due(500, min_samples=32, stream_samples=832, max_steps=101) == 832  # past the end
    assert bench._online_row.samples_due(0, min_samples=5, stream_samples=9, max_steps=1) == 5
    with pytest.raises(ValueError, match="stream_samples >= min_samples"):
        bench._online_row.samples_due(0, min_samples=32, stream_samples=16, max_steps=10)


def test_the_driver_launches_at_most_one_run_ahead_and_never_past_the_budget() -> None:
    may = bench._online_row.may_launch
    assert may(0, 1000, 32, 256) and may(256, 1000, 32, 256)  # the first run, and the next while it is used
    assert may(512, 1000, 32, 256) is False  # a second run ahead of what step 0 waits for
    assert may(512, 1000, 300, 256)  # the learner waits for part of the second run
    assert may(1024, 1000, 2000, 256) is False  # the whole budget is launched


def test_the_setups_stream_a_fixed_number_of_samples_per_step() -> None:
    for quick in (True, False):
        ns = bench.navier_stokes_setup(quick)
        assert ns.stream_samples / ns.train_steps == pytest.approx(32, rel=0.05) and ns.stream_sims % ns.members == 0
        assert ns.stream_samples > 10 * ns.capacity  # online sees far more unique pairs than offline can store


def test_a_thinned_store_fills_the_same_memory_from_more_runs() -> None:
    setup = replace(bench.heat_setup(quick=True), simulator=bench.Heat2D(n=8), k=2, blocks=4, offline_sims=3)
    data = bench.thinned_store(setup, bench.jax.random.key(0), pairs_per_run=1)
    assert data["input"].shape == (12, 1, 8, 8) and data["params"].shape == (12, 1, 1)  # 12 runs x 1 pair = 3 x 4
    whole = bench.simulate_pairs(setup, bench.jax.random.key(0), sims=12)
    # Each kept pair is one of its run's blocks.
    for run in range(12):
        assert any(np.array_equal(data["input"][run, 0], whole["input"][run, j]) for j in range(4))

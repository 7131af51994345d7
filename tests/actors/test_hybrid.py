"""HybridSimulatorActor: the schedule, the surrogate jump, and weights arriving on a Latest channel."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax import nnx
from helper_actors import Collector, Producer
from coupler.actors.hybrid import (
    CorrectedSimulatorActor,
    HybridSchedule,
    HybridSimulatorActor,
    corrected_advance,
    surrogate_jump,
)
from coupler.actors.learner import LearnerActor
from coupler.actors.simulator import SimulatorActor
from coupler.learners.online import OnlineTrainer, OptimizerConfig, SurrogateConfig
from coupler.learners.solver_correction import CoarseCorrectionConfig, SolverCorrectionConfig
from coupler.learners.spectral_closure import SpectralClosureConfig
from coupler.physics.coarse_graining import CoarseGrainedNavierStokes
from coupler.physics.heat import Heat2D
from coupler.physics.navier_stokes import NavierStokes2D
from coupler.runtime import Coupling, Latest, Reservoir, Window

CONFIG = SurrogateConfig(width=4, depth=1, patch=1)


def test_schedule_replaces_the_first_k_of_every_m_blocks() -> None:
    assert [HybridSchedule(2, 4).uses_surrogate(b) for b in range(8)] == [True, True, False, False] * 2
    assert not any(HybridSchedule(0, 1).uses_surrogate(b) for b in range(5))
    assert all(HybridSchedule(3, 3).uses_surrogate(b) for b in range(5))
    assert HybridSchedule(1, 4).solver_fraction == 0.75
    for bad in ((3, 2), (-1, 2), (0, 0)):
        with pytest.raises(ValueError, match="0 <= replace <= every"):
            HybridSchedule(*bad)


def test_surrogate_jump_sets_the_field_and_moves_the_clock() -> None:
    sim = Heat2D(n=8)
    state = sim.init(jax.random.key(0), sim.random_params(jax.random.key(1)))
    new = surrogate_jump(sim, state, "u", jnp.ones((8, 8)), steps=5)
    assert int(new.step) == 5 and float(new.t) == pytest.approx(5 * sim.dt)
    assert new.u.dtype == state.u.dtype and float(new.u.sum()) == 64.0
    with pytest.raises(ValueError, match="shape"):
        surrogate_jump(sim, state, "u", jnp.ones((4, 4)), steps=5)
    with pytest.raises(ValueError, match="missing \\['w'\\]"):
        surrogate_jump(sim, state, "w", jnp.ones((8, 8)), steps=5)


def _perturbed_weights() -> dict:
    # A surrogate that is not the identity (a fresh ConvSurrogate is persistence).
    trainer = OnlineTrainer(CONFIG, seed=0)
    return jax.tree.map(lambda a: a + np.float32(0.05), trainer.get_weights())


def _expected_targets(sim: Heat2D, params, features, weights, k: int, blocks: int, schedule: HybridSchedule | None):
    """The hybrid run recomputed here: pure simulator blocks and the surrogate's predictions."""
    members = params.diffusivity.shape[0]
    state = jax.vmap(sim.init)(jax.random.split(jax.random.key(0), members), params)
    block = jax.jit(jax.vmap(lambda s, p: sim.advance(s, p, k)))
    trainer = OnlineTrainer(CONFIG)
    trainer.set_weights(weights)
    out = []
    for b in range(blocks):
        if schedule is not None and schedule.uses_surrogate(b):
            state = surrogate_jump(sim, state, "u", trainer.predict(np.asarray(state.u), features), k)
        else:
            state = block(state, params)
        out.append(np.asarray(state.u))
    return np.concatenate(out)


def test_hybrid_actor_uses_the_weights_from_its_latest_channel(coupling: Coupling, unique: str) -> None:
    sim = Heat2D(n=8)
    members, k, blocks = 2, 4, 6
    params = jax.vmap(sim.random_params)(jax.random.split(jax.random.key(5), members))
    features = np.asarray(params.diffusivity, np.float32)[:, None]
    weights = _perturbed_weights()
    w = coupling.workers()
    runs = {}
    for label, send in (("with", True), ("without", False)):
        wch = coupling.channel(f"weights-{label}-{unique}", Latest())
        out = coupling.channel(f"fields-{label}-{unique}", Window(capacity=100))
        col = coupling.spawn(Collector, name=f"col-{label}-{unique}", inputs={"inp": out}, workers=w[1])
        pub = coupling.spawn(Producer, 0, name=f"pub-{label}-{unique}", outputs={"out": wch}, workers=w[1])
        hyb = coupling.spawn(
            HybridSimulatorActor, sim, params, name=f"hyb-{label}-{unique}", surrogate=CONFIG, replace=1, every=2,
            steps=k * blocks, publish_every=k, mode="pairs", ensemble=True, features=features, lineage=True,
            inputs={"weights": wch}, outputs={"fields": out}, workers=w[0],
        )
        if send:  # the consumer is attached once spawned; start only when the weights are there
            pub.call("send_now", weights, timeout=30)
            deadline = time.monotonic() + 30
            while hyb.call("available_weights_step") is None:
                assert time.monotonic() < deadline, "the weights never reached the hybrid's Latest port"
                time.sleep(0.05)
        hyb.start()
        runs[label] = (hyb.wait(120), col.call("contents"))
    st, got = runs["with"]
    assert st.state == "finished"
    assert (st.info["surrogate_blocks"], st.info["solver_blocks"], st.info["weights_step"]) == (3, 3, 0)
    # Every message names the weights its block ran with; the status says how old they are.
    np.testing.assert_array_equal(got["weights_version"], np.zeros(members * blocks, np.int64))
    assert st.info["weights_behind"] == 0 and st.info["weights_age_s"] >= 0
    assert st.weights is not None and (st.weights.version, st.weights.behind) == (0, 0)  # what the dashboard shows
    assert 0 <= st.weights.age(time.time()) < 300
    expected = _expected_targets(sim, params, features, weights, k, blocks, HybridSchedule(1, 2))
    np.testing.assert_allclose(got["target"], expected, rtol=1e-5, atol=1e-6)
    # The surrogate's blocks differ from the solver's: the check above could not pass by accident.
    solver_only = _expected_targets(sim, params, features, weights, k, blocks, None)
    assert not np.allclose(expected, solver_only, atol=1e-4)
    # No weights on the channel: every block is a solver block, the pure simulator's result.
    st, got = runs["without"]
    assert (st.info["surrogate_blocks"], st.info["solver_blocks"], st.info["weights_step"]) == (0, blocks, None)
    np.testing.assert_array_equal(got["weights_version"], np.full(members * blocks, -1, np.int64))
    assert st.info["weights_age_s"] is None and st.weights is None
    np.testing.assert_allclose(got["target"], solver_only, rtol=1e-5, atol=1e-6)


def test_hybrid_actor_checks_its_ports_and_features() -> None:
    sim = Heat2D(n=8)
    p = sim.random_params(jax.random.key(0))
    with pytest.raises(ValueError, match="weights"):
        HybridSimulatorActor(sim, p, surrogate=CONFIG, replace=1, every=2, name="h", steps=4,
                             features=np.ones(1), outputs={"fields": "f"})
    with pytest.raises(ValueError, match="needs features"):
        HybridSimulatorActor(sim, p, surrogate=CONFIG, replace=1, every=2, name="h", steps=4,
                             inputs={"weights": "w"}, outputs={"fields": "f"})


def test_correction_trains_through_the_runtime_with_versioned_weights_and_lineage(coupling: Coupling, unique: str) -> None:
    # Fine runs (32^2, two viscosities) stream coarse-grained windows into a Reservoir; the learner
    # trains the coarse solver's correction from them and publishes versioned weights on a Latest
    # channel; a coarse corrected run takes them while it runs.
    fine = NavierStokes2D(n=32, dt=0.02)
    cg = CoarseGrainedNavierStokes(fine, coarse_n=16, substeps=2, window=3, spinup=10)
    members, blocks = 2, 6
    params = jax.vmap(lambda k: fine.random_params(k, viscosity_range=(0.01, 0.02)))(jax.random.split(jax.random.key(0), members))
    features = np.stack([np.asarray(params.viscosity), np.asarray(params.forcing_amplitude), np.asarray(params.drag)], -1)
    data = coupling.channel(f"windows-{unique}", Reservoir(capacity=64, seed=0))
    weights = coupling.channel(f"correction-{unique}", Latest())
    fields = coupling.channel(f"corrected-{unique}", Window(capacity=100))
    w = coupling.workers()
    small = CoarseCorrectionConfig(width=4, depth=2)
    trainer = SolverCorrectionConfig(cg.coarse(), small, OptimizerConfig(learning_rate=1e-3, warmup_steps=0), unroll=2)
    # The weights' consumer is attached first: a Latest channel's producer sends to attached consumers.
    col = coupling.spawn(Collector, name=f"col-{unique}", inputs={"inp": fields}, workers=w[1])
    coarse_run = coupling.spawn(
        CorrectedSimulatorActor, cg.coarse(), params, name=f"coarse-{unique}", correction=small, steps=8,
        publish_every=4, field="w", ensemble=True, lineage=True, inputs={"weights": weights}, outputs={"fields": fields},
        workers=w[0],
    )
    learner = coupling.spawn(
        LearnerActor, trainer, name=f"learner-{unique}", batch_size=4, min_samples=4, max_steps=6, publish_every=2,
        lineage_keys=("params", "weights_version"), inputs={"data": data}, outputs={"weights": weights}, workers=w[1],
    )
    sims = coupling.spawn(
        SimulatorActor, cg, params, name=f"fine-{unique}", steps=2 * blocks, publish_every=2, field="window",
        features=features, ensemble=True, lineage=True, outputs={"fields": data}, workers=w[0],
    )
    learner.start()
    sims.start()
    assert sims.wait(120).state == "finished"
    assert learner.wait(120).state == "finished"
    # Lineage: every sample of every step came from one of the fine runs (its parameters), by the solver (-1).
    lineage = learner.call("lineage")
    assert [s for s, _ in lineage] == list(range(1, 7))
    for _, rows in lineage:
        assert rows["params"].shape == (4, 3) and np.all(rows["weights_version"] == -1)
        assert all(any(np.allclose(r, f) for f in features) for r in rows["params"])
    assert coarse_run.call("available_weights_step") == 6  # the learner's last publication
    coarse_run.start()
    st = coarse_run.wait(120)
    assert st.state == "finished" and st.info["corrected_blocks"] == 2 and st.info["solver_blocks"] == 0
    assert st.info["weights_step"] == 6 and st.info["weights_behind"] == 0 and st.info["weights_age_s"] >= 0
    assert st.weights is not None and (st.weights.version, st.weights.behind) == (6, 0)
    np.testing.assert_array_equal(col.call("contents")["weights_version"], np.full(2 * members, 6, np.int64))
    sims.wait(120)


def test_corrected_advance_takes_the_spectral_closure() -> None:
    # The actor's pure step with the other model kind: an untrained closure is the plain coarse solver
    # (its last layer is zero).
    coarse = NavierStokes2D(n=16, dt=0.08, dealias="pad")
    net = SpectralClosureConfig(hidden=4, depth=1).build(0)
    p = coarse.random_params(jax.random.key(0), viscosity_range=(0.02, 0.04))
    state = coarse.init(jax.random.key(1), p)
    out = corrected_advance(coarse, nnx.graphdef(net), nnx.state(net), state, p, 3)
    np.testing.assert_allclose(np.asarray(out.w), np.asarray(coarse.advance(state, p, 3).w), atol=1e-5)
    assert int(out.step) == 3

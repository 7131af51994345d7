"""HybridSimulatorActor: the schedule, the surrogate jump, and weights arriving on a Latest channel."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helper_actors import Collector, Producer
from coupler.actors.hybrid import HybridSchedule, HybridSimulatorActor, surrogate_jump
from coupler.learners.online import OnlineTrainer, SurrogateConfig
from coupler.physics.heat import Heat2D
from coupler.runtime import Coupling, Latest, Window

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
            steps=k * blocks, publish_every=k, mode="pairs", ensemble=True, features=features,
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
    expected = _expected_targets(sim, params, features, weights, k, blocks, HybridSchedule(1, 2))
    np.testing.assert_allclose(got["target"], expected, rtol=1e-5, atol=1e-6)
    # The surrogate's blocks differ from the solver's: the check above could not pass by accident.
    solver_only = _expected_targets(sim, params, features, weights, k, blocks, None)
    assert not np.allclose(expected, solver_only, atol=1e-4)
    # No weights on the channel: every block is a solver block, the pure simulator's result.
    st, got = runs["without"]
    assert (st.info["surrogate_blocks"], st.info["solver_blocks"], st.info["weights_step"]) == (0, blocks, None)
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

"""SimulatorActor publishes exactly what the pure simulator computes."""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest

from helper_actors import Collector
from coupler.actors import SimulatorActor
from coupler.physics import Heat2D
from coupler.runtime import ActorFailed, Coupling, Window


def test_ensemble_pairs_match_the_pure_simulator(coupling: Coupling, unique: str) -> None:
    sim = Heat2D(n=8)
    members, k, blocks = 3, 5, 4
    params = jax.vmap(sim.random_params)(jax.random.split(jax.random.key(3), members))
    ch = coupling.channel(f"pairs-{unique}", Window(capacity=100))
    w = coupling.workers()
    col = coupling.spawn(Collector, name=f"col-{unique}", inputs={"inp": ch}, workers=w[1])
    act = coupling.spawn(
        SimulatorActor, sim, params, name=f"sim-{unique}", steps=k * blocks, publish_every=k,
        features=np.asarray(params.diffusivity)[:, None], mode="pairs", ensemble=True,
        outputs={"fields": ch}, workers=w[0],
    )
    act.start()
    st = act.wait(120)
    assert st.state == "finished" and st.info["sim_steps"] == k * blocks and st.info["published"] == members * blocks
    got = col.call("contents")
    assert got["input"].shape == (members * blocks, 8, 8) and got["params"].shape == (members * blocks, 1)
    # Recompute every pair in this process (same pure functions) and compare.
    state = jax.vmap(sim.init)(jax.random.split(jax.random.key(0), members), params)
    expect_in, expect_out = [], []
    for _ in range(blocks):
        nxt = jax.vmap(lambda s, p: sim.advance(s, p, k))(state, params)
        expect_in.append(np.asarray(state.u))
        expect_out.append(np.asarray(nxt.u))
        state = nxt
    # Messages arrive block by block, members in order (one producer: ordered).
    np.testing.assert_allclose(got["input"], np.concatenate(expect_in), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["target"], np.concatenate(expect_out), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["params"][:, 0], np.tile(np.asarray(params.diffusivity), blocks), rtol=1e-6)


@pytest.mark.parametrize("ensemble", [False, True])
def test_a_field_the_simulator_does_not_observe_fails_naming_the_fields_it_does(coupling: Coupling, unique: str, ensemble: bool) -> None:
    sim = Heat2D(n=8)
    params = sim.random_params(jax.random.key(0))
    if ensemble:
        params = jax.vmap(sim.random_params)(jax.random.split(jax.random.key(0), 2))
    ch = coupling.channel(f"nofield-{unique}", Window(capacity=4))
    act = coupling.spawn(
        SimulatorActor, sim, params, name=f"nofield-{unique}", steps=4, field="y", ensemble=ensemble, outputs={"fields": ch}
    )
    act.start()
    observed = sorted(sim.observe(sim.init(jax.random.key(0), sim.random_params(jax.random.key(0)))))
    with pytest.raises(ActorFailed, match=rf"field='y', but Heat2D.observe\(\) gives {re.escape(str(observed))}"):
        act.wait(60)
    act.release()

"""SimulatorActor publishes exactly what the pure simulator computes."""

from __future__ import annotations

import jax
import numpy as np

from helper_actors import Collector
from coupler.actors import SimulatorActor
from coupler.physics import Heat2D
from coupler.runtime import Coupling, Window


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

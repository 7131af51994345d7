"""SimulatorActor publishes exactly what the pure simulator computes."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Any

import cloudpickle
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helper_actors import Collector
from polling import until
from coupler.actors import SimulatorActor
from coupler.actors.base import ActorHost
from coupler.physics import Heat2D
from coupler.runtime import ActorFailed, Coupling, Queue, Window

# NoisyDecay and StampLog live in this test module, which the workers cannot import.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@dataclass(frozen=True)
class NoisyDecay:
    """x <- 0.9 x + noise, as own-simulator.md advises: the PRNG key (typed, split from init's) and
    the time live in a dict state."""

    dt: float = 0.1

    def init(self, key: jax.Array, params: Any) -> dict[str, Any]:
        return {"x": jnp.zeros(4), "key": key, "t": jnp.float32(0.0)}

    def step(self, state: dict[str, Any], params: Any) -> dict[str, Any]:
        key, sub = jax.random.split(state["key"])
        return {"x": 0.9 * state["x"] + jax.random.normal(sub, (4,)), "key": key, "t": state["t"] + self.dt}

    def observe(self, state: dict[str, Any]) -> dict[str, Any]:
        return {"u": state["x"]}


class StampLog(ActorHost):
    """Keeps (step, timestamp, field) of every message on ``inp``."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.got: list[tuple[int, float, np.ndarray]] = []

    def step(self) -> bool:
        m = self.inputs["inp"].receive()
        self.got.append((m.step, m.timestamp, np.array(m.data["field"])))
        return True

    def record(self) -> list[tuple[int, float, np.ndarray]]:
        return list(self.got)


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


def _noisy_run(sim: NoisyDecay, state: dict[str, Any], steps: int) -> dict[str, Any]:
    for _ in range(steps):
        state = sim.step(state, None)
    return state


def test_a_state_holding_a_prng_key_and_its_time_checkpoints_restores_and_stamps_its_messages(coupling: Coupling, unique: str) -> None:
    # A typed PRNG key in the state made every checkpoint fail ("JAX array with PRNGKey dtype cannot be
    # converted to a NumPy array"), so such a simulator could never be restarted or moved; a dict
    # state's "t" was not its timestamp; 10 steps published every 3 ran 12.
    sim = NoisyDecay()
    w = coupling.workers()
    first_ch, second_ch = coupling.channel(f"noisy-a-{unique}", Queue(16)), coupling.channel(f"noisy-b-{unique}", Queue(16))
    log_a = coupling.spawn(StampLog, name=f"log-a-{unique}", inputs={"inp": first_ch}, workers=w[1])
    log_b = coupling.spawn(StampLog, name=f"log-b-{unique}", inputs={"inp": second_ch}, workers=w[1])
    first = coupling.spawn(SimulatorActor, sim, None, name=f"noisy-a-{unique}", steps=10, publish_every=3, field="u",
                           outputs={"fields": first_ch}, workers=w[0])  # fmt: skip
    for a in (log_a, log_b, first):
        a.start()
    assert first.wait(60).info["sim_steps"] == 10
    ck = first.checkpoint()  # raised TypeError before
    # Published after steps 3, 6, 9 and the last, 10; stamped with the state's t.
    state, expected = sim.init(jax.random.key(0), None), []
    for k in (3, 3, 3, 1):
        state = _noisy_run(sim, state, k)
        expected.append(state)
    until("4 messages", lambda: len(log_a.call("record")) == 4)
    got = log_a.call("record")
    assert [s for s, _, _ in got] == [3, 6, 9, 10]
    np.testing.assert_allclose([t for _, t, _ in got], [float(e["t"]) for e in expected], rtol=1e-6)
    np.testing.assert_allclose(np.stack([f for *_, f in got]), np.stack([np.asarray(e["x"]) for e in expected]), rtol=1e-5, atol=1e-6)

    # A successor restored from that checkpoint draws the same noise the first would have drawn next.
    second = coupling.spawn(SimulatorActor, sim, None, name=f"noisy-b-{unique}", steps=13, publish_every=3, field="u",
                            outputs={"fields": second_ch}, workers=w[0])  # fmt: skip
    ck["status"]["state"] = "running"  # the finished run's checkpoint, continued as a longer run
    second.call("restore", ck)
    second.start()
    assert second.wait(60).info["sim_steps"] == 13
    until("the successor's message", lambda: len(log_b.call("record")) == 1)
    ((step, t, field),) = log_b.call("record")
    after = _noisy_run(sim, expected[-1], 3)
    assert step == 13 and t == pytest.approx(float(after["t"]), rel=1e-6)
    np.testing.assert_allclose(field, np.asarray(after["x"]), rtol=1e-5, atol=1e-6)


def test_pairs_need_whole_blocks() -> None:
    with pytest.raises(ValueError, match=r"mode='pairs' publishes pairs 3 steps apart: steps must be a multiple of publish_every=3, got steps=10"):
        SimulatorActor(NoisyDecay(), None, name="x", steps=10, publish_every=3, mode="pairs", outputs={"fields": "c"})

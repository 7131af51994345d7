"""LearnerActor trains from a Reservoir while a SimulatorActor is still producing."""

from __future__ import annotations

import functools
import time
import urllib.request

import jax
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from coupler.actors import LearnerActor, SimulatorActor
from coupler.learners import OnlineTrainer, SurrogateConfig
from coupler.physics import Heat2D
from coupler.runtime import Coupling, Reservoir


def wait_for_metrics(cp: Coupling, actor: str, names: set[str], timeout: float = 20.0) -> dict[str, float]:
    """The actor's latest metric values on the scheduler's ``/metrics``, once every one of ``names`` is there."""
    url = cp.dashboard_link.rstrip("/").rpartition("/")[0] + "/metrics"
    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(url, timeout=10) as r:
            text = r.read().decode()
        found = {
            s.labels["metric"]: s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples
            if s.name == "coupler_actor_metric" and s.labels.get("actor") == actor
        }
        if names <= found.keys():
            return found
        assert time.monotonic() < deadline, f"/metrics showed {sorted(found)} for {actor!r} within {timeout} s; expected {sorted(names)}"
        time.sleep(0.5)


def test_learner_trains_online_and_serves_weights(coupling: Coupling, unique: str) -> None:
    sim = Heat2D(n=8)
    members, k, blocks = 4, 4, 400  # a long enough run to overlap with training
    params = jax.vmap(sim.random_params)(jax.random.split(jax.random.key(1), members))
    ch = coupling.channel(f"pairs-{unique}", Reservoir(capacity=256, seed=0))
    w = coupling.workers()
    config = SurrogateConfig(width=4, depth=1, patch=1)
    example = {"input": np.zeros((8, 8, 8), np.float32), "target": np.zeros((8, 8, 8), np.float32), "params": np.zeros((8, 1), np.float32)}
    learner = coupling.spawn(
        LearnerActor, functools.partial(OnlineTrainer, config, seed=0), name=f"learner-{unique}",
        batch_size=8, min_samples=16, warmup=example, inputs={"data": ch}, workers=w[1],
    )
    learner.start()
    deadline = time.monotonic() + 60
    while not learner.status().info["ready"]:
        assert time.monotonic() < deadline and learner.status().state == "running"
        time.sleep(0.1)
    producer = coupling.spawn(
        SimulatorActor, sim, params, name=f"sim-{unique}", steps=k * blocks, publish_every=k,
        features=np.asarray(params.diffusivity)[:, None], mode="pairs", ensemble=True,
        outputs={"fields": ch}, workers=w[0],
    )
    producer.start()
    sim_end = producer.wait(120).stopped_at
    time.sleep(0.5)
    st = learner.stop()
    history = learner.call("history")
    assert st.state == "stopped" and st.info["train_steps"] == len(history) > 0
    # The share of its time inside training steps is measured (BusyMeter's arithmetic: tests/actors/test_busy.py),
    # and reported as a metric for the dashboard and /metrics (at the first step, then once a second).
    assert 0.0 < st.info["busy_share"] <= 1.0
    metrics = wait_for_metrics(coupling, learner.name, {"loss", "busy_share"})
    assert 0.0 < metrics["busy_share"] <= 1.0
    # Training steps were taken while the simulation was still producing.
    assert sum(1 for t, *_ in history if t < sim_end) > 0
    # The data the learner saw grew during training (online, not a fixed set).
    received = [r for *_, r in history]
    assert received[0] < received[-1] == members * blocks
    # Weights are a nested dict of numpy arrays that restore into a fresh trainer exactly.
    weights = learner.call("weights")
    trainer = OnlineTrainer(config, seed=123)
    trainer.set_weights(weights)
    leaves = jax.tree.leaves(weights)
    assert leaves and all(isinstance(a, np.ndarray) for a in leaves)
    np.testing.assert_array_equal(jax.tree.leaves(trainer.get_weights())[0], leaves[0])

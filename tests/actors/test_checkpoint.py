"""Actor checkpoints: taken at a step boundary, restored exactly into a new instance."""

from __future__ import annotations

import functools
import time
from typing import Any

import cloudpickle
import jax
import numpy as np
import pytest

import supervision_actors
from supervision_actors import Counter, FieldLog, Tally
from coupler.actors import LearnerActor, SimulatorActor
from coupler.learners import OnlineTrainer, SurrogateConfig
from coupler.physics import Heat2D
from coupler.runtime import Coupling, Queue, Reservoir
from polling import until

cloudpickle.register_pickle_by_value(supervision_actors)




def _assert_same_tree(a: Any, b: Any, path: str = "") -> None:
    """Exact equality of two plain-data trees (dicts, lists, tuples, arrays, scalars)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys {sorted(map(str, a))} vs {sorted(map(str, b))}"
        for k in a:
            _assert_same_tree(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{path}: lengths {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tree(x, y, f"{path}[{i}]")
    elif isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        assert np.asarray(a).dtype == np.asarray(b).dtype, f"{path}: dtypes differ"
        np.testing.assert_array_equal(a, b, err_msg=path)
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def test_simulator_hands_over_mid_run_and_its_successor_continues_exactly(coupling: Coupling, unique: str) -> None:
    sim = Heat2D(n=8)
    members, k, blocks = 3, 5, 40
    params = jax.vmap(sim.random_params)(jax.random.split(jax.random.key(7), members))
    ch = coupling.channel(f"ck-fields-{unique}", Queue(4))  # small: the simulator is held up by back-pressure
    w = coupling.workers()
    log = coupling.spawn(FieldLog, 0.02, name=f"log-{unique}", inputs={"inp": ch}, workers=w[1])
    common = dict(steps=k * blocks, publish_every=k, mode="snapshots", ensemble=True, outputs={"fields": ch})
    first = coupling.spawn(SimulatorActor, sim, params, name=f"sim-a-{unique}", workers=w[0], **common)
    log.start()
    first.start()
    until("a third of the messages", lambda: log.status().info["count"] >= members * blocks // 3)
    ck = first.call("retire", 30.0)  # ends its loop at a step boundary and returns the final checkpoint
    assert first.status().state == "migrated" and ck["status"]["state"] == "running"
    assert 0 < ck["state"]["sim_steps"] < k * blocks

    second = coupling.spawn(SimulatorActor, sim, params, name=f"sim-b-{unique}", workers=w[1], **common)
    second.call("restore", ck)
    second.pause()
    second.start()  # sets up from the checkpoint, then parks before its first step
    again = second.checkpoint()
    _assert_same_tree(ck["state"], again["state"])
    assert again["status"]["steps"] == ck["status"]["steps"] and again["outputs"] == ck["outputs"]
    second.resume()
    assert second.wait(60).state == "finished"
    until("every message", lambda: log.status().info["count"] >= members * blocks)
    time.sleep(0.3)
    got = log.call("record")
    log.stop()

    # Exactly the messages of an uninterrupted run, in order, none twice.
    assert len(got) == members * blocks
    assert [(step, m) for _, _, step, m, _ in got] == [(k * (b + 1), m) for b in range(blocks) for m in range(members)]
    assert [seq for _, seq, *_ in got] == list(range(members * blocks))  # the successor continues the sequence
    sources = [s for s, *_ in got]
    cut = sources.index(f"sim-b-{unique}")
    assert set(sources[:cut]) == {f"sim-a-{unique}"} and set(sources[cut:]) == {f"sim-b-{unique}"}
    state = jax.vmap(sim.init)(jax.random.split(jax.random.key(0), members), params)
    expected = []
    for _ in range(blocks):
        state = jax.vmap(lambda s, p: sim.advance(s, p, k))(state, params)
        expected.extend(np.asarray(state.u))
    np.testing.assert_allclose(np.stack([f for *_, f in got]), np.stack(expected), rtol=1e-5, atol=1e-6)


def test_a_consumer_handing_over_with_messages_held_passes_them_to_its_successor(coupling: Coupling, unique: str) -> None:
    """What the consumer held and had not taken reaches its successor once, in order.

    The hand-over's ``delivered`` marks are what was taken, not what it carries: marks
    covering the carried messages made the successor drop them as duplicates (a loss
    seen in CI, in the move test of test_supervisor.py under load).
    """
    ch = coupling.channel(f"ck-held-{unique}", Queue(8))
    w = coupling.workers()
    tally = coupling.spawn(Tally, name=f"tally-{unique}", inputs={"inp": ch}, workers=w[1])
    tally.pause()
    tally.start()  # parks before its first step: what arrives stays in its buffer
    counter = coupling.spawn(Counter, 5, name=f"counter-{unique}", outputs={"out": ch}, workers=w[0])
    counter.start()
    assert counter.wait(30).state == "finished"  # finished: all 5 were accepted into the held buffer
    assert coupling.supervisor.move(tally.name) == w[0]  # retire (carrying the 5), restore, commit, start paused
    ck = coupling.supervisor.last_checkpoint(tally.name)
    assert ck is not None and [m["header"]["seq"] for m in ck["inputs"]["inp"]] == [0, 1, 2, 3, 4]
    assert ck["delivered"]["inp"] == {} and ck["state"]["got"] == []  # nothing taken
    assert tally.status().state == "paused"
    tally.resume()
    until("the held messages", lambda: tally.status().info["count"] >= 5, timeout=30)
    time.sleep(0.2)
    assert [(q, v) for _, q, v in tally.call("record")["got"]] == [(i, float(i)) for i in range(5)]
    tally.stop()


def test_learner_checkpoint_restores_exactly(coupling: Coupling, unique: str) -> None:
    sim = Heat2D(n=8)
    members = 4
    params = jax.vmap(sim.random_params)(jax.random.split(jax.random.key(2), members))
    ch = coupling.channel(f"ck-pairs-{unique}", Reservoir(capacity=128, seed=0))
    w = coupling.workers()
    make = functools.partial(OnlineTrainer, SurrogateConfig(width=4, depth=1, patch=1), seed=0)
    example = {"input": np.zeros((8, 8, 8), np.float32), "target": np.zeros((8, 8, 8), np.float32), "params": np.zeros((8, 1), np.float32)}
    opts = dict(batch_size=8, min_samples=16, warmup=example, inputs={"data": ch})
    learner = coupling.spawn(LearnerActor, make, name=f"learner-a-{unique}", workers=w[1], **opts)
    producer = coupling.spawn(
        SimulatorActor, sim, params, name=f"sim-{unique}", steps=4 * 40, publish_every=4,
        features=np.asarray(params.diffusivity)[:, None], mode="pairs", ensemble=True, outputs={"fields": ch}, workers=w[0],
    )
    learner.start()
    producer.start()
    until("five training steps", lambda: learner.status().info["train_steps"] >= 5, timeout=90)
    learner.pause()
    ck = learner.checkpoint()  # the loop takes it at the boundary where it parks
    weights = learner.call("weights")
    learner.stop()
    producer.wait(60)
    assert ck["state"]["train_steps"] == len(ck["state"]["history"]) >= 5
    assert len(ck["state"]["trainer"]["loss_history"]) == ck["state"]["train_steps"]

    successor = coupling.spawn(LearnerActor, make, name=f"learner-b-{unique}", workers=w[0], **opts)
    successor.call("restore", ck)
    successor.pause()
    successor.start()
    until("the restored trainer", lambda: successor.status().info["ready"], timeout=90)
    again = successor.checkpoint()
    _assert_same_tree(ck["state"], again["state"])
    _assert_same_tree(weights, successor.call("weights"))
    assert again["status"]["steps"] == ck["status"]["steps"]
    assert successor.call("history") == ck["state"]["history"]
    successor.stop()


def test_restore_refuses_what_does_not_fit(coupling: Coupling, unique: str) -> None:
    ch = coupling.channel(f"ck-bad-{unique}", Queue(8))
    counter = coupling.spawn(Counter, 3, name=f"counter-{unique}", outputs={"out": ch})
    tally = coupling.spawn(Tally, name=f"tally-{unique}", inputs={"inp": ch})
    tally.start()
    counter.start()
    assert counter.wait(30).state == "finished"
    ck = counter.checkpoint()  # no loop any more: taken directly
    assert ck["status"]["state"] == "finished" and ck["state"] == {"i": 3} and ck["outputs"]["out"]["next_seq"] == 3
    with pytest.raises(ValueError, match="for class Tally, got format 1 for class .Counter."):
        tally.call("restore", ck)
    with pytest.raises(RuntimeError, match="only be restored before it starts"):
        counter.call("restore", ck)
    # A checkpoint of an ended actor leaves its successor ended in the same state.
    late = coupling.spawn(Counter, 3, name=f"counter-b-{unique}", outputs={"out": ch})
    st = late.call("restore", ck)
    assert st["state"] == "finished" and late.status().done and late.call("state_dict") == {"i": 3}
    tally.stop()

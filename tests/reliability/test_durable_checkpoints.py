"""Durable checkpoints: to a directory or an fsspec URL, and a run resumed after its whole cluster is gone."""

from __future__ import annotations

import time
from pathlib import Path

import cloudpickle
import dask
import numpy as np
import pytest

import chaos_actors
from chaos_actors import Simulator
from coupler.runtime.control.checkpoints import CheckpointError, CheckpointStore, decode, encode
from coupler.runtime.coupling import Coupling
from coupler.runtime.policies import Queue
from coupler.runtime.control.supervisor import SupervisionPolicy

cloudpickle.register_pickle_by_value(chaos_actors)


def _example() -> dict:
    return {
        "format": 1, "name": "learner/a b", "time": 1.5, "status": {"state": "running", "steps": 3, "error": ""},
        "state": {
            "w": np.arange(12, dtype=np.float32).reshape(3, 4), "opt": {"mu": np.zeros(2, np.float64), "count": np.int32(7)},
            "flags": np.array([True, False]), "history": [0.5, 0.25], "pair": (1, "x"), "none": None, "raw": b"\x00\x01",
        },
        "outputs": {"out": {"next_seq": 12}}, "inputs": {}, "delivered": {"data": {"sim": 11}},
    }


@pytest.mark.parametrize("where", ["dir", "memory"])
def test_a_checkpoint_round_trips_through_a_store(tmp_path: Path, where: str) -> None:
    store = CheckpointStore(tmp_path / "ck" if where == "dir" else f"memory://coupler-test-{time.monotonic_ns()}")
    ck = _example()
    path = store.save("learner/a b", ck)
    assert path.endswith("learner%2Fa%20b.ckpt")
    back = store.load("learner/a b")
    assert back is not None and store.actors() == ["learner/a b"] and store.load("nobody") is None
    st, bst = ck["state"], back["state"]
    np.testing.assert_array_equal(bst["w"], st["w"])
    assert bst["w"].dtype == np.float32 and bst["flags"].dtype == np.bool_ and bst["opt"]["count"] == 7
    assert bst["history"] == [0.5, 0.25] and bst["pair"] == (1, "x") and bst["none"] is None and bst["raw"] == b"\x00\x01"
    assert {k: back[k] for k in ("outputs", "delivered", "status")} == {k: ck[k] for k in ("outputs", "delivered", "status")}
    ck["state"]["w"] += 1  # a newer checkpoint replaces the old one
    store.save("learner/a b", ck)
    np.testing.assert_array_equal(store.load("learner/a b")["state"]["w"], ck["state"]["w"])


def test_what_cannot_be_stored_or_read_says_why(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    with pytest.raises(CheckpointError, match="actor 'x' cannot be stored.*object"):
        store.save("x", {"state": {"obj": object()}})
    (tmp_path / "y.ckpt").write_bytes(b"\xc1 not msgpack")
    with pytest.raises(CheckpointError, match="could not read the checkpoint of actor 'y'"):
        store.load("y")
    with pytest.raises(ValueError, match="not a coupler checkpoint"):
        decode(b"\xc1")
    assert decode(encode({"a": [1, 2]})) == {"a": [1, 2]}


def test_a_run_resumes_from_its_stored_checkpoints_after_its_cluster_is_gone(tmp_path: Path) -> None:
    n = 100_000
    settings = {"coupler.supervision.checkpoint-interval": 0.3, "coupler.supervision.poll-interval": 0.2,
                "coupler.supervision.checkpoint-dir": str(tmp_path)}
    with dask.config.set(settings), Coupling(n_workers=1, threads_per_worker=1, dashboard_address=":0") as cp:
        ch = cp.channel("resume-samples", Queue(4))
        sim = cp.spawn(Simulator, n, 9, 0.005, name="sim", outputs={"out": ch})
        sink = cp.spawn(chaos_actors.QueueLearner, name="learner", inputs={"data": ch})
        sim.start()
        sink.start()
        store = CheckpointStore(tmp_path)
        deadline = time.monotonic() + 60
        while ((store.load("sim") if "sim" in store.actors() else None) or {}).get("state", {}).get("i", 0) < 30:
            assert time.monotonic() < deadline, "no stored simulator checkpoint after 30 steps"
            time.sleep(0.1)
        on_demand = cp.supervisor.checkpoint_now(["learner"])["learner"]
        stored_sim = store.load("sim")
    assert store.actors() == ["learner", "sim"]
    assert len(store.load("learner")["state"]["trained"]) == len(on_demand["state"]["trained"]) > 0
    # The whole cluster (and its driver's memory) is gone; a new run resumes from the files.
    with dask.config.set({**settings, "coupler.supervision.resume": True}), Coupling(n_workers=1, threads_per_worker=1, dashboard_address=":0") as cp:
        assert cp.supervisor.policy.resume and cp.supervisor.policy.checkpoint_dir == str(tmp_path)
        ch = cp.channel("resume-samples", Queue(4))
        sim = cp.spawn(Simulator, n, 9, 0.005, name="sim", outputs={"out": ch})
        learner = cp.spawn(chaos_actors.QueueLearner, name="learner", inputs={"data": ch})
        i0 = sim.status().info["i"]
        rec0 = learner.call("record")
        resumed = {e.actor for e in cp.supervisor.events if e.kind == "resumed"}
    assert resumed == {"sim", "learner"}
    assert i0 >= stored_sim["state"]["i"] >= 30  # it continues from the stored step, not from 0
    assert rec0["restored_at"] == len(rec0["trained"]) >= len(on_demand["state"]["trained"])
    np.testing.assert_array_equal(rec0["w"], store.load("learner")["state"]["w"])


def test_the_policy_reads_the_store_settings() -> None:
    with dask.config.set({"coupler.supervision.checkpoint-dir": "memory://x", "coupler.supervision.resume": True}):
        p = SupervisionPolicy.from_config()
    assert (p.checkpoint_dir, p.resume) == ("memory://x", True)
    assert SupervisionPolicy.from_config().checkpoint_dir is None


def test_resume_without_a_store_is_refused_naming_both_settings() -> None:
    with dask.config.set({"coupler.supervision.resume": True, "coupler.supervision.checkpoint-dir": None}):
        with pytest.raises(ValueError, match="coupler.supervision.resume needs coupler.supervision.checkpoint-dir"):
            SupervisionPolicy.from_config()


def test_resuming_an_actor_the_store_does_not_hold_says_it_starts_afresh(
    coupling: Coupling, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A mistyped checkpoint-dir looks like this: a store with nothing in it.
    settings = {"coupler.supervision.checkpoint-dir": str(tmp_path / "typo"), "coupler.supervision.resume": True}
    with dask.config.set(settings), Coupling(coupling.client.scheduler.address) as cp:
        with caplog.at_level("WARNING", logger="coupler.runtime.control.supervisor"):
            ref = cp.spawn(Simulator, 5, 0, name="fresh-after-resume", outputs={"out": cp.channel("fresh-resume", Queue(2))})
        assert ref.status().steps == 0
        assert not [e for e in cp.supervisor.events if e.kind == "resumed"]
        ref.release()
    assert any("'fresh-after-resume': coupler.supervision.resume is on, but" in r.getMessage() and "starts afresh" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize("where", ["a-file/run", "nosuchprotocol://bucket/run"])
def test_a_checkpoint_dir_that_cannot_be_used_is_refused_naming_the_setting(
    coupling: Coupling, tmp_path: Path, where: str
) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    location = str(tmp_path / where) if "://" not in where else where
    with dask.config.set({"coupler.supervision.checkpoint-dir": location}), Coupling(coupling.client.scheduler.address) as cp:
        with pytest.raises(CheckpointError, match=rf"coupler.supervision.checkpoint-dir: cannot keep checkpoints (in|at) '{location}': "):
            cp.supervisor

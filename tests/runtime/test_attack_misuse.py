"""Driver API misuse: a wrong argument gets a clear error that says what was expected and what came.

Each test pins one misuse's error: its type, and that its message names what
was expected and what came (before, some got a bare AttributeError from deep
inside, or no error at all).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dask.config
import numpy as np
import pytest
from distributed import LocalCluster

import coupler.runtime.coupling as coupling_module
from coupler.actors import ActorHost
from coupler.runtime.errors import ActorReleased
from coupler.runtime.launch.cluster import start_cluster as start_cluster_for_real
from coupler.runtime import (
    ActorEnded,
    ActorFailed,
    ChannelClosed,
    ChannelExists,
    ChannelTimeout,
    CouplerError,
    Coupling,
    Latest,
    NoSuitableWorker,
    Queue,
    Reservoir,
    UnknownChannel,
    UnknownPort,
    Window,
    WorkersNotReady,
    WrongPolicy,
)


class Idle(ActorHost):
    def step(self) -> bool:
        time.sleep(0.01)
        return True


@pytest.mark.parametrize("bad", ["Queue", Queue, None, {"kind": "queue"}])
def test_a_channel_policy_that_is_not_a_policy_is_a_type_error_naming_the_policies(coupling: Coupling, unique: str, bad: Any) -> None:
    with pytest.raises(TypeError, match="expected a policy"):
        coupling.channel(f"pol-{unique}", bad)


@pytest.mark.parametrize("make", [lambda: Queue(0), lambda: Queue(-3), lambda: Window(0), lambda: Reservoir(2.5), lambda: Queue(2, shared=1),
                                  lambda: Reservoir(True), lambda: Window(4, seed="x"), lambda: Reservoir(4, seed=-1)])
def test_policy_sizes_are_checked_when_made(make: Any) -> None:
    with pytest.raises(ValueError, match="needs"):
        make()


def test_misused_channels_and_actors_get_typed_errors(coupling: Coupling, unique: str) -> None:
    cp = coupling
    ch = cp.channel(f"m-{unique}", Queue(2))
    with pytest.raises(ChannelExists, match="already declared with policy"):
        cp.channel(ch, Latest())
    with pytest.raises(UnknownChannel, match=f"unknown channel 'nope-{unique}'"):
        cp.close_channel(f"nope-{unique}")
    with pytest.raises(UnknownChannel, match="unknown channel"):
        cp.spawn(Idle, name=f"in-undeclared-{unique}", inputs={"x": f"undeclared-{unique}"})
    gone = cp.channel(f"gone-{unique}", Queue(2))
    cp.close_channel(gone)
    with pytest.raises(ChannelClosed, match=f"channel 'gone-{unique}' was closed"):
        cp.spawn(Idle, name=f"in-closed-{unique}", inputs={"y": gone})
    with pytest.raises(UnknownChannel, match=f"unknown channel 'nope-{unique}'"):
        cp.subscribe(f"nope-{unique}")
    with pytest.raises(ChannelClosed, match=f"channel 'gone-{unique}' was closed"):
        cp.publisher(gone)
    with pytest.raises(TypeError, match="inputs must be a dict {port name: channel name}, got {'x': 5}"):
        cp.spawn(Idle, name=f"in-int-{unique}", inputs={"x": 5})  # refused at spawn, before any worker sees it
    a = cp.spawn(Idle, name=f"twice-{unique}")
    with pytest.raises(ValueError, match="already exists"):
        cp.spawn(Idle, name=f"twice-{unique}")
    with pytest.raises(WrongPolicy, match="use receive"):
        cp.subscribe(ch).sample(2, timeout=1)
    a.release()


def test_a_receive_with_a_negative_timeout_is_a_poll(coupling: Coupling, unique: str) -> None:
    ch = coupling.channel(f"neg-{unique}", Queue(2))
    t0 = time.monotonic()
    with pytest.raises(ChannelTimeout):
        coupling.receive(ch, timeout=-1.0)
    assert time.monotonic() - t0 < 5


def test_spawning_a_class_that_is_not_an_actor_host_is_a_type_error(coupling: Coupling, unique: str) -> None:
    ref = None
    try:
        with pytest.raises(TypeError, match="ActorHost"):
            ref = coupling.spawn(dict, name=f"notactor-{unique}")
    finally:
        if ref is not None:
            try:
                ref.release()
            except Exception:
                pass


def test_ports_given_as_a_list_are_a_type_error_saying_a_dict_is_expected(coupling: Coupling, unique: str) -> None:
    ch = coupling.channel(f"lst-{unique}", Queue(2))
    with pytest.raises(TypeError, match="dict"):
        coupling.spawn(Idle, name=f"lst-{unique}", inputs=[ch])


def test_a_nan_timeout_is_refused_not_a_wait_for_ever(coupling: Coupling, unique: str) -> None:
    ch = coupling.channel(f"nan-{unique}", Queue(2))
    out: list[BaseException | object] = []

    def receive() -> None:
        try:
            out.append(coupling.receive(ch, timeout=float("nan")))
        except BaseException as e:
            out.append(e)

    t = threading.Thread(target=receive, daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():  # release the waiter: one message ends it
        coupling.send(ch, {"x": np.zeros(1)}, timeout=10)
        t.join(10)
        pytest.fail("receive(timeout=nan) was still waiting after 10 s")
    assert isinstance(out[0], ValueError), out


def test_using_a_closed_coupling_says_it_is_closed(coupling: Coupling, unique: str) -> None:
    other = Coupling(coupling.client.scheduler.address)
    other.close()
    with pytest.raises(CouplerError, match="closed"):
        other.channel(f"after-{unique}", Queue(2))


class SendsForEver(ActorHost):
    """Sends to its ``out`` port each step: with no consumer attached, its first send waits."""

    def step(self) -> bool:
        self.outputs["out"].send({"x": np.zeros(1)})
        return True


class EndsAtOnce(ActorHost):
    def step(self) -> bool:
        return False


def test_a_wait_that_times_out_says_why_the_actor_has_not_ended(coupling: Coupling, unique: str) -> None:
    never = coupling.spawn(Idle, name=f"unstarted-{unique}")
    # At once, with a timeout or without one (it waited for ever, or for its whole timeout).
    with pytest.raises(RuntimeError, match=r"was never started: call start\(\) before wait\(\)"):
        never.wait()
    _wait_fails(never, 60, RuntimeError, rf"actor 'unstarted-{unique}' was never started: call start\(\) before wait\(\)")
    sender = coupling.spawn(SendsForEver, name=f"lonely-{unique}", outputs={"out": coupling.channel(f"noone-{unique}", Queue(2))})
    sender.start()
    # The status explains the wait (a consumer to attach) before the timeout fires; the error repeats it.
    _wait_fails(sender, 3, TimeoutError, f"still running after 3 s .*: waits .*for a consumer to attach to channel 'noone-{unique}'")


def _wait_fails(ref: Any, timeout: float, error: type[BaseException], match: str) -> None:
    """``ref.wait(timeout)`` raises ``error`` matching ``match``; then ``ref`` is released."""
    with pytest.raises(error, match=match):
        ref.wait(timeout=timeout)
    ref.release()


@pytest.mark.parametrize("end", ["stop", "finish"])
def test_an_ended_actor_cannot_start_again_and_a_resume_leaves_it_ended(coupling: Coupling, unique: str, end: str) -> None:
    ref = coupling.spawn(Idle if end == "stop" else EndsAtOnce, name=f"ended-{end}-{unique}")
    ref.start()
    state = ref.stop().state if end == "stop" else ref.wait(timeout=30).state
    with pytest.raises(ActorEnded, match=f"actor 'ended-{end}-{unique}': its run loop {state} and runs only once; spawn a new actor"):
        ref.start()
    # A resume may race with an actor's own end (pause, then it had finished): no error, it stays ended.
    intent = ref.intent
    assert ref.resume().state == state and ref.intent == intent
    assert ref.status().state == state  # nothing restarted it
    ref.release()
    with pytest.raises(ActorReleased):
        ref.start()


def test_an_actor_pinned_to_no_worker_of_the_cluster_is_refused_naming_the_workers(coupling: Coupling, unique: str) -> None:
    ghost = "tcp://192.0.2.1:1"  # TEST-NET-1: never a worker here
    t0 = time.monotonic()
    with dask.config.set({"coupler.placement-timeout": "1s"}):  # the session's own local cluster: not waited for
        with pytest.raises(NoSuitableWorker, match=r"no worker of the cluster matches workers=\['tcp://192.0.2.1:1'\] \(waited 0 s\); the workers are \['tcp://"):
            coupling.spawn(Idle, name=f"ghost-{unique}", workers=ghost)
    assert time.monotonic() - t0 < 10
    assert f"ghost-{unique}" not in coupling.actors()
    # A coupling that joined the cluster cannot know that no worker will join: it waits placement-timeout.
    with dask.config.set({"coupler.placement-timeout": "1s"}), Coupling(coupling.client.scheduler.address) as joined:
        with pytest.raises(NoSuitableWorker, match=r"no worker of the cluster matches workers=\['tcp://192.0.2.1:1'\] \(waited 1 s\)"):
            joined.spawn(Idle, name=f"ghost-joined-{unique}", workers=ghost)
    # A pin that names a live worker by its address still places the actor there.
    worker = sorted(coupling.client.scheduler_info(n_workers=-1)["workers"])[0]
    ref = coupling.spawn(Idle, name=f"pinned-{unique}", workers=worker)
    assert ref.status().worker == worker
    ref.release()


@pytest.mark.parametrize(
    ("cluster", "kwargs", "error", "message"),
    [
        ("nonsense", {}, ValueError, r"expected the address of a scheduler, like tcp://host:8786, or a cluster kind \(local, slurm"),
        (None, {"n_workers": 0}, ValueError, r"needs n_workers, an int >= 1 .*got 0"),
        (None, {"n_workers": "2"}, ValueError, r"needs n_workers, an int >= 1 .*got '2'"),
    ],
)
def test_a_coupling_of_a_bad_cluster_says_what_it_expected(cluster: Any, kwargs: dict[str, Any], error: type, message: str) -> None:
    with dask.config.set({"coupler.scheduler-address": None, "coupler.cluster": "local"}):
        with pytest.raises(error, match=message):
            Coupling(cluster, **kwargs)


def test_a_coupling_named_by_a_kind_starts_a_cluster_of_that_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[str] = []

    class Started(Exception):
        pass

    def start_cluster(kind: str, *args: Any, **kwargs: Any) -> Any:
        started.append(kind)
        raise Started

    monkeypatch.setattr(coupling_module, "start_cluster", start_cluster)
    with dask.config.set({"coupler.scheduler-address": "tcp://192.0.2.1:1"}):  # an explicit kind wins over it
        for kind in ("local", "slurm"):
            with pytest.raises(Started):
                Coupling(kind)
    assert started == ["local", "slurm"]
    with pytest.raises(ValueError, match="a cluster kind must be one of local, slurm, pbs"):
        start_cluster_for_real("slurmm")


class ReadsInp(ActorHost):
    def step(self) -> bool:
        self.inputs["inp"].receive(timeout=5)
        return False


def test_a_step_asking_for_a_port_its_spawn_did_not_give_fails_naming_the_ports_it_has(coupling: Coupling, unique: str) -> None:
    ref = coupling.spawn(ReadsInp, name=f"port-{unique}", inputs={"input": coupling.channel(f"port-{unique}", Queue(2))})
    ref.start()
    _wait_fails(ref, 30, ActorFailed, rf"UnknownPort: actor 'port-{unique}' has no input port 'inp'; its inputs are \['input'\]")
    assert issubclass(UnknownPort, KeyError)  # code that caught the bare KeyError still does


def test_a_spawn_on_a_cluster_with_no_worker_waits_for_one_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    # Batch jobs still in the queue look like this: the spawn must wait (not fail), but not in silence.
    with LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as cluster, Coupling(cluster.scheduler_address) as cp:
        with caplog.at_level("WARNING", logger="coupler.runtime.control.spawning"), ThreadPoolExecutor(1) as pool:
            spawning = pool.submit(cp.spawn, Idle, name="early")
            until_logged = time.monotonic() + 30
            while not any("waits for a worker: the cluster has none yet" in r.getMessage() for r in caplog.records):
                assert time.monotonic() < until_logged, "no word after 30 s of waiting for a worker"
                assert not spawning.done(), spawning.exception()
                time.sleep(0.2)
            cluster.scale(1)  # the job starts: the spawn goes on
            ref = spawning.result(timeout=60)
        assert ref.status().state == "created"
        ref.release()


def test_a_batch_cluster_whose_jobs_never_start_fails_with_workers_not_ready_and_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    # A batch cluster whose jobs stay queued: a scheduler with no worker stands in for it.
    started: list[LocalCluster] = []

    def start_cluster(kind: str, *args: Any, **kwargs: Any) -> LocalCluster:
        started.append(LocalCluster(n_workers=0, processes=False, dashboard_address=":0"))
        return started[-1]

    monkeypatch.setattr(coupling_module, "start_cluster", start_cluster)
    with dask.config.set({"coupler.scheduler-address": None, "coupler.jobqueue.start-timeout": "1s"}):
        with pytest.raises(WorkersNotReady):
            Coupling("slurm")
    assert len(started) == 1 and started[0].status.name == "closed"  # not left running


def test_start_does_not_resume_a_paused_actor_nor_record_it_as_running(coupling: Coupling, unique: str) -> None:
    # The supervisor brings a successor to the recorded intent: a paused actor must not come back running.
    ref = coupling.spawn(Idle, name=f"paused-{unique}")
    ref.pause()
    assert ref.start().state == "paused" and ref.intent == "paused"
    assert ref.resume().state == "running" and ref.intent == "running"
    ref.release()


def test_a_new_consumer_of_a_closed_channel_still_draining_is_refused(coupling: Coupling, unique: str) -> None:
    ch = coupling.channel(f"draining-{unique}", Queue(2))
    holder = coupling.spawn(Idle, name=f"holder-{unique}", inputs={"x": ch})  # attached: the channel is not forgotten
    coupling.close_channel(ch)
    with pytest.raises(ChannelClosed, match=f"channel 'draining-{unique}' was closed: a new consumer would get nothing"):
        coupling.spawn(Idle, name=f"late-{unique}", inputs={"x": ch})
    holder.release()

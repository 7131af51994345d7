"""Partitions: one host's link is cut (its veth taken down) in the middle of a ``Queue`` stream, then restored.

The cluster's timeouts are short so that these tests stay fast (see
``docs/reliability.md``, "Partitions and timeouts"): the scheduler calls a silent
worker dead after about :data:`DEATH_TIMEOUT` s (``distributed.comm.timeouts.tcp``:
its TCP keep-alive gives up; ``distributed.scheduler.worker-ttl``: no heartbeat).
The workers themselves keep their connections for :data:`WORKER_TCP_TIMEOUT` s, so
a cut host's worker outlives the scheduler's verdict and comes back, with the
actors it ran still running, when the link returns (a "zombie"), as on a real
cluster where the scheduler's ``worker-ttl`` is shorter than the workers' TCP timeout.

Host 1 is the one cut. It holds either the learner (the consumer) or one of the two
simulators (a producer), never both: a producer and its consumer lost together lose
what the consumer took after its checkpoint, a documented limit (docs/reliability.md).
Which actor host 1 holds, and the cut's start and length, are chosen by hypothesis:
two examples per test, the first always hypothesis' simplest (the first victim
listed, the shortest start and length), so the tests list the victims in turn;
no shrinking, which would rerun these long examples many times.

Every example checks, at the learner: each simulator's samples 0..n-1 exactly
once and in order, their checksum, and its weights against an offline replay.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from checks import assert_every_message_once, assert_one_instance_at_a_time, wait_for
from coupler.runtime import Queue
from host_actors import InstanceLearner, TimedSimulator
from host_cluster import HostCluster, host_cluster

pytestmark = pytest.mark.multihost

#: Seconds of silence after which the scheduler removes a worker (its TCP timeout and worker-ttl).
DEATH_TIMEOUT = 12
#: The workers' own TCP timeout: longer, so a cut-off worker is still alive when its link returns.
WORKER_TCP_TIMEOUT = 60
#: Where each example's timings go (for docs/reliability.md; the tests assert no timings).
RECORD = Path(__file__).resolve().parents[2] / "artifacts" / "multihost" / "partitions.jsonl"
SEEDS = (1, 2)
FEW = settings(max_examples=2, deadline=None, phases=(Phase.explicit, Phase.generate), database=None)

_examples = itertools.count()


@pytest.fixture(scope="module")
def hosts() -> Iterator[HostCluster]:
    """Three emulated hosts with short death timeouts (a worker each)."""
    scheduler = {
        "distributed.comm.timeouts.tcp": f"{DEATH_TIMEOUT}s",
        "distributed.scheduler.worker-ttl": f"{DEATH_TIMEOUT}s",
    }
    yield from host_cluster(3, scheduler, {"DASK_DISTRIBUTED__COMM__TIMEOUTS__TCP": f"{WORKER_TCP_TIMEOUT}s"})


def _record(kind: str, **facts: Any) -> None:
    RECORD.parent.mkdir(parents=True, exist_ok=True)
    with open(RECORD, "a") as f:
        f.write(json.dumps({"kind": kind, **facts}) + "\n")


#: Where the learner and the two simulators run, by which of them host 1 (the one cut) holds.
LAYOUTS = {"learner": (1, (2, 3)), "simulator": (2, (1, 3))}


def _stream(hc: HostCluster, victim: str, n: int, period: float) -> tuple[Any, list[Any], Any]:
    """A QueueLearner fed by two TimedSimulators, laid out by :data:`LAYOUTS`; started.

    Returns:
        The learner, the simulators, and the actor on host 1.
    """
    learner_on, sims_on = LAYOUTS[victim]
    tag = f"p{next(_examples)}"
    ch = hc.coupling.channel(f"cut-{tag}", Queue(8))
    learner = hc.coupling.spawn(InstanceLearner, name=f"learner-{tag}", inputs={"data": ch}, workers=hc.address(hc.host(learner_on)))
    sims = [
        hc.coupling.spawn(TimedSimulator, n, seed, period, name=f"sim{seed}-{tag}", outputs={"out": ch},
                          workers=hc.address(hc.host(h)))
        for seed, h in zip(SEEDS, sims_on)
    ]  # fmt: skip
    learner.start()
    for s in sims:
        s.start()
    return learner, sims, (learner if victim == "learner" else sims[0])


def _cut(hc: HostCluster, host: int, start: float, length: float) -> tuple[float, float]:
    """Cut host ``host`` off ``start`` s from now for ``length`` s; return (cut, heal) as monotonic times."""
    time.sleep(start)
    h = hc.host(host)
    hc.hosts.cut(h)
    cut = time.monotonic()
    try:
        time.sleep(length)
    finally:
        hc.hosts.heal(h)
    return cut, time.monotonic()


def _longest_block(times: list[tuple[int, float]], cut: float, heal: float) -> tuple[float, int]:
    """(longest gap between two sends that overlaps the cut, sends that returned during the cut)."""
    stamps = [t for _, t in times]
    gaps = [b - a for a, b in zip(stamps, stamps[1:]) if b > cut and a < heal]
    return max(gaps, default=0.0), sum(cut <= t <= heal for t in stamps)


@FEW
@given(victim=st.sampled_from(["simulator", "learner"]), start=st.floats(0.5, 2.5), length=st.floats(5.0, 8.0))
def test_a_short_cut_loses_and_repeats_nothing(hosts: HostCluster, victim: str, start: float, length: float) -> None:
    """Host 1 is cut for 5-8 s, less than the death timeout: the stream resumes, nothing restarts."""
    hc = hosts
    hc.ensure_workers()
    n, period = 250, 0.04  # 10 s of samples: the cut falls inside the stream
    learner, sims, _ = _stream(hc, victim, n, period)
    wait_for("the stream to flow", lambda: learner.status().info["count"] >= 20)
    cut, heal = _cut(hc, 1, start, length)
    for s in sims:
        assert s.wait(120).state == "finished"
    rec = assert_every_message_once(learner, {s.name: seed for s, seed in zip(sims, SEEDS)}, n)
    for s in sims:  # each simulator's one instance sent all its messages
        assert len(assert_one_instance_at_a_time(rec, s.name, s.call("instance_id"))) == 1
    assert learner.generation == 0 and all(s.generation == 0 for s in sims)
    # No actor moved or restarted (a periodic checkpoint may fail while a send waits on the cut link: allowed).
    names = {learner.name, *(s.name for s in sims)}
    assert not [e for e in hc.coupling.supervisor.events if e.actor in names and e.kind != "checkpoint-failed"]
    # sims[0] is on host 1 (victim "simulator") or sends to the learner there ("learner").
    blocks = [_longest_block(s.call("send_times"), cut, heal) for s in sims]
    _record("short", victim=victim, cut_s=round(heal - cut, 2),
            producers={s.name: {"longest_block_s": round(b, 2), "sends_during_cut": d} for s, (b, d) in zip(sims, blocks)})  # fmt: skip
    learner.stop()


def _restarts(hc: HostCluster, names: set[str]) -> list[Any]:
    return [e for e in hc.coupling.supervisor.events if e.actor in names and e.kind == "restarted"]


def _after_the_zombie(hc: HostCluster, host: int) -> bool:
    """Wait (up to 40 s) for host ``host``'s worker to end itself after its link returned; kill it otherwise.

    Returns:
        Whether it ended by itself.
    """
    proc = hc.procs[host]
    try:
        proc.wait(40)
        ended = True
    except subprocess.TimeoutExpired:
        ended = False
    hc.procs.pop(host)
    if not ended:
        hc.kill_worker_process(proc)
    return ended


def _checkpointed(hc: HostCluster, actor: Any) -> None:
    """Wait for a checkpoint of ``actor`` past its start (a learner's covers 20 messages, a simulator's 20 steps)."""

    def progress() -> int:
        state = (hc.coupling.supervisor.last_checkpoint(actor.name) or {}).get("state", {})
        return len(state.get("trained", [])) if "trained" in state else int(state.get("i", 0))

    wait_for(f"a checkpoint of {actor.name} 20 messages in", lambda: progress() >= 20)


@FEW
@given(
    victim=st.sampled_from(["learner", "simulator"]),
    start=st.floats(0.5, 2.5),
    length=st.floats(DEATH_TIMEOUT + 5.0, DEATH_TIMEOUT + 8.0),
)
def test_a_cut_longer_than_the_death_timeout_restarts_the_hosts_actor_elsewhere_exactly_once(
    hosts: HostCluster, victim: str, start: float, length: float
) -> None:
    """Cut longer than the death timeout, host 1's actor restarts on another host from its checkpoint, once;
    when the link returns, the old worker (still running the old instance) delivers nothing stale."""
    hc = hosts
    hc.ensure_workers()
    n, period = 250, 0.04
    learner, sims, lost = _stream(hc, victim, n, period)
    _checkpointed(hc, lost)
    t0 = time.time()
    cut, heal = _cut(hc, 1, start, length)
    wait_for(f"{lost.name}'s restart", lambda: lost.generation == 1, timeout=60)
    for s in sims:
        assert s.wait(120).state == "finished"
    zombie_ended = _after_the_zombie(hc, 1)  # its streams had their chance to deliver stale messages
    rec = assert_every_message_once(learner, {s.name: seed for s, seed in zip(sims, SEEDS)}, n)
    # A restarted simulator's old instance delivered before its successor, never after; the others: one instance.
    for s in sims:
        runs = assert_one_instance_at_a_time(rec, s.name, s.call("instance_id"))
        assert len(runs) == (2 if s is lost else 1), (s.name, runs)
    restarts = _restarts(hc, {learner.name, *(s.name for s in sims)})
    assert [e.actor for e in restarts] == [lost.name], restarts  # that one, exactly once
    assert hc.host_of(restarts[0].target).index != 1 and "checkpoint" in restarts[0].detail, restarts
    _record("long", victim=victim, cut_s=round(heal - cut, 2), restarted_after_s=round(restarts[0].time - t0 - start, 2),
            zombie_ended_by_itself=zombie_ended)  # fmt: skip
    learner.stop()


@FEW
@given(
    victim=st.sampled_from(["simulator", "learner"]),
    start=st.floats(0.5, 2.5),
    length=st.floats(DEATH_TIMEOUT - 1.5, DEATH_TIMEOUT + 2.5),
)
def test_a_cut_about_as_long_as_the_death_timeout_never_has_two_instances_deliver(
    hosts: HostCluster, victim: str, start: float, length: float
) -> None:
    """The link returns about when the scheduler removes the worker: whether the actors restart or not, every
    message reaches the learner once (a restarted actor's old instance, still running, never also delivers)."""
    hc = hosts
    hc.ensure_workers()
    n, period = 250, 0.04
    learner, sims, lost = _stream(hc, victim, n, period)
    names = {learner.name, *(s.name for s in sims)}
    _checkpointed(hc, lost)
    cut, heal = _cut(hc, 1, start, length)
    for s in sims:
        assert s.wait(120).state == "finished"
    restarted = bool(_restarts(hc, names))
    zombie_ended = _after_the_zombie(hc, 1) if restarted else None
    rec = assert_every_message_once(learner, {s.name: seed for s, seed in zip(sims, SEEDS)}, n)
    # A restarted simulator's old instance delivered before its successor, never after; the others: one instance.
    for s in sims:
        runs = assert_one_instance_at_a_time(rec, s.name, s.call("instance_id"))
        assert len(runs) == (2 if s is lost and restarted else 1), (s.name, runs)
    assert [e.actor for e in _restarts(hc, names)] == ([lost.name] if restarted else [])
    _record("boundary", victim=victim, cut_s=round(heal - cut, 2), restarted=restarted, zombie_ended_by_itself=zombie_ended)
    learner.stop()

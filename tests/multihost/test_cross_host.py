"""Channels, supervision and chaos between workers on different (emulated) hosts.

Every host has its own address, hostname and /dev/shm, so these streams go over
TCP through the hosts' bridge, as between machines: the single-host tests'
shared-memory path must not be taken (a producer cannot map a consumer host's
segments), and nothing may be left in any host's /dev/shm.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from chaos_actors import QueueLearner, Simulator
from checks import assert_every_message_once, wait_for
from host_cluster import HostCluster
from coupler.runtime import Latest, Queue, Reservoir, Window
from helper_actors import Collector, Producer

pytestmark = pytest.mark.multihost

BIG = 1 << 17  # float32 values: 512 KiB per message, above coupler.transport.inline-max (on one host: shared memory)


def _shm_messages_by_link(hc: HostCluster, channel: str) -> dict[str, tuple[int, int]]:
    """(messages, of which through shared memory) of every link of ``channel``, by producing worker."""
    out = {}
    for worker, links in hc.link_stats().items():
        for s in links:
            if s["peer"][0] == channel:
                m, shm = out.get(worker, (0, 0))
                out[worker] = (m + s["messages"], shm + s["shm_messages"])
    return out


def test_queue_fan_in_from_two_hosts_delivers_everything_once_over_tcp(three_hosts: HostCluster) -> None:
    hc = three_hosts
    cp, (h1, h2, h3) = hc.coupling, hc.hosts.hosts
    ch = cp.channel("xh-fanin", Queue(16))
    n = 30
    col = cp.spawn(Collector, name="xh-fanin-col", inputs={"inp": ch}, workers=hc.address(h3))
    prods = [
        cp.spawn(Producer, n, ident=i, size=BIG, name=f"xh-fanin-p{i}", outputs={"out": ch}, workers=hc.address(h1 if i < 2 else h2))
        for i in range(4)
    ]
    col.start()
    for p in prods:
        p.start()
    for p in prods:
        assert p.wait(60).state == "finished"
    wait_for("every message", lambda: len(col.call("received")) >= 4 * n)
    time.sleep(0.3)
    got = col.call("received")
    assert sorted((src, seq) for src, seq, *_ in got) == sorted((f"xh-fanin-p{i}", s) for i in range(4) for s in range(n))
    for src, seq, _, value, _ in got:
        assert value == int(src[-1]) * 1e6 + seq
    for i in range(4):
        assert [seq for src, seq, *_ in got if src == f"xh-fanin-p{i}"] == list(range(n))  # in order
    links: dict[str, tuple[int, int]] = {}
    for p in prods:  # their links close after their end: each kept its worker's figures
        worker, figures = p.status().worker, tuple(p.call("link_figures"))
        links[worker] = max(links.get(worker, (0, 0)), figures)
    assert set(links) == {hc.address(h1), hc.address(h2)}
    assert all(m > 0 and shm == 0 for m, shm in links.values()), f"(messages, through shared memory) by worker: {links}"
    col.stop()


def test_shared_memory_is_used_within_a_host_and_never_across(three_hosts: HostCluster) -> None:
    """A second worker on h3 sends 512 KiB messages through h3's /dev/shm; h1's worker cannot, and does not."""
    hc = three_hosts
    cp, (h1, _, h3) = hc.coupling, hc.hosts.hosts
    neighbour = hc.start_worker(h3, primary=False)
    ch = cp.channel("xh-shm", Queue(8))
    n = 20
    col = cp.spawn(Collector, name="xh-shm-col", inputs={"inp": ch}, workers=hc.address(h3))
    near = cp.spawn(Producer, n, ident=1, size=BIG, name="xh-shm-near", outputs={"out": ch}, workers=neighbour)
    far = cp.spawn(Producer, n, ident=2, size=BIG, name="xh-shm-far", outputs={"out": ch}, workers=hc.address(h1))
    col.start()
    near.start()
    far.start()
    assert near.wait(60).state == "finished" and far.wait(60).state == "finished"
    wait_for("every message", lambda: len(col.call("received")) >= 2 * n)
    got = col.call("received")
    assert sorted((src, seq) for src, seq, *_ in got) == sorted((f"xh-shm-{w}", s) for w in ("near", "far") for s in range(n))
    assert all(value == (1 if src.endswith("near") else 2) * 1e6 + seq for src, seq, _, value, _ in got)
    links = _shm_messages_by_link(hc, "xh-shm")
    assert links[neighbour] == (n, n), f"same host: every message through /dev/shm; got {links}"
    assert links[hc.address(h1)] == (n, 0), f"across hosts: none through /dev/shm; got {links}"
    col.stop()
    cp.client.retire_workers([neighbour])


def test_broadcast_reaches_a_consumer_on_every_host(three_hosts: HostCluster) -> None:
    hc = three_hosts
    cp = hc.coupling
    ch = cp.channel("xh-bc", Queue(8))
    n = 60
    cols = [cp.spawn(Collector, name=f"xh-bc-c{h.index}", inputs={"inp": ch}, workers=hc.address(h)) for h in hc.hosts.hosts]
    prod = cp.spawn(Producer, n, name="xh-bc-p", outputs={"out": ch}, workers=hc.address(hc.host(1)))
    for c in cols:
        c.start()
    prod.start()
    assert prod.wait(60).state == "finished"
    for c in cols:
        wait_for(f"{c.name} to get all", lambda c=c: len(c.call("received")) >= n)
        assert [value for *_, value, _ in c.call("received")] == [float(s) for s in range(n)]
        c.stop()


def test_latest_reservoir_and_window_across_hosts(three_hosts: HostCluster) -> None:
    hc = three_hosts
    cp = hc.coupling
    src, dst = hc.address(hc.host(1)), hc.address(hc.host(2))
    latest = cp.spawn(Collector, name="xh-latest-c", inputs={"inp": cp.channel("xh-latest", Latest())}, workers=dst)
    res = cp.spawn(Collector, name="xh-res-c", inputs={"inp": cp.channel("xh-res", Reservoir(capacity=64, seed=1))}, workers=dst)
    win = cp.spawn(Collector, name="xh-win-c", inputs={"inp": cp.channel("xh-win", Window(capacity=10))}, workers=dst)
    prods = [
        cp.spawn(Producer, 50, name="xh-latest-p", outputs={"out": "xh-latest"}, workers=src),
        *[cp.spawn(Producer, 400, ident=i, name=f"xh-res-p{i}", outputs={"out": "xh-res"}, workers=src) for i in range(2)],
        cp.spawn(Producer, 37, name="xh-win-p", outputs={"out": "xh-win"}, workers=src),
    ]
    for p in prods:
        p.start()
    for p in prods:
        assert p.wait(60).state == "finished"
    # Latest: only the newest is kept; nothing newer afterwards.
    wait_for("the latest message", lambda: latest.call("buffer_stats")["received"] == 50)
    assert latest.call("receive_now", 5) == ("xh-latest-p", 49, 49.0)
    assert latest.call("receive_now", 0.2) is None
    # Reservoir: 64 distinct real messages out of 800, about half from each producer (binomial, sd ~ 4).
    wait_for("every reservoir message", lambda: res.call("buffer_stats")["received"] == 800)
    held = res.call("contents")["x"][:, 0]
    sent = {i * 1e6 + s for i in range(2) for s in range(400)}
    assert held.shape == (64,) and set(held.tolist()) <= sent and len(set(held.tolist())) == 64
    assert 14 <= int((held >= 1e6).sum()) <= 50
    # Window: exactly the newest 10.
    wait_for("every window message", lambda: win.call("buffer_stats")["received"] == 37)
    assert sorted(win.call("contents")["x"][:, 0].tolist()) == [float(s) for s in range(27, 37)]
    for c in (latest, res, win):
        c.stop()


@pytest.fixture
def supervised(three_hosts: HostCluster) -> Iterator[HostCluster]:
    """The three-host cluster, with a worker back on every host after the test (it kills or retires one)."""
    yield three_hosts
    three_hosts.ensure_workers()


def test_sigkill_of_the_learners_host_worker_restarts_it_on_another_host_exactly_once(supervised: HostCluster) -> None:
    hc = supervised
    cp, (h1, h2, h3) = hc.coupling, hc.hosts.hosts
    n = 150
    ch = cp.channel("xh-kill", Queue(8))
    learner = cp.spawn(QueueLearner, name="xh-kill-learner", inputs={"data": ch}, workers=hc.address(h1))
    sims = [
        cp.spawn(Simulator, n, seed, 0.01, name=f"xh-kill-sim{seed}", outputs={"out": ch}, workers=hc.address(h))
        for seed, h in ((1, h2), (2, h3))
    ]
    learner.start()
    for s in sims:
        s.start()
    lost = hc.address(h1)
    ck = lambda: cp.supervisor.last_checkpoint(learner.name) or {}  # noqa: E731
    wait_for("a learner checkpoint covering 60 messages", lambda: len(ck().get("state", {}).get("trained", [])) >= 60)
    hc.kill_worker(h1)
    wait_for("the learner's restart", lambda: learner.generation == 1)
    for s in sims:
        assert s.wait(120).state == "finished"
    rec = assert_every_message_once(learner, {s.name: seed for s, seed in zip(sims, (1, 2))}, n)
    assert 60 <= rec["restored_at"] < 2 * n  # from its checkpoint, not from scratch
    restarted = [e for e in cp.supervisor.events if e.kind == "restarted" and e.actor == learner.name]
    assert len(restarted) == 1 and restarted[0].source == lost
    assert hc.host_of(learner.status().worker) in (h2, h3)
    learner.stop()


def test_walltime_moves_the_learner_from_one_host_to_another(supervised: HostCluster) -> None:
    """h1's only worker has a 12 s lifetime (a batch job's walltime): the supervisor moves the learner off h1 first."""
    hc = supervised
    cp, (h1, h2, h3) = hc.coupling, hc.hosts.hosts
    cp.client.retire_workers([hc.address(h1)])
    hc.procs[h1.index].wait(30)
    short = hc.start_worker(h1, "--lifetime", "12s", "--lifetime-stagger", "0s")
    n = 150
    ch = cp.channel("xh-wall", Queue(8))
    learner = cp.spawn(QueueLearner, name="xh-wall-learner", inputs={"data": ch}, workers=short)
    sims = [cp.spawn(Simulator, n, seed, 0.05, name=f"xh-wall-sim{seed}", outputs={"out": ch}, workers=hc.address(h2))
            for seed in (1, 2)]  # fmt: skip
    learner.start()
    for s in sims:
        s.start()
    wait_for("the learner's move", lambda: learner.status().worker != short, timeout=60)
    for s in sims:
        assert s.wait(120).state == "finished"
    assert_every_message_once(learner, {s.name: seed for s, seed in zip(sims, (1, 2))}, n)
    moved = [e for e in cp.supervisor.events if e.kind == "moved" and e.actor == learner.name]
    assert len(moved) == 1 and moved[0].source == short
    assert hc.host_of(moved[0].target) in (h2, h3)
    assert not [e for e in cp.supervisor.events if e.actor == learner.name and e.kind in ("restarted", "gave-up")]
    learner.stop()
    hc.procs[h1.index].wait(30)  # the short-lived worker ends at its lifetime (then the fixture starts another)


def test_nothing_is_left_in_any_hosts_dev_shm(three_hosts: HostCluster) -> None:
    """After the streams above (512 KiB messages included) ended and their consumers stopped, every /dev/shm is empty."""
    hc = three_hosts
    wait_for("every host's /dev/shm to be empty", lambda: not any(hc.shm_left().values()), timeout=30)

"""The driver's ports when the worker of their relay is SIGKILLed (test_driver.py covers moves only).

A ``Queue`` subscription or publisher of the script is a relay actor on a
worker, supervised like any actor. docs/reliability.md promises, for a
``Queue``, "nothing lost, nothing processed twice" across the restart of a
consumer or a producer after a lost worker: the script must then take every
message of an actor's stream once, in order, and an actor must get every
message the script sent (each ``send`` that returned a seq) once, in order.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import cloudpickle
import numpy as np
import pytest

import attack_actors
import merge_actors
from attack_actors import SeqSink
from chaos_cluster import chaos_coupling, fresh_tag, kill_worker, three_workers, until
from coupler.runtime.coupling import Coupling
from coupler.runtime.policies import Queue
from merge_actors import Source, value

cloudpickle.register_pickle_by_value(merge_actors)
cloudpickle.register_pickle_by_value(attack_actors)

N = 80


@pytest.fixture(scope="module")
def cluster() -> Iterator[Coupling]:
    with chaos_coupling(checkpoint_interval=0.4, poll=0.2, backoff=0.1, restarts=100) as cp:
        yield cp


def _worker_of(cp: Coupling, relay: str) -> str:
    return cp.supervisor._records[relay].worker


def test_a_subscription_whose_relay_worker_is_killed_takes_every_message_once(cluster: Coupling) -> None:
    cp = cluster
    tag = fresh_tag("subk")
    w = three_workers(cp)
    ch = cp.channel(f"s-{tag}", Queue(8))
    sub = cp.subscribe(ch, timeout=30)
    relay_at = _worker_of(cp, sub.relay.name)
    src_at = next(x for x in w if x != relay_at)
    src = cp.spawn(Source, N, 1, 0.02, name=f"src-{tag}", outputs={"out": ch}, workers=src_at)
    src.start()
    got: list[tuple[str, int, float]] = []
    errors: list[BaseException] = []
    try:
        while len(got) < 20:
            m = sub.receive(timeout=30)
            got.append((m.source, m.seq, float(m.data["v"])))
        before = cp.supervisor.last_checkpoint(sub.relay.name) or {}
        while (cp.supervisor.last_checkpoint(sub.relay.name) or {}).get("time") == before.get("time"):
            m = sub.receive(timeout=30)  # the script goes on taking, as a script would
            got.append((m.source, m.seq, float(m.data["v"])))
        t0 = time.monotonic()
        while time.monotonic() - t0 < 0.3:  # takes after the relay's last checkpoint
            m = sub.receive(timeout=30)
            got.append((m.source, m.seq, float(m.data["v"])))
        kill_worker(cp, relay_at)
        deadline = time.monotonic() + 90
        while len({g[1] for g in got if g[0] == src.name}) < N and time.monotonic() < deadline:
            try:
                m = sub.receive(timeout=5)
            except Exception as e:  # noqa: BLE001  (what the script sees is part of the verdict)
                errors.append(e)
                if len(errors) > 20:
                    break
                continue
            got.append((m.source, m.seq, float(m.data["v"])))
        # a duplicate arriving late would show up as an extra message
        try:
            m = sub.receive(timeout=1)
            got.append((m.source, m.seq, float(m.data["v"])))
        except Exception:
            pass
        seqs = [q for s, q, _ in got if s == src.name]
        dup = sorted(q for q, c in Counter(seqs).items() if c > 1)
        missing = sorted(set(range(N)) - set(seqs))
        assert seqs == list(range(N)), f"dup={dup} missing={missing} errors={[repr(e)[:200] for e in errors[:3]]}"
        assert [v for s, _, v in got if s == src.name] == [value(1, i) for i in range(N)]
    finally:
        src.stop()
        sub.close()


def test_a_publisher_whose_relay_worker_is_killed_delivers_every_accepted_send_once(cluster: Coupling) -> None:
    cp = cluster
    tag = fresh_tag("pubk")
    w = three_workers(cp)
    ch = cp.channel(f"p-{tag}", Queue(8))
    pub = cp.publisher(ch)
    sink = None
    sent: dict[int, float] = {}
    errors: list[BaseException] = []
    reused: list[tuple[int, float, float]] = []
    try:
        until("the publisher's relay is placed", lambda: pub.source in cp.supervisor._records and bool(_worker_of(cp, pub.source)), 30)
        sink_at = next(x for x in w if x != _worker_of(cp, pub.source))
        sink = cp.spawn(SeqSink, name=f"sink-{tag}", inputs={"data": ch}, workers=sink_at)
        sink.start()
        for i in range(20):
            sent[pub.send({"v": np.array(float(i))}, timeout=30)] = float(i)
        relay_at = _worker_of(cp, pub.source)
        if relay_at == sink_at:
            pytest.skip("the publisher's relay shares the sink's worker")
        before = cp.supervisor.last_checkpoint(pub.source) or {}
        until("a fresh checkpoint of the relay", lambda: (cp.supervisor.last_checkpoint(pub.source) or {}).get("time") != before.get("time"), 10)
        for i in range(20, 25):
            sent[pub.send({"v": np.array(float(i))}, timeout=30)] = float(i)
        kill_worker(cp, relay_at)
        i = 25
        deadline = time.monotonic() + 90
        while i < N and time.monotonic() < deadline:
            try:
                seq = pub.send({"v": np.array(float(i))}, timeout=10)
            except Exception as e:  # noqa: BLE001
                errors.append(e)
                if len(errors) > 20:
                    break
                time.sleep(0.2)
                continue
            if seq in sent:
                reused.append((seq, sent[seq], float(i)))
            else:
                sent[seq] = float(i)
            i += 1
        try:
            pub.flush(30)
        except Exception as e:  # noqa: BLE001
            errors.append(e)
        try:
            until("every accepted send at the sink", lambda: sink.status().info["count"] >= len(sent), 60)
        finally:
            time.sleep(0.5)
            got = [(q, v) for s, q, v in sink.call("record") if s == pub.source]
            seqs = [q for q, _ in got]
            dup = sorted(q for q, c in Counter(seqs).items() if c > 1)
            missing = sorted(set(sent) - set(seqs))
            assert not reused and got == sorted(sent.items()), (
                f"seqs returned for two payloads (seq, first, second): {reused[:6]}; at the sink: dup={dup} missing={missing} wrong={[(q, v, sent.get(q)) for q, v in got if sent.get(q) != v][:10]} "
                f"errors={[repr(e)[:200] for e in errors[:3]]}"
            )
    finally:
        if sink is not None:
            sink.stop()
        pub.close(flush=False)

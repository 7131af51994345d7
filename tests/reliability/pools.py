"""Set-ups the attack tests share: a ``Source`` streaming into one ``SeqSink``, or into a work-sharing pool of two."""

from __future__ import annotations

from collections import Counter
from typing import Any

from attack_actors import SeqSink
from chaos_cluster import three_workers
from coupler.runtime.coupling import Coupling
from coupler.runtime.policies import Queue
from merge_actors import Source


def start_stream(cp: Coupling, tag: str, maxsize: int) -> tuple[Any, Any, str, list[str]]:
    """Start a long ``Source`` (10,000 messages, one per 10 ms) on the first of three workers, into a ``SeqSink`` on the third.

    Returns:
        The sink, the source (both started), the channel's name and the three workers.
    """
    w = three_workers(cp)
    ch = cp.channel(f"q-{tag}", Queue(maxsize))
    sink = cp.spawn(SeqSink, name=f"sink-{tag}", inputs={"data": ch}, workers=w[2])
    src = cp.spawn(Source, 10_000, 1, 0.01, name=f"src-{tag}", outputs={"out": ch}, workers=w[0])
    sink.start()
    src.start()
    return sink, src, ch, w


def start_pool(cp: Coupling, tag: str, maxsize: int, n: int, seed: int, period: float) -> tuple[list[Any], Any]:
    """Start a ``Source`` of ``n`` messages on one worker, feeding ``Queue(maxsize, shared=True)`` members on two others.

    Returns:
        The two members and the source, all started.
    """
    w = three_workers(cp)
    ch = cp.channel(f"pool-{tag}", Queue(maxsize, shared=True))
    sinks = [cp.spawn(SeqSink, name=f"sink{k}-{tag}", inputs={"data": ch}, workers=w[k + 1]) for k in (0, 1)]
    src = cp.spawn(Source, n, seed, period, name=f"src-{tag}", outputs={"out": ch}, workers=w[0])
    for r in (*sinks, src):
        r.start()
    return sinks, src


def taken(sinks: list[Any]) -> int:
    """How many messages the members took."""
    return sum(s.status().info["count"] for s in sinks)


def assert_each_once(sinks: list[Any], source: str, n: int) -> list[tuple[str, int, float]]:
    """Every number of ``source`` below ``n`` at exactly one member; returns what the members recorded of it."""
    got = [g for s in sinks for g in s.call("record") if g[0] == source]
    seqs = Counter(q for _, q, _ in got)
    assert sorted(seqs) == list(range(n)), f"missing {sorted(set(range(n)) - set(seqs))}"
    assert max(seqs.values()) == 1, f"taken twice: {sorted(q for q, c in seqs.items() if c > 1)}"
    return got

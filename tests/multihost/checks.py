"""What the emulated-host tests check about a stream: every message once, in order, intact."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from chaos_actors import checksum, sample, sgd_step


def wait_for(what: str, ready: Any, timeout: float = 90.0, logs: Any = None) -> None:
    """Poll ``ready()`` every 50 ms.

    Args:
        what: named in the error.
        ready: the condition.
        timeout: seconds.
        logs: if given, called for text to add to the error (the hosts' logs).

    Raises:
        TimeoutError: not true within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout} s for {what}" + (f"\n{logs()}" if logs else ""))
        time.sleep(0.05)


def assert_every_message_once(learner: Any, sources: dict[str, int], n: int, timeout: float = 120.0) -> dict[str, Any]:
    """The QueueLearner ``learner`` trained on samples 0..n-1 of every source exactly once, in order.

    Args:
        learner: a ``chaos_actors.QueueLearner``'s ref.
        sources: simulator name -> its seed.
        n: samples per simulator.
        timeout: seconds to wait for the last message.

    Returns:
        The learner's record.
    """
    try:
        wait_for("the learner to train on every message", lambda: learner.status().info["count"] >= n * len(sources), timeout)
    except TimeoutError as e:
        raise AssertionError(f"{e}; it has {summary(learner.call('record')['trained'], sources, n)}") from None
    time.sleep(0.5)  # a duplicate arriving late would show up as an extra message
    rec = learner.call("record")
    trained = rec["trained"]
    for name in sources:
        seqs = [q for src, q in trained if src == name]
        assert seqs == list(range(n)), f"{name}: expected seqs 0..{n - 1} once each in order; got {len(seqs)}: {seqs[:20]}..."
    assert len(trained) == n * len(sources)
    expected = sum(checksum(sample(seed, i)) for seed in sources.values() for i in range(n))
    assert rec["total"] == pytest.approx(expected, rel=1e-12)
    assert rec["bad_fields"] == 0
    # Its weights are those of SGD over exactly the recorded messages, in that order (same float64 steps).
    w = np.zeros_like(rec["w"])
    for src, q in trained:
        d = sample(sources[src], q)
        w = sgd_step(w, d["x"], d["y"])
    np.testing.assert_allclose(rec["w"], w, rtol=1e-12, atol=0)
    return rec


def summary(trained: list[tuple[str, int]], sources: dict[str, int], n: int) -> dict[str, dict[str, Any]]:
    """Per source: how many of its messages the learner took, the first missing seq, and seqs taken twice."""
    out = {}
    for name in sources:
        seqs = [q for src, q in trained if src == name]
        missing = sorted(set(range(n)) - set(seqs))
        out[name] = {"count": len(seqs), "first_missing": missing[0] if missing else None,
                     "missing": len(missing), "twice": sorted({q for q in seqs if seqs.count(q) > 1})[:10]}
    return out


def assert_one_instance_at_a_time(rec: dict[str, Any], source: str, successor: int) -> list[int]:
    """Of ``source``'s messages, in the order the learner trained on them, each instance sent one unbroken run,
    and ``successor`` (its current instance) the last: once a successor delivered, an old instance never did again.

    Args:
        rec: an ``InstanceLearner``'s record.
        source: the simulator's name.
        successor: its current instance's identity.

    Returns:
        The instances in the order they delivered.
    """
    order: list[int] = []
    for (src, _), instance in zip(rec["trained"], rec["instances"]):
        if src == source and (not order or order[-1] != instance):
            assert instance not in order, f"{source}: instance {instance} delivered again after {order[-1]} had"
            order.append(instance)
    assert order and order[-1] == successor, f"{source}: instances in delivery order {order}; the current one is {successor}"
    return order

"""Policy buffers without a cluster: semantics and the statistics of the reservoir."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from coupler.runtime import ChannelClosed, ChannelTimeout, Interrupted, Latest, Message, Queue, Reservoir, Window, WrongPolicy
from coupler.runtime.buffers import make_buffer


def msg(i: int, source: str = "p") -> Message:
    return Message(data={"x": np.array([i], np.int64)}, seq=i, source=source)


def put(buf, msgs, timeout=None) -> int:
    return asyncio.run(buf.put(msgs, timeout))


def test_reservoir_inclusion_probability_is_uniform() -> None:
    # Algorithm R keeps each of n items with probability k/n (Vitter 1985, ACM TOMS 11(1)).
    # 2000 trials of n=200, k=20: each item's count ~ Binomial(2000, 0.1): mean 200, sd 13.4.
    n, k, trials = 200, 20, 2000
    counts = np.zeros(n)
    for t in range(trials):
        buf = make_buffer("r", Reservoir(capacity=k, seed=t))
        for i in range(n):
            buf._accept(msg(i))
        counts[buf.contents()["x"][:, 0]] += 1
    assert counts.sum() == k * trials
    # Pearson chi-square against uniform, 199 dof: mean 199, sd ~20; 300 is > 5 sd out.
    chi2 = ((counts - k * trials / n) ** 2 / (k * trials / n)).sum()
    assert chi2 < 300, chi2
    # Early and late items are kept equally often (no bias towards the start or the end).
    assert abs(counts[:50].mean() - counts[-50:].mean()) < 4 * 13.4 / np.sqrt(50) * np.sqrt(2)


def test_reservoir_batch_sampling_draws_from_the_held_set() -> None:
    buf = make_buffer("r", Reservoir(capacity=8, seed=0))
    with pytest.raises(ChannelTimeout):
        buf.sample(4, timeout=0.05)
    for i in range(100):
        buf._accept(msg(i))
    batch = buf.sample(256)
    held = set(buf.contents()["x"][:, 0].tolist())
    assert batch["x"].shape == (256, 1) and set(batch["x"][:, 0].tolist()) <= held
    assert len(set(batch["x"][:, 0].tolist())) == 8  # 256 draws from 8 cover all (p(miss) ~ 8e-15)
    with pytest.raises(ValueError):
        buf.sample(0)
    with pytest.raises(WrongPolicy, match="use sample"):
        buf.get(0)


def test_window_is_fifo() -> None:
    buf = make_buffer("w", Window(capacity=5))
    for i in range(12):
        buf._accept(msg(i))
    assert sorted(buf.contents()["x"][:, 0].tolist()) == [7, 8, 9, 10, 11]
    assert buf.stats.dropped == 7 and len(buf) == 5


def test_latest_hands_out_each_newest_once() -> None:
    buf = make_buffer("l", Latest())
    put(buf, [msg(0), msg(1), msg(2)])
    assert buf.get(0).seq == 2
    with pytest.raises(ChannelTimeout):
        buf.get(0.05)
    assert buf.peek().seq == 2 and buf.stats.dropped == 2
    with pytest.raises(WrongPolicy, match="use receive"):
        buf.sample(1)


def test_queue_put_waits_for_space_then_completes() -> None:
    loop = asyncio.new_event_loop()
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    try:
        buf = make_buffer("q", Queue(maxsize=2), loop)
        fut = asyncio.run_coroutine_threadsafe(buf.put([msg(i) for i in range(5)], None), loop)
        got = []
        for _ in range(5):
            got.append(buf.get(5).seq)
        assert fut.result(5) == 5 and got == [0, 1, 2, 3, 4]
        # With a deadline, a full queue accepts what fits and reports it.
        fut = asyncio.run_coroutine_threadsafe(buf.put([msg(i) for i in range(5, 9)], 0.1), loop)
        assert fut.result(5) == 2 and len(buf) == 2
        buf.close()
        assert [buf.get(1).seq, buf.get(1).seq] == [5, 6]  # drained after close
        with pytest.raises(ChannelClosed):
            buf.get(1)
    finally:
        loop.call_soon_threadsafe(loop.stop)


def test_interrupt_wakes_a_blocked_consumer() -> None:
    buf = make_buffer("q", Queue(4))
    threading.Timer(0.1, buf.interrupt).start()
    with pytest.raises(Interrupted):
        buf.get(10)

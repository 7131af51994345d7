"""Policy buffers without a cluster: semantics and the statistics of the reservoir."""

from __future__ import annotations

import gc
import threading
import weakref
from typing import Any

import numpy as np
import pytest

from coupler.runtime import ChannelClosed, ChannelTimeout, Interrupted, Latest, Message, Queue, Reservoir, Window, WrongPolicy
from coupler.runtime.dataplane.buffers import make_buffer


def msg(i: int, source: str = "p") -> Message:
    return Message(data={"x": np.array([i], np.int64)}, seq=i, source=source)


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
    buf.put([msg(0), msg(1), msg(2)])
    assert buf.get(0).seq == 2
    with pytest.raises(ChannelTimeout):
        buf.get(0.05)
    assert buf.peek().seq == 2 and buf.stats.dropped == 2
    with pytest.raises(WrongPolicy, match="use receive"):
        buf.sample(1)


def test_queue_put_waits_for_space_then_completes() -> None:
    buf = make_buffer("q", Queue(maxsize=2))
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(buf.put([msg(i) for i in range(5)])))
    t.start()
    got = [buf.get(5).seq for _ in range(5)]
    t.join(5)
    assert result == [5] and got == [0, 1, 2, 3, 4]
    # With a deadline, a full queue accepts what fits and reports it.
    assert buf.put([msg(i) for i in range(5, 9)], 0.1) == 2 and len(buf) == 2
    buf.close()
    assert [buf.get(1).seq, buf.get(1).seq] == [5, 6]  # drained after close
    with pytest.raises(ChannelClosed):
        buf.get(1)


def test_queue_credits_never_exceed_maxsize_and_rotate_between_links() -> None:
    buf = make_buffer("q", Queue(maxsize=3))
    grants: dict[int, int] = {1: 0, 2: 0}

    def granter(link: int):
        def grant(n: int, depth: int) -> None:
            grants[link] += n
        return grant

    buf.add_link(1, granter(1))
    buf.add_link(2, granter(2))
    buf.want(1, 5)
    assert grants == {1: 3, 2: 0}  # everything free goes to the only link asking
    buf.want(2, 5)
    assert grants == {1: 3, 2: 0}  # nothing is free: link 2 waits
    assert buf.put([msg(9)], timeout=0.05) == 0  # a local producer finds no slot either
    buf.put_credited(1, [msg(0), msg(1)])
    with pytest.raises(RuntimeError, match="2 messages on 1 credits"):
        buf.put_credited(1, [msg(2), msg(3)])
    buf.get(1)
    buf.get(1)  # two slots free: one to each link that still wants, in turn
    assert grants == {1: 4, 2: 1}
    buf.remove_link(1)  # link 1's unused credits (1 + 1 granted) go to link 2
    assert grants[2] == 3 and buf.maxsize - len(buf) - sum(buf.credits.granted.values()) == 0


def test_slots_freed_by_get_go_to_a_link_in_steps_and_at_once_while_it_holds_few() -> None:
    """A hand-out per get cost as much as the get; slots now go out in steps of maxsize // 8,
    but never while a link that wants slots could run out of them."""
    buf = make_buffer("q", Queue(maxsize=64))  # step 8
    grants: list[tuple[int, int]] = []
    buf.add_link(1, lambda n, reserved: grants.append((n, reserved)))
    buf.want(1, 64)
    assert grants == [(64, 64)]
    buf.put_credited(1, [msg(i) for i in range(64)])  # the link used every slot: it holds none
    buf.want(1, 64)
    grants.clear()
    for _ in range(8):
        buf.get(1)  # the link holds fewer than a step: each freed slot goes at once
    assert grants == [(1, k) for k in range(1, 9)]
    grants.clear()
    for _ in range(7):
        buf.get(1)  # it holds a step now: the next slots wait for a whole step
    assert grants == []
    buf.get(1)
    assert grants == [(8, 16)]
    # Its 16 messages arrive and fill the queue; the next slot freed goes to it at once.
    buf.put_credited(1, [msg(64 + i) for i in range(16)])
    assert len(buf) == 64 and buf.credits.granted[1] == 0
    grants.clear()
    buf.get(1)
    assert grants == [(1, 1)]


def test_queue_drain_and_preload_keep_order() -> None:
    buf = make_buffer("q", Queue(maxsize=4))
    buf.put([msg(i) for i in range(3)])
    left = buf.drain()
    assert [m.seq for m in left] == [0, 1, 2] and len(buf) == 0
    other = make_buffer("q", Queue(maxsize=2))
    other.put([msg(7)])
    other.preload(left)  # the leftovers go first, even beyond maxsize
    # Received once, by the first buffer: the broker's totals add both buffers' counters.
    assert (other.stats.received, other.stats.depth) == (1, 4)
    assert [other.get(1).seq for _ in range(4)] == [0, 1, 2, 7]
    assert (buf.stats.received + other.stats.received, buf.stats.taken + other.stats.taken) == (4, 4)
    other.detach()
    assert other.put([msg(8)], 0.05) == 0 and not other.accepting


def test_interrupt_wakes_a_blocked_consumer() -> None:
    buf = make_buffer("q", Queue(4))
    threading.Timer(0.1, buf.interrupt).start()
    with pytest.raises(Interrupted):
        buf.get(10)


def test_has_message_says_whether_get_returns_at_once() -> None:
    """An actor's receive skips its yielding wait loop when a message is held (the hot path of a stream)."""
    q = make_buffer("q", Queue(maxsize=4))
    assert not q.has_message()
    q.put([msg(0), msg(1)])
    assert q.has_message() and q.get(0).seq == 0 and q.has_message() and q.get(0).seq == 1
    assert not q.has_message()
    with pytest.raises(ChannelTimeout):
        q.get(0)
    latest = make_buffer("l", Latest())
    latest.put([msg(0), msg(1)])
    assert latest.has_message() and latest.get(0).seq == 1 and not latest.has_message()
    assert not make_buffer("r", Reservoir(capacity=4)).has_message()  # sampled, never taken one by one


def test_a_queue_follows_a_recorded_order_across_inputs_and_gives_it_up_when_its_head_never_comes() -> None:
    """A restored merging actor's inputs hand out the replay in its predecessor's order (runtime/dataplane/lineage.py)."""
    from coupler.runtime.dataplane.lineage import ReplayOrder

    a, b = make_buffer("a", Queue(4)), make_buffer("b", Queue(4))
    order = ReplayOrder([("a", "p", 1), ("b", "q", 0), ("a", "p", 0)])
    a.follow(order, wait=30)
    b.follow(order, wait=30)
    a.put([msg(0, "p"), msg(1, "p")])
    assert not b.has_message()  # b holds nothing yet
    assert a.get(0).seq == 1  # the order's head, although 0 came first
    with pytest.raises(ChannelTimeout):
        a.get(0)  # the head is b's now
    b.put([msg(0, "q")])
    assert b.get(0).seq == 0
    assert a.get(0).seq == 0  # the order is done: FIFO again
    c = make_buffer("c", Queue(4))
    c.follow(ReplayOrder([("c", "p", 7)]), wait=0.2)
    c.put([msg(3, "p")])
    with pytest.raises(ChannelTimeout):
        c.get(0)  # waiting for take 7
    assert c.get(1.0).seq == 3  # 7 never came: after 0.2 s the order is given up


@pytest.mark.parametrize("policy", [Queue(8), Latest(), Reservoir(4, seed=0), Window(4, seed=0)])
def test_a_dropped_buffer_lets_go_of_its_messages_at_once_without_the_cycle_collector(policy: Any) -> None:
    # A Queue buffer was in a cycle with its credit ledger (a bound method): dropped by its
    # consumer's detach with messages in it, it kept their shared-memory mappings and descriptors
    # until a full collection (an outside attack: +32 MiB of /dev/shm per consumer cycle).
    buf = make_buffer("c", policy)
    held = np.arange(16.0)
    buf.put([Message(data={"x": held}, seq=i, source="p") for i in range(3)])
    data, mine = weakref.ref(buf), weakref.ref(held)
    del held
    gc.disable()
    try:
        buf.detach()
        del buf
        assert data() is None, "the buffer outlived its last reference (a reference cycle)"
        if not isinstance(policy, (Reservoir, Window)):  # those copy what they keep
            assert mine() is None
    finally:
        gc.enable()

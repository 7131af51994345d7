"""A :class:`Cancel` wakes waits on conditions at once (runtime/dataplane/cancel.py).

The waits it serves have no timeout of their own, so a lost wake-up would hang
an actor's stop for good: each case below would hang (and fail on the join's
limit) if ``set`` could slip between a waiter's look at the flag and its wait.
"""

from __future__ import annotations

import threading
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from coupler.runtime.dataplane.cancel import Cancel, waking

LIVENESS = 10.0  # seconds: a bound on a hang, not a timing target (a wake-up takes microseconds)


def _waiter(cancel: Cancel, cond: threading.Condition, seen: list[bool], pause: float) -> None:
    with cond, waking(cancel, cond):
        time.sleep(pause)  # between registering and looking at the flag: a set() here must still wake us
        while not cancel.is_set():
            cond.wait()  # no timeout: only the cancel ends it
    seen.append(True)


@settings(max_examples=40, deadline=None)
@given(before=st.floats(0, 0.003), inside=st.floats(0, 0.003), waiters=st.integers(1, 3))
def test_a_set_at_any_moment_wakes_every_waiter(before: float, inside: float, waiters: int) -> None:
    cancel, cond, seen = Cancel(), threading.Condition(), []
    threads = [threading.Thread(target=_waiter, args=(cancel, cond, seen, inside)) for _ in range(waiters)]
    for t in threads:
        t.start()
    time.sleep(before)
    cancel.set()
    for t in threads:
        t.join(LIVENESS)
    assert not any(t.is_alive() for t in threads), "a waiter missed the cancel"
    assert seen == [True] * waiters


def test_waiters_on_two_conditions_and_a_callback_are_all_woken_once() -> None:
    cancel = Cancel()
    conds = [threading.Condition(), threading.Condition()]
    seen: list[bool] = []
    threads = [threading.Thread(target=_waiter, args=(cancel, c, seen, 0.0)) for c in conds]
    calls: list[int] = []
    with cancel.calling(lambda: calls.append(1)):
        for t in threads:
            t.start()
        time.sleep(0.05)
        assert not seen  # nobody wakes before the set
        cancel.set()
        for t in threads:
            t.join(LIVENESS)
    assert seen == [True, True] and calls == [1]
    cancel.set()  # after the block, nothing registered is called again
    assert calls == [1] and cancel.is_set() and cancel.wait(0)


def test_no_cancel_means_a_plain_block() -> None:
    cond = threading.Condition()
    with cond, waking(None, cond):
        assert not cond.wait(0.001)

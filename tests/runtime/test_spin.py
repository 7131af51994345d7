"""Spin, then sleep (runtime/dataplane/spin.py): who spins, for how long, and that a spin never outlasts its turn.

The policy is pure and checked against its rule over any run of waits; the
reader role's spinning is driven over a real socket pair with spins far longer
than the test's events, so that what ends each wait is the event, never the
clock running out on a loaded machine.
"""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coupler.runtime.dataplane.read_role import Outcome
from coupler.runtime.dataplane.settings import transport_config
from coupler.runtime.dataplane.spin import SPIN_MAX_BYTES, SpinPolicy, SpinSlots, process_slots

from tests.runtime.test_read_role import Stream

LONG = 30.0  # a spin that only the event under test can end


@given(
    spin_s=st.sampled_from([0.0, 50e-6, 500e-6, 0.01]),
    waits=st.lists(st.one_of(st.floats(0.0, 0.02), st.sampled_from([0.0, 50e-6, 500e-6, 0.01])), max_size=30),
)
def test_a_wait_spins_exactly_when_the_last_wait_was_no_longer_than_the_spin(spin_s: float, waits: list[float]) -> None:
    policy = SpinPolicy(spin_s)
    assert policy.budget() == spin_s  # a new stream's first wait may spin
    last = 0.0
    for w in waits:
        budget = policy.budget()
        assert budget == (spin_s if last <= spin_s else 0.0)
        policy.waited(w, spun=budget > 0, caught=budget > 0 and w < budget)
        last = w
    assert policy.caught <= policy.spins <= len(waits)


@given(n=st.integers(1, 4), ops=st.lists(st.booleans(), max_size=40))
def test_no_more_threads_spin_at_once_than_the_slots_allow(n: int, ops: list[bool]) -> None:
    slots, held = SpinSlots(n), 0
    for take in ops:  # True: a consumer starts a wait; False: one that holds a slot stops spinning
        if take:
            got = slots.take()
            assert got == (held < n)
            held += got
        elif held:
            slots.give_back()
            held -= 1
        else:
            with pytest.raises(RuntimeError, match="nobody took"):
                slots.give_back()
        assert slots.taken == held <= n


def test_a_process_lets_half_its_cpus_spin_and_at_least_one() -> None:
    import os

    assert process_slots().n == max(1, len(os.sched_getaffinity(0)) // 2)
    with pytest.raises(ValueError, match="at least one"):
        SpinSlots(0)


@pytest.mark.parametrize("nbytes", [0, 4096, SPIN_MAX_BYTES, SPIN_MAX_BYTES + 1, 16 << 20])
def test_streams_of_large_messages_never_spin(nbytes: int) -> None:
    policy = SpinPolicy.for_messages(nbytes, 500e-6)
    assert policy.budget() == (500e-6 if nbytes <= SPIN_MAX_BYTES else 0.0)


@pytest.mark.parametrize("spin_s", [-1e-6, float("nan")])
def test_a_spin_that_is_not_a_duration_is_refused(spin_s: float) -> None:
    with pytest.raises(ValueError, match="duration >= 0"):
        SpinPolicy(spin_s)


def test_the_spin_settings_are_durations_read_from_the_config() -> None:
    import dask

    assert transport_config().spin_s == pytest.approx(500e-6)  # coupler.yaml's default
    with dask.config.set({"coupler.transport.spin": "150us"}):
        assert transport_config().spin_s == pytest.approx(150e-6)
    with dask.config.set({"coupler.transport.spin": 0}):
        assert transport_config().spin_s == 0.0
    for bad in ("soon", -1):
        with dask.config.set({"coupler.transport.spin": bad}), pytest.raises(ValueError, match="coupler.transport.spin"):
            transport_config()


def test_a_frame_that_comes_while_the_consumer_spins_is_read_by_it_without_sleeping() -> None:
    s = Stream(spin=SpinPolicy(LONG))
    try:
        for i in range(5):
            s.when_consumer_reads(s.send, i)
            assert s.role.consumer_turn(time.monotonic() + LONG) is Outcome.READ
        assert s.handled == [("consumer", i) for i in range(5)]
        assert s.role.spin.spins == s.role.spin.caught >= 1  # waits that found the frame there spun not at all
    finally:
        s.close()


def test_a_spin_ends_at_the_turn_s_deadline() -> None:
    s = Stream(spin=SpinPolicy(LONG))
    try:
        t0 = time.monotonic()
        assert s.role.consumer_turn(t0 + 0.05) is Outcome.TIMEOUT
        assert time.monotonic() - t0 < LONG / 2
        assert s.role.spin.spins == 1 and s.role.spin.caught == 0
    finally:
        s.close()


def test_a_wake_from_another_thread_ends_a_spin() -> None:
    s = Stream(spin=SpinPolicy(LONG))
    try:
        s.when_consumer_reads(s.role.wake_consumer)
        t0 = time.monotonic()
        assert s.role.consumer_turn(None) is Outcome.WOKEN
        assert time.monotonic() - t0 < LONG / 2
        assert s.role.spin.caught == 1
    finally:
        s.close()


def test_after_a_wait_longer_than_the_spin_the_next_wait_sleeps_at_once() -> None:
    s = Stream(spin=SpinPolicy(0.001))
    try:
        s.role.spin.last_wait = 0.002  # as after a long wait
        t0 = time.monotonic()
        assert s.role.consumer_turn(t0 + 0.05) is Outcome.TIMEOUT
        assert s.role.spin.spins == 0
        # That wait was long: the next does not spin either, and a frame still reaches the sleeping consumer.
        s.when_consumer_reads(lambda: (time.sleep(0.01), s.send(0)))
        assert s.role.consumer_turn(time.monotonic() + LONG) is Outcome.READ
        assert s.role.spin.spins == 0 and s.handled == [("consumer", 0)]
    finally:
        s.close()


def test_a_consumer_that_finds_no_free_slot_sleeps_at_once_and_still_gets_its_frame() -> None:
    slots = SpinSlots(1)
    busy, other = Stream(spin=SpinPolicy(LONG), slots=slots), Stream(spin=SpinPolicy(LONG), slots=slots)
    try:
        spinning = threading.Thread(target=busy.role.consumer_turn, args=(time.monotonic() + LONG,), daemon=True)
        spinning.start()  # holds the one slot until its frame comes
        deadline = time.monotonic() + 10
        while slots.taken == 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert slots.taken == 1
        other.when_consumer_reads(other.send, 0)
        assert other.role.consumer_turn(time.monotonic() + LONG) is Outcome.READ
        assert other.role.spin.spins == 0 and other.handled == [("consumer", 0)]
        busy.send(0)
        spinning.join(10)
        assert busy.role.spin.caught == 1 and slots.taken == 0  # its slot is back once it read
    finally:
        busy.close()
        other.close()


class _LoggedSlots(SpinSlots):
    def __init__(self, log: list[str]) -> None:
        super().__init__(1)
        self.log = log

    def take(self) -> bool:
        got = super().take()
        self.log.append("take" if got else "refused")
        return got

    def give_back(self) -> None:
        super().give_back()
        self.log.append("give back")


def test_a_spin_that_runs_out_gives_its_slot_back_before_it_sleeps() -> None:
    log: list[str] = []
    slots = _LoggedSlots(log)
    s = Stream(spin=SpinPolicy(0.01), slots=slots)
    try:
        s.when_consumer_reads(lambda: (time.sleep(1.0), log.append("sent"), s.send(0)))
        assert s.role.consumer_turn(time.monotonic() + LONG) is Outcome.READ
        # The 10 ms spin ran out long before the frame came: the slot went back before the consumer slept.
        assert log == ["take", "give back", "sent"] and slots.taken == 0
        assert s.handled == [("consumer", 0)] and s.role.spin.spins == 1 and s.role.spin.caught == 0
    finally:
        s.close()


def test_a_spinning_consumer_and_the_receiving_thread_never_read_at_once() -> None:
    """Frames sent at random gaps, some while the consumer spins, some while it is away: each once, in order."""
    import numpy as np

    rng = np.random.default_rng(7)
    s = Stream(lease=0.0005, spin=SpinPolicy(0.002))
    n = 300
    gaps = rng.choice([0.0, 0.0001, 0.001, 0.004], size=n)

    def produce() -> None:
        for i in range(n):
            s.send(i)
            time.sleep(gaps[i])

    threading.Thread(target=produce, daemon=True).start()
    try:
        deadline = time.monotonic() + 60
        while len(s.handled) < n and time.monotonic() < deadline:
            s.role.consumer_turn(time.monotonic() + 0.01)
            if rng.random() < 0.3:
                time.sleep(0.003)  # away: the lease ends, the receiving thread reads
        s.wait_handled(n)
        assert [i for _, i in s.handled] == list(range(n))
        assert {who for who, _ in s.handled} == {"consumer", "receiver"}
    finally:
        s.close()

"""The reader role (runtime/dataplane/read_role.py): one reader at a time, nobody left asleep, no livelock.

The state machine is driven by hypothesis through every order of the two
threads' steps and the clock; the threaded layer is driven over a real socket
pair, with the receiving thread running and frames the consumer can and cannot
read without blocking.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from coupler.runtime.dataplane import wire
from coupler.runtime.dataplane.buffers import make_buffer
from coupler.runtime.dataplane.read_role import Holder, Outcome, ReadRole, RoleState, Take
from coupler.runtime.dataplane.spin import SpinPolicy, SpinSlots
from coupler.runtime.errors import Interrupted
from coupler.runtime.message import Message
from coupler.runtime.policies import Queue

LEASE, PARK, PARK_MAX = 0.002, 0.02, 1.0


@pytest.fixture(params=["sleeps", "spins"])
def spin(request: pytest.FixtureRequest) -> SpinPolicy | None:
    """Every threaded test runs with a consumer that sleeps at once and with one that spins first (spin.py)."""
    return None if request.param == "sleeps" else SpinPolicy(0.0005)


class RoleMachine(RuleBasedStateMachine):
    """The two threads' steps in any order against a model of who reads."""

    def __init__(self) -> None:
        super().__init__()
        self.role = RoleState(LEASE, PARK, PARK_MAX)
        self.now = 0.0
        self.asleep_until: float | None = None  # the receiving thread sleeps until then (None: awake)
        self.consumer_holds = False
        self.receiver_reads = False
        self.handed_over = False  # a frame the consumer could not read waits for the receiving thread
        self.ended = False

    @rule(dt=st.sampled_from([0.0, 0.0005, 0.001, 0.003, 0.05, 0.7]))
    def tick(self, dt: float) -> None:
        self.now += dt

    @rule()
    def consumer_takes(self) -> None:
        take = self.role.consumer_take(self.now)
        if self.ended or self.receiver_reads or self.consumer_holds or self.handed_over:
            assert take is Take.REFUSED
        else:
            assert take is not Take.REFUSED
            self.consumer_holds = True

    @precondition(lambda self: self.consumer_holds)
    @rule(how=st.sampled_from(["lease", "hand_over", "ended"]))
    def consumer_gives_back(self, how: str) -> None:
        sleeps_long = self.asleep_until is not None and self.asleep_until > self.now + LEASE + PARK
        wake = self.role.consumer_give_back(self.now, ended=how == "ended", hand_over=how == "hand_over")
        self.consumer_holds = False
        # The receiving thread is woken when it must act now, or when it would sleep long; else a lease costs no wake.
        assert wake == (how != "lease" or sleeps_long)
        if wake:
            self.asleep_until = None
        self.handed_over = self.handed_over or how == "hand_over"
        self.ended = self.ended or how == "ended"

    @precondition(lambda self: not self.receiver_reads)
    @rule()
    def receiver_looks(self) -> None:
        turn = self.role.receiver_turn(self.now)
        self.asleep_until = None if turn.go or turn.end else turn.until
        if self.ended:
            assert turn.end
        elif self.consumer_holds:
            assert not turn.go and self.now < turn.until <= self.now + PARK_MAX  # asleep, for a bounded time
        elif turn.go:
            assert self.role.holder is Holder.RECEIVER
        else:  # leased: asleep for PARK at most (a busy consumer renews its lease at every message)
            assert self.role.holder is Holder.LEASED and turn.until <= self.now + PARK

    @precondition(lambda self: not self.receiver_reads)
    @rule()
    def receiver_begins(self) -> None:
        began = self.role.receiver_begin()
        if began:
            assert not self.consumer_holds and not self.ended
            self.receiver_reads = True

    @precondition(lambda self: self.receiver_reads)
    @rule()
    def receiver_pauses(self) -> None:
        # Part of a frame in the read-ahead: it waits on the socket with the reader released.
        self.role.receiver_pause()
        self.receiver_reads = False

    @precondition(lambda self: self.receiver_reads)
    @rule(ended=st.booleans(), small=st.booleans())
    def receiver_ends(self, ended: bool, small: bool) -> None:
        self.role.receiver_end(ended=ended, small=small)
        self.receiver_reads = False
        self.ended = self.ended or ended
        self.handed_over = not small  # the consumer takes the role again once a frame it could read came

    @invariant()
    def one_reader_at_a_time(self) -> None:
        assert not (self.consumer_holds and self.receiver_reads)
        assert (self.role.holder is Holder.CONSUMER) == self.consumer_holds

    @invariant()
    def the_receiving_thread_gets_the_stream_back(self) -> None:
        # Whenever the consumer does not hold the role, the receiving thread reads once the lease ended,
        # and it is not asleep for longer than PARK after that.
        if not self.consumer_holds and not self.ended and not self.receiver_reads:
            probe = RoleState(LEASE, PARK, PARK_MAX)
            probe.__dict__.update(self.role.__dict__)
            assert probe.receiver_turn(max(self.now, self.role.lease_end)).go
            if self.asleep_until is not None:
                assert self.asleep_until <= max(self.now, self.role.lease_end) + PARK + 1e-9


TestRoleMachine = RoleMachine.TestCase
TestRoleMachine.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)


@settings(max_examples=200, deadline=None)
@given(
    waits=st.lists(st.floats(0.0, 0.9 * PARK), min_size=50, max_size=400),
    gaps=st.lists(st.floats(0.0, 0.9 * LEASE), min_size=1, max_size=20),
)
def test_a_busy_consumer_costs_the_receiving_thread_no_wake_per_message(waits: list[float], gaps: list[float]) -> None:
    """A consumer that takes a message every so often (ping-pong, a steady stream) never wakes the receiving thread.

    Each turn it waits less than PARK for its message and comes back within the
    lease; the receiving thread looks again only when its own sleep ends. The
    role's stated cost (module docstring) is the receiving thread's timed looks,
    at most one per PARK: never a wake from a give-back (counting a busy
    consumer's turns as one long wait made the receiving thread sleep long, and
    then every give-back woke it), nor a look at every lease's end.
    """
    role = RoleState(LEASE, PARK, PARK_MAX)
    now, asleep_until = 0.0, 0.0  # the receiving thread looks at asleep_until (0: now)
    looks = 0

    def receiver_looks_until(t: float) -> None:
        nonlocal asleep_until, looks
        while asleep_until <= t:
            turn = role.receiver_turn(asleep_until)
            looks += 1
            assert not turn.go, "the receiving thread took the role from a consumer that came back within its lease"
            asleep_until = turn.until

    assert role.consumer_take(now) is Take.TAKEN_KICK  # the first take kicks the receiving thread off the socket
    turn = role.receiver_turn(now)  # kicked: it sees the consumer's role and sleeps
    asleep_until = turn.until
    for i, wait in enumerate(waits):
        if i:
            assert role.consumer_take(now) is Take.TAKEN  # within the lease: no kick
        receiver_looks_until(now + wait)
        now += wait
        assert not role.consumer_give_back(now), f"give-back {i} woke the receiving thread"
        gap = gaps[i % len(gaps)]
        receiver_looks_until(now + gap)
        now += gap
    assert looks <= now / PARK + 2, f"{looks} timed looks in {now:.3f} s of a busy consumer"


def test_giving_back_a_role_one_does_not_hold_is_a_bug_that_raises() -> None:
    with pytest.raises(RuntimeError, match="does not hold"):
        RoleState().consumer_give_back(0.0)


# -- the threaded layer over a real socket pair ------------------------------------------------


class OwnedReader(wire.FrameReader):
    """A frame reader that notes every use by a thread whose turn it was not.

    The receiving thread may use it only while the role says it reads
    (``receiver_reading``), the consumer's thread only while it holds the role.
    """

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock, size=64 << 10, payload_limit=lambda kind, h: 1 << 24)
        self.role: ReadRole | None = None
        self.receiver: threading.Thread | None = None
        self.misuses: list[str] = []

    def _check(self, what: str) -> None:
        state = self.role._state  # type: ignore[union-attr]
        if threading.current_thread() is self.receiver:
            if not state.receiver_reading:
                self.misuses.append(f"receiving thread: {what} while it does not read ({state.holder.value})")
        elif state.holder is not Holder.CONSUMER:
            self.misuses.append(f"consumer: {what} without the role ({state.holder.value})")

    def buffered(self) -> wire.Buffered:
        self._check("buffered")
        return super().buffered()

    def fill_nowait(self) -> int:
        self._check("fill_nowait")
        return super().fill_nowait()

    def read(self, deadline: float | None = None) -> tuple[int, dict[str, Any], np.ndarray | None]:
        self._check("read")
        return super().read(deadline)


class Stream:
    """A socket pair, a reader role on one end, its receiving thread running, and who handled which frame."""

    def __init__(
        self, lease: float = LEASE, park_max: float = PARK_MAX, spin: SpinPolicy | None = None, slots: SpinSlots | None = None,
    ) -> None:
        self.producer, consumer_sock = socket.socketpair()
        self.reader = OwnedReader(consumer_sock)
        self.handled: list[tuple[str, int]] = []
        self.role = ReadRole(
            consumer_sock, self.reader, self._handle, lease=lease, park_max=park_max, spin=spin,
            slots=SpinSlots(1) if slots is None else slots,
        )
        self.reader.role = self.role
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.reader.receiver = self.thread
        self.thread.start()

    def _handle(self, kind: int, h: dict[str, Any], payload: Any) -> bool:
        who = "receiver" if threading.current_thread() is self.thread else "consumer"
        self.handled.append((who, h["i"]))
        return kind != wire.BYE

    def _serve(self) -> None:
        try:
            self.role.serve()
        except BaseException as e:  # what ended the stream, in whichever thread it came
            self.error = e

    def send(self, i: int, nbytes: int = 0, kind: int = wire.BATCH) -> None:
        payload = [np.zeros(nbytes, np.uint8)] if nbytes else []
        wire.send_frame(self.producer, kind, {"i": i, **({"len": nbytes} if nbytes else {})}, payload)

    def when_consumer_reads(self, act: Any, *args: Any, timeout: float = 10.0) -> None:
        """Do ``act(*args)`` in another thread once the consumer waits as the reader (or after ``timeout``).

        Done on a timer instead, it came before the consumer's turn under load (18 on 2 cores):
        the receiving thread read the frame, and the turn waited for its deadline.
        """

        def wait_then_act() -> None:
            deadline = time.monotonic() + timeout
            while self.role.consumer_ident is None and time.monotonic() < deadline:
                time.sleep(0.0002)
            act(*args)

        threading.Thread(target=wait_then_act, daemon=True).start()

    def wait_handled(self, n: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.handled) < n:
            assert time.monotonic() < deadline, f"{len(self.handled)} of {n} frames handled: {self.handled}"
            time.sleep(0.001)

    def close(self) -> None:
        self.producer.close()
        self.thread.join(10)
        assert not self.thread.is_alive()
        self.role.close()
        self.reader.sock.close()
        # Every test over a Stream also checks that no thread used the reader out of its turn.
        assert not self.reader.misuses, self.reader.misuses[:5]


def test_a_waiting_consumer_reads_its_frames_itself_and_the_receiving_thread_reads_when_it_is_away(spin: SpinPolicy | None) -> None:
    s = Stream(spin=spin)
    try:
        for i in range(20):
            s.when_consumer_reads(s.send, i)
            assert s.role.consumer_turn(time.monotonic() + 10) is Outcome.READ
        assert s.handled == [("consumer", i) for i in range(20)]
        # The consumer goes away: after its lease the receiving thread reads again.
        time.sleep(LEASE + 0.05)
        s.send(20)
        s.wait_handled(21)
        assert s.handled[-1] == ("receiver", 20)
    finally:
        s.close()
    assert isinstance(s.error, wire.StreamClosed)


def test_a_frame_too_large_to_read_without_blocking_goes_to_the_receiving_thread_and_the_stream_goes_on(spin: SpinPolicy | None) -> None:
    s = Stream(spin=spin)
    try:
        threading.Thread(target=s.send, args=(0, 1 << 20), daemon=True).start()  # larger than the 64 KiB read-ahead
        deadline = time.monotonic() + 10
        while len(s.handled) < 1:  # the consumer keeps asking, as a waiting buffer does: no livelock
            s.role.consumer_turn(deadline)
            assert time.monotonic() < deadline
        assert s.handled == [("receiver", 0)]
        # The next small frame may be the consumer's again.
        threading.Timer(0.01, s.send, (1,)).start()
        while len(s.handled) < 2:  # (a turn taken just after the frame was handled waits for its deadline)
            s.role.consumer_turn(time.monotonic() + 0.05)
        assert s.handled[1][1] == 1
    finally:
        s.close()


def test_a_wake_from_another_thread_and_a_deadline_end_a_consumer_s_wait_on_the_socket(spin: SpinPolicy | None) -> None:
    s = Stream(spin=spin)
    try:
        t0 = time.monotonic()
        assert s.role.consumer_turn(t0 + 0.05) is Outcome.TIMEOUT
        assert 0.04 <= time.monotonic() - t0 < 2
        s.when_consumer_reads(s.role.wake_consumer)
        t0 = time.monotonic()
        assert s.role.consumer_turn(None) is Outcome.WOKEN
        assert time.monotonic() - t0 < 2
        assert s.handled == []
    finally:
        s.close()


def test_the_end_of_the_stream_in_the_consumer_s_turn_ends_the_receiving_thread_not_the_consumer(spin: SpinPolicy | None) -> None:
    s = Stream(spin=spin)
    s.when_consumer_reads(s.producer.close)
    assert s.role.consumer_turn(time.monotonic() + 10) is Outcome.READ  # it returns; the error is not its own
    s.thread.join(10)
    assert not s.thread.is_alive() and isinstance(s.error, wire.StreamClosed)
    assert s.role.consumer_turn(None) is Outcome.REFUSED  # nothing to read any more
    s.role.close()
    s.reader.sock.close()


def test_a_malformed_frame_read_by_the_consumer_closes_the_stream_in_the_receiving_thread(spin: SpinPolicy | None) -> None:
    s = Stream(spin=spin)
    # Sent once the consumer waits on the socket (else the receiving thread may read it first).
    s.when_consumer_reads(s.producer.sendall, b"\x02\x00\x00\x00\x03\xc1\xc1\xc1")  # not msgpack
    assert s.role.consumer_turn(time.monotonic() + 10) is not Outcome.REFUSED
    s.thread.join(10)
    assert not s.thread.is_alive() and s.error is not None and not isinstance(s.error, wire.StreamClosed)
    s.producer.close()
    s.role.close()
    s.reader.sock.close()


def test_frames_from_both_threads_in_turn_arrive_once_each_in_order(spin: SpinPolicy | None) -> None:
    s = Stream(lease=0.0005, spin=spin)
    stop = threading.Event()

    def produce() -> None:
        for i in range(300):
            s.send(i, nbytes=(1 << 17) if i % 37 == 0 else 0)
            if i % 5 == 0:
                time.sleep(0.0005)
        stop.set()

    threading.Thread(target=produce, daemon=True).start()
    try:
        while not (stop.is_set() and len(s.handled) == 300):
            s.role.consumer_turn(time.monotonic() + 0.01)
            if len(s.handled) % 7 == 0:
                time.sleep(0.003)  # away for longer than the lease: the receiving thread reads meanwhile
        assert [i for _, i in s.handled] == list(range(300))
        assert {who for who, _ in s.handled} == {"consumer", "receiver"}
    finally:
        s.close()


def test_a_consumer_reading_its_stream_wakes_for_a_local_put_and_for_its_stop(spin: SpinPolicy | None) -> None:
    """Everything that notifies the buffer also kicks a consumer that waits on its socket."""
    buf = make_buffer("c", Queue(8))
    s = Stream(spin=spin)
    try:
        buf.add_link(1, lambda n, reserved: None, role=s.role)
        local = Message({"x": np.ones(2)}, 0.0, 0, "local", 0, {}, time.time(), 16)
        threading.Timer(0.05, buf.put, ([local],)).start()
        t0 = time.monotonic()
        assert buf.get(10).source == "local"
        assert time.monotonic() - t0 < 5
        threading.Timer(0.05, buf.interrupt).start()
        with pytest.raises(Interrupted):
            buf.get(10)
        assert s.handled == []
    finally:
        buf.remove_link(1)
        s.close()


def test_a_turn_asked_after_the_buffer_changed_returns_at_once_without_reading(spin: SpinPolicy | None) -> None:
    s = Stream(spin=spin)
    try:
        s.send(0)
        time.sleep(0.05)
        assert s.role.consumer_turn(time.monotonic() + 10, stale=lambda: True) is Outcome.WOKEN
    finally:
        s.close()


@pytest.mark.parametrize("seed", range(3))
def test_no_message_put_while_the_consumer_takes_the_role_is_left_waiting(seed: int, spin: SpinPolicy | None) -> None:
    """Messages the receiving thread puts just as the consumer takes the role must not wait for the next frame.

    The producer's last frame has no successor: a consumer that missed its arrival would wait out its timeout.
    """
    rng = np.random.default_rng(seed)
    buf = make_buffer("c", Queue(1024))

    def put(kind: int, h: dict[str, Any], payload: Any) -> bool:
        buf.put([Message({"i": np.int64(h["i"])}, 0.0, h["i"], "p", h["i"], {}, time.time(), 8)])
        return True

    producer, consumer_sock = socket.socketpair()
    reader = wire.FrameReader(consumer_sock, size=64 << 10)
    role = ReadRole(consumer_sock, reader, put, lease=0.0005, spin=spin)
    errors: list[BaseException] = []
    receiver = threading.Thread(target=lambda: _serve_into(role, errors), daemon=True)
    receiver.start()
    buf.add_link(1, lambda n, reserved: None, role=role)
    n = 400
    gaps = rng.choice([0.0, 0.0, 0.0002, 0.001, 0.003], size=n)

    def produce() -> None:
        for i in range(n):
            wire.send_frame(producer, wire.BATCH, {"i": i})
            time.sleep(gaps[i])

    threading.Thread(target=produce, daemon=True).start()
    try:
        got = [int(buf.get(timeout=10).data["i"]) for _ in range(n)]
        assert got == list(range(n))
    finally:
        buf.remove_link(1)
        producer.close()
        receiver.join(10)
        role.close()
        consumer_sock.close()
    assert len(errors) == 1 and isinstance(errors[0], wire.StreamClosed)


def _serve_into(role: ReadRole, errors: list[BaseException]) -> None:
    try:
        role.serve()
    except BaseException as e:
        errors.append(e)


class _RacingRole(ReadRole):
    """A role whose first turn starts only after another thread put a message (the lock was free meanwhile)."""

    def __init__(self, *args: Any, put: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.put, self.outcomes = put, []

    def consumer_turn(self, deadline: float | None, stale: Any = lambda: False) -> Outcome:
        if self.put is not None:
            t = threading.Thread(target=self.put)
            self.put = None
            t.start()
            t.join()
        out = super().consumer_turn(deadline, stale)
        self.outcomes.append(out)
        return out


def test_a_message_put_between_the_consumer_s_look_and_its_turn_ends_the_turn_at_once() -> None:
    buf = make_buffer("c", Queue(8))
    producer, consumer_sock = socket.socketpair()
    reader = wire.FrameReader(consumer_sock, size=64 << 10)
    local = Message({"x": np.ones(2)}, 0.0, 0, "local", 0, {}, time.time(), 16)
    role = _RacingRole(consumer_sock, reader, lambda *a: True, put=lambda: buf.put([local]))
    buf.add_link(1, lambda n, reserved: None, role=role)
    try:
        assert buf.get(timeout=30).source == "local"
        assert role.outcomes == [Outcome.WOKEN]  # not a wait on the socket until the deadline
    finally:
        buf.remove_link(1)
        role.close()
        producer.close()
        consumer_sock.close()


def test_a_frame_that_comes_just_after_the_consumer_left_is_read_by_the_receiving_thread(spin: SpinPolicy | None) -> None:
    """The receiving thread, asleep while the consumer held the role, wakes by itself: no wake is sent."""
    s = Stream(spin=spin)
    try:
        for i in range(10):
            s.when_consumer_reads(s.send, 2 * i)
            assert s.role.consumer_turn(time.monotonic() + 10) is Outcome.READ
            s.send(2 * i + 1)  # the consumer is away now (computing, or finished)
            s.wait_handled(2 * i + 2)
            assert s.handled[-1] == ("receiver", 2 * i + 1)
    finally:
        s.close()


def test_after_a_long_wait_the_consumer_wakes_the_receiving_thread_as_it_leaves(spin: SpinPolicy | None) -> None:
    """The receiving thread sleeps longer the longer the consumer waits; leaving, the consumer wakes it once."""
    s = Stream(park_max=60.0, spin=spin)
    try:
        threading.Timer(3.0, s.send, (0,)).start()  # the receiving thread sleeps ~1.5 s and more meanwhile
        assert s.role.consumer_turn(time.monotonic() + 30) is Outcome.READ
        t0 = time.monotonic()
        s.send(1)
        s.wait_handled(2)
        assert s.handled[-1] == ("receiver", 1)
        # Read at once, not at the end of a sleep as long as the wait was (a second and more).
        assert time.monotonic() - t0 < 1.0
    finally:
        s.close()

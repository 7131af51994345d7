"""The reader role of one stream: the consumer's own thread reads its stream while it waits.

A message that the receiving thread reads and puts into the consumer's buffer
costs a thread wake: the receiver notifies the buffer's condition, and the
consumer's thread, asleep in ``receive``, has to be scheduled and take the GIL
back. On a VM that wake is the largest single cost of a small message's hop
(``docs/concepts.md``, "Threads"). So while a consumer waits on an empty
``Queue`` fed by one stream, its thread takes the stream's *reader role*: it
waits on the socket itself and runs the same frame handling the receiving
thread would (checks, fence, buffer, grants), and the message it waited for
needs no wake at all.

Two threads may read a stream's socket, never at once, and each touches the
frame reader only while it may read. :class:`RoleState`
(sans-IO) says whose turn it is:

- ``RECEIVER``: the receiving thread's. It touches the stream's frame reader
  (looks at its read-ahead, reads a frame) only between
  :meth:`RoleState.receiver_begin` and :meth:`RoleState.receiver_end` or
  :meth:`RoleState.receiver_pause`, and waits for the socket *or* a kick with
  the reader released. (A look at the read-ahead outside that span raced with a
  consumer's read: it could leave a header decoded at a moving offset for the
  consumer to use.)
- ``CONSUMER``: the consumer's thread reads; the receiving thread sleeps. A
  consumer that takes the role from ``RECEIVER`` kicks the receiving thread out
  of its wait on the socket, so that a frame wakes one thread, not two.
- ``LEASED``: the consumer gave the role back on its way out of ``receive``,
  without waking anyone: a wake there would cost the very thread switch the role
  saves. A consumer that comes back within the lease (:data:`LEASE_S`:
  ping-pong, a steady stream) takes the role again at no cost. The receiving
  thread, asleep while the consumer reads, looks again after :data:`PARK_S`,
  or after as long as the consumer has waited in this turn (at most
  :data:`PARK_MAX_S`), and takes the role back if it finds the lease ended. A
  consumer that gives the role back while the receiving thread sleeps for longer
  than :data:`PARK_S` wakes it (once, after a long wait), so a consumer that
  went off to compute leaves its stream unread (credit requests, acknowledgement
  requests, its producer's goodbye) for at most :data:`PARK_S` after the lease.
  The timed sleep is the role's one cost: 50 wakes a second per stream whose
  consumer is busy receiving, fewer than one a second per stream whose consumer
  waits long, against one wake per message without the role.
- A consumer whose last wait was short spins before it sleeps in ``poll``
  (it polls without sleeping for a moment, :mod:`~coupler.runtime.dataplane.spin`):
  the frame it waits for then finds it running, not an idle CPU to wake. Only
  so many consumers of a process spin at once (a slot each, taken without waiting).
- A frame that cannot be read without blocking (one larger than the read-ahead
  buffer, or a malformed one) is handed back to the receiving thread at once,
  and the consumer does not take the role again until the receiving thread has
  read a frame it could have read: a stream of large batches stays with the
  receiving thread, which reads them while the consumer works.
- The end of the stream, seen by either thread, ends the role; the receiving
  thread, which owns the socket, closes it.

:class:`ReadRole` is the thin threaded layer: a condition for the state and the
two kicks (an ``eventfd`` or a pipe each). Lock order: ``ReadRole._cond`` is a
leaf; a consumer takes it under its buffer's lock, never the other way round.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from coupler.runtime.dataplane import wire
from coupler.runtime.dataplane.spin import SLOTS, SpinPolicy, SpinSlots

LEASE_S = 0.002  # seconds the receiving thread leaves the role to a consumer that just gave it back
PARK_S = 0.02  # seconds the receiving thread sleeps while a consumer that just took the role holds it
PARK_MAX_S = 1.0  # ... and at most, however long the consumer has waited


class Holder(Enum):
    """Whose turn it is to read a stream."""

    RECEIVER = "receiver"
    CONSUMER = "consumer"
    LEASED = "leased"  # the consumer's, given back: the receiver's once the lease ends


class Take(Enum):
    """What a consumer's request for the role got."""

    REFUSED = "refused"  # the receiving thread is reading a frame, or the stream ended: wait on the buffer
    TAKEN = "taken"  # the receiving thread was asleep already
    TAKEN_KICK = "taken-kick"  # the receiving thread may be waiting on the socket: kick it


@dataclass(frozen=True)
class Turn:
    """What the receiving thread does next: read (``go``), stop (``end``), or sleep until ``until`` (or a wake)."""

    go: bool = False
    end: bool = False
    until: float = 0.0


class RoleState:
    """Whose turn it is to read one stream (sans-IO: no socket, thread or clock of its own).

    Invariant: the receiving thread reads only between :meth:`receiver_begin`
    and :meth:`receiver_end`, and the consumer holds the role only outside
    them, so at most one thread reads the socket.

    Args:
        lease: seconds a role given back stays the consumer's to retake.
        park: seconds the receiving thread sleeps before it looks again, at first.
        park_max: seconds it sleeps at most (its sleep grows with the consumer's wait).
    """

    def __init__(self, lease: float = LEASE_S, park: float = PARK_S, park_max: float = PARK_MAX_S) -> None:
        self.lease, self.park, self.park_max = lease, park, max(park, park_max)
        self.holder = Holder.RECEIVER
        self.taken_at = 0.0  # when the consumer last took the role (its wait began)
        self.receiver_until = 0.0  # when the sleeping receiving thread looks again
        self.receiver_reading = False
        self.lease_end = 0.0
        self.ended = False
        self.small_frames = True  # the last frame could be read without blocking: worth the consumer's turn
        self.takes = 0  # consumer turns so far: one since the receiving thread's look may have read what it saw

    def consumer_take(self, now: float) -> Take:
        """The consumer, about to wait for a message, asks for the role."""
        if self.ended or self.receiver_reading or self.holder is Holder.CONSUMER or not self.small_frames:
            return Take.REFUSED
        kick = self.holder is Holder.RECEIVER
        # Every take starts a wait, also a busy consumer's next one within its lease: the receiving
        # thread's sleep grows with this wait only. (Counting a busy consumer's takes as one long
        # wait made that sleep long, so that every give-back had to wake it: a wake per message.)
        self.taken_at = now
        self.holder = Holder.CONSUMER
        self.takes += 1
        return Take.TAKEN_KICK if kick else Take.TAKEN

    def consumer_give_back(self, now: float, *, ended: bool = False, hand_over: bool = False) -> bool:
        """The consumer leaves the role; returns whether the receiving thread must be woken now.

        Args:
            now: the clock.
            ended: the consumer saw the stream end (or fail): the receiving thread closes it.
            hand_over: a frame the consumer cannot read without blocking: the receiving thread's at once.

        Raises:
            RuntimeError: if the consumer does not hold the role (a bug in the caller).
        """
        if self.holder is not Holder.CONSUMER:
            raise RuntimeError(f"the consumer gives back a reader role it does not hold ({self.holder.value})")
        if ended:
            self.ended = True
        if hand_over:
            self.small_frames = False
        if ended or hand_over:
            self.holder, self.receiver_until = Holder.RECEIVER, 0.0
            return True
        self.holder, self.lease_end = Holder.LEASED, now + self.lease
        # The receiving thread looks again by itself (see receiver_turn), unless it sleeps long: then wake it.
        if self.receiver_until > self.lease_end + self.park:
            self.receiver_until = 0.0  # it looks at once
            return True
        return False

    def receiver_turn(self, now: float) -> Turn:
        """What the receiving thread does now: read, stop, or sleep while the consumer holds or leases the role."""
        self.receiver_until = 0.0  # awake now
        if self.ended:
            return Turn(end=True)
        if self.holder is Holder.LEASED and now >= self.lease_end:
            self.holder = Holder.RECEIVER
        if self.holder is Holder.RECEIVER:
            return Turn(go=True)
        if self.holder is Holder.LEASED:
            # Not just until the lease ends: a busy consumer renews its lease at every message, and
            # a look at each lease's end cost a wake per LEASE_S (500 a second) instead of per PARK_S.
            until = now + self.park
        else:  # the consumer waits: the longer it has waited, the longer it will (a sleep of its wait so far)
            until = now + min(self.park_max, max(self.park, now - self.taken_at))
        self.receiver_until = until
        return Turn(until=until)

    def receiver_begin(self) -> bool:
        """The receiving thread asks to use the stream's frame reader (to look at its read-ahead, or to read).

        Until :meth:`receiver_end` or :meth:`receiver_pause` only the receiving
        thread touches the reader: a consumer's request is refused meanwhile.
        """
        if self.ended or self.holder is not Holder.RECEIVER:
            return False
        self.receiver_reading = True
        return True

    def receiver_pause(self) -> None:
        """The receiving thread found part of a frame in the read-ahead and waits on the socket, not using the reader."""
        self.receiver_reading = False

    def receiver_end(self, *, ended: bool = False, small: bool = True) -> None:
        """The receiving thread read and handled its frame.

        Args:
            ended: that was the stream's end.
            small: the frame fitted the read-ahead (a consumer could have read it without blocking).
        """
        self.receiver_reading = False
        self.ended = self.ended or ended
        self.small_frames = small


class Kick:
    """A file descriptor that a thread waiting in ``poll`` can be woken through (``eventfd``, else a pipe)."""

    def __init__(self) -> None:
        if hasattr(os, "eventfd"):
            self._r = self._w = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        else:  # pragma: no cover - macOS
            self._r, self._w = os.pipe()
            os.set_blocking(self._r, False)
            os.set_blocking(self._w, False)

    def fileno(self) -> int:
        return self._r

    def set(self) -> None:
        try:
            os.write(self._w, (1).to_bytes(8, "little"))
        except (BlockingIOError, OSError):
            pass  # already set (a full pipe or counter), or closed at the stream's end: nobody waits on it

    def clear(self) -> None:
        try:
            os.read(self._r, 64)
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        os.close(self._r)
        if self._w != self._r:
            os.close(self._w)


class RoleCondition(threading.Condition):
    """A buffer's condition that also wakes a consumer waiting on its stream's socket as the reader.

    Everything that changes a buffer in another thread notifies its condition
    (a local producer's put, a close, a detach, the actor's stop); a consumer
    reading its stream waits in ``poll``, not on the condition, so the
    notification also kicks it. ``reading`` is set under the buffer's lock.
    """

    def __init__(self, lock: Any) -> None:
        super().__init__(lock)
        self.reading: ReadRole | None = None  # the role the consumer holds while it waits on its socket
        self.changes = 0  # notifications so far: a consumer compares it across taking the role

    def notify_all(self) -> None:
        self.changes += 1
        super().notify_all()
        role = self.reading
        if role is not None:
            role.wake_consumer()


class Outcome(Enum):
    """How a consumer's turn with the role ended."""

    REFUSED = "refused"  # not taken: wait on the buffer's condition instead
    READ = "read"  # a frame went into the buffer (or somewhere: look at the buffer again)
    WOKEN = "woken"  # the buffer changed otherwise (a local put, a close, a stop): look at it again
    TIMEOUT = "timeout"  # nothing before the deadline


class ReadRole:
    """The reader role of one stream, between its receiving thread and its consumer's thread.

    Args:
        sock: the stream's socket (plain TCP: a TLS socket's buffered bytes are invisible to ``poll``).
        reader: the stream's frame reader (its read-ahead is shared by whoever holds the role).
        handle: handles one frame, as the receiving thread would; returns False at the stream's end.
        lease: see :data:`LEASE_S`.
        park: see :data:`PARK_S`.
        park_max: see :data:`PARK_MAX_S`.
        spin: how long the consumer's waits spin before they sleep (``None``: never).
        slots: the spin slots it shares with the process's other streams.
    """

    def __init__(
        self,
        sock: Any,
        reader: wire.FrameReader,
        handle: Callable[[int, dict[str, Any], Any], bool],
        lease: float = LEASE_S,
        park: float = PARK_S,
        park_max: float = PARK_MAX_S,
        spin: SpinPolicy | None = None,
        slots: SpinSlots = SLOTS,
    ) -> None:
        self.reader, self.handle = reader, handle
        self.spin = SpinPolicy(0.0) if spin is None else spin
        self.slots = slots
        self._state = RoleState(lease, park, park_max)
        self._cond = threading.Condition(threading.Lock())
        self._receiver_kick, self._consumer_kick = Kick(), Kick()
        self._receiver_poll = select.poll()
        self._receiver_poll.register(sock, select.POLLIN)
        self._receiver_poll.register(self._receiver_kick, select.POLLIN)
        self._consumer_poll = select.poll()
        self._consumer_poll.register(sock, select.POLLIN)
        self._consumer_poll.register(self._consumer_kick, select.POLLIN)
        self.consumer_ident: int | None = None  # the consumer's thread while it holds the role
        self.error: BaseException | None = None  # what ended the stream in the consumer's turn

    # -- the consumer's thread ------------------------------------------------------------
    def wake_consumer(self) -> None:
        """Wake the consumer out of its wait on the socket (its buffer changed in another thread).

        Call with the buffer's lock held: the receiving thread closes the kicks
        only after it has taken this role out of the buffer under that lock.
        """
        if self.consumer_ident is not None and self.consumer_ident != threading.get_ident():
            self._consumer_kick.set()

    def consumer_turn(self, deadline: float | None, stale: Callable[[], bool] = lambda: False) -> Outcome:
        """Wait for one frame as the reader, until ``deadline`` (``time.monotonic()``) or a wake.

        Call without the buffer's lock: the frame's handling puts into the buffer.
        Never raises what the stream does: the receiving thread gets that (:attr:`error`).

        Args:
            deadline: when to stop waiting (``None``: until a frame or a wake).
            stale: whether the buffer changed since the consumer last looked at it.
                Asked once the consumer can be woken (:meth:`wake_consumer`), so a change
                made while the lock was free is never missed: either it shows here
                or its notification wakes the wait.
        """
        with self._cond:
            take = self._state.consumer_take(time.monotonic())
        if take is Take.REFUSED:
            return Outcome.REFUSED
        if take is Take.TAKEN_KICK:
            self._receiver_kick.set()
        self.consumer_ident = threading.get_ident()
        ended = hand_over = False
        outcome = Outcome.READ
        spin, slots = self.spin, self.slots
        started = spin_end = 0.0  # when this turn first had to wait, and until when that wait spins
        spinning = False  # a spin slot is held
        try:
            while True:
                if stale():
                    outcome = Outcome.WOKEN
                    break
                ready = self.reader.buffered()
                if ready is wire.Buffered.UNREADABLE:
                    hand_over = True
                    outcome = Outcome.WOKEN
                    break
                if ready is wire.Buffered.FRAME:
                    ended = not self.handle(*self.reader.read())
                    break
                now = time.monotonic()
                if not started:
                    started = spin_end = now
                    budget = spin.budget()
                    if budget and slots.take():
                        spinning = True
                        spin_end = now + budget if deadline is None else min(now + budget, deadline)
                events: list[tuple[int, int]] = []
                while now < spin_end:  # see spin.py (a kick, too, shows in the poll)
                    events = self._consumer_poll.poll(0)
                    if events:
                        break
                    now = time.monotonic()
                if spinning and now >= spin_end:
                    spinning = False
                    slots.give_back()  # sleeping now: another consumer may spin
                if not events:
                    left = None if deadline is None else max(0, int((deadline - now) * 1000) + 1)
                    events = self._consumer_poll.poll(left)
                    if not events:
                        outcome = Outcome.TIMEOUT
                        break
                if any(fd == self._consumer_kick.fileno() for fd, _ in events):
                    self._consumer_kick.clear()
                    outcome = Outcome.WOKEN
                    break
                self.reader.fill_nowait()
        except BaseException as e:  # the stream's end or a malformed frame: the receiving thread's to handle
            self.error, ended = e, True
        finally:
            if spinning:
                slots.give_back()
            if started:
                end = time.monotonic()
                spin.waited(end - started, spun=spin_end > started, caught=end < spin_end)
            else:
                spin.waited(0.0)  # a frame was there already: no wait at all
            self.consumer_ident = None
            with self._cond:
                wake = self._state.consumer_give_back(time.monotonic(), ended=ended, hand_over=hand_over)
                if wake:
                    self._cond.notify_all()
        return outcome

    # -- the receiving thread --------------------------------------------------------------
    def serve(self) -> None:
        """Read and handle frames in the receiving thread until the stream ends (whoever sees the end).

        Raises:
            what ended the stream: the socket's or the frame checks' errors, in
            whichever thread they came.
        """
        state = self._state
        readable_at = -1  # consumer turns when the socket last said it is readable (-1: not since a read)
        while True:
            with self._cond:
                turn = state.receiver_turn(time.monotonic())
                while not (turn.go or turn.end):
                    self._cond.wait(max(0.0, turn.until - time.monotonic()))
                    turn = state.receiver_turn(time.monotonic())
            if turn.end:
                if self.error is not None:
                    raise self.error
                return
            with self._cond:  # the reader is this thread's alone from here (until it pauses or ends)
                if not state.receiver_begin():
                    continue
                fresh = readable_at == state.takes
            # Wait for the socket only when the read-ahead holds part of a frame that fits it (unless
            # the socket said it is readable and no consumer turn came since); a whole frame is read
            # at once, and one that does not fit (or a malformed one) is read blocking.
            if not fresh and self.reader.buffered() is wire.Buffered.PART:
                with self._cond:
                    state.receiver_pause()
                    takes = state.takes
                events = self._receiver_poll.poll()
                if any(fd == self._receiver_kick.fileno() for fd, _ in events):
                    self._receiver_kick.clear()  # the consumer may hold the role now: look again
                else:
                    readable_at = takes
                continue
            readable_at = -1
            ended = True
            try:
                ended = not self.handle(*self.reader.read())
            finally:
                with self._cond:
                    state.receiver_end(ended=ended, small=self.reader.last_size <= len(self.reader.buf))
            if ended:
                return

    def close(self) -> None:
        """Release the kicks (the receiving thread, once nobody can hold the role any more)."""
        self._receiver_kick.close()
        self._consumer_kick.close()


__all__ = ["Holder", "Kick", "LEASE_S", "PARK_MAX_S", "PARK_S", "Outcome", "ReadRole", "RoleCondition", "RoleState", "Take", "Turn"]

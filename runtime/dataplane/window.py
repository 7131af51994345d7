"""The producer side of one stream as a state machine: credits, the byte window, batching, acknowledgements.

Sans-IO: a :class:`SendWindow` holds what a link has queued, written and not
yet had acknowledged, and its credits, and decides what to write next; it
never touches a socket, a thread or a lock. The link
(:mod:`~coupler.runtime.dataplane.link`) calls it under its lock and does the
I/O; ``tests/runtime/test_send_window.py`` drives it through every
interleaving of sends, writes, grants, acknowledgements and refusals against a
model consumer.

The protocol, from this side:

- **Credits (``Queue``).** The consumer grants slots of its bounded queue; a
  message is admitted only against a credit, so the consumer never holds more
  than it granted. The window asks ahead (``want``) when its credits run low,
  so that a steady stream does not stall at the end of its credit, and gives
  unused credits back (``returning``) when its producer goes idle.
- **Byte window (other policies).** They never refuse, so only the bytes
  queued or unacknowledged are bounded; a lone message always goes.
- **Batches.** Small messages queued meanwhile leave together, up to
  ``batch_bytes``; a large message leaves alone. At most a few batches are
  written and not acknowledged (large ones in shared memory: as credits allow).
- **Acknowledgements** are asked for only where the producer needs them (see
  :meth:`SendWindow.take_batch`); grants carry them for free. A refusal (the
  consumer detached, or the channel closed, or the producer was fenced)
  acknowledges what the consumer accepted of the refused batch; the rest, and
  everything after it, is what a broken stream hands back (:meth:`SendWindow.left`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Any

from coupler.runtime.dataplane.payloads import Item
from coupler.runtime.dataplane.settings import TransportConfig

MAX_INFLIGHT = 2  # batches of small messages written and not yet acknowledged
MAX_INFLIGHT_LARGE = 8  # the same for large messages (each alone in its batch)


class Room(Enum):
    """What :meth:`SendWindow.room` found for a message."""

    TAKEN = "taken"  # a credit (or window room) is the message's now
    ASK = "ask"  # no credit, and a request for more is not written yet: write it, then look again
    FULL = "full"  # wait for grants or acknowledgements


@dataclass
class Batch:
    """Messages written as one frame."""

    items: list[Item]
    nbytes: int
    asked: bool = False  # the batch asked the consumer for an acknowledgement


@dataclass(frozen=True)
class Frame:
    """What the writer writes next: a batch (with a credit request riding along), or a bare request."""

    batch: Batch | None
    want: dict[str, int] | None  # {"n": credits wanted, "ret": credits given back}
    sync: bool  # a bare request that asks for an acknowledgement (a flush waits for one)


class SendWindow:
    """The state of one producer stream (see the module docstring).

    Args:
        queue: the channel is a ``Queue`` (credits); else a byte window.
        maxsize: the Queue's size (how many credits to ask for ahead).
        config: transport settings (batch bytes, window bytes).
    """

    def __init__(self, *, queue: bool, maxsize: int, config: TransportConfig) -> None:
        self.queue, self.config = queue, config
        self.prefetch = max(1, min(256, maxsize // 2))
        self.pending: deque[Item] = deque()  # admitted, not written
        self.inflight: deque[Batch] = deque()  # written, not acknowledged
        self.credits = 0
        self.want = 0  # credits asked for and not granted yet
        self.want_dirty = False  # a request for credits waits to be written
        self.returning = 0  # unused credits to give back with the next request
        self.sync_dirty = False  # a flush waits for acknowledgements nobody asked for yet
        self.queued_bytes = 0
        self.submits = 0  # messages admitted (see idle)
        self._submits_seen = 0
        self.acked = 0  # messages acknowledged
        self.batches = 0
        self.messages = 0

    # -- sending ---------------------------------------------------------------------------------
    def room(self, nbytes: int) -> Room:
        """Take a credit (or window room) for a message of ``nbytes``, if there is one."""
        if self.queue:
            if self.credits < self.prefetch // 2 + 1 and self.want < self.prefetch:
                self.want, self.want_dirty = self.prefetch, True  # ask ahead: no stall at the end of credit
            if self.credits > 0:
                self.credits -= 1
                return Room.TAKEN
            return Room.ASK if self.want_dirty else Room.FULL
        if self.queued_bytes + nbytes <= self.config.window_bytes or not (self.pending or self.inflight):
            return Room.TAKEN
        return Room.FULL

    def reserve(self, nbytes: int) -> None:
        """Count a message whose room was taken (it is queued now, or once prepared)."""
        self.queued_bytes += nbytes
        self.submits += 1

    def unreserve(self, nbytes: int) -> None:
        """A reserved message was not queued after all (its preparation failed): give its room back."""
        self.queued_bytes -= nbytes
        if self.queue:
            self.credits += 1

    def queue_item(self, item: Item) -> None:
        """Queue a reserved message for the writer."""
        self.pending.append(item)

    def ask_sync(self) -> bool:
        """A flush finds everything written and the last batch not asking for an acknowledgement: ask (once).

        Returns:
            Whether the writer must run to write the request.
        """
        if not self.pending and self.inflight and not self.inflight[-1].asked and not self.sync_dirty:
            self.sync_dirty = True
            return True
        return False

    @property
    def drained(self) -> bool:
        """Nothing queued or unacknowledged."""
        return not (self.pending or self.inflight)

    # -- writing ---------------------------------------------------------------------------------
    def next_frame(self) -> Frame | None:
        """What to write next (``None``: nothing; the writer gives up its role)."""
        batch = self.take_batch() if len(self.inflight) < self.inflight_limit() else None
        want = {"n": self.want, "ret": self.returning} if self.want_dirty else None
        self.want_dirty, self.returning = False, 0
        sync, self.sync_dirty = self.sync_dirty and batch is None, False
        if sync and self.inflight:
            self.inflight[-1].asked = True  # the acknowledgement covers it: a flush need not ask again
        if batch is None and want is None and not sync:
            return None
        return Frame(batch, want, sync)

    def inflight_limit(self) -> int:
        """Batches that may be written and not acknowledged before the next one."""
        if not self.pending or not self.pending[0].large:
            return MAX_INFLIGHT
        if self.queue and self.pending[0].segment is not None:
            return 1 << 30  # credits bound them, and grants acknowledge them (see take_batch)
        return MAX_INFLIGHT_LARGE

    def take_batch(self) -> Batch | None:
        """The next batch of pending items, and whether it asks for an acknowledgement.

        Acknowledgements are asked for only where the producer side needs them:
        when it would otherwise stop writing (as many batches in flight as it
        allows, or half the byte window used), for large messages sent from the
        producer's arrays (which it should not hold longer than it must; one in
        shared memory holds none), and by a flush. The consumer's grants carry
        acknowledgements too, for free.
        """
        items: list[Item] = []
        nbytes = 0
        pending = self.pending
        if pending and pending[0].large:
            items.append(pending.popleft())
            nbytes = items[0].nbytes
        else:
            limit = self.config.batch_bytes
            while pending and not pending[0].large and (not items or nbytes + pending[0].nbytes <= limit):
                it = pending.popleft()
                items.append(it)
                nbytes += it.nbytes
        if not items:
            return None
        batch = Batch(items, nbytes)
        self.inflight.append(batch)
        self.batches += 1
        self.messages += len(items)
        if items[0].segment is not None:
            # In shared memory the producer holds none of its arrays, so an ACK per
            # message (a frame and a thread wake on both sides, ~100 us of CPU at
            # 1 MiB) buys nothing: on a Queue channel grants acknowledge it soon
            # enough; otherwise ask before the writer would stop.
            ask = not self.queue and len(self.inflight) >= MAX_INFLIGHT_LARGE - 2
        else:
            ask = items[0].large or len(self.inflight) >= MAX_INFLIGHT
        batch.asked = ask or self.sync_dirty or (not self.queue and 2 * self.queued_bytes > self.config.window_bytes)
        if batch.asked:
            self.sync_dirty = False
        return batch

    # -- what the consumer says ------------------------------------------------------------------
    def granted(self, n: int) -> None:
        """The consumer granted ``n`` more slots."""
        self.credits += n
        self.want = max(0, self.want - n)

    def acknowledged(self, n: int) -> list[Batch]:
        """The oldest ``n`` batches in flight were accepted whole; returns them (their items may be let go)."""
        done = [self.inflight.popleft() for _ in range(n)]
        for batch in done:
            self.queued_bytes -= batch.nbytes
            self.acked += len(batch.items)
        return done

    def refused(self, accepted: int) -> list[Item]:
        """The oldest batch in flight was refused after its first ``accepted`` items; returns those.

        The rest stays in flight, unacknowledged, for :meth:`left` (the stream is over).
        """
        batch = self.inflight.popleft()
        took, rest = batch.items[:accepted], batch.items[accepted:]
        self.queued_bytes -= sum(it.nbytes for it in batch.items)
        self.acked += len(took)
        self.inflight.appendleft(Batch(rest, 0))
        return took

    # -- idle producers and the end ----------------------------------------------------------------
    def return_credits(self) -> None:
        """Give every unused credit back with the next request (the writer must run to write it)."""
        self.returning += self.credits  # += : a return not written yet may be pending
        self.credits, self.want, self.want_dirty = 0, 0, True

    def idle(self) -> bool:
        """Whether nothing was admitted since the last call while credits are held: then return them."""
        active, self._submits_seen = self.submits != self._submits_seen, self.submits
        if active or not self.queue or not self.credits or self.pending:
            return False
        self.return_credits()
        return True

    def left(self) -> list[Item]:
        """Everything not acknowledged, oldest first; the window is empty after."""
        items = [it for b in self.inflight for it in b.items] + list(self.pending)
        self.inflight.clear()
        self.pending.clear()
        return items

    def stats(self) -> dict[str, Any]:
        return {
            "batches": self.batches, "messages": self.messages, "acked": self.acked,
            "pending": len(self.pending), "credits": self.credits,
        }


__all__ = ["Batch", "Frame", "MAX_INFLIGHT", "MAX_INFLIGHT_LARGE", "Room", "SendWindow"]

"""What one producing worker owes one consumer of one channel: its :class:`Outbox`.

An outbox owns, for one (channel, consumer) pair on this worker:

- the **replay log** (``Queue`` channels with retention): every message sent
  to the consumer that its stored checkpoint does not cover yet, to send again
  to its successor after a loss (:class:`ReplayLog`);
- what it is **owed** now: messages to deliver before anything newer, because
  its stream broke, it came back under a new stream (a successor: everything
  in the log again), or it was late for a broadcast;
- the **incarnation** it was last reached at (its stream address), which tells
  a successor from the same consumer;
- whether a **resend** thread is catching it up.

It is sans-IO: the dispatcher (:mod:`~coupler.runtime.dataplane.dispatch`)
does the sending; an outbox only says what to send next and takes note of
what went. Under its lock only its log's lock is ever taken (the log's is a leaf lock).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any

import numpy as np

from coupler.runtime.dataplane.payloads import Item

logger = logging.getLogger(__name__)


class ReplayLog:
    """What one worker sent to one consumer of a ``Queue`` channel since that consumer's last commit.

    The producer side of at-least-once delivery: if the consumer is lost, its
    successor restarts from its last stored checkpoint, and everything it
    received after that checkpoint must come again. The consumer commits the
    sequence numbers its stored checkpoint covers (:meth:`commit`); what they
    cover is forgotten here. What it holds nobody changes: a stream's own items
    (see ``Link``'s ``log``: the link's copies, or a shared-memory segment that
    the consumer maps copy-on-write), or read-only arrays (copies of writable
    ones, for a consumer on the producer's worker), so they can be sent again
    without copying.

    **When it is full.** The log keeps the run of messages that follows the last
    commit, up to ``limit_bytes``. A message that does not fit is not kept, and
    from then on nothing is kept until a commit covers every message that was
    not (the log *heals*): a replay after a loss would have a hole there anyway,
    and what the log keeps is then the part of the stream right after the
    checkpoint, so the successor continues its predecessor's history up to the
    hole. Not keeping is what makes a full log cheap: a message that is not
    kept goes as without retention (its link's copies and segments are reused),
    whereas a log that kept the newest messages would renew ``limit_bytes`` of
    copies at the stream's rate. ``gaps`` (source -> highest sequence number not
    kept) says where the holes are.

    Args:
        channel: channel name (for the warning when the log is full).
        consumer: consumer id.
        limit_bytes: most payload bytes kept (a single message is kept even when larger).
    """

    def __init__(self, channel: str, consumer: str, limit_bytes: int) -> None:
        self.channel, self.consumer, self.limit_bytes = channel, consumer, limit_bytes
        self.items: deque[Item] = deque()
        self.keys: set[tuple[str, int]] = set()  # (source, seq) of the items: each message is kept once
        self.nbytes = 0
        self.committed: dict[str, int] = {}
        self.gaps: dict[str, int] = {}  # source -> highest seq sent and not kept since the log was last whole
        self.forgotten = 0  # messages not kept (the log was full)
        self.lock = threading.Lock()

    @property
    def full(self) -> bool:
        """Whether it has stopped keeping messages until a commit covers its holes (read without the lock: a hint)."""
        return bool(self.gaps)

    def add(self, header: dict[str, Any], leaves: list[np.ndarray], nbytes: int, force: bool = False) -> Item:
        """Keep a message (``leaves`` read-only, see :func:`frozen_leaves`) if it fits; returns its entry.

        Args:
            header: the message's header (its ``source`` and ``seq``).
            leaves: its payload, read-only.
            nbytes: its payload bytes.
            force: keep it even when full (it is the only way it reaches a consumer that is away);
                the oldest messages are then forgotten to make room.
        """
        # A plain list: a DeviceLeaves would keep the message's GPU arrays alive as long as the log.
        item = Item(header, leaves if type(leaves) is list else list(leaves), nbytes, large=False)
        self.keep(item, force)
        return item

    def keep(self, item: Item, force: bool = False) -> bool:
        """Keep a link's item as it is (its leaves are the link's own or read-only, or it lives in a segment).

        A kept item is marked ``logged``, and its segment ``kept`` (not reused,
        not unmapped), until the log lets go of it. A message the log keeps
        already (a replay to a successor goes through the link again) is not
        kept twice: the log would fill up with copies, and report itself full
        on a stream far smaller than its limit. Nor is one a commit covers.

        Args:
            item: the message.
            force: see :meth:`add`.

        Returns:
            Whether it is kept (not: the log is full, see the class docstring).
        """
        key = (item.header["source"], item.header["seq"])
        with self.lock:
            if key in self.keys or key[1] <= self.committed.get(key[0], -1):
                return True  # kept already, or covered by a stored checkpoint: no replay will need it
            if not force and (self.gaps or (self.items and self.nbytes + item.nbytes > self.limit_bytes)):
                self._not_kept(item.header)
                return False
            item.logged = True
            if item.segment is not None:
                item.segment.kept = True
            self.items.append(item)
            self.keys.add(key)
            self.nbytes += item.nbytes
            while self.nbytes > self.limit_bytes and len(self.items) > 1:  # only a forced add goes over
                old = self.items.popleft()
                self.nbytes -= old.nbytes
                self.keys.discard((old.header["source"], old.header["seq"]))
                _let_go(old)
                self._not_kept(old.header)
        return True

    def missed(self, header: dict[str, Any]) -> None:
        """A message was sent that could not be kept (the producer's own arrays went on the wire): a hole."""
        with self.lock:
            self._not_kept(header)

    def _not_kept(self, header: dict[str, Any]) -> None:
        """Note a hole (call with the lock held)."""
        src, seq = header["source"], header["seq"]
        if self.gaps.get(src, -1) < seq:
            self.gaps[src] = seq
        self.forgotten += 1
        if self.forgotten == 1:
            logger.warning(
                "channel %r: more than %d bytes sent to consumer %r since its last commit; delivery goes on, but "
                "until its next checkpoint covers them, later messages are not kept to replay to a successor if it "
                "restarts (raise coupler.delivery.retain-bytes, checkpoint more often with "
                "coupler.supervision.checkpoint-interval, or set coupler.delivery.retain: false if no replay is "
                "wanted)", self.channel, self.limit_bytes, self.consumer,
            )

    def remove(self, item: Item) -> None:
        """Forget ``item`` (its delivery failed before the consumer got it)."""
        with self.lock:
            for i in range(len(self.items) - 1, -1, -1):
                if self.items[i] is item:
                    del self.items[i]
                    self.nbytes -= item.nbytes
                    self.keys.discard((item.header["source"], item.header["seq"]))
                    _let_go(item)
                    return

    def commit(self, marks: dict[str, int]) -> None:
        """Forget every message of source ``s`` with seq <= ``marks[s]``; heal once every hole is covered."""
        with self.lock:
            for src, q in marks.items():
                self.committed[src] = max(self.committed.get(src, -1), q)
            keep: deque[Item] = deque()
            for it in self.items:
                if it.header["seq"] > self.committed.get(it.header["source"], -1):
                    keep.append(it)
                else:
                    _let_go(it)
            self.nbytes = sum(it.nbytes for it in keep)
            self.items = keep
            self.keys = {(it.header["source"], it.header["seq"]) for it in keep}
            if self.gaps and all(self.committed.get(src, -1) >= q for src, q in self.gaps.items()):
                self.gaps.clear()

    def clear(self) -> None:
        """Forget everything (the channel or the consumer is forgotten)."""
        with self.lock:
            for it in self.items:
                _let_go(it)
            self.items.clear()
            self.keys.clear()
            self.nbytes = 0

    def replay(self) -> list[Item]:
        """Every message kept, oldest first (to send again to a successor of the consumer)."""
        with self.lock:
            return list(self.items)


def _let_go(item: Item) -> None:
    """A replay log no longer keeps ``item``: its segment may be reused (once also acknowledged and freed)."""
    item.logged = False
    if item.segment is not None:
        item.segment.kept = False


def _by_seq(log: ReplayLog, others: Any) -> deque[Item]:
    """What ``log`` keeps, and those of ``others`` it does not keep (a full log) and no commit covers.

    Each source's messages go in order of sequence number: a consumer drops a
    message older than one it already took from the same source. (``sorted``
    is stable, and sequence numbers of different sources need no order between them.)
    """
    kept = log.replay()
    with log.lock:
        committed, logged = dict(log.committed), set(log.keys)
    seen: set[int] = set()
    extra = []
    for it in others:
        h = it.header
        # A link's copy of a message the log keeps is that message again (the log has it once).
        if not it.logged and id(it) not in seen and (h["source"], h["seq"]) not in logged and h["seq"] > committed.get(h["source"], -1):
            seen.add(id(it))
            extra.append(it)
    if not extra:
        return deque(kept)
    return deque(sorted(kept + extra, key=lambda it: it.header["seq"]))


class Outbox:
    """What this worker owes one consumer of one channel (see the module docstring).

    Args:
        channel: channel name.
        consumer: consumer id.
        log: its replay log, or ``None`` (not a ``Queue``, or retention is off).
    """

    def __init__(self, channel: str, consumer: str, log: ReplayLog | None) -> None:
        self.channel, self.consumer, self.log = channel, consumer, log
        self.owed: deque[Item] = deque()
        self.stream: str | None = None  # the stream it was last sent to (its incarnation)
        self.resending = False
        self.lock = threading.Lock()

    @property
    def owes(self) -> bool:
        """Whether messages wait to be sent again (read without the lock: a hint, checked again under it)."""
        return bool(self.owed)

    def meet(self, stream: str) -> None:
        """The consumer is reached at ``stream``: a new one (a successor) is owed everything in the log again.

        Cheap when nothing changed (one comparison): every send calls it.
        """
        if self.stream == stream:
            return
        with self.lock:
            before, self.stream = self.stream, stream
            if before is not None and before != stream and self.log is not None:
                self.owed = _by_seq(self.log, self.owed)

    def needs_resend(self, stream: str) -> bool:
        """Whether a resend thread should catch the consumer, reached at ``stream``, up (and none is running).

        Claims the resend: the caller starts the thread, which calls :meth:`resend_ended` at its end.
        """
        with self.lock:
            owed = bool(self.owed) or (
                self.log is not None and self.stream is not None and self.stream != stream and bool(self.log.items)
            )
            if not owed or self.resending:
                return False
            self.resending = True
            return True

    def resend_ended(self) -> bool:
        """The resend thread ends; returns whether more became owed meanwhile (start another)."""
        with self.lock:
            self.resending = False
            return bool(self.owed)

    def head(self) -> Item | None:
        """The oldest owed message, or ``None``."""
        with self.lock:
            return self.owed[0] if self.owed else None

    def sent(self, item: Item) -> None:
        """``item`` (the head) was handed on: it leaves the owed queue (if nobody replaced the queue meanwhile)."""
        with self.lock:
            if self.owed and self.owed[0] is item:
                self.owed.popleft()

    def owe(self, item: Item) -> None:
        """``item`` must reach the consumer after what it is owed already (a broadcast it was late for)."""
        with self.lock:
            self.owed.append(item)

    def owe_all_kept(self) -> None:
        """Owe everything in the log again (a message kept for an absent consumer joined it)."""
        if self.log is not None:
            with self.lock:
                self.owed = _by_seq(self.log, self.owed)

    def adopt(self, items: list[Item]) -> None:
        """A broken or closed stream hands back what the consumer did not accept, oldest first.

        With a log, everything in it is owed again: the log holds these and what
        the consumer accepted since its commit (a consumer drops duplicates),
        except, when it is full, those it did not keep: they are owed too.
        Without a log, they go before anything owed later.
        """
        with self.lock:
            if self.log is not None:
                self.owed = _by_seq(self.log, [*self.owed, *items])
            else:
                self.owed.extendleft(reversed(items))

    def drop_owed(self) -> int:
        """Forget what is owed (the consumer left for good); returns how many messages that was."""
        with self.lock:
            n = len(self.owed)
            self.owed.clear()
            return n

    def commit(self, marks: dict[str, int]) -> bool:
        """The consumer's stored checkpoint covers ``marks``; returns whether the log is empty now."""
        if self.log is None:
            return True
        self.log.commit(marks)
        return not self.log.items

    @property
    def holds(self) -> bool:
        """Whether it keeps anything (owed messages, or a log not empty): a reason to keep the channel's links."""
        return bool(self.owed) or (self.log is not None and bool(self.log.items))

    def clear(self) -> None:
        """Forget everything; the log lets go of the segments it kept."""
        with self.lock:
            self.owed.clear()
        if self.log is not None:
            self.log.clear()


__all__ = ["Outbox", "ReplayLog"]

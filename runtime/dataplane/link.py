"""The producer side of a data stream: one :class:`Link` per (channel, consumer) from a worker.

A link is a TCP connection (TLS when the cluster uses it) straight to the
consumer's worker, opened on the first message and kept for the channel's
life. Every producer on this worker that sends to that consumer shares it.

- **Pipelined and coalesced.** ``submit`` queues the message, and the
  producer's own thread writes it unless another thread holds the writer role;
  that writer writes everything queued meanwhile as one batch (one header, one
  payload with one block per field). Nothing waits for the consumer's reply, so
  small messages stream at socket speed while the latency of a lone message
  stays one write. Order is the queue's order.
- **Credits (Queue channels).** The consumer grants the link slots of its
  bounded queue; a message is queued only against a credit, so the consumer
  never holds more than ``maxsize`` and a full queue makes ``submit`` wait
  (and time out with :class:`ChannelTimeout`, the message not sent), exactly
  like a local put. A producer that queues nothing for a report interval gives
  its credits back (it may be waiting inside a step), so that the queue's other
  producers can use them. Other policies never refuse, so the link only bounds
  the bytes in flight.
- **Same host: shared memory.** When the consumer could map a probe segment at
  connection time, large messages are copied once into a segment of the link's
  :class:`~coupler.runtime.dataplane.shm.Arena` and only a descriptor is sent.
- **Large messages over TCP** are written from the producer's own arrays (no
  copy); ``submit`` returns once they are written if they are writable numpy
  arrays the producer could change afterwards.
- **Nothing lost on a detach.** Messages that a departing consumer did not
  accept (refused, or never acknowledged because its worker died) are handed
  to ``on_orphans``, in order, so that a ``Queue`` channel can deliver them to
  the consumer that takes its place.

Its parts: :mod:`~coupler.runtime.dataplane.dial` opens the stream,
:mod:`~coupler.runtime.dataplane.link_waits` holds its two waits (for room, for acknowledgements),
:mod:`~coupler.runtime.dataplane.staging` makes each message the link's own
(copies, segments), the sans-IO :mod:`~coupler.runtime.dataplane.window` holds
the protocol's state, :func:`write_frame` writes what the window chose (in the
thread that holds the writer role), and :mod:`~coupler.runtime.dataplane.acks`
is the thread that reads the consumer's frames and ends the link.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from coupler.runtime.dataplane import auth, waits, wire
from coupler.runtime.dataplane.acks import AckReader, shutdown_quietly
from coupler.runtime.dataplane.cancel import Cancel
from coupler.runtime.dataplane.waits import WaitKind
from coupler.runtime.dataplane.dial import dial
from coupler.runtime.dataplane.link_waits import take_room, wait_acknowledged
from coupler.runtime.dataplane.payloads import Item
from coupler.runtime.dataplane.settings import TransportConfig
from coupler.runtime.dataplane.staging import Staging
from coupler.runtime.dataplane.window import Frame, SendWindow
from coupler.runtime.errors import ConsumerGone
from coupler.runtime.message import Spec

if TYPE_CHECKING:  # the link only passes its log the items it queues
    from coupler.runtime.dataplane.outbox import ReplayLog

logger = logging.getLogger(__name__)

OrphanFn = Callable[[list[Item]], None]
CommitFn = Callable[[dict[str, int]], None]


class Link:
    """A producer-side stream to one consumer of one channel.

    Args:
        channel: channel name.
        consumer: consumer id.
        stream: the consumer worker's stream address ``host:port``.
        spec: the channel's spec (sent once, in the hello).
        queue: whether the channel is a ``Queue`` (credit flow control).
        maxsize: the Queue's size (sets how many credits to ask for ahead).
        host: this host's key; shared memory is tried when the consumer's matches.
        peer_host: the consumer's host key.
        config: transport settings.
        ssl_context: a client TLS context, or ``None`` for plain TCP.
        on_orphans: gets, in order, the messages the consumer did not accept.
        on_commit: gets the consumer's commits (source -> highest seq its stored
            checkpoint covers), for the producer to stop keeping those messages.
        on_fenced: gets the producers the consumer refused as replaced (source -> the
            epoch refused); their messages are dropped, not handed to ``on_orphans``.
        key: the cluster's stream secret (the consumer's worker refuses a stream without it).
        log: the consumer's replay log (at-least-once retention), or ``None``. Each
            message goes into it as the link queues it, as the link's own item: the
            copy the link makes anyway (small messages, or the shared-memory segment,
            which the consumer then maps copy-on-write) is what the log keeps, so
            retention adds no copy on those paths. A large message over TCP is copied
            once (it would otherwise go out zero-copy from the producer's arrays).
            While the log is full it keeps nothing, and messages go as without it.
        origin: this worker's address (the consumer names it when it refuses a batch of a
            replaced producer instance, see ``fence.py``).

    Raises:
        ConsumerGone: if the consumer cannot be reached or has left.
        ChannelClosed: if the channel is closed.
    """

    def __init__(
        self,
        channel: str,
        consumer: str,
        stream: str,
        spec: Spec,
        *,
        queue: bool,
        maxsize: int,
        host: str,
        peer_host: str,
        config: TransportConfig,
        ssl_context: ssl.SSLContext | None = None,
        on_orphans: OrphanFn | None = None,
        on_commit: CommitFn | None = None,
        on_fenced: Callable[[dict[str, int]], None] | None = None,
        key: auth.StreamKey,
        log: ReplayLog | None = None,
        origin: str = "",
    ) -> None:
        self.channel, self.consumer, self.stream, self.spec = channel, consumer, stream, spec
        self.log = log
        self.queue, self.config, self.on_orphans, self.on_commit = queue, config, on_orphans, on_commit
        self.on_fenced = on_fenced
        self.fenced_sources: dict[str, int] = {}  # producers the consumer refused as replaced (source -> epoch)
        # Held with `with self.lock` (a C-level enter/exit; a Condition's are Python calls, and the
        # lock is taken several times per message); `cond` waits and notifies on the same lock.
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.window = SendWindow(queue=queue, maxsize=maxsize, config=config)  # the protocol's state (sans-IO)
        self.writing = False  # a thread holds the writer role (see pump)
        self.error: Exception | None = None
        self.closing = False
        self.orphan_on_close = True
        self.dead = False
        # Set once the stream is closed and what the consumer did not accept went to on_orphans.
        self.wound_up = threading.Event()
        self.shm_messages = 0
        self.staging = Staging(channel, spec, config, log)  # copies and segments of what is queued
        opened = dial(
            channel, consumer, stream, spec, same_host=config.shared_memory and host == peer_host,
            ssl_context=ssl_context, key=key, origin=origin,
        )
        self.sock, self.reader = opened.sock, opened.reader
        self.staging.shm = opened.shm  # staging decides where large messages go: it alone keeps this
        self.acks = AckReader(self)  # the thread that reads the consumer's frames, and ends the link
        self.acks.thread.start()

    # -- producer threads -----------------------------------------------------------------
    def submit(
        self, header: dict[str, Any], leaves: list[np.ndarray], timeout: float | None = None,
        cancel: Cancel | None = None,
    ) -> None:
        """Queue one message for the consumer.

        Blocks while the consumer's Queue is full (no credit) or, for other
        policies, while too many bytes are in flight; and until a large
        writable payload is on the wire.

        Raises:
            ChannelTimeout: no room within ``timeout`` (nothing was sent).
            Interrupted: ``cancel`` was set while waiting.
            ConsumerGone, ChannelClosed: the link failed (this or an earlier message).
        """
        nbytes = self.spec.nbytes
        deadline = None if timeout is None else time.monotonic() + timeout
        large = nbytes > self.config.inline_max
        # A small message is copied first, outside the lock (a few microseconds,
        # the GIL held), so that it is queued and the writer role claimed under
        # one acquisition: producers that share this link contend for the lock.
        item = None if large else self.staging.small_item(header, leaves, nbytes)
        window = self.window
        with self.lock:
            take_room(self, nbytes, deadline, timeout, cancel)
            window.reserve(nbytes)
            if item is not None:
                if self.log is not None:  # before it is queued: a failed stream hands on what the log holds
                    self.log.keep(item)
                window.queue_item(item)
                claimed = self._claim_writer()
        if item is not None:
            if claimed:
                self._write_loop()
            return
        item = Item(header, leaves, nbytes, large)
        try:
            self.staging.prepare(item)
        except BaseException:
            with self.lock:
                window.unreserve(nbytes)
            raise
        with self.lock:
            # It was prepared without the lock: the link may have failed meanwhile, and
            # then nothing would hand this item on (the caller gets the error instead).
            self.raise_if_failed()
            if self.log is not None:
                if item.written is None:
                    self.log.keep(item)
                else:  # the producer's own arrays go on the wire (the log was full when it was prepared)
                    self.log.missed(item.header)
            window.queue_item(item)
        self.pump()
        if item.written is not None:
            while not item.written.wait(0.05):
                with self.lock:
                    self.raise_if_failed()

    def raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error
        if self.dead or self.closing:
            raise ConsumerGone(f"channel {self.channel!r}: consumer {self.consumer!r} has detached")

    def flush(self, timeout: float | None = None, cancel: Cancel | None = None) -> None:
        """Wait until everything queued was accepted by the consumer.

        Raises:
            ChannelTimeout: not everything was accepted within ``timeout``.
            Interrupted: ``cancel`` was set.
            ConsumerGone: the link failed (or ChannelClosed, if the consumer refused on a close).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with waits.waiting(WaitKind.ACCEPTANCE, self.channel, self.consumer):
            wait_acknowledged(self, deadline, timeout, cancel)
        with self.lock:
            if self.error is not None:
                raise self.error
            w = self.window
            if self.queue and (w.credits or w.want) and not w.pending:
                w.return_credits()  # idle now: other producers of this queue can have the slots
        self.pump()

    def give_back_idle_credits(self) -> bool:
        """Give back the credits of a producer that queued nothing since the last call; whether any went back.

        A producer that waits inside a step (for an answer, say) neither sends nor
        flushes, and would hold slots of the consumer's queue that its other
        producers need: up to the whole queue, since grants may run ahead of use.
        The caller then calls :meth:`wake` (off the event loop: it writes) to tell
        the consumer; a producer that sends again asks for credits anew.
        """
        with self.lock:
            return not (self.dead or self.closing) and self.window.idle()

    def wake(self) -> None:
        """Write what waits to be written (messages, or a credit return), unless another thread is at it."""
        self.pump()

    def close(self, orphan: bool = True) -> None:
        """Stop sending (the consumer left or the channel's route changed); give back what is left.

        Args:
            orphan: hand the messages the consumer did not take to ``on_orphans``.
        """
        with self.lock:
            if self.closing:
                return
            self.closing = True
            self.orphan_on_close = orphan
            self.cond.notify_all()
        # The writer says goodbye; the consumer acknowledges what it accepted and
        # closes; the reader then sees the end and hands back the rest. In a thread
        # of its own: close() runs on the worker's event loop, which must not block.
        threading.Thread(target=self.pump, name="coupler-link-bye", daemon=True).start()

    # -- the link's threads --------------------------------------------------------------------
    def _claim_writer(self) -> bool:
        """Take the writer role if it is free (call with the lock); the caller then runs :meth:`_write_loop`."""
        if self.writing or self.dead:
            return False
        self.writing = True
        return True

    def pump(self) -> None:
        """Write what is pending, as the link's single writer; return at once if another thread is it.

        Producer threads write themselves instead of waking a sender thread: one
        thread switch less per message. Whatever other producers queue while one
        writes goes out in its next batch (that is the coalescing). The writer
        gives up its role under the same lock under which it saw nothing left, so
        no item can be queued without a writer to take it.
        """
        with self.lock:
            claimed = self._claim_writer()
        if claimed:
            self._write_loop()

    def _write_loop(self) -> None:
        """Write until nothing is left to write (the caller holds the writer role)."""
        try:
            while True:
                with self.lock:
                    if self.dead:
                        self.writing = False
                        return
                    bye = self.closing
                    frame = None
                    if not bye:
                        # At most a couple of batches unacknowledged: what is queued
                        # meanwhile waits for an ack and leaves as one batch (the
                        # reader thread writes it). A lone message still leaves at once.
                        frame = self.window.next_frame()
                        if frame is None:
                            self.writing = False
                            self.cond.notify_all()
                            return
                if bye:
                    wire.send_frame(self.sock, wire.BYE, {})
                    with self.lock:
                        self.dead = True  # nothing more may be written; the reader still reads acks
                        self.writing = False
                    return
                assert frame is not None
                self.shm_messages += write_frame(self.sock, self.spec, frame)
        except OSError as e:
            with self.lock:
                self.writing = False
            self.fail(ConsumerGone(f"channel {self.channel!r}: lost the stream to consumer {self.consumer!r} ({e})"))

    def stats(self) -> dict[str, Any]:
        """Counters of this link, for reports and tests."""
        with self.lock:
            return {
                "consumer": self.consumer, "stream": self.stream, "shm": self.staging.shm, **self.window.stats(),
                "shm_messages": self.shm_messages, "ack_frames": self.acks.frames, "recycled": self.staging.recycled,
            }

    def fail(self, error: Exception) -> None:
        with self.lock:
            if self.error is None:
                self.error = error
            self.dead = True
            self.cond.notify_all()
        shutdown_quietly(self.sock)


def write_frame(sock: socket.socket, spec: Spec, frame: Frame) -> bool:
    """Write what the window chose: a batch (a credit request riding along), or a bare request.

    A batch in shared memory goes as its segment's name; over TCP its payload
    follows the header (see ``wire.batch_payload``). Once a zero-copy payload
    is written, its send may return (the producer may change its arrays).

    Returns:
        Whether it was a batch in shared memory.
    """
    batch, want = frame.batch, frame.want
    if batch is None:
        wire.send_frame(sock, wire.WANT, {**(want or {}), "ack": frame.sync})
        return False
    items = batch.items
    first = items[0]
    header: dict[str, Any] = {"c": wire.header_columns([it.header for it in items])}
    if batch.asked:
        header["ack"] = True
    if want is not None:
        header["want"] = want
    if first.segment is not None:
        header.update(seg=first.segment.name, offs=first.offsets)
        if first.segment.kept:
            header["cow"] = True  # the log keeps these bytes: the consumer's writes must stay its own
        wire.send_frame(sock, wire.BATCH, header)
        return True
    offsets, total, bufs = wire.batch_payload(spec, [it.leaves for it in items])  # type: ignore[misc]
    header.update(offs=offsets, len=total)
    wire.send_frame(sock, wire.BATCH, header, bufs)
    for it in items:
        if it.written is not None:
            # The producer may change its arrays from now on. We keep the reference
            # only to resend if this consumer goes away before acknowledging it.
            it.written.set()
    return False


__all__ = ["Link", "write_frame"]

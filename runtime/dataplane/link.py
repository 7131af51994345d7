"""The producer side of a data stream: one :class:`Link` per (channel, consumer) from a worker.

A link is a TCP connection (TLS when the cluster uses it) straight to the
consumer's worker, opened on the first message and kept for the channel's
life. Every producer on this worker that sends to that consumer shares it.

- **Pipelined and coalesced.** ``submit`` only queues the message and wakes
  the link's sender thread, which writes everything queued meanwhile as one
  batch (one header, one payload with one block per field). Nothing waits for
  the consumer's reply, so small messages stream at socket speed while the
  latency of a lone message stays one write. Order is the queue's order.
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
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from coupler.runtime.dataplane import auth, shm
from coupler.runtime.dataplane import waits, wire
from coupler.runtime.dataplane.waits import WaitKind
from coupler.runtime.dataplane.payloads import Item, detach_leaves, frozen_leaves, release_segments
from coupler.runtime.dataplane.settings import TransportConfig
from coupler.runtime.dataplane.window import Batch, Room, SendWindow
from coupler.runtime.errors import ChannelClosed, ChannelTimeout, ConsumerGone, Fenced, Interrupted
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
        key: the cluster's stream secret (the consumer's worker refuses a stream without it).
        log: the consumer's replay log (at-least-once retention), or ``None``. Each
            message goes into it as the link queues it, as the link's own item: the
            copy the link makes anyway (small messages, or the shared-memory segment,
            which the consumer then maps copy-on-write) is what the log keeps, so
            retention adds no copy on those paths. A large message over TCP is copied
            once (it would otherwise go out zero-copy from the producer's arrays).
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
        key: auth.StreamKey,
        log: ReplayLog | None = None,
        origin: str = "",
    ) -> None:
        self.channel, self.consumer, self.stream, self.spec = channel, consumer, stream, spec
        self.log = log
        self.queue, self.config, self.on_orphans, self.on_commit = queue, config, on_orphans, on_commit
        # Held with `with self.lock` (a C-level enter/exit; a Condition's are Python calls, and the
        # lock is taken several times per message); `cond` waits and notifies on the same lock.
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.window = SendWindow(queue=queue, maxsize=maxsize, config=config)  # the protocol's state (sans-IO)
        self.writing = False  # a thread holds the writer role (see _pump)
        self.error: Exception | None = None
        self.closing = False
        self.orphan_on_close = True
        self.dead = False
        # Set once the stream is closed and what the consumer did not accept went to on_orphans.
        self.wound_up = threading.Event()
        self.ack_frames = 0  # ACK frames received (fewer than batches: acknowledgements are asked for sparingly)
        self.shm_messages = 0
        self.recycled = 0  # small messages whose copies went back to the link for reuse
        self.arena = shm.Arena(config.shm_pool_bytes)
        # Per field, arrays of small messages the consumer accepted, for _small_item to reuse.
        self._spare: list[list[np.ndarray]] = [[] for _ in spec.fields]
        self._spare_max = max(16, min(1024, (4 << 20) // max(1, spec.nbytes)))  # about 4 MiB per link
        self.arena_lock = threading.Lock()
        try:
            self.sock = self._connect(stream, ssl_context)
        except OSError as e:  # its worker is gone (or going): the broker will say so
            raise ConsumerGone(f"channel {channel!r}: consumer {consumer!r} at {stream} is unreachable ({e})") from e
        probe = self._probe() if config.shared_memory and host == peer_host and shm.available() else None
        try:
            # Both ends prove that they hold the cluster's secret (auth): the reply is the consumer's, signed.
            hello = {
                "channel": channel, "consumer": consumer, "spec": spec.to_wire(), "probe": probe, "pid": os.getpid(),
                "worker": origin,
            }
            self.reader, reply = auth.open_stream(self.sock, key, hello)
        except (OSError, ValueError) as e:
            self.sock.close()
            raise ConsumerGone(f"channel {channel!r}: consumer {consumer!r} at {stream} is unreachable ({e})") from e
        finally:
            if probe:
                _unlink_quietly(probe)
        status = reply.get("status")
        if status != "OK":
            self.sock.close()
            if status == "closed":
                raise ChannelClosed(f"channel {channel!r} is closed; cannot send")
            if status == "spec":
                raise ConsumerGone(f"channel {channel!r}: consumer {consumer!r} on {stream} refused the stream: {reply.get('reason')}")
            raise ConsumerGone(f"channel {channel!r}: consumer {consumer!r} on {stream} has detached")
        self.shm = bool(reply.get("shm"))
        self._reader = threading.Thread(target=self._read_loop, name=f"coupler-acks-{channel}", daemon=True)
        self._reader.start()

    @staticmethod
    def _connect(stream: str, ssl_context: ssl.SSLContext | None) -> socket.socket:
        host, port = stream.rsplit(":", 1)
        sock = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if ssl_context is not None:
            sock = ssl_context.wrap_socket(sock, server_hostname=None)
        return sock

    @staticmethod
    def _probe() -> str | None:
        """A tiny segment the consumer must be able to map for shared memory to be used."""
        name = f"{shm.PREFIX}{os.getpid()}-{os.urandom(8).hex()}"
        try:
            fd = os.open(os.path.join(shm.SHM_DIR, name), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
            os.ftruncate(fd, shm.HEADER)
            os.close(fd)
        except OSError:
            return None
        return name

    # -- producer threads -----------------------------------------------------------------
    def submit(
        self, header: dict[str, Any], leaves: list[np.ndarray], timeout: float | None = None,
        cancel: threading.Event | None = None,
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
        item = None if large else self._small_item(header, leaves, nbytes)
        window = self.window
        with self.lock:
            self._take_room(nbytes, deadline, timeout, cancel)
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
            self._prepare(item)
        except BaseException:
            with self.lock:
                window.unreserve(nbytes)
            raise
        with self.lock:
            # It was prepared without the lock: the link may have failed meanwhile, and
            # then nothing would hand this item on (the caller gets the error instead).
            self._raise_if_failed()
            if self.log is not None:
                self.log.keep(item)
            window.queue_item(item)
        self._pump()
        if item.written is not None:
            while not item.written.wait(0.05):
                with self.lock:
                    self._raise_if_failed()

    def _take_room(self, nbytes: int, deadline: float | None, timeout: float | None, cancel: threading.Event | None) -> None:
        """Take a credit (``Queue``) or window room for a message of ``nbytes``; wait while there is none.

        Call with the lock held. A wait is noted (see :mod:`~coupler.runtime.dataplane.waits`) only
        once the send blocks.

        Raises:
            ChannelTimeout: no room by ``deadline``.
            Interrupted: ``cancel`` was set.
            ConsumerGone: the link failed (or ChannelClosed).
        """
        outer: Any = False
        window = self.window
        try:
            while True:
                self._raise_if_failed()
                room = window.room(nbytes)
                if room is Room.TAKEN:
                    return
                if room is Room.ASK and not self.writing:
                    self.cond.release()  # write the request for credits, then look again
                    try:
                        self._pump()
                    finally:
                        self.cond.acquire()
                    continue
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    why = "its queue is full: back-pressure" if self.queue else "too many bytes in flight"
                    raise ChannelTimeout(
                        f"channel {self.channel!r}: consumer {self.consumer!r} did not accept the message "
                        f"within the timeout ({why})"
                    )
                if cancel is not None and cancel.is_set():
                    raise Interrupted("send interrupted: the actor is stopping")
                if outer is False:
                    outer = waits.begin(WaitKind.ROOM, self.channel, self.consumer)
                self.cond.wait(0.05 if remaining is None else min(remaining, 0.05))
        finally:
            if outer is not False:
                waits.end(outer)

    def _small_item(self, header: dict[str, Any], leaves: list[Any], nbytes: int) -> Item:
        """A small message's item, its writable leaves copied into arrays this link recycles.

        A fresh copy costs an allocation and a numpy wrapper, and its free happens
        in the acknowledging thread: in place (the GIL held, see ``wire.copy_small``)
        into an array the consumer has already accepted, it is a memcpy. Arrays
        come back in :meth:`_acked`, only from items whose every leaf was copied
        here, so no array anyone else holds is ever written.
        """
        spare = self._spare
        out = []
        for k, a in enumerate(leaves):
            if type(a) is not np.ndarray:
                return Item(header, detach_leaves(leaves), nbytes, False)  # keeps or copies as it must
            flags = a.flags  # once: every .flags builds a new object
            if not flags.writeable or a.dtype.hasobject:
                return Item(header, detach_leaves(leaves), nbytes, False)
            try:  # pop, not test-then-pop: producers that share the link run this concurrently
                b = spare[k].pop() if flags.c_contiguous and a.dtype.isbuiltin == 1 else None
            except IndexError:
                b = None
            if b is None:
                b = wire.copy_small(a)
            else:
                b.data.cast("B")[:] = a.data.cast("B")  # a memcpy; the spec check fixed shape and dtype
            out.append(b)
        return Item(header, out, nbytes, False, None, None, None, True)  # positional (recycled=True): per message

    def _prepare(self, item: Item) -> None:
        """Make the item independent of the producer's arrays (or arrange to wait for the write)."""
        leaves = item.leaves
        assert leaves is not None
        if item.large and self.shm:
            try:
                with self.arena_lock:
                    item.segment, item.offsets, _ = self.arena.reserve([a.nbytes for a in leaves])
                shm.fill(item.segment, item.offsets, leaves)
                item.leaves = None
                return
            except shm.ShmUnavailable as e:
                logger.debug("shared memory unavailable for %s, sending over TCP: %s", self.channel, e)
        if item.large:
            if self.log is not None:
                # Kept for a replay after send returns, when the producer may change its arrays.
                item.leaves = frozen_leaves(leaves)
                return
            # Zero copy: the sender writes from these arrays; wait for that unless
            # nobody can change them (read-only, e.g. JAX's host buffers).
            if any(a.flags.writeable for a in leaves):
                item.written = threading.Event()
            return
        item.leaves = detach_leaves(leaves)

    def _raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error
        if self.dead or self.closing:
            raise ConsumerGone(f"channel {self.channel!r}: consumer {self.consumer!r} has detached")

    def flush(self, timeout: float | None = None, cancel: threading.Event | None = None) -> None:
        """Wait until everything queued was accepted by the consumer.

        Raises:
            ChannelTimeout: not everything was accepted within ``timeout``.
            Interrupted: ``cancel`` was set.
            ConsumerGone: the link failed (or ChannelClosed, if the consumer refused on a close).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with waits.waiting(WaitKind.ACCEPTANCE, self.channel, self.consumer):
            self._wait_acknowledged(deadline, timeout, cancel)
        with self.lock:
            if self.error is not None:
                raise self.error
            w = self.window
            if self.queue and (w.credits or w.want) and not w.pending:
                w.return_credits()  # idle now: other producers of this queue can have the slots
        self._pump()

    def _wait_acknowledged(self, deadline: float | None, timeout: float | None, cancel: threading.Event | None) -> None:
        """Wait until nothing is pending or in flight (or the link failed); asks for the last acknowledgement."""
        while True:
            with self.lock:
                if self.window.drained or self.error is not None or self.dead:
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise ChannelTimeout(f"channel {self.channel!r}: consumer {self.consumer!r} did not take everything within {timeout} s")
                if cancel is not None and cancel.is_set():
                    raise Interrupted("flush interrupted: the actor is stopping")
                # Everything is written, but the last batch did not ask for an acknowledgement: ask now.
                sync = self.window.ask_sync()
                if not sync:
                    self.cond.wait(0.05 if remaining is None else min(remaining, 0.05))
            if sync:
                self._pump()

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
        self._pump()

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
        threading.Thread(target=self._pump, name="coupler-link-bye", daemon=True).start()

    # -- the link's threads --------------------------------------------------------------------
    def _claim_writer(self) -> bool:
        """Take the writer role if it is free (call with the lock); the caller then runs :meth:`_write_loop`."""
        if self.writing or self.dead:
            return False
        self.writing = True
        return True

    def _pump(self) -> None:
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
                if frame.batch is not None:
                    self._write_batch(frame.batch, frame.want)  # the wish for credits rides along
                else:
                    wire.send_frame(self.sock, wire.WANT, {**(frame.want or {}), "ack": frame.sync})
        except OSError as e:
            with self.lock:
                self.writing = False
            self._fail(ConsumerGone(f"channel {self.channel!r}: lost the stream to consumer {self.consumer!r} ({e})"))

    def stats(self) -> dict[str, Any]:
        """Counters of this link, for reports and tests."""
        with self.lock:
            return {
                "consumer": self.consumer, "stream": self.stream, "shm": self.shm, **self.window.stats(),
                "shm_messages": self.shm_messages, "ack_frames": self.ack_frames, "recycled": self.recycled,
            }

    def _write_batch(self, batch: Batch, want: dict[str, int] | None) -> None:
        items = batch.items
        first = items[0]
        self.shm_messages += first.segment is not None
        header: dict[str, Any] = {"c": wire.header_columns([it.header for it in items])}
        if batch.asked:
            header["ack"] = True
        if want is not None:
            header["want"] = want
        if first.segment is not None:
            header.update(seg=first.segment.name, offs=first.offsets)
            if first.segment.kept:
                header["cow"] = True  # the log keeps these bytes: the consumer's writes must stay its own
            wire.send_frame(self.sock, wire.BATCH, header)
            return
        offsets, total, bufs = wire.batch_payload(self.spec, [it.leaves for it in items])  # type: ignore[misc]
        header.update(offs=offsets, len=total)
        wire.send_frame(self.sock, wire.BATCH, header, bufs)
        for it in items:
            if it.written is not None:
                # The producer may change its arrays from now on. We keep the reference
                # only to resend if this consumer goes away before acknowledging it.
                it.written.set()

    def _read_loop(self) -> None:
        try:
            refused = more = False
            while not refused:
                kind, h, _ = self.reader.read()
                if kind == wire.GRANT and "commit" in h and self.on_commit is not None:
                    self.on_commit({str(s): int(q) for s, q in h["commit"].items()})
                with self.lock:
                    window = self.window
                    if kind == wire.GRANT:
                        window.granted(h["n"])
                        if h.get("acked"):
                            self._acked(h["acked"])
                            more = bool(window.pending)
                    elif kind == wire.ACK:
                        self.ack_frames += 1
                        status = h["status"]
                        # The oldest `n` batches: all accepted, but the last if it was refused.
                        self._acked(h["n"] - (status != "OK"))
                        more = bool(window.pending)
                        if status != "OK":
                            release_segments(window.refused(h["accepted"]))
                            if status == "closed":
                                self.error = ChannelClosed(f"channel {self.channel!r} is closed; consumer {self.consumer!r} refused messages")
                            elif status == "fenced":
                                self.error = Fenced(
                                    f"channel {self.channel!r}: consumer {self.consumer!r} refused this worker's messages: the "
                                    f"broker places their producer on another worker (this instance was replaced)"
                                )
                            else:
                                self.error = ConsumerGone(f"channel {self.channel!r}: consumer {self.consumer!r} has detached")
                            self.dead = refused = True
                    self.cond.notify_all()
                if more and not refused:
                    more = False
                    self._pump()
        except (OSError, wire.StreamClosed) as e:
            with self.lock:
                if not self.closing and self.error is None:
                    self.error = ConsumerGone(f"channel {self.channel!r}: lost the stream to consumer {self.consumer!r} ({e})")
                self.dead = True
                self.cond.notify_all()
        except Exception as e:  # a protocol bug: fail loudly rather than hang producers
            logger.exception("coupler link %s -> %s failed", self.channel, self.consumer)
            self._fail(ConsumerGone(f"channel {self.channel!r}: stream to {self.consumer!r} failed: {e!r}"))
        self._finish(orphan=self.orphan_on_close)

    def _acked(self, n: int) -> None:
        """The oldest ``n`` batches in flight were accepted whole (call with the lock)."""
        for batch in self.window.acknowledged(n):
            if batch.items[0].segment is not None:
                release_segments(batch.items)
            spare = self._spare
            if self.log is not None:
                continue  # the log holds the link's copies: none comes back for reuse
            for it in batch.items:
                if it.recycled and spare and len(spare[0]) < self._spare_max:  # (a spec may have no fields)
                    for k, b in enumerate(it.leaves):  # type: ignore[arg-type]
                        spare[k].append(b)
                    self.recycled += 1

    def _fail(self, error: Exception) -> None:
        with self.lock:
            if self.error is None:
                self.error = error
            self.dead = True
            self.cond.notify_all()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    _finished = False

    def _finish(self, orphan: bool) -> None:
        """Close the socket once; give the messages not accepted to ``on_orphans`` (in order)."""
        with self.lock:
            if self._finished:
                return
            self._finished = True
            left = self.window.left()
            self.dead = True
            self.cond.notify_all()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        if left and orphan and self.on_orphans is not None:
            for it in left:
                it.leaves = it.payload_leaves(self.spec)
                if it.segment is not None:
                    it.segment.kept = False  # the (logged) item now holds a copy: the pool may close it
                it.segment = None
                if it.written is not None:
                    it.written.set()
            self.on_orphans(left)
        with self.arena_lock:
            self.arena.close()
        self.wound_up.set()


def _unlink_quietly(name: str) -> None:
    try:
        os.unlink(os.path.join(shm.SHM_DIR, name))
    except FileNotFoundError:
        pass


__all__ = ["Link"]

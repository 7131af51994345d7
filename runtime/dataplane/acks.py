"""The reading half of a producer's stream: :class:`AckReader`, one thread per :class:`~coupler.runtime.dataplane.link.Link`.

A link writes batches; its consumer writes back, on the same socket:

- ``GRANT``: credits of its ``Queue`` (and, riding along, acknowledgements and
  the consumer's commits, which go to the replay log);
- ``ACK``: the oldest batches in flight were accepted; with a status other than
  ``OK``, the last one was refused (partly: ``accepted`` says how much), because
  the channel closed, the consumer detached, or this worker is fenced (the
  broker places the batch's producer elsewhere).

The reader applies each frame to the link's :class:`~coupler.runtime.dataplane.window.SendWindow`
under the link's lock, wakes waiting senders, and writes what became sendable.
When the stream ends (refused, closed, broken) it ends the link
(:meth:`AckReader.finish`): what the consumer did not accept goes to the link's
``on_orphans``, in order -- except the messages of producers refused as
``fenced``. Their instances were replaced, and their successors send those
messages again from their checkpoints: resent from here, they would only be
refused again, through a new stream each time, for as long as the old instance
lived. They are dropped, and ``on_fenced`` names those producers (and the
epoch refused) so that their later sends fail at once.
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Callable, Protocol

from coupler.runtime.dataplane import wire
from coupler.runtime.dataplane.fence import epoch_of
from coupler.runtime.dataplane.payloads import Item, detach_leaves, release_segments
from coupler.runtime.dataplane.staging import Staging
from coupler.runtime.dataplane.window import SendWindow
from coupler.runtime.errors import ChannelClosed, ConsumerGone, Fenced
from coupler.runtime.message import Spec

logger = logging.getLogger(__name__)


class Link(Protocol):
    """What the reader (and ``link_waits``) use of a :class:`~coupler.runtime.dataplane.link.Link` (which imports both)."""

    channel: str
    consumer: str
    spec: Spec
    sock: socket.socket
    reader: wire.FrameReader
    lock: threading.RLock
    cond: threading.Condition
    window: SendWindow
    staging: Staging
    error: Exception | None
    dead: bool
    closing: bool
    orphan_on_close: bool
    wound_up: threading.Event
    on_commit: Callable[[dict[str, int]], None] | None
    on_orphans: Callable[[list[Item]], None] | None
    on_fenced: Callable[[dict[str, int]], None] | None
    fenced_sources: dict[str, int]
    queue: bool
    writing: bool

    def pump(self) -> None: ...

    def raise_if_failed(self) -> None: ...

    def fail(self, error: Exception) -> None: ...


class AckReader:
    """Reads a link's stream back and ends the link (see the module docstring).

    Args:
        link: the link whose socket it reads.
    """

    def __init__(self, link: Link) -> None:
        self.link = link
        self.frames = 0  # ACK frames received (fewer than batches: acknowledgements are asked for sparingly)
        self._finished = False
        self.thread = threading.Thread(target=self.run, name=f"coupler-acks-{link.channel}", daemon=True)

    def run(self) -> None:
        """The thread's body: apply every frame the consumer sends back, until the stream ends; then end the link."""
        link = self.link
        try:
            refused = more = False
            fenced: dict[str, int] = {}
            while not refused:
                kind, h, _ = link.reader.read()
                if kind == wire.GRANT and "commit" in h and link.on_commit is not None:
                    link.on_commit({str(s): int(q) for s, q in h["commit"].items()})
                with link.lock:
                    window = link.window
                    if kind == wire.GRANT:
                        window.granted(h["n"])
                        if h.get("acked"):
                            self._acked(h["acked"])
                            more = bool(window.pending)
                    elif kind == wire.ACK:
                        self.frames += 1
                        status = h["status"]
                        # The oldest `n` batches: all accepted, but the last if it was refused.
                        self._acked(h["n"] - (status != "OK"))
                        more = bool(window.pending)
                        if status != "OK":
                            release_segments(window.refused(h["accepted"]))
                            if status == "closed":
                                link.error = ChannelClosed(f"channel {link.channel!r} is closed; consumer {link.consumer!r} refused messages")
                            elif status == "fenced":
                                # The refused batch's producers were replaced: what they sent is their
                                # successors' to send, never this worker's to resend (see finish).
                                fenced = refused_sources(window.inflight[0].items if window.inflight else [])
                                link.fenced_sources = fenced
                                link.error = Fenced(
                                    f"channel {link.channel!r}: consumer {link.consumer!r} refused this worker's messages: the "
                                    f"broker places their producer on another worker (this instance was replaced)"
                                )
                            else:
                                link.error = ConsumerGone(f"channel {link.channel!r}: consumer {link.consumer!r} has detached")
                            link.dead = refused = True
                    link.cond.notify_all()
                if fenced and link.on_fenced is not None:
                    link.on_fenced(fenced)
                if more and not refused:
                    more = False
                    link.pump()
        except (OSError, wire.StreamClosed) as e:
            with link.lock:
                if not link.closing and link.error is None:
                    link.error = ConsumerGone(f"channel {link.channel!r}: lost the stream to consumer {link.consumer!r} ({e})")
                link.dead = True
                link.cond.notify_all()
        except Exception as e:  # a protocol bug: fail loudly rather than hang producers
            logger.exception("coupler link %s -> %s failed", link.channel, link.consumer)
            link.fail(ConsumerGone(f"channel {link.channel!r}: stream to {link.consumer!r} failed: {e!r}"))
        self.finish(orphan=link.orphan_on_close)

    def _acked(self, n: int) -> None:
        """The oldest ``n`` batches in flight were accepted whole (call with the link's lock)."""
        for batch in self.link.window.acknowledged(n):
            self.link.staging.recycle(batch.items)

    def finish(self, orphan: bool) -> None:
        """End the link once: close its socket; give the messages not accepted to ``on_orphans`` (in order).

        A send that waits for its zero-copy write is released (it then sees the failure).
        """
        link = self.link
        with link.lock:
            if self._finished:
                return
            self._finished = True
            left = link.window.left()
            link.dead = True
            link.cond.notify_all()
        shutdown_quietly(link.sock)
        link.sock.close()
        if link.fenced_sources:  # a replaced producer's messages: dropped (the module docstring says why)
            dropped = [it for it in left if it.header["source"] in link.fenced_sources]
            left = [it for it in left if it.header["source"] not in link.fenced_sources]
            for it in dropped:
                if it.written is not None:
                    it.written.set()
            release_segments(dropped)
        handing_on = bool(left and orphan and link.on_orphans is not None)
        for it in left:
            if it.written is not None and not it.written.is_set():
                if handing_on:  # the producer's own arrays, which it may change once its send returns
                    it.leaves = detach_leaves(it.leaves)
                it.written.set()  # its send waits for this, written or not (it then sees the failure)
        if handing_on:
            for it in left:
                it.leaves = it.payload_leaves(link.spec)
                if it.segment is not None:
                    it.segment.kept = False  # the (logged) item now holds a copy: the pool may close it
                it.segment = None
            link.on_orphans(left)
        link.staging.close()
        link.wound_up.set()


def refused_sources(items: list[Item]) -> dict[str, int]:
    """The producers of a batch refused as ``fenced``, with the highest epoch of theirs it held (0: a first instance)."""
    out: dict[str, int] = {}
    for it in items:
        src = it.header["source"]
        out[src] = max(out.get(src, 0), epoch_of(it.header["meta"]))
    return out


def shutdown_quietly(sock: socket.socket) -> None:
    """Shut a stream's socket down both ways (wakes a thread blocked reading it); already shut is fine."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


__all__ = ["AckReader", "shutdown_quietly"]

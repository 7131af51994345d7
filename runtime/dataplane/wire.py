"""Framing of coupler's data streams: small msgpack headers, raw payload bytes.

A frame is ``kind`` (1 byte) and header length (4 bytes, big endian), the
msgpack header, then ``header["len"]`` payload bytes if the header has one.
Payloads are read straight into a numpy buffer (``recv_into``) that the
consumer then owns (large ones recycled once it lets go: :class:`PayloadPool`),
and written from the producer's own arrays.

A batch of ``n`` messages of one channel lays each field out as one block of
``n`` contiguous arrays (64-byte aligned), so a batch of small messages costs
one header and one payload however many messages it holds, and message ``i``'s
field is a view ``block[i]``. The messages' headers travel as columns too
(:func:`header_columns`).

A stream opens with a handshake (``CHALLENGE``, ``HELLO``, ``WELCOME``; see
:mod:`coupler.runtime.dataplane.auth`). The receiving side trusts no size the sender
states: it derives each batch's layout from the channel's spec
as the consumer's worker knows it (:class:`BatchChecker`) and refuses any
other before a byte of payload is allocated.
"""

from __future__ import annotations

import socket
import ssl
import struct
import threading
import time
import weakref
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, Iterable

import msgpack
import numpy as np

from coupler.runtime.message import Spec
from coupler.runtime.dataplane.shm import layout

# producer -> consumer
HELLO, BATCH, WANT, BYE = 1, 2, 3, 4
# consumer -> producer
CHALLENGE, WELCOME, ACK, GRANT = 10, 11, 12, 13

_PREFIX = struct.Struct("!BI")
_PAD = bytes(64)


class StreamClosed(ConnectionError):
    """The peer closed the stream."""


_packers = threading.local()


def pack(kind: int, header: dict[str, Any]) -> bytes:
    """One frame's prefix and header.

    Each thread keeps its ``msgpack.Packer``: ``msgpack.packb`` makes a new one
    per call, whose buffer (hundreds of KiB) is a fresh ``mmap`` in a Dask
    worker -- the Nanny sets ``MALLOC_TRIM_THRESHOLD_``, which stops glibc from
    raising its mmap threshold -- and that costs ~20 us per header, ten times
    the packing.
    """
    packer = getattr(_packers, "packer", None)
    if packer is None:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True)
    h = packer.pack(header)
    return _PREFIX.pack(kind, len(h)) + h


_SMALL = 64 << 10  # TLS frames up to this size are joined and written with one call
GIL_COPY_MAX = 64 << 10  # arrays up to this size are copied without releasing the GIL (see copy_small)
_IOV_MAX = 512  # buffers per sendmsg call (the kernel allows 1024)


def copy_small(a: np.ndarray) -> np.ndarray:
    """A writable copy of a small array, made without releasing the GIL.

    numpy releases the GIL for copies of more than a few hundred elements. For a
    few kilobytes that is a loss: another thread of the process (a receiver, an
    acknowledgement reader) takes the GIL meanwhile, and getting it back costs a
    thread switch, many times the copy itself. A memoryview assignment copies
    under the GIL.

    The copy owns its memory (``np.empty``), where one over a ``bytearray`` would
    hang on a memoryview: two more objects for the garbage collector to walk
    while a replay log keeps the copy (a kept 4 KiB copy took 5.3 us that way,
    3.3 us this way, measured).
    """
    out = np.empty(a.shape, a.dtype)
    _bytes_of(out)[:] = _bytes_of(a)
    return out


def _bytes_of(a: np.ndarray) -> memoryview:
    """The bytes of an array, C order, as a flat view (a copy only if ``a`` is not C-contiguous).

    Through a uint8 view where needed, so that dtypes the buffer protocol does not know (bfloat16) pass too.
    """
    if a.flags.c_contiguous and a.dtype.isbuiltin == 1 and a.size:  # (memoryview cannot cast an empty shape)
        return a.data.cast("B")  # the common case, in two calls (a hot path)
    return memoryview(np.ascontiguousarray(a).reshape(-1).view(np.uint8))


def send_frame(sock: socket.socket, kind: int, header: dict[str, Any], payload: list[Any] = ()) -> None:  # type: ignore[assignment]
    """Write a frame; ``payload`` buffers follow the header, ``header["len"]`` bytes in all.

    Every system call releases and retakes the GIL, which costs more than the
    call under contention, so a frame goes out in as few ``sendmsg`` calls
    (scatter/gather, usually one) as its buffers allow.
    """
    head = pack(kind, header)
    if not payload:
        sock.sendall(head)
        return
    bufs = [memoryview(head), *(m for m in (memoryview(b).cast("B") for b in payload) if len(m))]
    if isinstance(sock, ssl.SSLSocket):  # no sendmsg: TLS encrypts what it is given, buffer by buffer
        if header.get("len", 0) <= _SMALL:
            sock.sendall(b"".join(bufs))
        else:
            for b in bufs:
                sock.sendall(b)
        return
    # Gathered, not joined: no copy, and no allocation (a join of tens of KiB is
    # itself costly in a worker, see pack()).
    i = 0
    while i < len(bufs):
        sent = sock.sendmsg(bufs[i : i + _IOV_MAX])
        while i < len(bufs) and sent >= len(bufs[i]):
            sent -= len(bufs[i])
            i += 1
        if sent:
            bufs[i] = bufs[i][sent:]


class Buffered(Enum):
    """What a :class:`FrameReader` holds read ahead (see :meth:`FrameReader.buffered`)."""

    FRAME = "frame"  # a whole frame: ``read`` returns it without touching the socket
    PART = "part"  # part of a frame that fits the read-ahead buffer (or nothing)
    UNREADABLE = "unreadable"  # a frame too large for the buffer, or a malformed one: only a blocking ``read`` takes it


class FrameReader:
    """Reads frames from a socket through a buffer, so that small frames cost one system call for many.

    A peer states the sizes of what follows; they are checked before anything
    is allocated, so a broken or hostile peer cannot make the reader take
    gigabytes: a header must fit the read-ahead buffer, and a payload must not
    exceed ``payload_limit(kind, header)`` (no payload at all without one),
    which sees every header first and may refuse it by raising.

    Args:
        sock: a connected socket.
        size: bytes read ahead at most (also the largest header).
        payload_limit: the largest payload a frame may carry, from its kind and header.
    """

    def __init__(
        self, sock: socket.socket, size: int = 256 << 10, payload_limit: Callable[[int, dict[str, Any]], int] | None = None
    ) -> None:
        self.sock = sock
        self.payload_limit = payload_limit
        self.buf = bytearray(size)
        self.view = memoryview(self.buf)
        self.start = self.end = 0
        self.deadline: float | None = None
        self._peeked: tuple[int, Any] | None = None  # (offset, header) decoded by buffered(), for read()
        self.last_size = 0  # bytes of the last frame read

    def _fill(self, n: int) -> None:
        """Make at least ``n`` bytes available from ``start`` (n <= buffer size)."""
        if self.start + n > len(self.buf):  # move the tail to the front
            k = self.end - self.start
            self.buf[:k] = self.buf[self.start : self.end]
            self.start, self.end = 0, k
        while self.end - self.start < n:
            if self.deadline is not None:  # a handshake: the whole frame within the deadline, not each read
                left = self.deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("the peer did not send its frame in time")
                self.sock.settimeout(left)
            got = self.sock.recv_into(self.view[self.end :])
            if got == 0:
                raise StreamClosed("the peer closed the stream")
            self.end += got

    def buffered(self) -> Buffered:
        """Whether the read-ahead holds a whole frame, part of one, or one it cannot hold (no system call).

        A frame counts as whole only if it fits the read-ahead buffer, so that
        :meth:`read` returns it without blocking. The header is decoded once:
        :meth:`read` uses this decoding. Nothing here is checked or trusted;
        :meth:`read` does that.
        """
        have, p = self.end - self.start, _PREFIX.size
        if have < p:
            return Buffered.PART
        _, hlen = _PREFIX.unpack_from(self.buf, self.start)
        if p + hlen > len(self.buf):
            return Buffered.UNREADABLE
        if have < p + hlen:
            return Buffered.PART
        if self._peeked is None or self._peeked[0] != self.start:
            try:
                header = msgpack.unpackb(self.view[self.start + p : self.start + p + hlen], raw=False)
            except Exception:  # malformed: read() raises it, in the thread that closes the stream
                return Buffered.UNREADABLE
            self._peeked = (self.start, header)
        header = self._peeked[1]
        n = header.get("len", 0) if isinstance(header, dict) else 0
        if type(n) is not int or n < 0 or p + hlen + n > len(self.buf):
            return Buffered.UNREADABLE
        return Buffered.FRAME if have >= p + hlen + n else Buffered.PART

    def fill_nowait(self) -> int:
        """Read what the socket holds into the read-ahead, without waiting; returns the bytes read.

        Raises:
            StreamClosed: if the peer closed the stream.
            OSError: if the socket failed.
        """
        if self.end == len(self.buf) and self.start:  # move the tail to the front
            k = self.end - self.start
            self.buf[:k] = self.buf[self.start : self.end]
            self.start, self.end = 0, k
            self._peeked = None
        try:
            got = self.sock.recv_into(self.view[self.end :], 0, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return 0
        if got == 0:
            raise StreamClosed("the peer closed the stream")
        self.end += got
        return got

    def _take(self, n: int) -> memoryview:
        self._fill(n)
        v = self.view[self.start : self.start + n]
        self.start += n
        return v

    def read(self, deadline: float | None = None) -> tuple[int, dict[str, Any], np.ndarray | None]:
        """The next frame: ``(kind, header, payload or None)``; the payload is a uint8 array the caller owns.

        Args:
            deadline: ``time.monotonic()`` by which the whole frame must have come
                (handshakes); ``None`` waits as long as it takes.

        Raises:
            StreamClosed: if the peer closed the stream.
            TimeoutError: if ``deadline`` passed first.
            ValueError: for a malformed frame or sizes beyond the limits.
        """
        if deadline is None:
            return self._read()
        self.deadline = deadline
        try:
            return self._read()
        finally:
            self.deadline = None
            self.sock.settimeout(None)

    def _read(self) -> tuple[int, dict[str, Any], np.ndarray | None]:
        peeked, self._peeked = self._peeked, None
        at = self.start if self.end - self.start >= _PREFIX.size else -1
        kind, hlen = _PREFIX.unpack(self._take(_PREFIX.size))
        if hlen > len(self.buf):
            raise ValueError(f"frame header of {hlen} bytes; at most {len(self.buf)} expected")
        if peeked is not None and peeked[0] == at:  # decoded by buffered(), in place still
            self.start += hlen
            header = peeked[1]
        else:
            header = msgpack.unpackb(self._take(hlen), raw=False)
        if not isinstance(header, dict):
            raise ValueError(f"frame header must be a map, got {type(header).__name__}")
        # Every frame's header goes through payload_limit (it may check more than sizes) before its payload is read.
        limit = 0 if self.payload_limit is None else self.payload_limit(kind, header)
        n = header.get("len", 0)
        self.last_size = _PREFIX.size + hlen + (n if type(n) is int else 0)
        if not n:
            return kind, header, None
        if not isinstance(n, int) or not 0 < n <= limit:
            raise ValueError(f"frame of kind {kind} announces a payload of {n!r} bytes; at most {limit} expected")
        have = min(n, self.end - self.start)
        if have == n and n <= GIL_COPY_MAX:  # all read ahead already: copy it out under the GIL (see copy_small)
            payload = np.frombuffer(bytearray(self.view[self.start : self.start + n]), np.uint8)
            self.start += n
            return kind, header, payload
        payload = PAYLOADS.take(n)
        payload[:have] = np.frombuffer(self.buf, np.uint8, count=have, offset=self.start)
        self.start += have
        if have < n:  # the rest straight from the socket into the consumer's array
            recv_into_all(self.sock, memoryview(payload)[have:])
        return kind, header, payload


class PayloadPool:
    """Recycles the memory of large received payloads once their consumer lets go.

    A fresh multi-megabyte buffer costs the receiving core a page fault and a
    kernel zero-fill per 4 KiB page, on top of the copy out of the socket: on
    loopback that is a third of the time. Payloads of at least ``min_bytes``
    therefore live in pooled ``bytearray`` blocks; the array handed out is a
    view whose death (numpy collapses every view's ``.base`` to it) puts the
    block back. A consumer that keeps its arrays keeps their memory; nothing
    is ever handed out twice. Blocks idle for ``idle_s`` are dropped, so a
    burst does not pin its memory for the rest of the run.

    Args:
        min_bytes: smaller payloads use plain ``np.empty``.
        max_bytes: bytes kept idle at most (per process).
        idle_s: seconds an unused block is kept.
    """

    def __init__(self, min_bytes: int = 1 << 20, max_bytes: int = 512 << 20, idle_s: float = 5.0) -> None:
        self.min_bytes, self.max_bytes, self.idle_s = min_bytes, max_bytes, idle_s
        self._idle: dict[int, list[tuple[float, bytearray]]] = {}
        self._idle_bytes = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> np.ndarray:
        """A writable uint8 array of ``n`` bytes that the caller owns."""
        if n < self.min_bytes:
            return np.empty(n, np.uint8)
        block = None
        with self._lock:
            self._trim(time.monotonic())
            free = self._idle.get(n)
            if free:
                block = free.pop()[1]
                self._idle_bytes -= n
        if block is None:
            block = bytearray(n)
        arr = np.frombuffer(block, np.uint8)
        weakref.finalize(arr, self._give_back, block)
        return arr

    def _give_back(self, block: bytearray) -> None:
        with self._lock:
            now = time.monotonic()
            self._trim(now)
            if self._idle_bytes + len(block) <= self.max_bytes:
                self._idle.setdefault(len(block), []).append((now, block))
                self._idle_bytes += len(block)

    def _trim(self, now: float) -> None:
        """Drop blocks unused for ``idle_s`` (call with the lock)."""
        for n, free in self._idle.items():
            while free and now - free[0][0] > self.idle_s:
                free.pop(0)
                self._idle_bytes -= n

    def idle_bytes(self) -> int:
        """Bytes held for reuse now."""
        with self._lock:
            return self._idle_bytes


PAYLOADS = PayloadPool()


def recv_into_all(sock: socket.socket, view: memoryview) -> None:
    """Fill ``view`` from the socket (the GIL is released while the kernel copies).

    Raises:
        StreamClosed: the peer closed the stream before ``view`` was full.
    """
    got, n = 0, len(view)
    flags = 0 if isinstance(sock, ssl.SSLSocket) else socket.MSG_WAITALL
    while got < n:
        k = sock.recv_into(view[got:], n - got, flags)
        if k == 0:
            raise StreamClosed("the peer closed the stream")
        got += k


# A batch's message headers travel as columns, one list per field, in this order.
HEADER_FIELDS = ("timestamp", "step", "source", "seq", "meta", "sent_at")


def header_columns(headers: list[dict[str, Any]]) -> list[list[Any]]:
    """The headers of a batch's messages as columns (see ``HEADER_FIELDS``).

    msgpack decodes a list of numbers several times faster than as many small
    maps (0.27 against 1.7 us per message, measured), and the receiver decodes
    every header of every batch.
    """
    return [[h[k] for h in headers] for k in HEADER_FIELDS]


def batch_size(header: dict[str, Any]) -> int:
    """How many messages a batch frame's header describes.

    Raises:
        ValueError: if its header columns are not ``len(HEADER_FIELDS)`` lists of one length.
    """
    cols = header.get("c")
    if not isinstance(cols, list) or len(cols) != len(HEADER_FIELDS) or not all(isinstance(c, list) for c in cols):
        raise ValueError(f"a batch frame needs {len(HEADER_FIELDS)} header columns, got {cols!r:.80}")
    n = len(cols[0])
    if any(len(c) != n for c in cols):
        raise ValueError(f"a batch frame's header columns differ in length: {[len(c) for c in cols]}")
    return n


MAX_SEQ = 2**63  # sequence numbers are int64 in checkpoints and Dask's msgpack
BATCH_BYTES_MAX = 64 << 20  # payload bytes of a batch of several messages, at most (a link coalesces up to 4 MiB)


_SCAN_MAX = 16  # batches up to this many messages have their header columns checked in Python (numpy's call costs more)


def _bad_columns(got: str) -> ValueError:
    return ValueError(
        "a batch's header columns need numeric timestamps, integer steps, string sources, integer seqs "
        f"0 <= seq < 2**63, map metadata and numeric sent_at; got {got}"
    )


@dataclass(frozen=True)
class BatchLayout:
    """Where a batch frame's messages are, as checked against the channel's spec.

    Attributes:
        n: messages in the batch.
        offsets: byte offset of each field's block.
        total: payload bytes.
    """

    n: int
    offsets: list[int]
    total: int


class BatchChecker:
    """Checks the batch frame headers of one stream against its channel's spec, before anything is allocated.

    The sizes come from ``spec`` (the consumer's own copy of the channel's
    spec, from the broker) and the number of messages; the offsets and payload
    length the sender states must be exactly those. A batch of one message may
    be as large as the spec says; a batch of several carries at most
    ``max_bytes``. Layouts are kept per message count (a stream's batches
    mostly hold a few counts), so a check costs a few dictionary lookups and
    the conversion of three header columns.

    Args:
        spec: the channel's spec.
        max_bytes: payload bytes of a batch of several messages, at most.
    """

    def __init__(self, spec: Spec, max_bytes: int = BATCH_BYTES_MAX) -> None:
        self.spec, self.max_bytes = spec, max_bytes
        self._layouts: dict[int, BatchLayout] = {}

    def _layout(self, n: int) -> BatchLayout:
        lay = self._layouts.get(n)
        if lay is None:
            if n < 1:
                raise ValueError("a batch frame holds at least one message, got 0")
            if n > 1 and n * self.spec.nbytes > self.max_bytes:
                raise ValueError(f"a batch of {n} messages of {self.spec.nbytes} bytes exceeds {self.max_bytes} bytes")
            offsets, total = layout([n * f.nbytes for f in self.spec.fields])
            lay = BatchLayout(n, offsets, total)
            if len(self._layouts) < 1024:  # (a peer cannot grow it without bound)
                self._layouts[n] = lay
        return lay

    def check(self, header: dict[str, Any]) -> BatchLayout:
        """The layout of the batch ``header`` describes.

        Raises:
            ValueError: naming what was expected and what came.
        """
        lay = self._layout(batch_size(header))
        if header.get("offs") != lay.offsets:
            raise ValueError(f"a batch of {lay.n} messages has field offsets {lay.offsets}, got {header.get('offs')!r:.80}")
        if "seg" not in header and header.get("len", 0) != lay.total:
            raise ValueError(f"a batch of {lay.n} messages carries {lay.total} payload bytes, got {header.get('len')!r:.40}")
        # Every column as a genuine sender writes it (Sender.send: float(timestamp), int(step), a str
        # source, a gap-free seq, a dict of metadata, time.time()): the buffer compares seqs, keys marks
        # by source and subtracts sent_at, and actors and checkpoints compute with timestamps and steps.
        cols = header["c"]
        if lay.n <= _SCAN_MAX:
            for q in cols[3]:
                if type(q) is not int or not 0 <= q < MAX_SEQ:
                    raise _bad_columns(f"seq {q!r:.40}")
            for column, name in ((cols[0], "timestamp"), (cols[5], "sent_at")):
                for t in column:
                    if type(t) is not float and type(t) is not int:
                        raise _bad_columns(f"{name} {t!r:.40}")
            for k in cols[1]:
                if type(k) is not int:
                    raise _bad_columns(f"step {k!r:.40}")
            for src in cols[2]:
                if type(src) is not str:
                    raise _bad_columns(f"source {src!r:.40}")
            for m in cols[4]:
                if type(m) is not dict:
                    raise _bad_columns(f"meta {m!r:.40}")
            return lay
        # Many messages: numpy converts a column in C, a third of the cost of a type scan in Python.
        try:
            stamps = np.fromiter(cols[0], np.float64, lay.n)
            steps = np.fromiter(cols[1], np.int64, lay.n)
            seqs = np.fromiter(cols[3], np.int64, lay.n)
            sent_at = np.fromiter(cols[5], np.float64, lay.n)
            sources = set(cols[2])
        except (TypeError, ValueError, OverflowError) as e:
            raise _bad_columns(str(e)) from None
        if seqs.min() < 0:
            raise _bad_columns(f"seq {int(seqs.min())}")
        odd = [src for src in sources if type(src) is not str]
        if odd:
            raise _bad_columns(f"source {odd[0]!r:.40}")
        odd_meta = [m for m in cols[4] if type(m) is not dict]
        if odd_meta:
            raise _bad_columns(f"meta {odd_meta[0]!r:.40}")
        # ints and floats, whatever numbers came (numpy also reads "1.5" and True as numbers: these are
        # numbers from here on, as a genuine sender's would be)
        cols[0], cols[1], cols[3], cols[5] = stamps.tolist(), steps.tolist(), seqs.tolist(), sent_at.tolist()
        return lay


def batch_payload(spec: Spec, items: list[list[np.ndarray]]) -> tuple[list[int], int, list[Any]]:
    """Lay out the leaves of ``items`` (messages) field by field.

    Returns:
        ``(offsets, total, buffers)``: block offsets, payload size, and buffers to
        write in order: the messages' own arrays and padding, nothing copied here
        (:func:`send_frame` gathers them into as few system calls as it can).
    """
    n = len(items)
    offsets, total = layout([n * f.nbytes for f in spec.fields])
    bufs: list[Any] = []
    pos = 0
    for k, (f, off) in enumerate(zip(spec.fields, offsets)):
        if off > pos:
            bufs.append(_PAD[: off - pos])
        for leaves in items:
            bufs.append(_bytes_of(leaves[k]))
        pos = off + n * f.nbytes
    if total > pos:
        bufs.append(_PAD[: total - pos])
    return offsets, total, bufs


def split_payload(spec: Spec, n: int, offsets: list[int], payload: np.ndarray) -> Iterable[tuple[np.ndarray, ...]]:
    """Inverse of :func:`batch_payload`: each message's leaves, as views of ``payload``.

    Rows come from iterating each field's ``(n, *shape)`` block, which numpy
    does in C: half the cost of indexing ``block[i]`` message by message.
    """
    if not spec.fields:
        return [()] * n  # headers only
    blocks = [
        payload[off : off + n * f.nbytes].view(f.dtype).reshape(n, *f.shape) for f, off in zip(spec.fields, offsets)
    ]
    return zip(*blocks)


__all__ = [
    "ACK", "BATCH", "BATCH_BYTES_MAX", "BYE", "CHALLENGE", "GRANT", "HEADER_FIELDS", "HELLO", "MAX_SEQ", "WANT", "WELCOME",
    "BatchChecker", "BatchLayout", "FrameReader", "PAYLOADS", "PayloadPool", "StreamClosed", "batch_payload", "batch_size",
    "copy_small", "header_columns", "pack", "recv_into_all", "send_frame", "split_payload",
]

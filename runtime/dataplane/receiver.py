"""The consumer side of data streams: a listener on every worker and one receiver thread per link.

A producer's :class:`~coupler.runtime.dataplane.link.Link` connects, proves that it
holds the cluster's stream secret (:mod:`coupler.runtime.dataplane.auth`), says which
channel and consumer it feeds (``HELLO``) and, when on the same host, names a
probe segment; the receiver answers whether it can open shared memory from
that producer (``WELCOME``). Nothing a peer says is used before that proof,
and a peer that has not given it within a few seconds is cut. Then it reads batches, turns them into messages whose
arrays are views of the bytes just received (or of the producer's shared
segment) and puts them into the consumer's buffer. Acknowledgements are
cumulative and sent only when needed: when a batch asks for one (``ACK``),
with the next credit grant, at ``BYE``, and at once when a batch is refused.
Every frame wakes a thread on the other side, and on a VM that costs tens of
microseconds: a round trip of one small message takes two frames, not four.
For ``Queue`` channels the buffer decides when the link gets credits
(``GRANT``); the receiver itself never waits for space.
``GRANT`` frames also carry the consumer's commits (the sequence numbers its
stored checkpoint covers), after which the producer stops keeping those
messages for a replay.

What an authenticated producer says is still checked, because a bug must
cost one stream, not the worker: every batch's layout against the channel's
spec as the broker knows it (:class:`ChannelSpecs`; never the spec the hello
states), before its payload is allocated; header columns' types and sequence
numbers' range; credit requests clamped to the queue's size; segment names
against the producer's own (:func:`~coupler.runtime.dataplane.shm.check_name`). A frame
that fails closes that stream only.

A batch that holds a message of a replaced producer instance -- one whose
epoch is below one this worker has already seen of the same source, see
:mod:`~coupler.runtime.dataplane.fence` -- is refused: the stream is answered
``fenced`` and closed, and the old instance's ``send`` raises ``Fenced``.
"""

from __future__ import annotations

import errno
import itertools
import logging
import resource
import socket
import ssl
import struct
import threading
import time
from collections import OrderedDict
from typing import Any, Callable

import numpy as np

from coupler.runtime.dataplane import auth, shm, wire
from coupler.runtime.dataplane.buffers import ConsumerBuffer, QueueBuffer
from coupler.runtime.dataplane.fence import Fence
from coupler.runtime.dataplane.read_role import ReadRole
from coupler.runtime.message import Message, Spec, flat_dict_keys, unflatten
from coupler.runtime.dataplane.shm import Mappings
from coupler.runtime.dataplane.spin import SpinPolicy

logger = logging.getLogger(__name__)

BufferLookup = Callable[[str, str], ConsumerBuffer | None]
SpecFetch = Callable[[str], "dict[str, Any] | None"]
_link_ids = itertools.count(1)

MAX_PENDING = 64  # connections accepted and not yet authenticated, at most (the oldest is cut for a new one)
_BACKOFF_MAX = 1.0  # seconds between accept attempts while the process is out of descriptors, at most
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_NO_BYTES = np.empty(0, np.uint8)
#: Seconds a frame to the producer (a grant, an acknowledgement) may wait for room in the socket, at most:
#: a producer that stops reading (a bug, a stall, a cut link) would otherwise hold the consumer's own
#: thread, which sends grants as it takes messages, and with it every other producer of that consumer.
SEND_WAIT_S = 30.0
_SOURCE = wire.HEADER_FIELDS.index("source")  # the sources' column in a batch header
_META = wire.HEADER_FIELDS.index("meta")  # the metadata column (a replaced instance's epoch, see fence.py)


class SpecRefused(ValueError):
    """A producer's hello names a spec other than the channel's (or a channel without one)."""


class ChannelSpecs:
    """Channel specs as the broker knows them: the consumer side's own copy, never the sender's word.

    A channel's spec never changes once fixed, so each is fetched once; a
    claim that differs from the copy is checked against the broker again (the
    channel may have been closed and declared anew) before it is refused.

    Args:
        fetch: channel -> its spec in wire form from the broker (``None`` if not fixed yet).
    """

    def __init__(self, fetch: SpecFetch) -> None:
        self.fetch = fetch
        self._specs: dict[str, tuple[Spec, int]] = {}
        self._lock = threading.Lock()

    def get(self, channel: str, claimed: Any) -> Spec:
        """The channel's spec, if the producer's ``claimed`` one (wire form) is that.

        Raises:
            SpecRefused: if the broker has no spec for it, or another one than claimed.
        """
        try:
            theirs = Spec.from_wire(claimed)
        except (TypeError, KeyError, IndexError, ValueError, AttributeError) as e:
            raise SpecRefused(f"channel {channel!r}: a hello's spec must be a spec in wire form, got {claimed!r:.80} ({e})") from None
        with self._lock:
            known = self._specs.get(channel)
        if known is None or known[0] != theirs:
            w = self.fetch(channel)
            if w is None:
                raise SpecRefused(f"channel {channel!r} has no spec fixed at the broker yet")
            spec = Spec.from_wire(w)
            known = (spec, spec.nbytes)
            with self._lock:
                self._specs[channel] = known
        if known[0] != theirs:
            raise SpecRefused(f"channel {channel!r}: expected spec {known[0].fields}, the producer sent {theirs.fields}")
        return known[0]

    def forget(self, channel: str) -> None:
        """No consumer of ``channel`` is left on this worker: drop its copy (asked again if one attaches)."""
        with self._lock:
            self._specs.pop(channel, None)


def raise_open_file_limit() -> int:
    """Raise this process's soft limit of open descriptors to its hard limit.

    Every stream costs the consumer's worker a descriptor, and the common soft
    limit (1024) is lower than the hard one a worker may use.

    Returns:
        The soft limit now.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:  # Linux refuses an infinite soft limit; fs.nr_open is the real ceiling
        try:
            with open("/proc/sys/fs/nr_open") as f:
                target = int(f.read())
        except (OSError, ValueError):
            return soft
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as e:
            logger.warning("could not raise the open-file limit from %d to %d: %s", soft, target, e)
    return soft


class Listener:
    """Accepts producer links for the consumers of one worker.

    A stream must finish its handshake (TLS, then :mod:`coupler.runtime.dataplane.auth`)
    within :data:`~coupler.runtime.dataplane.auth.HANDSHAKE_S`; at most ``max_pending``
    streams may be in their handshake at once, and a new one cuts the oldest
    (a genuine producer answers within a round trip, an idle connection waits
    to be cut). The accept loop outlives running out of descriptors
    (``EMFILE``, ``ENFILE``) or buffers: it backs off and tries again, and ends
    only with :meth:`close`.

    Args:
        host: the address to listen on (the worker's own host).
        lookup: ``(channel, consumer) -> buffer`` or ``None`` if that consumer is not here.
        ssl_context: a server TLS context, or ``None`` for plain TCP.
        key: the cluster's stream secret.
        specs: the channels' specs as the broker knows them.
        fence: this worker's marks of producer epochs (see :mod:`~coupler.runtime.dataplane.fence`);
            ``None`` fences nothing (a listener outside a cluster, in tests).
        batch_bytes: payload bytes of a batch of several messages, at most.
        max_pending: streams in their handshake at once, at most.
        spin: seconds a consumer reading its stream spins before it sleeps, at most (see :class:`SpinPolicy`).
    """

    def __init__(
        self,
        host: str,
        lookup: BufferLookup,
        ssl_context: ssl.SSLContext | None = None,
        *,
        key: auth.StreamKey,
        specs: ChannelSpecs,
        fence: Fence | None = None,
        batch_bytes: int = wire.BATCH_BYTES_MAX,
        max_pending: int = MAX_PENDING,
        spin: float = 0.0,
    ) -> None:
        self.lookup, self.ssl_context, self.key, self.specs = lookup, ssl_context, key, specs
        self.fence, self.spin = fence, spin
        self.batch_bytes, self.max_pending = batch_bytes, max_pending
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(128)
        port = self.sock.getsockname()[1]
        self.address = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        self.receivers: set[Receiver] = set()
        self.pending: OrderedDict[int, socket.socket] = OrderedDict()  # accepted, handshake not done; oldest first
        self.cut = 0  # pending streams cut to make room for newer ones
        self.accept_errors = 0  # failed accepts (out of descriptors, buffers, ...) survived
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name="coupler-listener", daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        backoff = 0.0
        while not self._closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError as e:
                if self._closed.is_set():
                    return
                # Out of descriptors or buffers (EMFILE, ENFILE, ENOBUFS, ENOMEM), or a connection
                # that died in the backlog: the listening socket is fine, so wait and try again.
                self.accept_errors += 1
                backoff = min(_BACKOFF_MAX, max(0.01, 2 * backoff))
                if self.accept_errors & (self.accept_errors - 1) == 0:  # 1st, 2nd, 4th, 8th... (not a flood of lines)
                    level = logging.WARNING if e.errno in _OUT_OF_RESOURCES else logging.INFO
                    logger.log(level, "coupler listener: accept failed (%s, %d times so far); retrying", e, self.accept_errors)
                self._closed.wait(backoff)
                continue
            backoff = 0.0
            self._admit(conn)

    def _admit(self, conn: socket.socket) -> None:
        """Count a new connection as pending (cutting the oldest if full) and serve it in a thread."""
        ident = next(self._ids)
        with self._lock:
            self.pending[ident] = conn
            oldest = self.pending.popitem(last=False)[1] if len(self.pending) > self.max_pending else None
        if oldest is not None:
            self.cut += 1
            _shutdown(oldest)  # its thread sees the stream end and closes it
        try:
            threading.Thread(target=self._serve, args=(ident, conn), name="coupler-recv", daemon=True).start()
        except RuntimeError:  # no thread to be had: refuse this stream, keep accepting
            self._authenticated(ident)
            conn.close()

    def _authenticated(self, ident: int) -> None:
        with self._lock:
            self.pending.pop(ident, None)

    def _serve(self, ident: int, conn: socket.socket) -> None:
        deadline = time.monotonic() + auth.HANDSHAKE_S
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.ssl_context is not None:
                conn.settimeout(auth.HANDSHAKE_S)  # the TLS handshake counts against the deadline too
                conn = self.ssl_context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
                # The TLS socket owns the descriptor now: it is what a cut must shut down.
                with self._lock:
                    cut = ident not in self.pending
                    if not cut:
                        self.pending[ident] = conn  # (its place in the order stays)
                if cut:
                    raise ConnectionAbortedError("cut before its TLS handshake to make room for newer streams")
                conn.do_handshake()
        except (OSError, ssl.SSLError) as e:
            logger.info("refused a data stream: %s", e)
            self._authenticated(ident)
            conn.close()
            return
        r = Receiver(
            conn, self.lookup, self.key, self.specs, self.batch_bytes, deadline, lambda: self._authenticated(ident), self.fence,
            self.spin,
        )
        with self._lock:
            self.receivers.add(r)
        try:
            if self._closed.is_set():
                r.stop()
            r.run()
        finally:
            self._authenticated(ident)
            with self._lock:
                self.receivers.discard(r)

    def close(self) -> None:
        """Stop accepting and cut every stream."""
        self._closed.set()
        _shutdown(self.sock)  # wakes the accept (a close alone does not, on Linux)
        try:
            self.sock.close()
        except OSError:
            pass
        with self._lock:
            receivers = list(self.receivers)
            pending = list(self.pending.values())
        for r in receivers:
            r.stop()
        for conn in pending:
            _shutdown(conn)


def limit_send_wait(sock: socket.socket, seconds: float) -> None:
    """Make a blocking send on ``sock`` fail (``OSError``) after ``seconds`` without room, not wait for ever.

    ``SO_SNDTIMEO`` bounds sends only: the stream's reads stay blocking, so an idle
    producer is not cut.
    """
    whole = int(seconds)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", whole, int((seconds - whole) * 1e6)))


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _count(value: Any, cap: int, what: str) -> int:
    """A count from a peer's frame, clamped to ``cap``.

    Raises:
        ValueError: unless it is a non-negative integer.
    """
    if type(value) is not int or value < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {value!r:.40}")
    return min(value, cap)


class Receiver:
    """Serves one producer link (runs in its own thread).

    Args:
        sock: the accepted stream (TLS already negotiated, if used).
        lookup: finds the consumer's buffer.
        key: the cluster's stream secret.
        specs: the channels' specs as the broker knows them.
        batch_bytes: payload bytes of a batch of several messages, at most.
        deadline: ``time.monotonic()`` by which the producer's hello must have come.
        authenticated: called once the producer has proved that it holds the secret.
        fence: this worker's marks of producer epochs, or ``None`` (fence nothing).
        spin: seconds the consumer spins before it sleeps, at most (see :class:`SpinPolicy`).
    """

    def __init__(
        self,
        sock: socket.socket,
        lookup: BufferLookup,
        key: auth.StreamKey,
        specs: ChannelSpecs,
        batch_bytes: int,
        deadline: float,
        authenticated: Callable[[], None],
        fence: Fence | None = None,
        spin: float = 0.0,
    ) -> None:
        self.sock, self.spin = sock, spin
        self.lookup, self.key, self.specs, self.batch_bytes = lookup, key, specs, batch_bytes
        self.fence = fence
        self.deadline, self.authenticated = deadline, authenticated
        self.id = next(_link_ids)
        self.write_lock = threading.Lock()  # acks from this thread, grants from the consumer's
        self.maps: Mappings | None = None
        self.buf: ConsumerBuffer | None = None
        self.role: ReadRole | None = None  # the stream's reader role (a Queue's plain TCP stream)
        self.unsent_grants = 0
        self.grant_chunk = 1
        self.unacked = 0  # batches accepted whole and not acknowledged yet

    def _send(self, kind: int, header: dict[str, Any]) -> None:
        """Write a frame; a ``GRANT`` also acknowledges every batch accepted so far."""
        try:
            with self.write_lock:
                if kind == wire.GRANT and self.unacked:
                    header["acked"], self.unacked = self.unacked, 0
                wire.send_frame(self.sock, kind, header)
        except OSError:
            # The producer went away, or stopped reading for SEND_WAIT_S (a frame may be cut short):
            # the stream ends, and its reader sees that.
            _shutdown(self.sock)

    def _ack(self, status: str = "OK", accepted: int = 0) -> None:
        """Acknowledge every batch accepted so far (and, if ``status`` is not OK, the refused one after them)."""
        try:
            with self.write_lock:
                n, self.unacked = self.unacked + (status != "OK"), 0
                if n:
                    wire.send_frame(self.sock, wire.ACK, {"n": n, "status": status, "accepted": accepted})
        except OSError:
            _shutdown(self.sock)  # as in _send

    def _grant(self, n: int, reserved: int) -> None:
        """Tell the producer about ``n`` more slots, unless it cannot run short before we speak again.

        A grant costs a frame, and it is often sent by the consumer's thread as it
        takes a message, on the way to its own work. It is held back while the
        producer is sure to come back first: while the slots reserved for it
        exceed the grants not yet sent, it still holds a credit or has a message on
        its way, and the arrival of that message sends what was held (see
        :meth:`_grant_due`). Grants also go out once a chunk has built up.
        """
        with self.write_lock:
            self.unsent_grants += n
        self._grant_due(reserved)

    def _grant_due(self, reserved: int) -> None:
        """Send the grants held back if a chunk built up or the producer may run out of credit."""
        with self.write_lock:
            if not self.unsent_grants or (self.unsent_grants < self.grant_chunk and reserved > self.unsent_grants):
                return
            n, self.unsent_grants = self.unsent_grants, 0
        self._send(wire.GRANT, {"n": n})

    def _commit(self, marks: dict[str, int]) -> None:
        """Tell the producer which messages the consumer's stored checkpoint covers (it stops keeping them).

        Rides on a ``GRANT`` frame of no slots: both are the consumer's word to the producer.
        """
        self._send(wire.GRANT, {"n": 0, "commit": marks})

    def stop(self) -> None:
        _shutdown(self.sock)

    def run(self) -> None:
        try:
            self._run()
        except (OSError, wire.StreamClosed):
            pass  # producer gone (or refused: no secret, too slow); its messages not acknowledged are its to resend
        except Exception as e:  # a malformed stream (not a coupler link, or a broken one): refuse it, stay up
            logger.warning("coupler receiver: closed a malformed stream: %r", e)
        finally:
            if isinstance(self.buf, QueueBuffer):
                self.buf.remove_link(self.id)  # the role out of the buffer, under its lock, before its kicks close
            if self.role is not None:
                self.role.close()
            if self.maps is not None:
                self.maps.close()
            try:
                self.sock.close()
            except OSError:
                pass

    def _welcome(self, nonce: bytes, reply: dict[str, Any]) -> None:
        auth.welcome(self.sock, self.key, nonce, reply)

    def _run(self) -> None:
        reader = wire.FrameReader(self.sock)
        hello, nonce = auth.accept_stream(self.sock, reader, self.key, self.deadline)
        self.authenticated()  # from here on a peer that holds the secret: no deadline, not pending
        limit_send_wait(self.sock, SEND_WAIT_S)
        channel, consumer, pid = hello.get("channel"), hello.get("consumer"), hello.get("pid")
        origin = hello.get("worker", "")
        if not isinstance(channel, str) or not isinstance(consumer, str) or type(pid) is not int or not isinstance(origin, str):
            raise ValueError(
                f"a hello names a channel, a consumer, a pid and a worker, got {channel!r:.60}, {consumer!r:.60}, "
                f"{pid!r:.20}, {origin!r:.60}"
            )
        buf = self.lookup(channel, consumer)
        if buf is None or not buf.accepting:
            self._welcome(nonce, {"status": "closed" if buf is not None and buf.closed else "gone"})
            return
        try:
            spec = self.specs.get(channel, hello.get("spec"))
        except Exception as e:  # SpecRefused, or the broker could not be asked: say why, then close
            self._welcome(nonce, {"status": "spec", "reason": str(e)})
            raise
        self.maps = Mappings(pid)
        probe = hello.get("probe")
        shm_ok = bool(probe) and shm.probe(probe, pid)
        flat_keys = flat_dict_keys(spec.treedef)
        fields = [(f.shape, f.dtype) for f in spec.fields]
        checker = wire.BatchChecker(spec, self.batch_bytes)
        layouts: list[wire.BatchLayout] = []

        def payload_limit(kind: int, h: dict[str, Any]) -> int:
            # Every batch header is checked against the broker's spec before its payload is read.
            if kind != wire.BATCH:
                return 0
            layouts.append(checker.check(h))
            return layouts[-1].total

        reader.payload_limit = payload_limit
        self.buf = buf
        queue = isinstance(buf, QueueBuffer)
        maxsize = buf.maxsize if queue else 0  # type: ignore[union-attr]
        self._welcome(nonce, {"status": "OK", "shm": shm_ok})

        def handle(kind: int, h: dict[str, Any], payload: Any) -> bool:
            """One frame, in whichever thread holds the reader role; False at the stream's end."""
            if kind == wire.BYE:
                self._ack()  # what was accepted is not the producer's to hand on
                return False
            if kind == wire.WANT:
                if queue and "n" in h:
                    self._want(h)
                if h.get("ack"):
                    self._ack()
                return True
            if kind != wire.BATCH:
                raise ValueError(f"unexpected frame kind {kind} on channel {channel!r}")
            lay = layouts.pop()
            n = lay.n
            if "seg" in h:
                # Only over a link that agreed on shared memory, and never the probe (its maker unlinks it).
                if not shm_ok or h["seg"] == probe:
                    what = "the probe segment" if shm_ok else "a segment on a link without shared memory"
                    raise ValueError(f"a batch on channel {channel!r} names {what}: {h['seg']!r:.80}")
                rows: Any = [self.maps.views(h["seg"], lay.offsets, fields, private=h.get("cow") is True)]
                if n != 1:
                    raise ValueError(f"a shared-memory batch holds one message, this one {n} on channel {channel!r}")
            else:
                # the checker made the stated length the spec's; a payload of 0 bytes (a spec without fields,
                # messages of headers only, or fields of size 0) comes as no payload at all.
                rows = wire.split_payload(spec, n, lay.offsets, _NO_BYTES if payload is None else payload)
            nbytes = spec.nbytes
            if flat_keys is None:
                datas: Any = (unflatten(spec.treedef, list(r)) for r in rows)
            elif len(flat_keys) == 1:  # one array, the most common payload
                key = flat_keys[0]
                datas = ({key: a} for (a,) in rows)
            else:  # a flat dict of arrays: no tree walk per message
                datas = (dict(zip(flat_keys, r)) for r in rows)
            fence = self.fence
            if fence is None:
                accepted = self._deliver(buf, queue, datas, h["c"], nbytes)
            elif fence.enter(channel, h["c"][_SOURCE], h["c"][_META]):
                try:  # in the buffer before the fence lets a batch that raises a mark go on
                    accepted = self._deliver(buf, queue, datas, h["c"], nbytes)
                finally:
                    fence.leave(channel)
            else:
                logger.warning(
                    "coupler receiver: refused a batch of %s on %r from %s: a successor of that producer (a higher "
                    "epoch) has delivered here (a replaced instance still running); closing its stream",
                    sorted(set(h["c"][_SOURCE])), channel, origin,
                )
                self._ack("fenced")
                return False
            del rows, datas, payload
            if accepted < n:
                self._ack("closed" if buf.closed else "gone", accepted)
                return True
            with self.write_lock:
                self.unacked += 1
            if queue:
                if "want" in h:  # after the batch: a grant it causes carries the acknowledgement
                    self._want(h["want"])
                self._grant_due(buf.reserved(self.id))  # type: ignore[union-attr]
            if h.get("ack"):
                self._ack()
            return True

        if queue:
            self.grant_chunk = max(1, maxsize // 8)
        if not queue or isinstance(self.sock, ssl.SSLSocket):  # TLS keeps bytes that poll cannot see: no reader role
            if queue:
                buf.add_link(self.id, self._grant, self._commit)  # type: ignore[union-attr]
            while handle(*reader.read()):
                pass
            return
        self.role = ReadRole(self.sock, reader, handle, spin=SpinPolicy.for_messages(spec.nbytes, self.spin))
        buf.add_link(self.id, self._grant, self._commit, self.role)  # type: ignore[union-attr]
        self.role.serve()

    def _deliver(self, buf: ConsumerBuffer, queue: bool, datas: Any, columns: list[list[Any]], nbytes: int) -> int:
        """Put a batch's messages into the consumer's buffer; return how many it accepted."""
        # Message(...) positionally from the header columns (wire.HEADER_FIELDS' order): this runs for every message.
        msgs = [Message(d, t, st, src, q, m, at, nbytes) for d, t, st, src, q, m, at in zip(datas, *columns)]
        if queue:
            return buf.put_credited(self.id, msgs)  # type: ignore[union-attr]
        return buf.put(msgs)

    def _want(self, h: Any) -> None:
        """A producer's request for credits: at most the queue's size, and give back at most what it holds."""
        buf: QueueBuffer = self.buf  # type: ignore[assignment]
        if not isinstance(h, dict):
            raise ValueError(f"a credit request is a map, got {h!r:.40}")
        n = _count(h.get("n"), buf.maxsize, "a credit request")
        ret = _count(h.get("ret", 0), buf.reserved(self.id), "credits given back")
        buf.want(self.id, n, ret)


__all__ = ["ChannelSpecs", "Listener", "MAX_PENDING", "Receiver", "SpecRefused", "raise_open_file_limit"]

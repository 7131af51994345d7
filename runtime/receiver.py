"""The consumer side of data streams: a listener on every worker and one receiver thread per link.

A producer's :class:`~coupler.runtime.link.Link` connects, says which channel
and consumer it feeds (``HELLO``) and, when on the same host, names a probe
segment; the receiver answers whether it can map shared memory from that
producer (``WELCOME``). Then it reads batches, turns them into messages whose
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
"""

from __future__ import annotations

import itertools
import logging
import socket
import ssl
import threading
from typing import Any, Callable

from coupler.runtime import wire
from coupler.runtime.buffers import ConsumerBuffer, QueueBuffer
from coupler.runtime.message import Message, Spec, flat_dict_keys, unflatten
from coupler.runtime.shm import Mappings

logger = logging.getLogger(__name__)

BufferLookup = Callable[[str, str], ConsumerBuffer | None]
_link_ids = itertools.count(1)


class Listener:
    """Accepts producer links for the consumers of one worker.

    Args:
        host: the address to listen on (the worker's own host).
        lookup: ``(channel, consumer) -> buffer`` or ``None`` if that consumer is not here.
        ssl_context: a server TLS context, or ``None`` for plain TCP.
    """

    def __init__(self, host: str, lookup: BufferLookup, ssl_context: ssl.SSLContext | None = None) -> None:
        self.lookup = lookup
        self.ssl_context = ssl_context
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(128)
        port = self.sock.getsockname()[1]
        self.address = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        self.receivers: set[Receiver] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._accept_loop, name="coupler-listener", daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._serve, args=(conn,), name="coupler-recv", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.ssl_context is not None:
                conn = self.ssl_context.wrap_socket(conn, server_side=True)
        except (OSError, ssl.SSLError) as e:
            logger.info("refused a data stream: %s", e)
            conn.close()
            return
        r = Receiver(conn, self.lookup)
        with self._lock:
            self.receivers.add(r)
        try:
            r.run()
        finally:
            with self._lock:
                self.receivers.discard(r)

    def close(self) -> None:
        """Stop accepting and cut every stream."""
        self._closed = True
        try:
            self.sock.close()
        except OSError:
            pass
        with self._lock:
            receivers = list(self.receivers)
        for r in receivers:
            r.stop()


class Receiver:
    """Serves one producer link (runs in its own thread)."""

    def __init__(self, sock: socket.socket, lookup: BufferLookup) -> None:
        self.sock = sock
        self.lookup = lookup
        self.id = next(_link_ids)
        self.write_lock = threading.Lock()  # acks from this thread, grants from the consumer's
        self.maps = Mappings()
        self.buf: ConsumerBuffer | None = None
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
            pass  # the producer went away; its reader sees that

    def _ack(self, status: str = "OK", accepted: int = 0) -> None:
        """Acknowledge every batch accepted so far (and, if ``status`` is not OK, the refused one after them)."""
        try:
            with self.write_lock:
                n, self.unacked = self.unacked + (status != "OK"), 0
                if n:
                    wire.send_frame(self.sock, wire.ACK, {"n": n, "status": status, "accepted": accepted})
        except OSError:
            pass

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
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def run(self) -> None:
        try:
            self._run()
        except (OSError, wire.StreamClosed):
            pass  # producer gone; its messages not acknowledged are its to resend
        except Exception as e:  # a malformed stream (not a coupler link, or a broken one): refuse it, stay up
            logger.warning("coupler receiver: closed a malformed stream: %r", e)
        finally:
            if isinstance(self.buf, QueueBuffer):
                self.buf.remove_link(self.id)
            self.maps.close()
            try:
                self.sock.close()
            except OSError:
                pass

    def _run(self) -> None:
        reader = wire.FrameReader(self.sock)
        kind, hello, _ = reader.read()
        if kind != wire.HELLO:
            raise ValueError(f"expected a HELLO frame first, got kind {kind}")
        channel, consumer = hello["channel"], hello["consumer"]
        buf = self.lookup(channel, consumer)
        if buf is None or not buf.accepting:
            status = "closed" if buf is not None and buf.closed else "gone"
            self._send(wire.WELCOME, {"status": status})
            return
        shm_ok = False
        if hello.get("probe"):
            try:
                self.maps.open(hello["probe"])
                shm_ok = True
            except (OSError, ValueError):
                shm_ok = False  # another host or container: TCP only
            self.maps.close()
        spec = Spec.from_wire(hello["spec"])
        flat_keys = flat_dict_keys(spec.treedef)
        fields = [(f.shape, f.dtype) for f in spec.fields]
        # A batch of n messages is n * spec.nbytes plus at most 64 bytes of alignment per field block.
        pad = 64 * (len(spec.fields) + 1)
        reader.payload_limit = lambda kind, h: wire.batch_size(h) * spec.nbytes + pad if kind == wire.BATCH else 0
        self.buf = buf
        queue = isinstance(buf, QueueBuffer)
        self._send(wire.WELCOME, {"status": "OK", "shm": shm_ok})
        if queue:
            self.grant_chunk = max(1, buf.maxsize // 8)  # type: ignore[union-attr]
            buf.add_link(self.id, self._grant, self._commit)  # type: ignore[union-attr]
        while True:
            kind, h, payload = reader.read()
            if kind == wire.BYE:
                self._ack()  # what was accepted is not the producer's to hand on
                return
            if kind == wire.WANT:
                if queue and "n" in h:
                    buf.want(self.id, h["n"], h.get("ret", 0))  # type: ignore[union-attr]
                if h.get("ack"):
                    self._ack()
                continue
            if kind != wire.BATCH:
                raise ValueError(f"unexpected frame kind {kind} on channel {channel!r}")
            n = wire.batch_size(h)
            if "seg" in h:
                rows: Any = [self.maps.views(h["seg"], h["offs"], fields)]
                if n != 1:
                    raise ValueError(f"a shared-memory batch holds one message, this one {n} on channel {channel!r}")
            else:
                if payload is None and spec.fields:
                    raise ValueError(f"a batch of {n} messages came without its payload on channel {channel!r}")
                # (no payload at all for a spec without fields: messages of headers only, e.g. {} with a step)
                rows = wire.split_payload(spec, n, h["offs"], payload)  # type: ignore[arg-type]
            nbytes = spec.nbytes
            if flat_keys is None:
                datas: Any = (unflatten(spec.treedef, list(r)) for r in rows)
            elif len(flat_keys) == 1:  # one array, the most common payload
                key = flat_keys[0]
                datas = ({key: a} for (a,) in rows)
            else:  # a flat dict of arrays: no tree walk per message
                datas = (dict(zip(flat_keys, r)) for r in rows)
            # Message(...) positionally from the header columns (wire.HEADER_FIELDS' order): this runs for every message.
            msgs = [Message(d, t, st, src, q, m, at, nbytes) for d, t, st, src, q, m, at in zip(datas, *h["c"])]
            del rows, datas, payload
            if queue:
                accepted = buf.put_credited(self.id, msgs)  # type: ignore[union-attr]
            else:
                accepted = buf.put(msgs)
            del msgs
            if accepted < n:
                self._ack("closed" if buf.closed else "gone", accepted)
                continue
            with self.write_lock:
                self.unacked += 1
            if queue:
                if "want" in h:  # after the batch: a grant it causes carries the acknowledgement
                    want = h["want"]
                    buf.want(self.id, want["n"], want.get("ret", 0))  # type: ignore[union-attr]
                self._grant_due(buf.reserved(self.id))  # type: ignore[union-attr]
            if h.get("ack"):
                self._ack()


__all__ = ["Listener", "Receiver"]

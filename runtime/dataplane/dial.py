"""Opening a producer's stream to a consumer: connect, offer shared memory, prove the secret, read the verdict.

:func:`dial` is what a :class:`~coupler.runtime.dataplane.link.Link` does once,
when it is made; the receiving end is
:class:`~coupler.runtime.dataplane.receiver.Listener`. The consumer's worker
answers the signed hello (see :mod:`~coupler.runtime.dataplane.auth`) with a
status: ``OK`` (and whether it mapped the shared-memory probe), ``closed`` (the
channel is closed), ``spec`` (the hello's spec is not the channel's), or a
refusal because the consumer has detached.
"""

from __future__ import annotations

import os
import socket
import ssl
from dataclasses import dataclass

from coupler.runtime.dataplane import auth, shm, wire
from coupler.runtime.errors import ChannelClosed, ConsumerGone
from coupler.runtime.message import Spec


@dataclass
class OpenStream:
    """A stream the consumer accepted."""

    sock: socket.socket
    reader: wire.FrameReader  # reads the consumer's ACK and GRANT frames
    shm: bool  # the consumer maps this process's segments (same host, and it could map the probe)


def dial(
    channel: str, consumer: str, stream: str, spec: Spec, *, same_host: bool, ssl_context: ssl.SSLContext | None,
    key: auth.StreamKey, origin: str,
) -> OpenStream:
    """Open a stream to ``consumer`` of ``channel`` at address ``stream``.

    Args:
        channel: channel name.
        consumer: consumer id.
        stream: the consumer's stream address (``host:port``).
        spec: the channel's spec (the consumer checks it against the broker's).
        same_host: offer shared memory (a probe segment the consumer must be able to map).
        ssl_context: a client TLS context, or ``None`` for plain TCP.
        key: the cluster's stream secret.
        origin: this worker's address (the consumer fences producers the broker places elsewhere).

    Returns:
        The open stream.

    Raises:
        ConsumerGone: the consumer is unreachable, refused the spec, or has detached.
        ChannelClosed: the channel is closed.
    """
    try:
        sock = _connect(stream, ssl_context)
    except OSError as e:  # its worker is gone (or going): the broker will say so
        raise ConsumerGone(f"channel {channel!r}: consumer {consumer!r} at {stream} is unreachable ({e})") from e
    probe = probe_segment() if same_host and shm.available() else None
    try:
        # Both ends prove that they hold the cluster's secret (auth): the reply is the consumer's, signed.
        hello = {"channel": channel, "consumer": consumer, "spec": spec.to_wire(), "probe": probe, "pid": os.getpid(), "worker": origin}
        reader, reply = auth.open_stream(sock, key, hello)
    except (OSError, ValueError) as e:
        sock.close()
        raise ConsumerGone(f"channel {channel!r}: consumer {consumer!r} at {stream} is unreachable ({e})") from e
    finally:
        if probe:
            _unlink_quietly(probe)
    status = reply.get("status")
    if status != "OK":
        sock.close()
        if status == "closed":
            raise ChannelClosed(f"channel {channel!r} is closed; cannot send")
        if status == "spec":
            raise ConsumerGone(f"channel {channel!r}: consumer {consumer!r} on {stream} refused the stream: {reply.get('reason')}")
        raise ConsumerGone(f"channel {channel!r}: consumer {consumer!r} on {stream} has detached")
    return OpenStream(sock, reader, bool(reply.get("shm")))


def _connect(stream: str, ssl_context: ssl.SSLContext | None) -> socket.socket:
    host, port = stream.rsplit(":", 1)
    sock = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if ssl_context is not None:
        sock = ssl_context.wrap_socket(sock, server_hostname=None)
    return sock


def probe_segment() -> str | None:
    """A tiny segment the consumer must be able to map for shared memory to be used."""
    name = f"{shm.PREFIX}{os.getpid()}-{os.urandom(8).hex()}"
    try:
        fd = os.open(os.path.join(shm.SHM_DIR, name), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        os.ftruncate(fd, shm.HEADER)
        os.close(fd)
    except OSError:
        return None
    return name


def _unlink_quietly(name: str) -> None:
    try:
        os.unlink(os.path.join(shm.SHM_DIR, name))
    except FileNotFoundError:
        pass


__all__ = ["OpenStream", "dial", "probe_segment"]

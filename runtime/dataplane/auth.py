"""Authentication of data streams with the cluster's stream secret.

The broker makes a random secret when it is installed (:func:`new_secret`)
and hands it to every worker's endpoint over the Dask comm
(``coupler_stream_secret``). A data stream is accepted only from a peer that
proves it holds the secret, TLS or not, and the producer accepts only a
consumer that proves it too, since a consumer's grants and commits steer the
producer (credits, what it forgets from its replay log):

1. consumer -> producer ``CHALLENGE`` ``{"nonce": 16 random bytes}``;
2. producer -> consumer ``HELLO`` ``{"body": msgpack(hello), "mac": HMAC(secret, "hello" | consumer nonce | body)}``;
   the hello carries the producer's own nonce;
3. consumer -> producer ``WELCOME`` ``{"body": msgpack(reply), "mac": HMAC(secret, "welcome" | producer nonce | body)}``.

The MAC covers the very bytes of the body (no re-encoding to agree on), and
fresh nonces on both sides make a recorded handshake useless for another
connection. It costs one more round trip when a link opens, and nothing per
message: the frames after the handshake carry no MAC. So without TLS someone
who can inject packets into an established TCP connection (on the path
between the workers) can still forge frames; TLS (:mod:`coupler.runtime.launch.cluster`)
closes that. The secret travels over the Dask comm, so it is as private as
that comm: on a cluster without TLS, anyone who can talk to the scheduler can
ask for it.
"""

from __future__ import annotations

import hmac
import os
import secrets
import socket
import threading
import time
from hashlib import sha256
from typing import Any

import msgpack

from coupler.runtime.dataplane import wire

SECRET_BYTES = 32
NONCE_BYTES = 16
HANDSHAKE_S = 5.0  # a peer must finish its handshake (TLS included) within this many seconds
_HELLO, _WELCOME = b"coupler-hello\0", b"coupler-welcome\0"  # domain separation: a hello MAC is no welcome MAC


class AuthError(ConnectionError):
    """A data stream's peer did not prove that it holds the cluster's stream secret."""


def new_secret() -> bytes:
    """A fresh per-cluster stream secret (the broker makes one when installed)."""
    return secrets.token_bytes(SECRET_BYTES)


class StreamKey:
    """The cluster's stream secret as one endpoint holds it.

    The endpoint starts before its request to the broker returns, so the
    secret may arrive later: :meth:`secret` waits for it.

    Args:
        secret: the secret, if known already.
    """

    def __init__(self, secret: bytes | None = None) -> None:
        self._ready = threading.Event()
        self._secret: bytes | None = None
        self._error: str | None = None
        if secret is not None:
            self.set(secret)

    def set(self, secret: bytes) -> None:
        """The secret has arrived.

        Raises:
            ValueError: if it is not bytes, or shorter than 16 bytes.
        """
        if not isinstance(secret, bytes) or len(secret) < 16:
            raise ValueError(f"a stream secret must be at least 16 bytes, got {type(secret).__name__} of length {len(secret)}")
        self._secret = secret
        self._ready.set()

    def fail(self, error: str) -> None:
        """The secret could not be had (the broker did not answer); streams are refused, saying why."""
        self._error = error
        self._ready.set()

    def secret(self, timeout: float = 30.0) -> bytes:
        """The secret, waiting up to ``timeout`` seconds for it.

        Raises:
            AuthError: if it could not be had, or did not arrive in time.
        """
        if not self._ready.wait(timeout):
            raise AuthError(f"the cluster's stream secret did not arrive from the broker within {timeout} s")
        if self._secret is None:
            raise AuthError(f"no stream secret: {self._error}")
        return self._secret


def _mac(secret: bytes, label: bytes, nonce: bytes, body: bytes) -> bytes:
    return hmac.new(secret, label + nonce + body, sha256).digest()


def _signed(secret: bytes, label: bytes, nonce: bytes, payload: dict[str, Any]) -> dict[str, Any]:
    body = msgpack.packb(payload, use_bin_type=True)
    return {"body": body, "mac": _mac(secret, label, nonce, body)}


def _verified(secret: bytes, label: bytes, nonce: bytes, header: dict[str, Any], what: str) -> dict[str, Any]:
    """The body of a signed frame, once its MAC checks out.

    Raises:
        AuthError: if the frame is not signed, or not with ``secret`` over ``nonce``.
    """
    body, mac = header.get("body"), header.get("mac")
    if not isinstance(body, bytes) or not isinstance(mac, bytes):
        raise AuthError(f"the {what} is not signed (expected binary 'body' and 'mac', got keys {sorted(header)[:8]})")
    if not hmac.compare_digest(mac, _mac(secret, label, nonce, body)):
        raise AuthError(f"the {what}'s signature does not match the cluster's stream secret")
    payload = msgpack.unpackb(body, raw=False)
    if not isinstance(payload, dict):
        raise AuthError(f"the {what}'s body must be a map, got {type(payload).__name__}")
    return payload


def _read(reader: wire.FrameReader, expected: int, deadline: float, what: str) -> dict[str, Any]:
    kind, header, _ = reader.read(deadline)
    if kind != expected:
        raise AuthError(f"expected a {what} frame (kind {expected}), got kind {kind}")
    return header


def open_stream(sock: socket.socket, key: StreamKey, hello: dict[str, Any], timeout: float = HANDSHAKE_S) -> tuple[wire.FrameReader, dict[str, Any]]:
    """The producer's side of the handshake: answer the challenge, then check the consumer's reply.

    Args:
        sock: a connected stream to a consumer's worker.
        key: the cluster's stream secret.
        hello: what the producer says about itself (channel, consumer, spec, ...).
        timeout: seconds for the whole exchange.

    Returns:
        ``(reader, welcome)``: the stream's frame reader and the consumer's verified reply.

    Raises:
        AuthError: if the consumer refused our proof or failed to prove itself.
        OSError: if the stream broke or the consumer took longer than ``timeout``.
    """
    secret = key.secret()
    deadline = time.monotonic() + timeout
    reader = wire.FrameReader(sock, 64 << 10)  # the handshake, then acknowledgements and grants
    challenge = _read(reader, wire.CHALLENGE, deadline, "CHALLENGE")
    theirs = challenge.get("nonce")
    if not isinstance(theirs, bytes) or len(theirs) != NONCE_BYTES:
        raise AuthError(f"a CHALLENGE carries a nonce of {NONCE_BYTES} bytes, got {theirs!r:.40}")
    ours = os.urandom(NONCE_BYTES)
    wire.send_frame(sock, wire.HELLO, _signed(secret, _HELLO, theirs, {**hello, "nonce": ours}))
    reply = _read(reader, wire.WELCOME, deadline, "WELCOME")
    if reply.get("status") == "denied":
        raise AuthError("the consumer's worker refused our stream: its cluster secret is not ours")
    return reader, _verified(secret, _WELCOME, ours, reply, "WELCOME")


def accept_stream(sock: socket.socket, reader: wire.FrameReader, key: StreamKey, deadline: float) -> tuple[dict[str, Any], bytes]:
    """The consumer's side of the handshake, up to the producer's verified hello.

    Args:
        sock: a stream just accepted.
        reader: its frame reader.
        key: the cluster's stream secret.
        deadline: ``time.monotonic()`` by which the producer's hello must have come.

    Returns:
        ``(hello, nonce)``: the verified hello and the producer's nonce, which
        :func:`welcome` signs the reply over.

    Raises:
        AuthError: if the producer's hello is not signed with the secret (a
            ``denied`` reply has been sent).
        OSError: if the stream broke or the deadline passed.
    """
    secret = key.secret()
    ours = os.urandom(NONCE_BYTES)
    wire.send_frame(sock, wire.CHALLENGE, {"nonce": ours})
    header = _read(reader, wire.HELLO, deadline, "HELLO")
    try:
        hello = _verified(secret, _HELLO, ours, header, "HELLO")
    except AuthError:
        wire.send_frame(sock, wire.WELCOME, {"status": "denied"})
        raise
    theirs = hello.get("nonce")
    if not isinstance(theirs, bytes) or len(theirs) != NONCE_BYTES:
        raise AuthError(f"a HELLO carries a nonce of {NONCE_BYTES} bytes, got {theirs!r:.40}")
    return hello, theirs


def welcome(sock: socket.socket, key: StreamKey, nonce: bytes, reply: dict[str, Any]) -> None:
    """Send the consumer's reply to a hello, signed over the producer's ``nonce``."""
    wire.send_frame(sock, wire.WELCOME, _signed(key.secret(), _WELCOME, nonce, reply))


__all__ = ["AuthError", "HANDSHAKE_S", "StreamKey", "accept_stream", "new_secret", "open_stream", "welcome"]

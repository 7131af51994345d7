"""What a thread blocked in the data plane waits for: a consumer, room, acceptance, input.

An actor that shows ``state='running', steps=0`` for a minute says nothing about
why. Every place where the data plane blocks a caller's thread notes, while it
blocks, a :class:`Wait` under that thread; an actor's status reads the note of
its run-loop thread (:func:`current`), and the dashboard shows it. Notes are
made only on the path that blocks (never per message on the fast path), and
removed when the wait ends, however it ends.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any


def check_timeout(timeout: Any) -> None:
    """Refuse a timeout that no wait can honour: not a number, or NaN (which compares false to every deadline).

    ``None`` waits for ever; a negative or zero timeout does not wait.

    Raises:
        ValueError: naming what came.
    """
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout != timeout:
        raise ValueError(f"timeout must be a number of seconds or None, got {timeout!r}")


class WaitKind(Enum):
    """What a blocked send, flush or receive waits for."""

    CONSUMER = "consumer"  # no consumer is attached to the channel yet
    RETURN = "return"  # a consumer left (its worker was lost, or it is moving) and is expected back
    ROOM = "room"  # a consumer's queue is full: back-pressure (no credit)
    ACCEPTANCE = "acceptance"  # a flush: sent messages are not acknowledged yet
    INPUT = "input"  # a receive: nothing has arrived on the port
    ORDER = "order"  # a restarted actor replays its predecessor's input order, and the next input is not here


_TEXT = {
    WaitKind.CONSUMER: "a consumer to attach to channel {channel!r}",
    WaitKind.RETURN: "consumer {peer!r} of channel {channel!r} to come back (lost or moving; the supervisor restarts it)",
    WaitKind.ROOM: "room at consumer {peer!r} of channel {channel!r} (back-pressure: its queue is full, or the link to it is stalled)",
    WaitKind.ACCEPTANCE: "consumer {peer!r} of channel {channel!r} to accept what was sent",
    WaitKind.INPUT: "input on {peer!r} (channel {channel!r})",
    WaitKind.ORDER: "the next input of the recorded order on {peer!r} (channel {channel!r}), to replay it",
}


@dataclass(frozen=True)
class Wait:
    """One thread's current wait.

    Attributes:
        kind: what it waits for.
        channel: the channel.
        peer: the consumer (``actor/port``) or, for input, the port it waits on; ``""`` for any.
        since: when the wait began (``time.time()``).
    """

    kind: WaitKind
    channel: str
    peer: str = ""
    since: float = 0.0

    def describe(self, now: float | None = None) -> str:
        """``"waits 12 s for room at consumer 'sink/in' of channel 'out' (...)"``."""
        held = max(0.0, (time.time() if now is None else now) - self.since)
        peer = self.peer or "any"
        return f"waits {held:.0f} s for " + _TEXT[self.kind].format(channel=self.channel, peer=peer)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a status report."""
        d = asdict(self)
        d["kind"] = self.kind.value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Wait:
        """From :meth:`to_dict`.

        Raises:
            ValueError: for an unknown kind.
        """
        return cls(WaitKind(d["kind"]), str(d["channel"]), str(d.get("peer", "")), float(d.get("since", 0.0)))


# Thread ident -> its current wait. One entry per blocked thread: a dict write and
# delete per wait, read by status reports from another thread (atomic dict operations).
_WAITS: dict[int, Wait] = {}


def begin(kind: WaitKind, channel: str, peer: str = "", since: float | None = None) -> Wait | None:
    """Note that the calling thread waits for ``kind``; returns the wait it was in (give it to :func:`end`).

    For loops that decide to block only on some passes; elsewhere :func:`waiting` is simpler.
    A wait for the same thing as the one it is nested in keeps that one's start: a
    receive that waits in slices (to give way at step boundaries) is one wait.

    Args:
        kind, channel, peer: what it waits for.
        since: when the wait began (default: now, or the outer wait's start, see above).
    """
    ident = threading.get_ident()
    outer = _WAITS.get(ident)
    if since is None:
        same = outer is not None and (outer.kind, outer.channel, outer.peer) == (kind, channel, peer)
        since = outer.since if same else time.time()  # type: ignore[union-attr]
    _WAITS[ident] = Wait(kind, channel, peer, since)
    return outer


def end(outer: Wait | None) -> None:
    """The calling thread's wait from :func:`begin` is over; ``outer`` (a wait it is nested in) shows again."""
    if outer is None:
        _WAITS.pop(threading.get_ident(), None)
    else:
        _WAITS[threading.get_ident()] = outer


@contextmanager
def waiting(kind: WaitKind, channel: str, peer: str = "") -> Iterator[None]:
    """Note, for the calling thread, that it waits for ``kind`` until the block ends.

    A nested wait (a send waiting for room inside a flush) shows while it lasts;
    the outer one shows again after.
    """
    outer = begin(kind, channel, peer)
    try:
        yield
    finally:
        end(outer)


def current(thread: threading.Thread | None) -> Wait | None:
    """What ``thread`` waits for now (``None``: it does not wait in the data plane, or it is not running)."""
    if thread is None or thread.ident is None:
        return None
    return _WAITS.get(thread.ident)


__all__ = ["Wait", "WaitKind", "begin", "current", "end", "waiting"]

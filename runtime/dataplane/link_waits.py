"""The two waits of a producer's stream: for room to queue a message, and for everything queued to be accepted.

Both run in a producer's thread with the link's condition, which credits,
acknowledgements, a failure and the producer's cancel notify; neither polls.
They may take the writer role on the way (to write a request for credits, or
for the last acknowledgement), as any producer thread does.
"""

from __future__ import annotations

import time
from typing import Any

from coupler.runtime.dataplane import waits
from coupler.runtime.dataplane.acks import Link
from coupler.runtime.dataplane.cancel import Cancel, waking
from coupler.runtime.dataplane.waits import WaitKind
from coupler.runtime.dataplane.window import Room
from coupler.runtime.errors import ChannelTimeout, Interrupted


def take_room(link: Link, nbytes: int, deadline: float | None, timeout: float | None, cancel: Cancel | None) -> None:
    """Take a credit (``Queue``) or window room for a message of ``nbytes``; wait while there is none.

    Call with the lock held. A wait is noted (see :mod:`~coupler.runtime.dataplane.waits`) only
    once the send blocks.

    Raises:
        ChannelTimeout: no room by ``deadline``.
        Interrupted: ``cancel`` was set.
        ConsumerGone: the link failed (or ChannelClosed).
    """
    window = link.window
    link.raise_if_failed()
    if window.room(nbytes) is Room.TAKEN:  # the common case, without the wait's set-up
        return
    outer: Any = False
    try:
        with waking(cancel, link.cond):
            while True:
                link.raise_if_failed()
                room = window.room(nbytes)
                if room is Room.TAKEN:
                    return
                if room is Room.ASK and not link.writing:
                    link.cond.release()  # write the request for credits, then look again
                    try:
                        link.pump()
                    finally:
                        link.cond.acquire()
                    continue
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    why = "back-pressure: its queue is full, or the link to its worker is stalled" if link.queue else "too many bytes in flight"
                    raise ChannelTimeout(
                        f"channel {link.channel!r}: consumer {link.consumer!r} did not accept the message "
                        f"within the timeout ({why})"
                    )
                if cancel is not None and cancel.is_set():
                    raise Interrupted("send interrupted: the actor is stopping")
                if outer is False:
                    outer = waits.begin(WaitKind.ROOM, link.channel, link.consumer)
                link.cond.wait(remaining)  # credits, acknowledgements, a failure and the cancel notify
    finally:
        if outer is not False:
            waits.end(outer)


def wait_acknowledged(link: Link, deadline: float | None, timeout: float | None, cancel: Cancel | None) -> None:
    """Wait until nothing is pending or in flight (or the link failed); asks for the last acknowledgement.

    Raises:
        ChannelTimeout: the consumer did not take everything within ``timeout``.
        Interrupted: the actor is stopping.
    """
    while True:
        with link.lock:
            if link.window.drained or link.error is not None or link.dead:
                break
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise ChannelTimeout(f"channel {link.channel!r}: consumer {link.consumer!r} did not take everything within {timeout} s")
            if cancel is not None and cancel.is_set():
                raise Interrupted("flush interrupted: the actor is stopping")
            # Everything is written, but the last batch did not ask for an acknowledgement: ask now.
            sync = link.window.ask_sync()
            if not sync:
                with waking(cancel, link.cond):
                    if cancel is None or not cancel.is_set():  # again, now that a cancel would notify
                        link.cond.wait(remaining)
        if sync:
            link.pump()


__all__ = ["take_room", "wait_acknowledged"]

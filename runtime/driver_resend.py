"""What a script's publisher sent since its relay's last checkpoint, kept to send again (sans-IO).

A producing actor whose worker is lost restarts from its checkpoint and sends
again what came after it. A coupling script does not restart: its publisher
(:class:`~coupler.runtime.driver.Publisher`) keeps copies of what it sent that
the relay's last checkpoint does not cover, and sends them again, under the
same sequence numbers, to a relay that resumed before them. Consumers drop the
ones they already had (their marks), so every send that returned a number
arrives once.

The log keeps a gap-free run of numbers that starts at the relay's checkpoint,
up to ``limit_bytes`` of payload. A message that does not fit is not kept, and
nothing after it either until a checkpoint covers it (as the producers' replay
logs do, ``runtime/dataplane/outbox.py``): what is kept is then still the part
right after the checkpoint, and :meth:`ResendLog.since` says where it ends.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any, NamedTuple

import numpy as np

from coupler.runtime.message import flatten, to_host, unflatten

logger = logging.getLogger(__name__)


class Kept(NamedTuple):
    """One message kept: its number, its payload (copied) and the keywords of its send."""

    seq: int
    data: Any
    kwargs: dict[str, Any]
    nbytes: int


class ResendLog:
    """A publisher's messages since its relay's last checkpoint (see the module docstring).

    Args:
        source: the publisher's source name (for the warning when it is full).
        channel: its channel.
        limit_bytes: payload bytes kept, at most (0: nothing is kept, at-least-once is off).
    """

    def __init__(self, source: str, channel: str, limit_bytes: int) -> None:
        self.source, self.channel, self.limit_bytes = source, channel, limit_bytes
        self.items: deque[Kept] = deque()
        self.nbytes = 0
        self.full_from: int | None = None  # the first number not kept since the log filled (None: whole)
        self.warned = False

    @property
    def keeps(self) -> bool:
        """Whether it keeps anything at all."""
        return self.limit_bytes > 0

    @staticmethod
    def copy(data: Any) -> Any:
        """A copy of ``data``'s arrays, on the host, that the script cannot change.

        Raises:
            TypeError: as :func:`~coupler.runtime.message.flatten` for what is not a pytree of arrays.
        """
        leaves, treedef = flatten(data)
        return unflatten(treedef, [np.array(a, copy=True) for a in to_host(leaves)])

    def add(self, seq: int, data: Any, kwargs: dict[str, Any], checkpointed: int | None) -> None:
        """Keep message ``seq`` (its ``data`` from :meth:`copy`); forget what ``checkpointed`` covers.

        Args:
            seq: its number (one more than the last one added, except after a skip).
            data: its payload, copied.
            kwargs: the keywords of its send (timestamp, step, meta, timeout).
            checkpointed: where the relay's last checkpoint resumes (``None``: none yet).
        """
        if checkpointed is not None:
            self.forget_before(checkpointed)
        if not self.keeps:
            return
        nbytes = sum(int(a.nbytes) for a in flatten(data)[0])
        if self.full_from is not None or (self.items and self.nbytes + nbytes > self.limit_bytes):
            if self.full_from is None:
                self.full_from = seq
            if not self.warned:
                self.warned = True
                logger.warning(
                    "publisher %r on %r: more than %d bytes sent since its relay's last checkpoint; until the next "
                    "covers them, later messages are not kept to send again if the relay's worker is lost (raise "
                    "coupler.delivery.retain-bytes or checkpoint more often)", self.source, self.channel, self.limit_bytes,
                )
            return
        self.items.append(Kept(seq, data, kwargs, nbytes))
        self.nbytes += nbytes

    def forget_before(self, seq: int) -> None:
        """Forget every message numbered below ``seq`` (a checkpoint of the relay covers them)."""
        items = self.items
        while items and items[0].seq < seq:
            self.nbytes -= items.popleft().nbytes
        if self.full_from is not None and self.full_from < seq:
            self.full_from = None  # whole again: what was not kept is covered

    def since(self, start: int) -> list[Kept]:
        """What was kept from number ``start`` on, in order, as long as the numbers follow each other.

        A relay that resumed at ``start`` gets these again; the first number after them
        (``start + len(...)``) is where a hole starts, if the caller's next is beyond it.
        """
        self.forget_before(start)
        out: list[Kept] = []
        for item in self.items:
            if item.seq != start + len(out):
                break
            out.append(item)
        return out


__all__ = ["Kept", "ResendLog"]

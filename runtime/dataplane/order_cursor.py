"""One input's place in a restored merging actor's recorded take order.

A restored actor that merges several ``Queue`` inputs repeats the order in
which its predecessor took their messages (input-order logging, see
:mod:`coupler.runtime.dataplane.lineage`). Each input buffer holds an
:class:`OrderCursor` over the shared :class:`~coupler.runtime.dataplane.lineage.ReplayOrder`:
which held message ``get`` hands out next, and giving the order up when its
head does not come in time (liveness over exactness, said in the log). The
cursor is sans-IO: the buffer calls it with its lock held.
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

from coupler.runtime.dataplane.lineage import ReplayOrder
from coupler.runtime.message import Message

logger = logging.getLogger(__name__)


class OrderCursor:
    """A buffer's view of the recorded order it follows (``order`` is ``None`` while it follows none).

    Args:
        channel: the buffer's channel, whose messages the order names.
    """

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.order: ReplayOrder | None = None  # a restored merging actor's recorded take order
        self.wait = 0.0  # seconds the order's head may take to arrive (see follow)
        self.since = 0.0  # when the order last moved

    def follow(self, order: ReplayOrder, wait: float) -> None:
        """Follow ``order`` (none if it is empty); give it up after ``wait`` s without its head arriving."""
        self.order = order if len(order) else None
        self.wait = wait
        self.since = time.monotonic()

    def extra(self) -> int:
        """Slots the buffer may hold beyond its size while the order lasts: as many as it has takes left."""
        return len(self.order) if self.order is not None else 0

    def pick(self, items: Sequence[Message]) -> int | None:
        """The index in ``items`` of the message ``get`` hands out next, or ``None``."""
        order = self.order
        if order is not None and not len(order):
            order = self.order = None  # another input took the last of it
        if order is None:
            return 0 if items else None
        i = order.pick(self.channel, items)
        if i is None and time.monotonic() - self.since > self.wait:
            logger.warning(
                "channel %r: the recorded take %s did not come within %s s; repeating the predecessor's order "
                "is given up (%d takes left), inputs run freely", self.channel, order.head(), self.wait, len(order),
            )
            order.abandon()
            self.order = None
            return 0 if items else None
        return i

    def took(self) -> None:
        """The order's head was handed out (call only while following an order)."""
        assert self.order is not None
        self.order.pop()
        self.since = time.monotonic()

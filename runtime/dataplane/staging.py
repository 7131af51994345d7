"""What a link's queued items hold: a producer's message made independent of its arrays.

One :class:`Staging` per link (see :mod:`~coupler.runtime.dataplane.link`)
turns the arrays a producer passes to ``send`` into the link's item:

- a **small** message: a copy in arrays the link recycles once the consumer
  accepted it (a memcpy, not an allocation; see :meth:`Staging.small_item`);
- a **large** message to a consumer on this host: a shared-memory segment of
  the link's :class:`~coupler.runtime.dataplane.shm.Arena`, filled once;
- a **large** message over TCP: the producer's own arrays, written without a
  copy (the send waits for the write if they are writable), or a read-only
  copy when a replay log will keep it.

Thread model: producers that share the link stage their messages at the same
time, outside the link's lock; the arena has its own lock, and spare arrays are
popped atomically. The link's acknowledgement reader gives arrays back
(:meth:`Staging.recycle`).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from coupler.runtime.dataplane import shm, wire
from coupler.runtime.dataplane.payloads import Item, detach_leaves, frozen_leaves, release_segments
from coupler.runtime.dataplane.settings import TransportConfig
from coupler.runtime.message import Spec

if TYPE_CHECKING:
    from coupler.runtime.dataplane.outbox import ReplayLog

logger = logging.getLogger(__name__)


class Staging:
    """A link's copies and segments (see the module docstring).

    Args:
        channel: channel name (for log messages).
        spec: the channel's spec (fields of every message).
        config: transport settings (the shared-memory pool's size).
        log: the consumer's replay log, or ``None``: a large message over TCP is
            then copied read-only, unless the log is full and will not keep it.
    """

    def __init__(self, channel: str, spec: Spec, config: TransportConfig, log: ReplayLog | None) -> None:
        self.channel, self.log = channel, log
        self.shm = False  # whether the consumer maps our segments (set once the stream is open)
        self.arena = shm.Arena(config.shm_pool_bytes)
        self.arena_lock = threading.Lock()
        # Per field, arrays of small messages the consumer accepted, for small_item to reuse.
        self._spare: list[list[np.ndarray]] = [[] for _ in spec.fields]
        self._spare_max = max(16, min(1024, (4 << 20) // max(1, spec.nbytes)))  # about 4 MiB per link
        self.recycled = 0  # small messages whose copies came back for reuse

    def small_item(self, header: dict[str, Any], leaves: list[Any], nbytes: int) -> Item:
        """A small message's item, its writable leaves copied into arrays this link recycles.

        A fresh copy costs an allocation and a numpy wrapper, and its free happens
        in the acknowledging thread: in place (the GIL held, see ``wire.copy_small``)
        into an array the consumer has already accepted, it is a memcpy. Arrays
        come back in :meth:`recycle`, only from items whose every leaf was copied
        here, so no array anyone else holds is ever written.
        """
        spare = self._spare
        out = []
        for k, a in enumerate(leaves):
            if type(a) is not np.ndarray:
                return Item(header, detach_leaves(leaves), nbytes, False)  # keeps or copies as it must
            flags = a.flags  # once: every .flags builds a new object
            if not flags.writeable or a.dtype.hasobject:
                return Item(header, detach_leaves(leaves), nbytes, False)
            try:  # pop, not test-then-pop: producers that share the link run this concurrently
                b = spare[k].pop() if flags.c_contiguous and a.dtype.isbuiltin == 1 else None
            except IndexError:
                b = None
            if b is None:
                b = wire.copy_small(a)
            else:
                b.data.cast("B")[:] = a.data.cast("B")  # a memcpy; the spec check fixed shape and dtype
            out.append(b)
        return Item(header, out, nbytes, False, None, None, None, True)  # positional (recycled=True): per message

    def prepare(self, item: Item) -> None:
        """Make a large item independent of the producer's arrays (or arrange to wait for the write)."""
        leaves = item.leaves
        assert leaves is not None
        if item.large and self.shm:
            try:
                with self.arena_lock:
                    item.segment, item.offsets, _ = self.arena.reserve([a.nbytes for a in leaves])
                shm.fill(item.segment, item.offsets, leaves)
                item.leaves = None
                return
            except shm.ShmUnavailable as e:
                logger.debug("shared memory unavailable for %s, sending over TCP: %s", self.channel, e)
        if item.large:
            if self.log is not None and not self.log.full:
                # Kept for a replay after send returns, when the producer may change its arrays.
                item.leaves = frozen_leaves(leaves)
                return
            # Zero copy: the sender writes from these arrays; wait for that unless
            # nobody can change them (read-only, e.g. JAX's host buffers).
            if any(a.flags.writeable for a in leaves):
                item.written = threading.Event()
            return
        item.leaves = detach_leaves(leaves)

    def recycle(self, items: list[Item]) -> None:
        """The consumer accepted ``items``: their segments and (unless a log keeps them) their copies may be reused."""
        if items[0].segment is not None:
            release_segments(items)
        spare = self._spare
        for it in items:
            # A logged item's copies stay in the log: they cannot be reused (see ReplayLog).
            if it.recycled and not it.logged and spare and len(spare[0]) < self._spare_max:  # (a spec may have no fields)
                for k, b in enumerate(it.leaves):  # type: ignore[arg-type]
                    spare[k].append(b)
                self.recycled += 1

    def close(self) -> None:
        """Unlink the segments (the consumer keeps its mappings); no segment is made after this."""
        with self.arena_lock:
            self.arena.close()


__all__ = ["Staging"]

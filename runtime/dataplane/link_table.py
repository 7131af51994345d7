"""A worker's producer links, one per (channel, consumer, stream), and their ends.

:class:`~coupler.runtime.dataplane.dispatch.Dispatch` owns one :class:`LinkTable`.
The table decides which link is the live one for a key (two threads that open
the same stream at once keep one of them), closes links by channel and consumer,
and drops a broken link once the link has handed back what it had not
delivered. It never writes to a link: that is the senders' part.

Its lock guards the table, not the links in it; it is taken with no other
data-plane lock held and never held while a link is closed or waited for (see
the lock order in :mod:`coupler.runtime.dataplane`).
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from coupler.runtime.dataplane.link import Link

logger = logging.getLogger(__name__)

# Seconds a sender waits for a broken stream's reader to hand back what the consumer did not accept.
LINK_WIND_UP_TIMEOUT = 10.0
LinkKey = tuple[str, str, str]  # (channel, consumer, stream)


class LinkTable:
    """The live links of one worker's producers, by (channel, consumer, stream)."""

    def __init__(self) -> None:
        self._links: dict[LinkKey, Link] = {}
        self._lock = threading.Lock()

    def live(self, key: LinkKey) -> Link | None:
        """The link at ``key`` if it is alive (a dict read is atomic: no lock on the hot path)."""
        link = self._links.get(key)
        return link if link is not None and not link.dead else None

    def get(self, key: LinkKey) -> Link | None:
        """The link at ``key``, alive or not."""
        return self._links.get(key)

    def install(self, key: LinkKey, make: Callable[[], Link]) -> Link:
        """The live link at ``key``: a new one from ``make()``, unless another thread installed one meanwhile.

        ``make`` opens a stream, so it runs without the lock; a link it made that
        lost the race is closed without handing anything back (nothing was sent on it).
        """
        link = make()
        with self._lock:
            old = self._links.get(key)
            if old is not None and not old.dead:
                winner: Link | None = old
            else:
                self._links[key] = link
                winner = None
        if winner is not None:
            link.close(orphan=False)
            return winner
        return link

    def items(self, channel: str | None = None) -> list[tuple[LinkKey, Link]]:
        """The links (of ``channel`` only, if given) with their keys, as they are now."""
        with self._lock:
            return [(k, link) for k, link in self._links.items() if channel is None or k[0] == channel]

    def values(self) -> list[Link]:
        """Every link, as they are now."""
        with self._lock:
            return list(self._links.values())

    def __len__(self) -> int:
        return len(self._links)

    def close(self, channel: str | None = None, keep: set[LinkKey] | None = None, cid: str | None = None, orphan: bool = True) -> None:
        """Close links: of ``channel`` (every channel if ``None``), of consumer ``cid`` only if given, except those in ``keep``.

        Args:
            channel: the channel, or ``None`` for every link (teardown).
            keep: keys left open.
            cid: only this consumer's links.
            orphan: hand back what they did not deliver (to send again), or drop it.
        """
        with self._lock:
            keys = [
                k for k in self._links
                if (channel is None or k[0] == channel) and (cid is None or k[1] == cid) and (keep is None or k not in keep)
            ]
            closing = [self._links.pop(k) for k in keys]
        for link in closing:
            link.close(orphan=orphan)

    def drop_broken(self, key: LinkKey, link: Link) -> None:
        """Forget a link whose stream broke, once its reader handed back what it had not delivered.

        Waiting for that keeps anything sent from now on, through a new stream,
        from overtaking those messages: a consumer drops a message older than one
        it already has from the same source as a duplicate.
        """
        if not link.wound_up.wait(LINK_WIND_UP_TIMEOUT):
            logger.warning("channel %r: the broken stream to %r did not wind up within %s s", key[0], key[1], LINK_WIND_UP_TIMEOUT)
        with self._lock:
            if self._links.get(key) is link:
                del self._links[key]


__all__ = ["LINK_WIND_UP_TIMEOUT", "LinkKey", "LinkTable"]

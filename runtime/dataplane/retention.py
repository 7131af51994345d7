"""How long a worker keeps what it needs to send on a channel, and letting it go.

To send on a channel a worker keeps its route, its producers' counters, a
replay log and outbox per consumer, and a link per consumer: each link holds a
reader thread, a socket and a shared-memory arena here, and a receiving thread
on the consumer's worker. :class:`SendRetention` drops them when the channel
closes (:meth:`SendRetention.forget`) and, for an open channel, once no producer
here and no uncommitted replay log needs them (:meth:`SendRetention.release_if_idle`).
"""

from __future__ import annotations

import threading
from typing import Any, Mapping, MutableMapping

from coupler.runtime.dataplane.dispatch import Dispatch
from coupler.runtime.dataplane.routing import ProducerStats, Route


class SendRetention:
    """Drops a channel's routes, counters, links and outboxes on this worker when nothing needs them.

    Args:
        routes: the worker's routes, by channel (shared with the endpoint and its sender).
        producers: the producers' counters, by (channel, source) (shared likewise).
        lock: the endpoint's lock over ``routes`` and ``producers`` against their removal.
        dispatch: the worker's links and outboxes.
        actors: the actors registered on this worker, by name (their ``outputs`` are read).
    """

    def __init__(
        self,
        routes: MutableMapping[str, Route],
        producers: MutableMapping[tuple[str, str], ProducerStats],
        lock: threading.Lock,
        dispatch: Dispatch,
        actors: Mapping[str, Any],
    ) -> None:
        self.routes, self.producers, self.lock, self.dispatch, self.actors = routes, producers, lock, dispatch, actors

    def forget(self, channel: str) -> None:
        """Drop everything this worker keeps to send on a closed ``channel``.

        Its route, its producers' counters (the broker keeps their last ones as
        departed totals), its outboxes (a closed channel replays nothing), and
        its links. A sender still blocked on the old route sees it closed
        (:class:`~coupler.runtime.errors.ChannelClosed`); a later one asks the
        broker again and is refused.

        Args:
            channel: channel name.
        """
        with self.lock:
            for key in [k for k in self.producers if k[0] == channel]:
                del self.producers[key]
            self.routes.pop(channel, None)
        self.dispatch.forget(channel, None)

    def release_if_idle(self, channel: str, ending: str = "") -> None:
        """Close ``channel``'s links and drop its route here if no producer on this worker needs them.

        A producer needs them while its actor (other than ``ending``) is
        registered here with an output on the channel. A consumer needs them
        while a replay log holds messages it has not committed: its successor
        must get them again (docs/reliability.md), and its commits come back
        through the links. So this runs again on every commit; the consumer's
        departure or the channel's close frees the rest. An ended producer
        flushed, so the links carry nothing; what one still held would be
        handed back for a resend, which opens a new link.

        The producers' counters stay until the channel is closed, so that the
        broker's totals count what they sent even if they ended before the next report.

        Args:
            channel: channel name.
            ending: the producer that is ending now (still registered).
        """
        for name, actor in list(self.actors.items()):
            if name != ending and any(p.channel == channel for p in getattr(actor, "outputs", {}).values()):
                return
        if self.dispatch.outboxes.holds(channel):
            return
        with self.lock:
            self.routes.pop(channel, None)
        self.dispatch.close_links(channel, orphan=True)
        self.dispatch.forget(channel, None)


__all__ = ["SendRetention"]

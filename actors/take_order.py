"""An actor host's take order: the ``Queue`` takes it logs for its consumers, and repeats after a restart.

Only an actor that sends and takes from ``Queue`` inputs logs its takes, and only
with retention on (without it nothing is replayed): what it sends may depend on
their order. Each message it sends carries the takes
since its previous one on that channel; a restarted instance gathers them
back from its consumers and takes its replayed inputs in that order. The
protocol is :mod:`coupler.runtime.dataplane.lineage` (sans-IO); this module is
the host's side of it, shared by its ports and its checkpoints.
"""

from __future__ import annotations

import logging
import threading
from typing import Mapping

from coupler.runtime import InPort, Message, OutPort
from coupler.runtime.dataplane.endpoint import Endpoint
from coupler.runtime.dataplane.lineage import ReplayOrder, TakeLog, TakesNote, replay_order
from coupler.runtime.dataplane.settings import delivery_config

logger = logging.getLogger(__name__)


class TakeOrder:
    """The numbered ``Queue`` takes of one actor host since its last committed checkpoint.

    Thread-safe: the run loop records takes and sends notes, while ``commit``
    comes from Dask's actor thread; a commit moves the log's base and its list
    together, so every access holds the lock.
    """

    def __init__(self) -> None:
        self._log = TakeLog()
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        """The number of the next take (a checkpoint's ``"takes"``)."""
        with self._lock:
            return self._log.count

    def record(self, channel: str, m: Message) -> None:
        """``m`` was taken from ``channel``."""
        with self._lock:
            self._log.record(channel, m.source, m.seq)

    def note_for(self, channel: str) -> TakesNote | None:
        """What the next message on ``channel`` carries (``None``: no take since the last one)."""
        with self._lock:
            return self._log.note_for(channel)

    def noted(self, channel: str, note: TakesNote) -> None:
        """A message on ``channel`` went with ``note``."""
        with self._lock:
            self._log.sent(channel, note)

    def commit(self, takes: int) -> None:
        """A checkpoint whose next take was ``takes`` is stored: forget the takes before it.

        Raises:
            ValueError: for a count beyond the takes made so far.
        """
        with self._lock:
            self._log.commit(takes)

    def follow_predecessor(
        self, name: str, endpoint: Endpoint, inputs: Mapping[str, InPort], outputs: Mapping[str, OutPort], since: int
    ) -> None:
        """Take the replayed inputs in the order the predecessor took them, as its consumers recorded it.

        Its consumers hold the takes that its messages carried; joined, from the
        checkpoint's first take on, they are the order to repeat.

        Args:
            name: the actor's name (the source its consumers know it by).
            endpoint: its worker's endpoint.
            inputs: its input ports; those that log takes follow the order.
            outputs: its output ports (their channels' consumers hold the takes).
            since: the checkpoint's ``"takes"``: the number of its next take.
        """
        with self._lock:
            self._log = TakeLog(since)
        logging_inputs = [p for p in inputs.values() if getattr(p, "logs_takes", False)]
        delivery = delivery_config()
        if not logging_inputs or not delivery.retain:
            return  # without retention the replayed inputs may not come again: nothing to wait for
        channels = sorted({p.channel for p in outputs.values()})
        order = replay_order(endpoint.gather_takes(channels, name, since), since)
        shared = ReplayOrder(order)  # one order across inputs: their interleaving is repeated too
        for port in logging_inputs:
            port.buffer.follow(shared, delivery.replay_order_wait)
        if order:
            logger.info("actor %r repeats %d takes in its predecessor's order", name, len(order))

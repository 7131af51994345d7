"""A worker's periodic report to the broker: counters by channel, its actors' status, its retirement.

The report is the only steady traffic from a worker to the broker
(:mod:`~coupler.runtime.control.tallies` sums it). Its tick, on the worker's
event loop, also does the worker's stream housekeeping that has no event of
its own to run on: sweeping shared-memory names orphaned by a killed process,
and giving back credits a ``Queue`` consumer granted to links gone idle.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Mapping

import psutil
from tornado.ioloop import PeriodicCallback

from coupler.runtime.dataplane import shm
from coupler.runtime.dataplane.buffers import ConsumerBuffer
from coupler.runtime.dataplane.dispatch import Dispatch
from coupler.runtime.dataplane.routing import ProducerStats

logger = logging.getLogger(__name__)

SWEEP_EVERY = 10.0  # seconds between sweeps of orphaned shared-memory names


def retire_at(worker: Any) -> float | None:
    """When a worker with a lifetime (walltime) will close itself, as epoch seconds.

    Args:
        worker: the Dask worker (its ``lifetime``, if any, is read).

    Returns:
        Epoch seconds, or ``None`` for a worker without a lifetime.
    """
    lifetime = getattr(worker, "lifetime", None)
    if not lifetime:
        return None
    # Dask counts the lifetime from the Worker's construction, a moment after the
    # process started: using the process start makes the estimate slightly early.
    return psutil.Process().create_time() + float(lifetime)


class Reporter:
    """The actors a worker reports on, what it reports, and the periodic tick that sends it.

    Args:
        worker: the Dask worker (its ``scheduler`` receives the report; its ``status`` gates it).
        address: this worker's address (asked on each report: it is known once the worker runs).
        buffers: the consumer buffers, by (channel, consumer) (shared with the endpoint).
        producers: the producers' counters, by (channel, source) (shared with the endpoint).
        dispatch: the worker's links (their counters; idle credits).
        interval: seconds between reports.
    """

    def __init__(
        self,
        worker: Any,
        address: Callable[[], str],
        buffers: Mapping[tuple[str, str], ConsumerBuffer],
        producers: Mapping[tuple[str, str], ProducerStats],
        dispatch: Dispatch,
        interval: float,
    ) -> None:
        self.worker, self.address, self.buffers, self.producers, self.dispatch = worker, address, buffers, producers, dispatch
        self.actors: dict[str, Any] = {}  # name -> object with status_dict()
        self.retire_at = retire_at(worker)
        self._last_sweep = time.monotonic()
        self._callback = PeriodicCallback(self.tick, interval * 1000)

    def start(self) -> None:
        """Report every ``interval`` seconds from now (call on the worker's event loop)."""
        self._callback.start()

    def stop(self) -> None:
        """Send no more reports."""
        self._callback.stop()

    def register(self, name: str, actor: Any) -> None:
        """Report ``actor.status_dict()`` under ``name`` from now on."""
        self.actors[name] = actor

    def unregister(self, name: str) -> None:
        """Stop reporting actor ``name`` (nothing happens if it was not reported)."""
        self.actors.pop(name, None)

    def payload(self) -> dict[str, Any]:
        """This worker's counters, by channel, and its actors' status.

        Returns:
            The keyword arguments of the broker's ``coupler_report``, less the address:
            ``channels`` (per channel: ``producers``, ``consumers``, ``links``),
            ``actors`` (name -> status) and ``retire_at``.
        """
        channels: dict[str, Any] = {}
        for (ch, src), p in self.producers.items():
            channels.setdefault(ch, {"producers": {}, "consumers": {}})["producers"][src] = p.as_dict()
        for (ch, cid), buf in self.buffers.items():
            channels.setdefault(ch, {"producers": {}, "consumers": {}})["consumers"][cid] = {
                **buf.stats.as_dict(),
                "policy": type(buf).__name__,
                "worker": self.address(),
            }
        actors = {}
        for name, a in list(self.actors.items()):
            try:
                actors[name] = a.status_dict()
            except Exception as e:  # a broken status must not stop the reports
                actors[name] = {"state": "unknown", "error": repr(e)}
        for link in self.dispatch.links.values():
            ch = channels.setdefault(link.channel, {"producers": {}, "consumers": {}})
            ch.setdefault("links", []).append(link.stats())
        return {"channels": channels, "actors": actors, "retire_at": self.retire_at}

    async def tick(self) -> None:
        """Housekeeping, then the report (a failed report is logged, and the next one tries again)."""
        if time.monotonic() - self._last_sweep > SWEEP_EVERY:
            self._last_sweep = time.monotonic()
            shm.sweep_orphans()  # names left by a process killed mid-handshake
        links = self.dispatch.links.values()
        idle = [link for link in links if link.give_back_idle_credits()]
        if idle:  # a write may block: not on the event loop
            threading.Thread(target=lambda: [link.wake() for link in idle], name="coupler-credits", daemon=True).start()
        if self.worker.status.name not in ("running", "paused"):
            return
        try:
            reply = await self.worker.scheduler.coupler_report(address=self.address(), **self.payload())
        except Exception as e:
            logger.debug("coupler report failed: %s", e)
            return
        if isinstance(reply, dict) and reply.get("status") == "error":  # a bug here: say so, every time
            logger.warning("coupler: the broker refused this worker's report: %s", reply.get("message"))


__all__ = ["Reporter", "retire_at"]

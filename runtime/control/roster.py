"""The workers as the supervisor sees them: which are alive, when each retires, which can host an actor.

Workers' retirement times come from the broker's snapshot (the endpoints
report them); for a worker that has not reported yet the roster asks the
worker itself (:func:`~coupler.runtime.dataplane.report.retire_at`, what its
reports carry). The roster is refreshed once per supervisor poll and read in between; it decides nothing about actors.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from distributed import Client

from coupler.runtime.control.spawning import SpawnSpec
from coupler.runtime.dataplane.report import retire_at

logger = logging.getLogger(__name__)


def _retire_at_here(dask_worker: Any) -> float | None:
    """:func:`retire_at` of the worker this runs on (``Client.run`` passes the worker only by this name)."""
    return retire_at(dask_worker)


class WorkerRoster:
    """The live workers and their retirement times, as last refreshed.

    Args:
        client: the coupling's client.
        retire_margin: a worker that retires within this many seconds is retiring.
        clock: wall-clock time source (``time.time``), for retirement deadlines.
    """

    def __init__(self, client: Client, retire_margin: float, clock: Callable[[], float]) -> None:
        self.client = client
        self.retire_margin = retire_margin
        self.clock = clock
        self.live: dict[str, dict[str, Any]] = {}  # address -> the scheduler's info on it
        self._retire_at: dict[str, float | None] = {}

    def refresh(self) -> None:
        """Read the live workers from the scheduler, and the retirement times of new ones."""
        self.live = dict(self.client.scheduler_info(n_workers=-1)["workers"])
        reported: dict[str, Any] = {}
        try:
            reported = self.client.sync(self.client.scheduler.coupler_snapshot).get("workers", {})
        except Exception as e:  # a broker without worker reports: ask the workers below
            logger.debug("coupler supervisor: no worker reports from the broker: %s", e)
        for addr, w in reported.items():
            if addr in self.live and "retire_at" in w:
                self._retire_at[addr] = w["retire_at"]
        unknown = [a for a in self.live if a not in self._retire_at]
        if unknown:
            answers = self.client.run(_retire_at_here, workers=unknown, on_error="return")
            for addr, value in answers.items():
                if not isinstance(value, BaseException):
                    self._retire_at[addr] = value
        for addr in list(self._retire_at):
            if addr not in self.live:
                del self._retire_at[addr]

    def retire_times(self) -> dict[str, float | None]:
        """Each live worker's retirement time (epoch seconds; ``None``: no lifetime), as last seen."""
        return {a: self._retire_at.get(a) for a in self.live}

    def gone(self, worker: str, fresh: bool = False) -> bool:
        """Whether ``worker`` is no longer live (``fresh``: ask the scheduler now, not the last refresh)."""
        live = self.client.scheduler_info(n_workers=-1)["workers"] if fresh else self.live
        return bool(live) and worker not in live

    def retiring(self, worker: str, now: float, margin: float | None = None) -> bool:
        """Whether ``worker`` retires within ``margin`` seconds of ``now`` (default: the retire margin)."""
        at = self._retire_at.get(worker)
        return at is not None and at - now < (self.retire_margin if margin is None else margin)

    def candidates(self, spec: SpawnSpec) -> list[str]:
        """Live workers with the actor's resources (and among its pinned workers if any are left)
        that do not retire within the margin; those that stay for two margins if there are any."""
        now = self.clock()
        ok = []
        for addr, info in self.live.items():
            if self.retiring(addr, now):
                continue
            have = info.get("resources", {}) or {}
            if spec.resources and any(have.get(r, 0) < q for r, q in spec.resources.items()):
                continue
            ok.append(addr)
        if spec.workers:
            pinned = [a for a in ok if a in spec.workers]
            ok = pinned or ok  # pinned workers that are gone must not strand the actor
        lasting = [a for a in ok if not self.retiring(a, now, 2 * self.retire_margin)]
        return lasting or ok  # a worker that stays longer spares the actor a second move soon

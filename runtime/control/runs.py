"""Coupling runs: which client began each run, which runs ended, and refusing requests of ended ones.

Every :class:`~coupler.runtime.Coupling` is a run with an id of its own. A run
ends when its coupling closes or its Dask client goes (a driver killed); the
broker then closes the channels it declared. Ended runs are remembered (the
newest ``ENDED_RUNS_KEPT``), so that a stale driver's or actor's late request
is refused rather than taken for a new run.
"""

from __future__ import annotations

from collections import OrderedDict

from coupler.runtime.errors import ChannelClosed

# Ended runs remembered, so that a late request of one is refused.
ENDED_RUNS_KEPT = 4096


class RunBook:
    """The runs under way (run -> client id) and those that ended (newest last)."""

    def __init__(self) -> None:
        self.active: dict[str, str] = {}
        self.ended: OrderedDict[str, None] = OrderedDict()

    def check(self, run: object) -> None:
        """Refuse a request of a coupling run that has ended (a stale driver or actor).

        Raises:
            ValueError: for a run id that is not a string.
            ChannelClosed: for a run that has ended.
        """
        if not isinstance(run, str):
            raise ValueError(f"run must be a string, got {run!r}")
        if run and run in self.ended:
            raise ChannelClosed(f"coupling run {run!r} has ended; its channels are closed")

    def begin(self, run: str, client: str) -> None:
        """Run ``run`` of Dask client ``client`` is under way (checked by the caller)."""
        self.active[run] = client

    def end(self, run: object) -> bool:
        """End ``run``; whether it was under way (an unknown or ended run: nothing to do)."""
        if not isinstance(run, str) or run not in self.active:
            return False
        del self.active[run]
        self.ended[run] = None
        while len(self.ended) > ENDED_RUNS_KEPT:
            self.ended.popitem(last=False)
        return True

    def of_client(self, client: str) -> list[str]:
        """The runs under way that ``client`` began."""
        return [r for r, c in self.active.items() if c == client]

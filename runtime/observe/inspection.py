"""What people look at on the scheduler: the dashboard page and the ``/metrics`` series, as one plugin.

The broker keeps the control-plane state and knows nothing of how it is
shown; this plugin, registered after it, reads it for the dashboard page
(:mod:`coupler.runtime.observe.dashboard`) and the Prometheus collectors
(:mod:`coupler.runtime.observe.metrics`). So the imports go one way: inspection ->
dashboard, metrics -> broker.
"""

from __future__ import annotations

import logging
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

from coupler.runtime.control.broker import BROKER_NAME, Broker

logger = logging.getLogger(__name__)

INSPECTION_NAME = "coupler-inspection"


class Inspection(SchedulerPlugin):
    """Installs the coupler dashboard page and ``/metrics`` collectors for the scheduler's broker.

    A scheduler started elsewhere may lack Bokeh or prometheus_client, and a page
    that fails to build must not stop the coupling: both are logged and skipped.
    """

    name = INSPECTION_NAME
    idempotent = True

    def __init__(self) -> None:
        self._broker: Broker | None = None
        self._page: Any = None  # the dashboard page's Bokeh application, once installed
        self._collected = False  # whether /metrics reports the broker

    async def start(self, scheduler: Any) -> None:
        broker = scheduler.plugins.get(BROKER_NAME)
        if not isinstance(broker, Broker):
            logger.warning("no coupler broker on this scheduler (expected plugin %r): nothing to inspect", BROKER_NAME)
            return
        self._broker = broker
        try:  # imported here: the scheduler process needs them, a worker never does
            from coupler.runtime.observe import metrics

            metrics.register(broker)
            self._collected = True
        except ImportError as e:
            logger.warning("no coupler_* series on /metrics: %s", e)
        try:
            from coupler.runtime.observe import dashboard

            self._page = dashboard.install(scheduler)
        except Exception as e:
            logger.warning("no coupler page on the dashboard: %s", e, exc_info=not isinstance(e, ImportError))
        self._scheduler = scheduler

    async def close(self) -> None:
        """Take the page and the collectors off the scheduler."""
        if self._collected and self._broker is not None:
            from coupler.runtime.observe import metrics

            metrics.unregister(self._broker)
            self._collected = False
        if self._page is not None:
            from coupler.runtime.observe import dashboard

            dashboard.uninstall(self._scheduler, self._page)
            self._page = None

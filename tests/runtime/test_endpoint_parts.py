"""The endpoint's parts alone, without a worker: security, retention, the report's retirement time.

The parts together, on real workers, are tested by the channel, lifecycle and
reliability tests.
"""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from coupler.runtime.control.routing_table import RoutingTable
from coupler.runtime.dataplane.auth import AuthError, StreamKey
from coupler.runtime.dataplane.cancel import Cancel
from coupler.runtime.dataplane.dispatch import Dispatch
from coupler.runtime.dataplane.report import retire_at
from coupler.runtime.dataplane.retention import SendRetention
from coupler.runtime.dataplane.routing import ProducerStats, Route
from coupler.runtime.dataplane.security import fetch_stream_secret, ssl_contexts
from coupler.runtime.dataplane.settings import DeliveryConfig, TransportConfig
from coupler.runtime.policies import Queue


def test_the_stream_secret_is_set_from_the_brokers_reply() -> None:
    key = StreamKey()

    async def ask() -> dict[str, Any]:
        return {"status": "OK", "secret": b"s" * 32}

    asyncio.run(fetch_stream_secret(key, ask))
    assert key.secret(timeout=0) == b"s" * 32


def test_without_a_stream_secret_streams_are_refused_saying_why() -> None:
    key = StreamKey()

    async def ask() -> dict[str, Any]:
        raise OSError("no broker")

    asyncio.run(fetch_stream_secret(key, ask))
    with pytest.raises(AuthError, match="no broker"):
        key.secret(timeout=0)


def test_an_unsecured_comm_has_no_tls_contexts() -> None:
    assert ssl_contexts(SimpleNamespace(address="tcp://127.0.0.1:1", security=None)) == (None, None)


def test_retire_at_is_the_process_start_plus_the_lifetime() -> None:
    assert retire_at(SimpleNamespace()) is None and retire_at(SimpleNamespace(lifetime=None)) is None
    at = retire_at(SimpleNamespace(lifetime=3600))
    assert at == pytest.approx(psutil.Process().create_time() + 3600) and at <= time.time() + 3600


def _retention(actors: dict[str, Any]) -> tuple[SendRetention, dict[str, Route], dict[tuple[str, str], ProducerStats]]:
    routes: dict[str, Route] = {ch: Route(ch, RoutingTable(ch, 1, Queue())) for ch in ("c", "other")}
    producers = {("c", "p"): ProducerStats(), ("other", "p"): ProducerStats()}
    dispatch = Dispatch(
        address=lambda: "tcp://127.0.0.1:1", buffers={}, routes=routes, config=TransportConfig(shared_memory=False),
        delivery=DeliveryConfig(), host="h", ssl_context=None, key=StreamKey(b"k" * 32), closing=Cancel(),
        on_drained=lambda ch: None,
    )
    return SendRetention(routes, producers, threading.Lock(), dispatch, actors), routes, producers


def _actor(*channels: str) -> Any:
    return SimpleNamespace(outputs={f"out{i}": SimpleNamespace(channel=ch) for i, ch in enumerate(channels)})


def test_a_route_stays_while_another_producer_here_sends_on_it() -> None:
    retention, routes, producers = _retention({"a": _actor("c"), "b": _actor("c")})
    retention.release_if_idle("c", ending="a")
    assert "c" in routes


def test_the_last_producers_end_drops_the_route_but_keeps_its_counters() -> None:
    retention, routes, producers = _retention({"a": _actor("c"), "b": _actor("other")})
    retention.release_if_idle("c", ending="a")
    # The counters stay for the broker's totals until the channel closes.
    assert "c" not in routes and "other" in routes and ("c", "p") in producers


def test_a_closed_channel_is_forgotten_with_its_counters() -> None:
    retention, routes, producers = _retention({"a": _actor("c")})
    retention.forget("c")
    assert "c" not in routes and list(producers) == [("other", "p")]


def test_an_endpoint_whose_setup_failed_on_a_bad_setting_tears_down_quietly() -> None:
    """Dask tears a plugin down even when its setup raised: only what setup made is released."""
    import dask

    from coupler.runtime.dataplane.endpoint import Endpoint

    loop = asyncio.new_event_loop()
    worker = SimpleNamespace(loop=SimpleNamespace(asyncio_loop=loop), address="tcp://127.0.0.1:1")
    ep = Endpoint()
    try:
        with dask.config.set({"coupler.transport.spin": "soon"}), pytest.raises(ValueError, match="coupler.transport.spin"):
            ep.setup(worker)
        threads = threading.active_count()
        ep.teardown(worker)  # raised AttributeError ('reporter') before
        assert threading.active_count() == threads
    finally:
        loop.close()

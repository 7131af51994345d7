"""Prometheus ``coupler_*`` series on the scheduler's ``/metrics``, and the meters behind them.

The HTTP tests scrape a real 2-worker LocalCluster while actors run, and parse
the text with prometheus_client's own parser.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Iterator

import cloudpickle
import pytest
from prometheus_client.parser import text_string_to_metric_families

import inspection_actors
from coupler.runtime import Coupling, Queue
from coupler.runtime.control.broker import Broker
from coupler.runtime.control.status import MetricHistory, MetricLog, RateMeter
from inspection_actors import Fitter, Ticker

cloudpickle.register_pickle_by_value(inspection_actors)


# -- meters ------------------------------------------------------------------------------------
def test_rate_meter_is_the_slope_over_its_window() -> None:
    m = RateMeter(window=5.0)
    assert m.rate == 0.0  # no samples, no rate
    for t in range(11):  # 3 per second, then 10 per second from t=6
        m.add(float(t), 3.0 * t if t <= 6 else 18.0 + 10.0 * (t - 6))
    # The window keeps one sample at or before t=10-5=5: (5, 15) .. (10, 58): 43/5.
    assert m.rate == pytest.approx(43.0 / 5.0, rel=1e-12)


def test_rate_meter_starts_again_when_the_counter_restarts() -> None:
    m = RateMeter(window=5.0)
    m.add(0.0, 100.0)
    m.add(1.0, 200.0)
    m.add(2.0, 4.0)  # a replaced worker reports from 0 again
    assert m.rate == 0.0
    m.add(4.0, 10.0)
    assert m.rate == pytest.approx(3.0)
    with pytest.raises(ValueError, match="window must be > 0"):
        RateMeter(window=0)


def _report(received: int, taken: int, depth: int) -> dict:
    """One consumer's counters as a worker's report lists them (``Endpoint.report_payload``)."""
    c = {"received": received, "nbytes": 4 * received, "dropped": 0, "taken": taken, "depth": depth}
    return {"producers": {}, "consumers": {"learner/data": c}}


def test_channel_totals_keep_what_consumers_received_after_they_leave() -> None:
    """Totals (and the Prometheus counters made from them) never go back when a consumer detaches,
    moves, or loses its worker; depth is of now."""
    broker = Broker()
    assert broker.declare(name="pairs", policy={"kind": "queue", "maxsize": 8})["status"] == "OK"

    def totals() -> dict:
        return broker.snapshot()["channels"]["pairs"]["totals"]

    prod = {"producers": {"sim": {"sent": 20, "nbytes": 80, "last_seq": 19, "dropped": 0}}, "consumers": {}}
    broker.report("tcp://a:1", channels={"pairs": prod}, actors={})
    broker.report("tcp://b:1", channels={"pairs": _report(10, 7, 3)}, actors={})
    assert (totals()["received"], totals()["taken"], totals()["depth"]) == (10, 7, 3)
    broker.report("tcp://b:1", channels={}, actors={})  # the learner detached from b: its report lists it no more
    assert (totals()["received"], totals()["received_bytes"], totals()["taken"], totals()["depth"]) == (10, 40, 7, 0)
    broker.report("tcp://c:1", channels={"pairs": _report(6, 6, 0)}, actors={})  # it came back on c, counting from 0
    assert (totals()["received"], totals()["taken"]) == (16, 13)
    asyncio.run(broker.remove_worker(None, "tcp://c:1"))  # c is lost
    asyncio.run(broker.remove_worker(None, "tcp://a:1"))  # and the producer's worker too
    assert (totals()["received"], totals()["taken"], totals()["sent"], totals()["sent_bytes"]) == (16, 13, 20, 80)
    assert not broker.snapshot()["channels"]["pairs"]["consumers"]  # per-consumer rows are of consumers still there


def test_metric_history_merges_each_point_once_and_follows_a_new_log() -> None:
    log = MetricLog(keep=4)
    h = MetricHistory()
    for step in range(3):
        log.record("loss", step, 1.0 / (step + 1))
    h.merge(log.recent())
    log.record("loss", 3, 0.25)
    h.merge(log.recent())  # points 0-2 come again: merged once
    assert h.series() == {"loss": ([0, 1, 2, 3], [1.0, 0.5, 1.0 / 3.0, 0.25])}
    fresh = MetricLog()  # a restarted actor numbers its points from 0 again
    fresh.record("loss", 4, 0.2)
    h.merge(fresh.recent())
    assert h.series()["loss"] == ([0, 1, 2, 3, 4], [1.0, 0.5, 1.0 / 3.0, 0.25, 0.2])
    assert h.last() == {"loss": 0.2}
    with pytest.raises(TypeError, match="expected a real number"):
        log.record("loss", 5, "high")


def test_metric_history_halves_resolution_instead_of_growing() -> None:
    h = MetricHistory(max_points=8)
    log = MetricLog(keep=100)
    for step in range(9):
        log.record("x", step, float(step))
    h.merge(log.recent())
    steps, values = h.series()["x"]
    assert steps == [0, 2, 4, 6, 8]  # the ninth point made every other one go
    assert values == [0.0, 2.0, 4.0, 6.0, 8.0]


# -- /metrics on a real cluster ----------------------------------------------------------------
def scrape(cp: Coupling) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` of the coupling's scheduler: (sample name, sorted labels) -> value."""
    url = cp.dashboard_link.rstrip("/").rpartition("/")[0] + "/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name.startswith("coupler_")
    }


def value(samples: dict, name: str, **labels: str) -> float:
    """The one sample of ``name`` whose labels include ``labels``."""
    found = [v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items()]
    assert len(found) == 1, f"expected one {name}{labels}, got {len(found)} in {sorted(n for n, _ in samples)}"
    return found[0]


@pytest.fixture
def ticking(coupling: Coupling, unique: str) -> Iterator[tuple[str, str, str]]:
    """A Ticker sending ~50 messages/s to a Fitter that records a loss; yields (channel, producer, consumer)."""
    channel, tick, fit = f"ticks-{unique}", f"tick-{unique}", f"fit-{unique}"
    coupling.channel(channel, Queue(64))
    consumer = coupling.spawn(Fitter, name=fit, inputs={"inp": channel})
    producer = coupling.spawn(Ticker, period=0.02, name=tick, outputs={"out": channel})
    consumer.start()
    producer.start()
    try:
        yield channel, tick, fit
    finally:
        producer.stop()
        consumer.stop()


def wait_for(cp: Coupling, ok, timeout: float = 20.0) -> dict:
    """Scrape until ``ok(samples)`` holds; return those samples."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(cp)
        try:
            if ok(samples):
                return samples
        except AssertionError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"/metrics did not show what was expected within {timeout} s: {samples}")
        time.sleep(0.5)


def test_metrics_lists_live_coupler_series_per_channel_and_actor(
    coupling: Coupling, ticking: tuple[str, str, str]
) -> None:
    channel, tick, fit = ticking
    # Rates need two samples of the broker's 1 s sampler after the first report.
    first = wait_for(
        coupling,
        lambda s: value(s, "coupler_channel_message_rate", channel=channel) > 0
        and value(s, "coupler_actor_step_rate", actor=fit) > 0
        and value(s, "coupler_actor_metric", actor=fit, metric="loss") > 0,
    )
    sent = value(first, "coupler_channel_messages_sent_total", channel=channel, policy="queue")
    assert sent > 0
    assert value(first, "coupler_channel_bytes_sent_total", channel=channel) == pytest.approx(sent * 256 * 4, rel=0.2)
    assert value(first, "coupler_channel_producers", channel=channel) == 1
    assert value(first, "coupler_channel_consumers", channel=channel) == 1
    assert value(first, "coupler_channel_closed", channel=channel) == 0
    assert value(first, "coupler_consumer_messages_received_total", channel=channel, consumer=f"{fit}/inp") > 0
    assert value(first, "coupler_actor_state", actor=tick, state="running") == 1
    assert value(first, "coupler_actor_state", actor=tick, state="failed") == 0
    assert value(first, "coupler_actor_steps_total", actor=tick, cls="Ticker") > 0
    # Fitter records 1 / (2 + steps done before the step): a loss in (0, 0.5].
    assert 0 < value(first, "coupler_actor_metric", actor=fit, metric="loss") <= 0.5
    later = wait_for(
        coupling, lambda s: value(s, "coupler_channel_messages_sent_total", channel=channel, policy="queue") > sent
    )
    assert value(later, "coupler_actor_steps_total", actor=fit) >= value(first, "coupler_actor_steps_total", actor=fit)


def test_the_weights_an_actor_uses_are_series_with_their_age() -> None:
    from coupler.runtime.control.status import ActorStatus, WeightsInUse
    from coupler.runtime.observe.metrics import actor_metrics

    broker = Broker()
    sent = time.time() - 30.0
    hybrid = ActorStatus(name="hybrid", cls="HybridSimulatorActor", state="running", weights=WeightsInUse(40, sent, 0))
    broker.report("tcp://a:1", channels={}, actors={"hybrid": hybrid.to_dict(), "learner": ActorStatus(name="learner").to_dict()})
    families = {f.name: f for f in actor_metrics(broker)}
    (version,) = families["coupler_actor_weights_version"].samples  # the learner uses no weights: no series
    (age,) = families["coupler_actor_weights_age_seconds"].samples
    assert version.labels == {"actor": "hybrid"} and version.value == 40
    assert age.labels == {"actor": "hybrid"} and 30.0 <= age.value < 60.0

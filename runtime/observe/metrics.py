"""Prometheus metrics of the coupling, served with the scheduler's own at ``/metrics``.

distributed serves ``prometheus_client``'s global registry at the scheduler's
``/metrics``; a collector registered there from the scheduler's process shows
up next to the ``dask_scheduler_*`` series, so a Prometheus that already
scrapes the scheduler scrapes the coupling too. The broker registers itself
when it starts on the scheduler (:func:`register`) and leaves when it closes.

Series (labels in braces)::

    coupler_channel_messages_sent_total{channel,policy}   messages sent
    coupler_channel_bytes_sent_total{channel,policy}      payload bytes sent
    coupler_channel_messages_received_total{channel,policy}
    coupler_channel_bytes_received_total{channel,policy}
    coupler_channel_messages_dropped_total{channel,policy}
    coupler_channel_depth{channel,policy}                 messages held by consumers now
    coupler_channel_message_rate{channel,policy}          messages/s over the broker's window
    coupler_channel_byte_rate{channel,policy}             bytes/s over the same window
    coupler_channel_producers{channel,policy}, coupler_channel_consumers{channel,policy}
    coupler_channel_closed{channel,policy}                1 once closed
    coupler_consumer_depth{channel,consumer}, coupler_consumer_lag_seconds{channel,consumer}
    coupler_consumer_messages_received_total{channel,consumer}
    coupler_actor_steps_total{actor,cls,worker,device}    run-loop iterations
    coupler_actor_step_rate{actor,cls,worker,device}      iterations/s over the broker's window
    coupler_actor_state{actor,state}                      1 for the actor's current state
    coupler_actor_metric{actor,metric}                    last value of what the actor records (loss)
    coupler_actor_weights_version{actor}                  training step of the learned weights it uses (hybrids)
    coupler_actor_weights_age_seconds{actor}              seconds since the learner sent them (staleness)

Several schedulers in one process (tests start clusters one after another)
share the one registry, as distributed's own collectors do: the collector
reports the broker started last among those still running.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from coupler.runtime.control.broker import Broker

PREFIX = "coupler"
ACTOR_STATES = ("created", "running", "paused", "finished", "stopped", "failed", "lost", "migrated")


class CouplerCollector:
    """A ``prometheus_client`` collector of the current broker's channels and actors."""

    def __init__(self) -> None:
        self._brokers: list[Broker] = []
        self._lock = threading.Lock()  # /metrics may be read from another thread than the scheduler's

    def add(self, broker: Broker) -> None:
        """Report ``broker`` from now on (it becomes the current one)."""
        with self._lock:
            if broker not in self._brokers:
                self._brokers.append(broker)

    def remove(self, broker: Broker) -> None:
        """Stop reporting ``broker``."""
        with self._lock:
            if broker in self._brokers:
                self._brokers.remove(broker)

    def describe(self) -> list[Metric]:
        """Nothing: the series depend on the channels and actors of the moment (no checks at registration)."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The series of the current broker (none when no broker runs in this process)."""
        with self._lock:
            broker = self._brokers[-1] if self._brokers else None
        if broker is None:
            return
        yield from channel_metrics(broker)
        yield from actor_metrics(broker)


def _name(suffix: str) -> str:
    return f"{PREFIX}_{suffix}"


def channel_metrics(broker: Broker) -> list[Metric]:
    """Per-channel and per-consumer families from the broker's counters."""
    labels = ["channel", "policy"]
    counters = {
        "messages_sent": ("Messages sent on the channel", lambda c: c.sent),
        "bytes_sent": ("Payload bytes sent on the channel", lambda c: c.sent_bytes),
        "messages_received": ("Messages accepted by the channel's consumers (summed)", lambda c: c.received),
        "bytes_received": ("Payload bytes accepted by the channel's consumers (summed)", lambda c: c.received_bytes),
        "messages_dropped": ("Messages overwritten, evicted or not kept by consumers' policies", lambda c: c.dropped),
    }
    gauges = {
        "depth": ("Messages held in the channel's consumer buffers", lambda c: c.depth),
        "message_rate": ("Messages sent per second over the broker's rate window", lambda c: c.message_rate),
        "byte_rate": ("Payload bytes sent per second over the broker's rate window", lambda c: c.byte_rate),
        "producers": ("Producers attached to the channel", lambda c: len(c.producers)),
        "consumers": ("Consumers attached to the channel", lambda c: len(c.consumers)),
        "closed": ("1 if the channel is closed", lambda c: int(c.closed)),
    }
    stats = broker.channel_stats()
    families: list[Metric] = []
    for key, (doc, get) in counters.items():
        fam = CounterMetricFamily(_name(f"channel_{key}"), doc, labels=labels)
        for name, c in sorted(stats.items()):
            fam.add_metric([name, c.policy.get("kind", "?")], get(c))
        families.append(fam)
    for key, (doc, get) in gauges.items():
        fam = GaugeMetricFamily(_name(f"channel_{key}"), doc, labels=labels)
        for name, c in sorted(stats.items()):
            fam.add_metric([name, c.policy.get("kind", "?")], get(c))
        families.append(fam)
    depth = GaugeMetricFamily(_name("consumer_depth"), "Messages held in the consumer's buffer", labels=["channel", "consumer"])
    lag = GaugeMetricFamily(
        _name("consumer_lag_seconds"), "Seconds between send and acceptance of the consumer's last message",
        labels=["channel", "consumer"],
    )
    received = CounterMetricFamily(
        _name("consumer_messages_received"), "Messages accepted into the consumer's buffer", labels=["channel", "consumer"]
    )
    for name, c in sorted(stats.items()):
        for s in c.consumer_stats:
            depth.add_metric([name, s.ident], s.depth)
            lag.add_metric([name, s.ident], s.lag)
            received.add_metric([name, s.ident], s.received)
    return [*families, depth, lag, received]


def actor_metrics(broker: Broker) -> list[Metric]:
    """Per-actor families: steps, step rate, state, the weights in use (hybrids), and the last value of each recorded metric."""
    labels = ["actor", "cls", "worker", "device"]
    steps = CounterMetricFamily(_name("actor_steps"), "Run-loop iterations the actor completed", labels=labels)
    rate = GaugeMetricFamily(_name("actor_step_rate"), "Run-loop iterations per second over the broker's rate window", labels=labels)
    state = GaugeMetricFamily(_name("actor_state"), "1 for the actor's current state, 0 for the others", labels=["actor", "state"])
    version = GaugeMetricFamily(_name("actor_weights_version"), "Training step of the learned weights the actor uses", labels=["actor"])
    age = GaugeMetricFamily(_name("actor_weights_age_seconds"), "Seconds since the learner sent the weights the actor uses", labels=["actor"])
    now = time.time()
    for name, a in sorted(broker.actor_statuses().items()):
        values = [name, a.cls, a.worker, a.device]
        steps.add_metric(values, a.steps)
        rate.add_metric(values, a.step_rate)
        for s in sorted({*ACTOR_STATES, a.state}):
            state.add_metric([name, s], int(s == a.state))
        if a.weights is not None:
            version.add_metric([name], a.weights.version)
            age.add_metric([name], a.weights.age(now))
    recorded = GaugeMetricFamily(
        _name("actor_metric"), "Last value of a metric the actor records (e.g. a learner's loss)", labels=["actor", "metric"]
    )
    for name, last in sorted(broker.last_metrics().items()):
        for metric, value in sorted(last.items()):
            recorded.add_metric([name, metric], value)
    return [steps, rate, state, version, age, recorded]


_COLLECTOR = CouplerCollector()
_registered = False
_register_lock = threading.Lock()


def register(broker: Broker) -> None:
    """Serve ``broker``'s series at ``/metrics`` (registers the collector in the global registry once)."""
    global _registered
    with _register_lock:
        if not _registered:
            REGISTRY.register(_COLLECTOR)
            _registered = True
    _COLLECTOR.add(broker)


def unregister(broker: Broker) -> None:
    """Stop serving ``broker``'s series (the collector stays registered, for the next broker)."""
    _COLLECTOR.remove(broker)


__all__ = ["CouplerCollector", "register", "unregister"]

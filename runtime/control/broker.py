"""The broker: coupler's control plane, a Dask scheduler extension.

It keeps the registry of channels (policy, spec, producers, consumers, closed
flag), of actors, and the counters and sequence watermarks that workers report
periodically. It never carries tensor payloads: those go worker to worker (see
:mod:`coupler.runtime.dataplane.endpoint`). When the set of consumers of a channel
changes, the broker pushes the new routing table to the workers of the
channel's producers, so that producers never ask the scheduler per message.

Handlers reply with plain dicts; typed errors are encoded with
:func:`~coupler.runtime.errors.error_reply` because exceptions raised in a
handler reach the caller without their type.

For inspection it also samples the counters every ``RATE_SAMPLE_INTERVAL``
seconds into rates (messages/s, bytes/s per channel, steps/s per actor), keeps
the metric series actors report (a learner's loss). The dashboard page and the
``/metrics`` collectors that show them are installed by a plugin of their own
(:mod:`coupler.runtime.observe.inspection`), so the broker imports neither.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from distributed.diagnostics.plugin import SchedulerPlugin
from tornado.ioloop import PeriodicCallback

from coupler.runtime.control.departure import Departure, Gone
from coupler.runtime.control.status import TERMINAL_STATES, ActorStatus, ChannelStats, MetricHistory, RateMeter
from coupler.runtime.dataplane.auth import new_secret
from coupler.runtime.errors import ChannelClosed, ChannelExists, CouplerError, Fenced, SpecMismatch, UnknownChannel, error_reply
from coupler.runtime.message import Spec
from coupler.runtime.policies import policy_from_wire, policy_to_wire

logger = logging.getLogger(__name__)

BROKER_NAME = "coupler-broker"
_NAME = re.compile(r"^[A-Za-z0-9_.:/-]{1,200}$")
# Seconds between samples of the counters, and the window rates are taken over.
RATE_SAMPLE_INTERVAL = 1.0
RATE_WINDOW = 5.0
# Channel counters that only grow; a consumer's or producer's last ones are kept when it leaves.
_CUMULATIVE = ("sent", "sent_bytes", "received", "received_bytes", "dropped", "taken")
# Names of forgotten closed channels remembered, so that a late send says "closed", not "unknown".
CLOSED_NAMES_KEPT = 4096


def check_name(kind: str, name: Any) -> str:
    """Validate a channel, actor or port name.

    Raises:
        ValueError: unless ``name`` is 1-200 characters of letters, digits and ``_.:/-``.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{kind} name must be 1-200 characters of letters, digits and '_.:/-', got {name!r}")
    return name


# Integers in policies and specs must fit the 64-bit integers of Dask's msgpack comms.
_INT_RANGE = range(-(2**63), 2**63)


def check_spec(wire: Any) -> dict[str, Any]:
    """A spec from a handler's input, decoded and re-encoded (normalized).

    Raises:
        SpecMismatch: unless ``wire`` is ``{"treedef": ..., "fields": [[path, shape, dtype], ...]}``
            with string paths, shapes of non-negative integers and numpy dtype names.
    """
    try:
        spec = Spec.from_wire(wire)
        for f in spec.fields:
            if not isinstance(f.path, str) or not isinstance(f.dtype, str):
                raise TypeError(f"field {f.path!r}: path and dtype must be strings")
            if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**63 for d in f.shape):
                raise ValueError(f"field {f.path!r}: shape must be non-negative integers, got {f.shape!r}")
            np.dtype(f.dtype)
        return spec.to_wire()
    except (TypeError, KeyError, IndexError, ValueError, AttributeError) as e:
        raise SpecMismatch(
            f"expected a spec {{'treedef': ..., 'fields': [[path, shape, dtype], ...]}}, got {wire!r} ({e})"
        ) from None


@dataclass
class ChannelRecord:
    """Everything the broker knows about one channel."""

    name: str
    policy: dict[str, Any]
    spec: dict[str, Any] | None = None
    closed: bool = False
    producers: dict[str, str] = field(default_factory=dict)  # source -> worker address
    epochs: dict[str, int] = field(default_factory=dict)  # source -> epoch of its current instance (dataplane/fence.py)
    consumers: dict[str, str] = field(default_factory=dict)  # consumer id -> worker address
    streams: dict[str, tuple[str, str]] = field(default_factory=dict)  # consumer id -> (stream address, host key)
    gone: dict[str, Gone] = field(default_factory=dict)  # consumer id -> how it left
    version: int = 0
    run: str = ""  # the coupling run that declared it ("": none named); it ends with that run

    @property
    def drained(self) -> bool:
        """Closed, with no consumer attached or moving: nothing can use it any more."""
        return self.closed and not self.consumers and not any(g.kind is Departure.HANDOVER for g in self.gone.values())

    def routing(self) -> dict[str, Any]:
        """What a producer's worker needs to send on this channel.

        ``consumers`` lists ``[id, worker, stream, host]``; ``moving`` names the
        consumers that left to be restarted elsewhere (producers wait for them);
        ``producers`` maps each producer to the worker it last registered from.
        """
        return {
            "channel": self.name,
            "policy": self.policy,
            "spec": self.spec,
            "closed": self.closed,
            "consumers": [[c, a, *self.streams.get(c, ("", ""))] for c, a in sorted(self.consumers.items())],
            "gone": [g.to_wire() for _, g in sorted(self.gone.items())],
            "moving": sorted(c for c, g in self.gone.items() if g.kind is Departure.HANDOVER),
            "producers": dict(sorted(self.producers.items())),
            "version": self.version,
        }


class Broker(SchedulerPlugin):
    """Scheduler extension holding the coupling's control-plane state.

    Installed by :class:`~coupler.runtime.coupling.Coupling` with
    ``client.register_plugin(Broker())``; idempotent, so several couplings on
    one cluster share it.
    """

    name = BROKER_NAME
    idempotent = True

    def __init__(self) -> None:
        self.channels: dict[str, ChannelRecord] = {}
        self.actors: dict[str, dict[str, Any]] = {}
        self.reports: dict[str, dict[str, Any]] = {}  # worker address -> last report
        # channel -> counters of the consumers and producers that reports no longer list
        # (detached, moved, or on a lost worker): totals never go back (Prometheus counters).
        self.departed: dict[str, dict[str, int]] = {}
        self.histories: dict[str, MetricHistory] = {}  # actor name -> metric series it reported
        self.meters: dict[tuple[str, str, str], RateMeter] = {}  # (kind, name, counter) -> rate
        self.scheduler: Any = None
        # Closed channels that were forgotten (newest last), and the coupling runs: run -> client id.
        # A run ends when its coupling closes or its client goes; its channels are closed and forgotten.
        self.closed_names: OrderedDict[str, None] = OrderedDict()
        self.runs: dict[str, str] = {}
        self.ended_runs: OrderedDict[str, None] = OrderedDict()
        self._sampler: PeriodicCallback | None = None
        self.stream_secret: bytes | None = None  # made on the scheduler at start, never pickled with the plugin

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self._sampler = PeriodicCallback(self.sample, RATE_SAMPLE_INTERVAL * 1000)
        self._sampler.start()
        if self.stream_secret is None:
            self.stream_secret = new_secret()
        handlers = {
            "coupler_stream_secret": self.handout_stream_secret,
            "coupler_declare": self.declare,
            "coupler_routing": self.routing,
            "coupler_fix_spec": self.fix_spec,
            "coupler_attach": self.attach,
            "coupler_detach": self.detach,
            "coupler_close": self.close_channel,
            "coupler_begin_run": self.begin_run,
            "coupler_end_run": self.end_run,
            "coupler_actor_ended": self.actor_ended,
            "coupler_report": self.report,
            "coupler_register_actor": self.register_actor,
            "coupler_snapshot": self.snapshot,
        }
        scheduler.handlers.update(handlers)

    async def close(self) -> None:
        """Stop sampling."""
        if self._sampler is not None:
            self._sampler.stop()
            self._sampler = None

    # -- handlers ----------------------------------------------------------------------
    def handout_stream_secret(self) -> dict[str, Any]:
        """The cluster's stream secret, for a worker's endpoint (see :mod:`coupler.runtime.dataplane.auth`)."""
        return {"status": "OK", "secret": self.stream_secret}

    def _channel(self, name: str) -> ChannelRecord:
        if not isinstance(name, str):
            raise UnknownChannel(f"expected a channel name (a string), got {name!r}")
        try:
            return self.channels[name]
        except KeyError:
            if name in self.closed_names:
                raise ChannelClosed(f"channel {name!r} was closed (and forgotten); declare it again to reuse the name") from None
            known = ", ".join(sorted(self.channels)) or "none"
            raise UnknownChannel(f"unknown channel {name!r}; declared channels: {known}") from None

    def declare(
        self, name: str, policy: dict[str, Any], spec: dict[str, Any] | None = None, run: str = ""
    ) -> dict[str, Any]:
        """Declare a channel (idempotent for an identical declaration).

        A declaration of a name that was closed and forgotten starts a new channel.
        ``run`` names the coupling run declaring it: the channel ends with the first
        run that declared it; a run that has ended is refused.
        """
        try:
            check_name("channel", name)
            self._check_run(run)
            p = policy_to_wire(policy_from_wire(policy))  # validates
            if any(isinstance(v, int) and v not in _INT_RANGE for v in p.values()):
                raise ValueError(f"policy arguments must fit 64-bit integers, got {p}")
            if spec is not None:
                spec = check_spec(spec)
            rec = self.channels.get(name)
            if rec is not None and rec.closed:
                # Closed, with consumers still draining it (they detach as they end): the name is
                # not free yet. A new channel now would take their detaches for its own consumers.
                draining = sorted(rec.consumers) + sorted(c for c, g in rec.gone.items() if g.kind is Departure.HANDOVER)
                raise ChannelClosed(
                    f"channel {name!r} is closed and consumers {draining} have not detached yet; "
                    "declare it again once they have ended"
                )
            if rec is None:
                self.channels[name] = ChannelRecord(name, p, spec, run=run)
                self.closed_names.pop(name, None)
            elif rec.policy != p or (spec is not None and rec.spec is not None and rec.spec != spec):
                raise ChannelExists(
                    f"channel {name!r} already declared with policy {rec.policy} and spec {rec.spec}; "
                    f"got policy {p} and spec {spec}"
                )
            elif spec is not None and rec.spec is None:
                rec.spec = spec
            return {"status": "OK", **self.channels[name].routing()}
        except CouplerError as e:
            return error_reply(e)
        except (ValueError, TypeError, KeyError, IndexError) as e:
            return {"status": "error", "error": "ValueError", "message": f"bad channel declaration: {e}"}

    def _check_run(self, run: Any) -> None:
        """Refuse a request of a coupling run that has ended (a stale driver or actor).

        Raises:
            ValueError: for a run id that is not a string.
            ChannelClosed: for a run that has ended.
        """
        if not isinstance(run, str):
            raise ValueError(f"run must be a string, got {run!r}")
        if run and run in self.ended_runs:
            raise ChannelClosed(f"coupling run {run!r} has ended; its channels are closed")

    def begin_run(self, run: str, client: str = "") -> dict[str, Any]:
        """Start coupling run ``run`` of Dask client ``client`` (it ends when the client goes, at the latest)."""
        try:
            check_name("run", run)
            self._check_run(run)
            if not isinstance(client, str):
                raise ValueError(f"client must be a string, got {client!r}")
        except ChannelClosed as e:
            return error_reply(e)
        except ValueError as e:
            return {"status": "error", "error": "ValueError", "message": str(e)}
        self.runs[run] = client
        return {"status": "OK"}

    async def end_run(self, run: str) -> dict[str, Any]:
        """End coupling run ``run``: close every channel it declared; later requests of it are refused."""
        if not isinstance(run, str) or run not in self.runs:
            return {"status": "OK"}  # unknown or already ended: nothing to do (idempotent)
        del self.runs[run]
        self.ended_runs[run] = None
        while len(self.ended_runs) > CLOSED_NAMES_KEPT:
            self.ended_runs.popitem(last=False)
        for rec in [r for r in self.channels.values() if r.run == run]:
            await self._close(rec)
        return {"status": "OK"}

    def remove_client(self, scheduler: Any, client: str) -> None:
        """A client went (its driver closed or died): end the runs it began."""
        for run in [r for r, c in self.runs.items() if c == client]:
            asyncio.ensure_future(self.end_run(run))

    def actor_ended(self, name: str, status: dict[str, Any]) -> dict[str, Any]:
        """An actor's loop ended for good: keep its final ``status`` (its worker reports it no more)."""
        try:
            check_name("actor", name)
            if not isinstance(status, dict):
                raise ValueError(f"status must be a dict, got {type(status).__name__}")
        except ValueError as e:
            return {"status": "error", "error": "ValueError", "message": str(e)}
        points = status.pop("metrics", None)
        if points:
            self.histories.setdefault(name, MetricHistory()).merge(points)
        self.actors.setdefault(name, {}).update(status)
        return {"status": "OK"}

    def routing(self, name: str) -> dict[str, Any]:
        """The routing table of a channel."""
        try:
            return {"status": "OK", **self._channel(name).routing()}
        except CouplerError as e:
            return error_reply(e)

    def fix_spec(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Set the spec from a first message unless one is already fixed; return the fixed one."""
        try:
            rec = self._channel(name)
            if rec.spec is None:
                rec.spec = check_spec(spec)
            return {"status": "OK", "spec": rec.spec}
        except CouplerError as e:
            return error_reply(e)

    async def attach(
        self, name: str, role: str, ident: str, address: str, stream: str = "", host: str = ""
    ) -> dict[str, Any]:
        """Attach a producer (``role="producer"``, ``ident`` its source) or a consumer.

        A consumer gives the ``stream`` address (``host:port``) where its worker
        accepts data and its ``host`` key (shared memory is tried between equal keys).

        A producer's reply carries its instance's ``epoch`` (runtime/dataplane/fence.py):
        one more than its predecessor's if that one's worker was lost, else the same.
        A worker the scheduler no longer knows (declared dead, back after a partition)
        cannot register: its instances were replaced (:class:`Fenced`).
        """
        try:
            rec = self._channel(name)
            check_name("endpoint", ident)
            if role == "producer":
                live = getattr(self.scheduler, "workers", None)  # (None: a broker outside a scheduler, in tests)
                if live is not None and address not in live:
                    raise Fenced(f"producer {ident!r} of {name!r}: worker {address} is not in the cluster any more")
                before = rec.producers.get(ident)
                if before is not None and before != address and live is not None and before not in live:
                    rec.epochs[ident] = rec.epochs.get(ident, 0) + 1  # lost there; remove_worker has not run yet
                rec.producers[ident] = address
                return {"status": "OK", "epoch": rec.epochs.get(ident, 0), **rec.routing()}
            if role != "consumer":
                raise ValueError(f"role must be 'producer' or 'consumer', got {role!r}")
            if not isinstance(stream, str) or not isinstance(host, str):
                raise ValueError(f"stream and host must be strings, got {stream!r} and {host!r}")
            rec.consumers[ident] = address
            rec.streams[ident] = (stream, host)
            rec.gone.pop(ident, None)
            rec.version += 1
            await self._push(rec)
            return {"status": "OK", **rec.routing()}
        except CouplerError as e:
            return error_reply(e)
        except ValueError as e:
            return {"status": "error", "error": "ValueError", "message": str(e)}

    async def detach(self, name: str, ident: str, departure: str = Departure.DETACHED.value, address: str = "") -> dict[str, Any]:
        """Remove a consumer: it closed its port (``detached``), or it is moving (``handover``).

        With the ``address`` of the worker it detaches from, a detach of an instance that
        was replaced (its worker declared dead, back after a partition, while a successor
        attached elsewhere) changes nothing.
        """
        try:
            check_name("endpoint", ident)
            kind = Departure(departure)
            if kind is Departure.LOST:
                raise ValueError("only the broker declares a consumer lost (when its worker is removed)")
            rec = self._channel(name)
        except ChannelClosed:
            return {"status": "OK"}  # its channel was closed and forgotten: it is detached already
        except CouplerError as e:
            return error_reply(e)
        except ValueError as e:
            return {"status": "error", "error": "ValueError", "message": str(e)}
        if address and rec.consumers.get(ident, address) != address:
            return {"status": "OK"}  # a replaced instance's: its successor stays attached
        if rec.consumers.pop(ident, None) is not None:
            rec.streams.pop(ident, None)
            rec.gone[ident] = Gone(ident, kind)
            rec.version += 1
            await self._push(rec)
        if rec.drained:
            self._forget(rec)
        return {"status": "OK"}

    async def close_channel(self, name: str) -> dict[str, Any]:
        """Close a channel: producers can no longer send; consumers drain then see it closed."""
        try:
            rec = self._channel(name)
        except ChannelClosed:
            return {"status": "OK"}  # closed and forgotten already
        except CouplerError as e:
            return error_reply(e)
        await self._close(rec)
        return {"status": "OK"}

    async def _close(self, rec: ChannelRecord) -> None:
        """Close ``rec`` on every worker that uses it; forget it once no consumer can use it.

        Every producer's and consumer's worker drops its route, links, counters and
        replay logs (``Endpoint._forget_channel``); consumers drain what they hold,
        see the end and detach, and the last detach forgets the channel here.
        """
        if not rec.closed:
            rec.closed = True
            rec.version += 1
            await self._push(rec, consumers_too=True)
        if rec.drained:
            self._forget(rec)

    def _forget(self, rec: ChannelRecord) -> None:
        """Drop a drained channel and what is kept about it; remember its name as closed."""
        if self.channels.get(rec.name) is not rec:
            return  # forgotten meanwhile (another handler ran during a push), or declared anew
        del self.channels[rec.name]
        self.departed.pop(rec.name, None)
        for report in self.reports.values():  # the workers forgot it when it closed: so do their last reports
            report["channels"].pop(rec.name, None)
        for key in [k for k in self.meters if k[0] == "channel" and k[1] == rec.name]:
            del self.meters[key]
        self.closed_names[rec.name] = None
        while len(self.closed_names) > CLOSED_NAMES_KEPT:
            self.closed_names.popitem(last=False)

    def report(
        self, address: str, channels: dict[str, Any], actors: dict[str, Any], retire_at: float | None = None
    ) -> dict[str, str]:
        """A worker's periodic counters (the only steady control-plane traffic)."""
        old = self.reports.get(address)
        if old is not None:
            self._keep_departed(old["channels"], channels)
        # A channel forgotten meanwhile (a report sent before its worker heard it closed) is dropped.
        channels = {name: ch for name, ch in channels.items() if name in self.channels}
        self.reports[address] = {"time": time.time(), "channels": channels, "retire_at": retire_at}
        for name, status in actors.items():
            points = status.pop("metrics", None)
            if points:
                self.histories.setdefault(name, MetricHistory()).merge(points)
            self.actors.setdefault(name, {}).update(status)
        return {"status": "OK"}

    def register_actor(self, name: str, address: str, cls: str) -> dict[str, Any]:
        """Record an actor spawned by a coupling."""
        try:
            check_name("actor", name)
        except ValueError as e:
            return {"status": "error", "error": "ValueError", "message": str(e)}
        self.actors[name] = {"name": name, "worker": address, "cls": cls, "state": "created"}
        return {"status": "OK"}

    def _keep_departed(self, before: dict[str, Any], now: dict[str, Any]) -> None:
        """Add the last counters of the consumers and producers in a worker's report ``before`` that
        its report ``now`` no longer lists to their channel's departed counters."""
        for name, ch in before.items():
            if name not in self.channels:
                continue  # closed and forgotten: nothing adds up over it any more
            listed = now.get(name) or {}
            gone = self.departed.setdefault(name, dict.fromkeys(_CUMULATIVE, 0))
            for src, p in ch.get("producers", {}).items():
                if src not in listed.get("producers", {}):
                    gone["sent"] += p["sent"]
                    gone["sent_bytes"] += p["nbytes"]
            for cid, c in ch.get("consumers", {}).items():
                if cid not in listed.get("consumers", {}):
                    gone["received"] += c["received"]
                    gone["received_bytes"] += c["nbytes"]
                    gone["dropped"] += c["dropped"]
                    gone["taken"] += c["taken"]

    def _aggregate(self, name: str) -> tuple[dict[str, int], dict[str, int], dict[str, Any]]:
        """A channel's totals, last sequence number per source, and consumer counters, over the reports.

        Cumulative totals include the departed counters (see :meth:`_keep_departed`), so
        they do not drop when a consumer detaches or its worker goes; ``depth`` is of now.
        """
        totals = {**dict.fromkeys(_CUMULATIVE, 0), **self.departed.get(name, {}), "depth": 0}
        last_seq: dict[str, int] = {}
        consumers: dict[str, Any] = {}
        for report in self.reports.values():
            ch = report["channels"].get(name)
            if not ch:
                continue
            for src, p in ch.get("producers", {}).items():
                totals["sent"] += p["sent"]
                totals["sent_bytes"] += p["nbytes"]
                last_seq[src] = max(last_seq.get(src, -1), p["last_seq"])
            for cid, c in ch.get("consumers", {}).items():
                consumers[cid] = c
                totals["received"] += c["received"]
                totals["received_bytes"] += c["nbytes"]
                totals["dropped"] += c["dropped"]
                totals["depth"] += c["depth"]
                totals["taken"] += c["taken"]
        return totals, last_seq, consumers

    def _rate(self, kind: str, name: str, counter: str) -> float:
        meter = self.meters.get((kind, name, counter))
        return 0.0 if meter is None else meter.rate

    def snapshot(self) -> dict[str, Any]:
        """Channels with their aggregated counters and rates, and actors (for stats and dashboards)."""
        out: dict[str, Any] = {}
        for name, rec in self.channels.items():
            totals, last_seq, consumers = self._aggregate(name)
            out[name] = {
                **rec.routing(),
                "producers": sorted(rec.producers),
                "totals": totals,
                "rates": {"messages": self._rate("channel", name, "sent"), "bytes": self._rate("channel", name, "sent_bytes")},
                "producer_seq": last_seq,
                "consumer_stats": consumers,
            }
        workers = {addr: {"retire_at": r.get("retire_at"), "reported_at": r["time"]} for addr, r in self.reports.items()}
        actors = {name: {**a, "step_rate": self._rate("actor", name, "steps")} for name, a in self.actors.items()}
        return {"status": "OK", "channels": out, "actors": actors, "workers": workers}

    # -- inspection (in the scheduler's process: the dashboard page and /metrics) ------------------
    def sample(self) -> None:
        """Feed the rate meters with the counters now (called every ``RATE_SAMPLE_INTERVAL``)."""
        now = time.monotonic()
        for name in self.channels:
            totals, _, _ = self._aggregate(name)
            for counter in ("sent", "sent_bytes"):
                self.meters.setdefault(("channel", name, counter), RateMeter(RATE_WINDOW)).add(now, totals[counter])
        for name, a in self.actors.items():
            if a.get("state") in TERMINAL_STATES:
                self.meters.pop(("actor", name, "steps"), None)  # its rate is 0 from now on: no meter to keep
                continue
            self.meters.setdefault(("actor", name, "steps"), RateMeter(RATE_WINDOW)).add(now, a.get("steps", 0))

    def channel_stats(self) -> dict[str, ChannelStats]:
        """Every channel's counters and rates, by name."""
        return {name: ChannelStats.from_snapshot(name, s) for name, s in self.snapshot()["channels"].items()}

    def actor_statuses(self) -> dict[str, ActorStatus]:
        """Every actor's last reported status with its step rate, by name."""
        return {name: ActorStatus.from_dict({"name": name, **a}) for name, a in self.snapshot()["actors"].items()}

    def metric_series(self) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
        """Actor name -> metric name -> (steps, values), for the metrics actors recorded."""
        return {name: h.series() for name, h in self.histories.items()}

    def last_metrics(self) -> dict[str, dict[str, float]]:
        """Actor name -> metric name -> latest value."""
        return {name: h.last() for name, h in self.histories.items()}

    # -- worker loss -------------------------------------------------------------------
    async def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
        """Consumers on a lost worker are gone; tell the producers."""
        old = self.reports.pop(worker, None)
        if old is not None:
            self._keep_departed(old["channels"], {})
        for rec in self.channels.values():
            lost = [c for c, a in rec.consumers.items() if a == worker]
            for c in lost:
                del rec.consumers[c]
                rec.streams.pop(c, None)
                rec.gone[c] = Gone(c, Departure.LOST, f"worker {worker} was lost")
            for s in [s for s, a in rec.producers.items() if a == worker]:
                del rec.producers[s]
                rec.epochs[s] = rec.epochs.get(s, 0) + 1  # its successor's epoch: fences this instance if it comes back
            if lost:
                rec.version += 1
                await self._push(rec)
        for a in self.actors.values():
            if a.get("worker") == worker and a.get("state") not in ("finished", "stopped", "failed"):
                a["state"] = "lost"

    async def _push(self, rec: ChannelRecord, consumers_too: bool = False) -> None:
        """Send the routing table to every worker that produces (or consumes) on ``rec``."""
        if getattr(self.scheduler.status, "name", "") in ("closing", "closed"):
            return  # the cluster is going away: nobody to tell, and the comms are closing
        addresses = set(rec.producers.values())
        if consumers_too:
            addresses |= set(rec.consumers.values())
        table = rec.routing()

        async def one(addr: str) -> None:
            try:
                await asyncio.wait_for(self.scheduler.rpc(addr).coupler_routing_update(table=table), 10)
            except Exception as e:  # a dead worker is handled by remove_worker
                logger.info("could not push routing of %r to %s: %s", rec.name, addr, e)

        await asyncio.gather(*(one(a) for a in addresses))

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
seconds into rates (messages/s, bytes/s per channel, steps/s per actor), and
keeps the metric series actors report (a learner's loss): what workers report
is tallied by :mod:`coupler.runtime.control.tallies`. The dashboard page and the
``/metrics`` collectors that show them are installed by a plugin of their own
(:mod:`coupler.runtime.observe.inspection`), so the broker imports neither.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections import OrderedDict
from typing import Any

import numpy as np
from distributed.diagnostics.plugin import SchedulerPlugin
from tornado.ioloop import PeriodicCallback

from coupler.runtime.control.channel_record import ChannelRecord
from coupler.runtime.control.departure import Departure
from coupler.runtime.control.report_check import check_report, check_status
from coupler.runtime.control.runs import RunBook
from coupler.runtime.control.status import ActorStatus, ChannelStats
from coupler.runtime.control.tallies import Tallies
from coupler.runtime.dataplane.auth import new_secret
from coupler.runtime.errors import ChannelClosed, CouplerError, InvalidRequest, SpecMismatch, UnknownChannel, error_reply
from coupler.runtime.message import NUMERIC_KINDS, Spec
from coupler.runtime.policies import policy_from_wire, policy_to_wire

logger = logging.getLogger(__name__)

BROKER_NAME = "coupler-broker"
_NAME = re.compile(r"[A-Za-z0-9_.:/-]{1,200}")  # with fullmatch: "$" would let a final newline through
# Seconds between samples of the counters into rates.
RATE_SAMPLE_INTERVAL = 1.0
# The scheduler's handlers the broker installs: operation -> Broker method.
HANDLERS = {
    "coupler_stream_secret": "handout_stream_secret",
    "coupler_declare": "declare",
    "coupler_routing": "routing",
    "coupler_fix_spec": "fix_spec",
    "coupler_attach": "attach",
    "coupler_detach": "detach",
    "coupler_consumers_given_up": "consumers_given_up",
    "coupler_producers_replaced": "producers_replaced",
    "coupler_close": "close_channel",
    "coupler_begin_run": "begin_run",
    "coupler_end_run": "end_run",
    "coupler_actor_ended": "actor_ended",
    "coupler_report": "report",
    "coupler_claim_actor": "claim_actor",
    "coupler_free_actors": "free_actors",
    "coupler_snapshot": "snapshot",
}
#: Bytes of one message at most (1 TiB): far beyond any real message, and a shape a peer states
#: cannot overflow the 64-bit sizes computed from it.
SPEC_BYTES_MAX = 1 << 40
# Names of forgotten closed channels remembered, so that a late send says "closed", not "unknown".
CLOSED_NAMES_KEPT = 4096


def _channel_pairs(wire: Any, what: str) -> list[tuple[str, str]]:
    """``[[channel, endpoint], ...]`` from a handler's input.

    Raises:
        ValueError: naming what was expected, for anything else.
    """
    try:
        return [(str(ch), check_name("endpoint", ident)) for ch, ident in wire]
    except (TypeError, ValueError) as e:
        raise ValueError(f"expected [channel, {what}] pairs: {e}") from None


def _consumer_counters(counters: Any) -> dict[str, int] | None:
    """A detaching consumer's final counters, checked (``None``: none sent).

    Raises:
        ValueError: unless they are ``received``, ``nbytes``, ``dropped`` and ``taken``, integers >= 0.
    """
    if counters is None:
        return None
    keys = ("received", "nbytes", "dropped", "taken")
    if not isinstance(counters, dict) or any(
        isinstance(counters.get(k), bool) or not isinstance(counters.get(k), int) or counters[k] < 0 for k in keys
    ):
        raise ValueError(f"a consumer's final counters must be integers >= 0 for {list(keys)}, got {counters!r}")
    return {k: counters[k] for k in keys}


def check_name(kind: str, name: Any) -> str:
    """Validate a channel, actor or port name.

    Raises:
        ValueError: unless ``name`` is 1-200 characters of letters, digits and ``_.:/-``.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"{kind} name must be 1-200 characters of letters, digits and '_.:/-', got {name!r}")
    return name


# Integers in policies and specs must fit the 64-bit integers of Dask's msgpack comms.
_INT_RANGE = range(-(2**63), 2**63)


def check_policy(wire: Any) -> dict[str, Any]:
    """A policy from a handler's input, decoded and re-encoded (normalized).

    Raises:
        ValueError, TypeError, KeyError: unless ``wire`` is a policy whose integers fit 64 bits.
    """
    p = policy_to_wire(policy_from_wire(wire))  # validates
    if any(isinstance(v, int) and v not in _INT_RANGE for v in p.values()):
        raise ValueError(f"policy arguments must fit 64-bit integers, got {p}")
    return p


def check_spec(wire: Any) -> dict[str, Any]:
    """A spec from a handler's input, decoded and re-encoded (normalized).

    Raises:
        SpecMismatch: unless ``wire`` is ``{"treedef": ..., "fields": [[path, shape, dtype], ...]}``
            with string paths, shapes of non-negative integers, names of numeric numpy dtypes of
            the native byte order (what a message may carry, ``Spec.from_leaves``) and at most
            :data:`SPEC_BYTES_MAX` bytes in all.
    """
    try:
        spec = Spec.from_wire(wire)
        total = 0
        for f in spec.fields:
            if not isinstance(f.path, str) or not isinstance(f.dtype, str):
                raise TypeError(f"field {f.path!r}: path and dtype must be strings")
            if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**63 for d in f.shape):
                raise ValueError(f"field {f.path!r}: shape must be non-negative integers, got {f.shape!r}")
            dt = np.dtype(f.dtype)
            if dt.kind not in NUMERIC_KINDS or not dt.isnative:
                raise ValueError(f"field {f.path!r}: dtype must be numeric (bool, int, float, complex), native order, got {dt}")
            total += math.prod(f.shape) * dt.itemsize  # Python ints: no overflow, whatever the shape
            if total > SPEC_BYTES_MAX:
                raise ValueError(f"a message of more than {SPEC_BYTES_MAX} bytes, got field {f.path!r} of shape {f.shape}")
        return spec.to_wire()
    except (TypeError, KeyError, IndexError, ValueError, AttributeError) as e:
        raise SpecMismatch(
            f"expected a spec {{'treedef': ..., 'fields': [[path, shape, dtype], ...]}}, got {wire!r} ({e})"
        ) from None


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
        self.tallies = Tallies()  # what workers report: counters, actors' statuses, metric series, rates
        self.scheduler: Any = None
        # Closed channels that were forgotten (newest last), each with the routing table a late
        # consumer gets (see ChannelRecord.final_routing), and the coupling runs. A run ends when
        # its coupling closes or its client goes; its channels are closed and forgotten.
        self.closed_names: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.runs = RunBook()
        self.actor_names: dict[str, str] = {}  # actor name -> the live run that claimed it (claim_actor)
        self._sampler: PeriodicCallback | None = None
        self.stream_secret: bytes | None = None  # made on the scheduler at start, never pickled with the plugin

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self._sampler = PeriodicCallback(self.sample, RATE_SAMPLE_INTERVAL * 1000)
        self._sampler.start()
        if self.stream_secret is None:
            self.stream_secret = new_secret()
        scheduler.handlers.update({op: getattr(self, method) for op, method in HANDLERS.items()})

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
            self.runs.check(run)
            p = check_policy(policy)
            if spec is not None:
                spec = check_spec(spec)
            rec = self.channels.get(name)
            if rec is not None:
                rec.redeclare(p, spec)
            else:
                self.channels[name] = ChannelRecord(name, p, spec, run=run)
                self.closed_names.pop(name, None)
            return {"status": "OK", **self.channels[name].routing()}
        except CouplerError as e:
            return error_reply(e)
        except (ValueError, TypeError, KeyError, IndexError) as e:
            return error_reply(InvalidRequest(f"bad channel declaration: {e}"))

    def begin_run(self, run: str, client: str = "") -> dict[str, Any]:
        """Start coupling run ``run`` of Dask client ``client`` (it ends when the client goes, at the latest).

        Returns:
            ``{"status": "OK"}``, or an error reply (:class:`InvalidRequest`) for a ``client`` that is
            not a string or a bad ``run`` name.
        """
        try:
            check_name("run", run)
            self.runs.check(run)
            if not isinstance(client, str):
                raise ValueError(f"client must be a string, got {client!r}")
        except ChannelClosed as e:
            return error_reply(e)
        except ValueError as e:
            return error_reply(InvalidRequest(str(e)))
        self.runs.begin(run, client)
        return {"status": "OK"}

    async def end_run(self, run: str) -> dict[str, Any]:
        """End coupling run ``run``: close every channel it declared; later requests of it are refused."""
        if not self.runs.end(run):
            return {"status": "OK"}  # unknown or already ended: nothing to do (idempotent)
        for name in [n for n, r in self.actor_names.items() if r == run]:
            del self.actor_names[name]
        for rec in [r for r in self.channels.values() if r.run == run]:
            await self._close(rec)
        return {"status": "OK"}

    def remove_client(self, scheduler: Any, client: str) -> None:
        """A client went (its driver closed or died): end the runs it began."""
        for run in self.runs.of_client(client):
            asyncio.ensure_future(self.end_run(run))

    def actor_ended(self, name: str, status: dict[str, Any]) -> dict[str, Any]:
        """An actor's loop ended for good: keep its final ``status`` (its worker reports it no more).

        Returns:
            ``{"status": "OK"}``, or an error reply (:class:`InvalidRequest`) for a ``status`` that is
            not what actors report (``runtime/control/report_check.py``).
        """
        try:
            check_name("actor", name)
            check_status(name, status)
        except ValueError as e:
            return error_reply(InvalidRequest(str(e)))
        self.tallies.actor_status(name, status)
        return {"status": "OK"}

    def routing(self, name: str, forgotten_ok: bool = False) -> dict[str, Any]:
        """The routing table of a channel.

        Args:
            name: the channel.
            forgotten_ok: of a channel closed and forgotten, answer its final table (closed,
                nobody attached; what a late consumer attaches to), not ``ChannelClosed``.
        """
        if forgotten_ok and name in self.closed_names and name not in self.channels:
            return {"status": "OK", **self.closed_names[name]}
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

        Returns:
            The reply, or an error reply (:class:`InvalidRequest`) for an unknown ``role``, or a
            consumer's ``stream`` or ``host`` that is not a string.
        """
        try:
            check_name("endpoint", ident)
            if role == "consumer" and name in self.closed_names and name not in self.channels:
                # A consumer that comes after the channel was closed and forgotten (the successor
                # of one whose worker was lost while it drained): it finds the channel closed and
                # empty, and nothing is recorded for it (its detach finds nothing either).
                if not isinstance(stream, str) or not isinstance(host, str):
                    raise ValueError(f"stream and host must be strings, got {stream!r} and {host!r}")
                return {"status": "OK", **self.closed_names[name]}
            rec = self._channel(name)
            if role == "producer":
                if rec.closed:  # draining: nothing may be sent, and a record of it would outlive the close
                    raise ChannelClosed(f"channel {name!r} is closed; cannot send")
                live = getattr(self.scheduler, "workers", None)  # (None: a broker outside a scheduler, in tests)
                epoch = rec.attach_producer(ident, address, live)
                return {"status": "OK", "epoch": epoch, **rec.routing()}
            if role != "consumer":
                raise ValueError(f"role must be 'producer' or 'consumer', got {role!r}")
            if not isinstance(stream, str) or not isinstance(host, str):
                raise ValueError(f"stream and host must be strings, got {stream!r} and {host!r}")
            rec.attach_consumer(ident, address, stream, host)
            await self._push(rec)
            return {"status": "OK", **rec.routing()}
        except CouplerError as e:
            return error_reply(e)
        except ValueError as e:
            return error_reply(InvalidRequest(str(e)))

    async def detach(
        self, name: str, ident: str, departure: str = Departure.DETACHED.value, address: str = "",
        counters: dict[str, int] | None = None, detail: str = "",
    ) -> dict[str, Any]:
        """Remove a consumer: it closed its port (``detached``), or it is moving (``handover``).

        ``address`` is the worker it detaches from: a detach from any other worker changes
        nothing (an instance that was replaced -- its worker declared dead, back after a
        partition, while a successor attached elsewhere -- or a request that is not its
        own). ``counters`` are its final ``received``, ``nbytes``, ``dropped`` and ``taken``,
        for the channel's totals; ``detail`` says why it left (its producers' ``ConsumerGone`` says it).

        Returns:
            ``{"status": "OK"}``, or an error reply (:class:`InvalidRequest`) for a client that asks
            for ``lost`` (only the broker declares a consumer lost), names no worker, or sends bad
            ``counters``.
        """
        try:
            check_name("endpoint", ident)
            kind = Departure(departure)
            if kind is Departure.LOST:
                raise ValueError("only the broker declares a consumer lost (when its worker is removed)")
            if not isinstance(address, str) or not address:
                raise ValueError(f"a detach names the worker it detaches from (address), got {address!r:.80}")
            if not isinstance(detail, str):
                raise ValueError(f"a detach's detail is a string, got {type(detail).__name__}")
            final = _consumer_counters(counters)
            rec = self._channel(name)
        except ChannelClosed:
            return {"status": "OK"}  # its channel was closed and forgotten: it is detached already
        except CouplerError as e:
            return error_reply(e)
        except ValueError as e:
            return error_reply(InvalidRequest(str(e)))
        if rec.detach_consumer(ident, kind, address, detail[:300]):
            if final is not None:  # before the push awaits: a close meanwhile may forget the channel and its tallies
                self.tallies.consumer_final(address, name, ident, final)
            await self._push(rec)
        if rec.drained:
            self._forget(rec)
        return {"status": "OK"}

    def _known_pairs(self, wire: Any, what: str) -> list[tuple[ChannelRecord, str]]:
        """``[channel, endpoint]`` pairs from a handler's input, as (record, endpoint) of the channels
        still known (a forgotten channel has nothing left to change).

        Raises:
            ValueError: naming what was expected, for anything but such pairs.
        """
        return [(self.channels[name], ident) for name, ident in _channel_pairs(wire, what) if name in self.channels]

    def producers_replaced(self, producers: list[list[str]]) -> dict[str, Any]:
        """Producers whose instance is replaced while its worker lives on: their successors get the next epoch.

        The supervisor says so when a hand-over was incomplete (the actor restarts
        from an older checkpoint): what the old instance's links still hold must not
        reach a consumer after its successor's messages (dataplane/fence.py).

        Args:
            producers: ``[channel, source]`` pairs.
        """
        try:
            known = self._known_pairs(producers, "source")
        except ValueError as e:
            return error_reply(InvalidRequest(str(e)))
        for rec, ident in known:
            rec.replace_producer(ident)
        return {"status": "OK"}

    async def consumers_given_up(self, consumers: list[list[str]], detail: str = "") -> dict[str, Any]:
        """Lost consumers that will not be restarted (their supervisor gave up): they left for good.

        Args:
            consumers: ``[channel, consumer]`` pairs (the given-up actor's inputs).
            detail: why, for the producers' ``ConsumerGone``.
        """
        try:
            known = self._known_pairs(consumers, "consumer")
        except ValueError as e:
            return error_reply(InvalidRequest(str(e)))
        for rec, ident in known:
            if self.channels.get(rec.name) is not rec or not rec.give_up_consumer(ident, detail):
                continue  # forgotten during a push above, or not a lost consumer of it (it came back, or never attached)
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
        replay logs (``SendRetention.forget``, runtime/dataplane/retention.py); consumers drain what they hold,
        see the end and detach, and the last detach forgets the channel here.
        """
        if not rec.closed:
            rec.closed = True
            rec.version += 1
            await self._push(rec, consumers_too=True)
        if rec.drained:
            self._forget(rec)

    def _forget(self, rec: ChannelRecord) -> None:
        """Drop a drained channel and what is kept about it; remember its name and final table as closed."""
        if self.channels.get(rec.name) is not rec:
            return  # forgotten meanwhile (another handler ran during a push), or declared anew
        del self.channels[rec.name]
        self.tallies.forget_channel(rec.name)  # the workers forgot it when it closed
        self.closed_names[rec.name] = rec.final_routing()
        while len(self.closed_names) > CLOSED_NAMES_KEPT:
            self.closed_names.popitem(last=False)

    def report(
        self, address: str, channels: dict[str, Any], actors: dict[str, Any], retire_at: float | None = None
    ) -> dict[str, str]:
        """A worker's periodic counters (the only steady control-plane traffic).

        Returns:
            ``{"status": "OK"}``, or an error reply (:class:`InvalidRequest`) for a report that is not
            what workers send (``runtime/control/report_check.py``): it is not kept.
        """
        try:
            check_report(channels, actors, retire_at)
        except ValueError as e:
            return error_reply(InvalidRequest(f"worker {address!r:.80}: {e}"))
        self.tallies.report(address, channels, actors, retire_at, self.channels)
        return {"status": "OK"}

    def claim_actor(self, name: str, run: str) -> dict[str, Any]:
        """Claim actor name ``name`` for coupling run ``run`` (before its spawn).

        Actor names are the cluster's: an actor's ports are the consumers
        ``name/port`` and the source ``name`` of every channel, so two live runs'
        actors of one name would be one consumer (one of them never gets a
        message) and one source (one's messages dropped as the other's
        duplicates). A name stays its run's until the run frees it or ends.

        Returns:
            ``{"status": "OK"}``, or an error reply: :class:`InvalidRequest` for a name
            another live run holds (or a bad name), :class:`ChannelClosed` for an ended run.
        """
        try:
            check_name("actor", name)
            self.runs.check(run)
            owner = self.actor_names.get(name)
            if owner is not None and owner != run and owner in self.runs.active:
                raise ValueError(
                    f"actor name {name!r} is in use by another coupling on this cluster (run {owner!r}): actor "
                    "names are the cluster's, so give this coupling's actors other names"
                )
        except ChannelClosed as e:
            return error_reply(e)
        except ValueError as e:
            return error_reply(InvalidRequest(str(e)))
        self.actor_names[name] = run
        return {"status": "OK"}

    def free_actors(self, names: list[str], run: str) -> dict[str, Any]:
        """Names ``run`` no longer uses (its actors were released); another run may claim them."""
        if isinstance(names, (list, tuple)):
            for name in names:
                if isinstance(name, str) and self.actor_names.get(name) == run:
                    del self.actor_names[name]
        return {"status": "OK"}

    def snapshot(self) -> dict[str, Any]:
        """Channels with their aggregated counters and rates, and actors (for stats and dashboards)."""
        out = {name: self.tallies.channel_row(name, rec.routing()) for name, rec in self.channels.items()}
        return {"status": "OK", "channels": out, "actors": self.tallies.actor_rows(), "workers": self.tallies.workers()}

    # -- inspection (in the scheduler's process: the dashboard page and /metrics) ------------------
    def sample(self) -> None:
        """Feed the rate meters with the counters now (called every ``RATE_SAMPLE_INTERVAL``)."""
        self.tallies.sample(self.channels)

    def channel_stats(self) -> dict[str, ChannelStats]:
        """Every channel's counters and rates, by name."""
        return {name: ChannelStats.from_snapshot(name, s) for name, s in self.snapshot()["channels"].items()}

    def actor_statuses(self) -> dict[str, ActorStatus]:
        """Every actor's last reported status with its step rate, by name."""
        return {name: ActorStatus.from_dict({"name": name, **a}) for name, a in self.snapshot()["actors"].items()}

    def metric_series(self) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
        """Actor name -> metric name -> (steps, values), for the metrics actors recorded."""
        return {name: h.series() for name, h in self.tallies.histories.items()}

    def last_metrics(self) -> dict[str, dict[str, float]]:
        """Actor name -> metric name -> latest value."""
        return {name: h.last() for name, h in self.tallies.histories.items()}

    # -- worker loss -------------------------------------------------------------------
    async def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
        """Consumers on a lost worker are gone; tell the producers.

        Every channel learns of the loss before the first push: a push awaits,
        and other handlers (a declare, a close) change ``self.channels`` meanwhile.
        """
        self.tallies.worker_lost(worker, self.channels)
        changed = [rec for rec in list(self.channels.values()) if rec.lose_worker(worker)]
        for rec in changed:
            if self.channels.get(rec.name) is rec:  # not forgotten (or declared anew) during an earlier push
                await self._push(rec)
            if rec.drained:  # closed, and its last consumer was on that worker: nothing can use it any more
                self._forget(rec)

    async def _push(self, rec: ChannelRecord, consumers_too: bool = False) -> None:
        """Send the routing table to every worker that produces (or consumes) on ``rec``."""
        if getattr(self.scheduler.status, "name", "") in ("closing", "closed"):
            return  # the cluster is going away: nobody to tell, and the comms are closing
        addresses = set(rec.producers.values())
        if consumers_too:
            addresses |= set(rec.consumers.values())
        await push_routing(self.scheduler, rec.routing(), addresses)


async def push_routing(scheduler: Any, table: dict[str, Any], addresses: set[str]) -> None:
    """Send the routing ``table`` of a channel to the workers at ``addresses``, at once, each within 10 s."""

    async def one(addr: str) -> None:
        try:
            await asyncio.wait_for(scheduler.rpc(addr).coupler_routing_update(table=table), 10)
        except Exception as e:  # a dead worker is handled by remove_worker
            logger.info("could not push routing of %r to %s: %s", table["channel"], addr, e)

    await asyncio.gather(*(one(a) for a in addresses))

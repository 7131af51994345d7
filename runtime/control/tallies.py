"""The broker's tallies of what workers report: channel counters, actor statuses, metric series, rates.

Every worker's endpoint reports its counters periodically (the only steady
control-plane traffic). The tallies keep each worker's last report, add up a
channel's counters over them, and keep the last counters of the consumers and
producers that reports no longer list (detached, moved, or on a lost worker),
so that totals never go back (Prometheus counters). They also keep the
actors' statuses and the metric series actors report (a learner's loss), and
sample the counters into rates for the dashboard and ``/metrics``.

An ended actor's final status and series stay for the dashboard, but only
the last ``ended_kept`` ended actors' (``ENDED_ACTORS_KEPT``): a cluster that
runs simulations as short actors for weeks would otherwise grow a record per
simulation. A forgotten actor that reports again (restarted, or its name
reused) starts a new record.

Which channels exist is the broker's: the tallies are told which names are
known, and forget a channel when the broker does.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, Collection

from coupler.runtime.control.status import TERMINAL_STATES, MetricHistory, RateMeter

# The window rates are taken over, in seconds.
RATE_WINDOW = 5.0
# Channel counters that only grow; a consumer's or producer's last ones are kept when it leaves.
_CUMULATIVE = ("sent", "sent_bytes", "received", "received_bytes", "dropped", "taken")
# A consumer's counters in a report, as its channel's departed counters add them.
_CONSUMER_KEYS = ("received", "nbytes", "dropped", "taken")


def _add_consumer(gone: dict[str, int], c: dict[str, Any]) -> None:
    gone["received"] += c["received"]
    gone["received_bytes"] += c["nbytes"]
    gone["dropped"] += c["dropped"]
    gone["taken"] += c["taken"]


# Ended actors whose final status and metric series are kept (the most recently ended).
ENDED_ACTORS_KEPT = 1024


class Tallies:
    """Workers' last reports, the counters of those that left, actors' statuses and rates.

    Args:
        ended_kept: ended actors whose records are kept; the longest-ended beyond it are forgotten.

    Raises:
        ValueError: for ``ended_kept < 0``.
    """

    def __init__(self, ended_kept: int = ENDED_ACTORS_KEPT) -> None:
        if ended_kept < 0:
            raise ValueError(f"ended_kept must be >= 0, got {ended_kept}")
        self.ended_kept = ended_kept
        self._ended: OrderedDict[str, None] = OrderedDict()  # ended actors' names, longest-ended first
        self.by_worker: dict[str, dict[str, Any]] = {}  # worker address -> last report
        # channel -> counters of the consumers and producers that reports no longer list.
        self.departed: dict[str, dict[str, int]] = {}
        # (worker, channel, consumer) -> the counters of it that went to ``departed`` from a report, until
        # its final counters (sent with its detach) add what it took after that report.
        self.counted: dict[tuple[str, str, str], dict[str, int]] = {}
        # (worker, channel, consumer) -> final counters of a detached consumer its worker's reports still list.
        self.finals: dict[tuple[str, str, str], dict[str, int]] = {}
        self.actors: dict[str, dict[str, Any]] = {}  # actor name -> last status
        self.histories: dict[str, MetricHistory] = {}  # actor name -> metric series it reported
        self.meters: dict[tuple[str, str, str], RateMeter] = {}  # (kind, name, counter) -> rate

    # -- what comes in ------------------------------------------------------------------------
    def report(
        self, address: str, channels: dict[str, Any], actors: dict[str, Any], retire_at: float | None, known: Collection[str]
    ) -> None:
        """Take worker ``address``'s report; channels not in ``known`` (forgotten meanwhile) are dropped."""
        old = self.by_worker.get(address)
        if old is not None:
            self._keep_departed(old["channels"], channels, known, address)
        channels = {name: ch for name, ch in channels.items() if name in known}
        for (worker, name, cid), final in self.finals.items():
            listed = channels.get(name, {}).get("consumers", {}).get(cid) if worker == address else None
            if listed is not None:  # a report made before the consumer detached, come after its final counters
                listed.update(final)
        self.by_worker[address] = {"time": time.time(), "channels": channels, "retire_at": retire_at}
        for name, status in actors.items():
            self.actor_status(name, status)

    def actor_status(self, name: str, status: dict[str, Any]) -> None:
        """Merge an actor's reported ``status`` (its ``metrics`` points go to its series)."""
        points = status.pop("metrics", None)
        if points:
            self.histories.setdefault(name, MetricHistory()).merge(points)
        record = self.actors.setdefault(name, {})
        record.update(status)
        self._note_state(name, record.get("state"))

    def worker_lost(self, worker: str, known: Collection[str]) -> None:
        """``worker`` was removed: its last counters depart and its actors that had not ended are lost."""
        old = self.by_worker.pop(worker, None)
        if old is not None:
            self._keep_departed(old["channels"], {}, known, None)  # no final counters come from a lost worker
        for name, a in list(self.actors.items()):
            # Only actors still live: an ended record is kept as it ended (and may be pruned meanwhile).
            if a.get("worker") == worker and a.get("state") not in TERMINAL_STATES:
                a["state"] = "lost"
                self._note_state(name, "lost")

    def _note_state(self, name: str, state: Any) -> None:
        """Track which actors have ended, in order, and forget the longest-ended beyond ``ended_kept``."""
        if state not in TERMINAL_STATES:
            self._ended.pop(name, None)  # running (again: a lost actor restarted, or a name reused)
            return
        self._ended[name] = None
        self._ended.move_to_end(name)
        while len(self._ended) > self.ended_kept:
            old, _ = self._ended.popitem(last=False)
            self.actors.pop(old, None)
            self.histories.pop(old, None)
            self.meters.pop(("actor", old, "steps"), None)

    def forget_channel(self, name: str) -> None:
        """Drop what is kept of channel ``name`` (closed and drained: the workers forgot it too)."""
        self.departed.pop(name, None)
        for table in (self.counted, self.finals):
            for key in [k for k in table if k[1] == name]:
                del table[key]
        for report in self.by_worker.values():
            report["channels"].pop(name, None)
        for key in [k for k in self.meters if k[0] == "channel" and k[1] == name]:
            del self.meters[key]

    def _keep_departed(self, before: dict[str, Any], now: dict[str, Any], known: Collection[str], address: str | None) -> None:
        """Add the last counters of the consumers and producers in a worker's report ``before`` that
        its report ``now`` no longer lists to their channel's departed counters (and, with the
        worker's ``address``, note what was added for a consumer's final counters to complete)."""
        for name, ch in before.items():
            if name not in known:
                continue  # closed and forgotten: nothing adds up over it any more
            listed = now.get(name) or {}
            gone = self.departed.setdefault(name, dict.fromkeys(_CUMULATIVE, 0))
            for src, p in ch.get("producers", {}).items():
                if src not in listed.get("producers", {}):
                    gone["sent"] += p["sent"]
                    gone["sent_bytes"] += p["nbytes"]
            for cid, c in ch.get("consumers", {}).items():
                if cid not in listed.get("consumers", {}):
                    _add_consumer(gone, c)
                    if address is not None and self.finals.pop((address, name, cid), None) is None:
                        self.counted[(address, name, cid)] = {k: int(c[k]) for k in _CONSUMER_KEYS}

    def consumer_final(self, address: str, channel: str, consumer: str, final: dict[str, int]) -> None:
        """A consumer detached from ``address`` with these ``final`` counters (``received``, ``nbytes``, ``dropped``, ``taken``).

        Reports come every interval: what it took after the last one would be lost
        to the channel's totals. Still listed in the worker's last report, the
        final counters replace the listed ones (the next report, without it, keeps
        them); already moved to the departed counters, what they add is added.
        """
        listed = self.by_worker.get(address, {}).get("channels", {}).get(channel, {}).get("consumers", {})
        key = (address, channel, consumer)  # one instance: a successor of the same id runs elsewhere
        if consumer in listed:
            listed[consumer].update(final)
            self.finals[key] = final  # until a report no longer lists it
            self.counted.pop(key, None)
            return
        before = self.counted.pop(key, dict.fromkeys(_CONSUMER_KEYS, 0))
        gone = self.departed.setdefault(channel, dict.fromkeys(_CUMULATIVE, 0))
        _add_consumer(gone, {k: max(0, final[k] - before[k]) for k in _CONSUMER_KEYS})

    # -- what goes out ------------------------------------------------------------------------
    def aggregate(self, name: str) -> tuple[dict[str, int], dict[str, int], dict[str, Any]]:
        """A channel's totals, last sequence number per source, and consumer counters, over the reports.

        Cumulative totals include the departed counters (see :meth:`_keep_departed`), so
        they do not drop when a consumer detaches or its worker goes; ``depth`` is of now.
        """
        totals = {**dict.fromkeys(_CUMULATIVE, 0), **self.departed.get(name, {}), "depth": 0}
        last_seq: dict[str, int] = {}
        consumers: dict[str, Any] = {}
        for report in self.by_worker.values():
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

    def channel_row(self, name: str, routing: dict[str, Any]) -> dict[str, Any]:
        """Channel ``name``'s row of the broker's snapshot: its ``routing`` table with its totals and rates."""
        totals, last_seq, consumers = self.aggregate(name)
        return {
            **routing,
            "producers": sorted(routing["producers"]),
            "totals": totals,
            "rates": {"messages": self.rate("channel", name, "sent"), "bytes": self.rate("channel", name, "sent_bytes")},
            "producer_seq": last_seq,
            "consumer_stats": consumers,
        }

    def rate(self, kind: str, name: str, counter: str) -> float:
        """The rate of ``counter`` of channel or actor ``name`` (``kind``), per second (0 if not sampled)."""
        meter = self.meters.get((kind, name, counter))
        return 0.0 if meter is None else meter.rate

    def workers(self) -> dict[str, dict[str, Any]]:
        """Worker address -> its retirement time and when it last reported."""
        return {addr: {"retire_at": r.get("retire_at"), "reported_at": r["time"]} for addr, r in self.by_worker.items()}

    def actor_rows(self) -> dict[str, dict[str, Any]]:
        """Actor name -> its last status with its step rate."""
        return {name: {**a, "step_rate": self.rate("actor", name, "steps")} for name, a in self.actors.items()}

    def sample(self, channels: Collection[str]) -> None:
        """Feed the rate meters of ``channels`` and of the actors with the counters now."""
        now = time.monotonic()
        for name in channels:
            totals, _, _ = self.aggregate(name)
            for counter in ("sent", "sent_bytes"):
                self.meters.setdefault(("channel", name, counter), RateMeter(RATE_WINDOW)).add(now, totals[counter])
        for name, a in self.actors.items():
            if a.get("state") in TERMINAL_STATES:
                self.meters.pop(("actor", name, "steps"), None)  # its rate is 0 from now on: no meter to keep
                continue
            self.meters.setdefault(("actor", name, "steps"), RateMeter(RATE_WINDOW)).add(now, a.get("steps", 0))

"""What a worker reports, checked before the broker keeps it.

Reports (``coupler_report``) and final statuses (``coupler_actor_ended``) come
from workers every interval and feed every client's view: the channels'
totals and rates, the dashboard page, ``/metrics``. The broker sums their
counters and reads their statuses long after the request returned, so one
report with a string where a count belongs would break those views for
everyone, for as long as the report is kept. These checks refuse such a
report whole, at the request, so that it costs its sender only.

Only what the broker computes with is checked strictly (counters, sequence
numbers, states, step counts, metric points); what it passes on as it came
(``info``, ``error``, link statistics) must only be plain data.
"""

from __future__ import annotations

import math
from typing import Any

from coupler.runtime.control.status import TERMINAL_STATES

#: States an actor's status may name (``ActorStatus.state``; ``migrated``: handed over, its successor runs
#: elsewhere; ``unknown``: its host could not say, runtime/dataplane/report.py).
STATES = frozenset({"created", "running", "paused", "migrated", "unknown", *TERMINAL_STATES})
#: Counters a producer's entry carries, integers (``last_seq`` from -1: nothing sent).
PRODUCER_COUNTERS = ("sent", "nbytes", "dropped")
#: Counters a consumer's entry carries, integers >= 0 (``BufferStats``).
CONSUMER_COUNTERS = ("received", "taken", "dropped", "depth", "nbytes")
_STATUS_TEXT = ("name", "cls", "worker", "error", "device")
_STATUS_TIMES = ("started_at", "stopped_at", "step_rate")


def _count(where: str, value: Any, low: int = 0) -> None:
    if type(value) is not int or value < low:
        raise ValueError(f"{where} must be an integer >= {low}, got {value!r:.60}")


def _number(where: str, value: Any) -> None:
    if type(value) not in (int, float) or not math.isfinite(value):
        raise ValueError(f"{where} must be a finite number, got {value!r:.60}")


def _mapping(where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValueError(f"{where} must be a map with string keys, got {type(value).__name__}")
    return value


def check_status(name: str, status: Any) -> None:
    """Check an actor's reported status (``ActorStatus.to_dict()`` and its ``metrics``).

    Args:
        name: the actor's name, for the error.
        status: the status as it came.

    Raises:
        ValueError: naming the field, what it must be, and what came.
    """
    where = f"actor {name!r:.80}'s status"
    st = _mapping(where, status)
    if "state" in st and (not isinstance(st["state"], str) or st["state"] not in STATES):
        raise ValueError(f"{where}: state must be one of {sorted(STATES)}, got {st['state']!r:.40}")
    if "steps" in st:
        _count(f"{where}: steps", st["steps"])
    for key in _STATUS_TEXT:
        if key in st and not isinstance(st[key], str):
            raise ValueError(f"{where}: {key} must be a string, got {type(st[key]).__name__}")
    for key in _STATUS_TIMES:
        if key in st:
            _number(f"{where}: {key}", st[key])
    for key in ("info", "waiting", "weights"):
        if st.get(key) is not None:
            _mapping(f"{where}: {key}", st[key])
    if st.get("metrics") is not None:
        metrics = _mapping(f"{where}: metrics", st["metrics"])
        points = metrics.get("points", [])
        if not isinstance(points, (list, tuple)):
            raise ValueError(f"{where}: metrics points must be a list, got {type(points).__name__}")
        for p in points:
            if not (
                isinstance(p, (list, tuple)) and len(p) == 4 and type(p[0]) is int and isinstance(p[1], str)
                and type(p[2]) is int and type(p[3]) in (int, float)
            ):  # fmt: skip
                raise ValueError(f"{where}: a metric point is [seq, name, step, value], got {p!r:.80}")


def check_report(channels: Any, actors: Any, retire_at: Any) -> None:
    """Check a worker's periodic report (``Reporter.payload()``).

    Args:
        channels: per channel, ``producers`` and ``consumers`` (id -> counters) and ``links``.
        actors: actor name -> status.
        retire_at: when the worker retires (wall-clock seconds), or ``None``.

    Raises:
        ValueError: naming the entry, what it must be, and what came.
    """
    for name, ch in _mapping("a report's channels", channels).items():
        ch = _mapping(f"channel {name!r:.80} of a report", ch)
        for src, p in _mapping(f"channel {name!r:.80}: producers", ch.get("producers", {})).items():
            where = f"channel {name!r:.80}: producer {src!r:.80}"
            p = _mapping(where, p)
            for key in PRODUCER_COUNTERS:
                _count(f"{where}: {key}", p.get(key))
            _count(f"{where}: last_seq", p.get("last_seq"), low=-1)
        for cid, c in _mapping(f"channel {name!r:.80}: consumers", ch.get("consumers", {})).items():
            where = f"channel {name!r:.80}: consumer {cid!r:.80}"
            c = _mapping(where, c)
            for key in CONSUMER_COUNTERS:
                _count(f"{where}: {key}", c.get(key))
        links = ch.get("links", [])  # (Dask's comm may hand lists over as tuples)
        if not isinstance(links, (list, tuple)) or not all(isinstance(link, dict) for link in links):
            raise ValueError(f"channel {name!r:.80}: links must be a list of maps, got {links!r:.60}")
    for name, status in _mapping("a report's actors", actors).items():
        check_status(name, status)
    if retire_at is not None:
        _number("retire_at", retire_at)


__all__ = ["CONSUMER_COUNTERS", "PRODUCER_COUNTERS", "STATES", "check_report", "check_status"]

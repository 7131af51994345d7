"""Reports and final statuses the broker keeps: a malformed one is refused whole and costs its sender only.

Before, one report with a string counter answered OK and then broke every
client's ``channels()``, the dashboard and ``/metrics`` for as long as the
report was kept (the broker sums the counters later, on every snapshot).
"""

from __future__ import annotations

import copy
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coupler.runtime.control.broker import Broker
from coupler.runtime.control.status import ActorStatus, MetricLog
from coupler.runtime.dataplane.buffers import BufferStats
from coupler.runtime.dataplane.routing import ProducerStats

WORKER = "tcp://10.0.0.1:1"
ROGUE = "tcp://10.0.0.9:1"


def _genuine() -> dict[str, Any]:
    """A report built from the classes a worker's reporter uses (runtime/dataplane/report.py)."""
    producer = ProducerStats()
    producer.sent, producer.nbytes, producer.last_seq = 5, 40, 4
    buffer = BufferStats(received=5, taken=3, depth=2, nbytes=40, lag=0.01)
    log = MetricLog()
    log.record("loss", 3, 0.5)
    status = ActorStatus(name="lrn", cls="Learner", state="running", steps=3, worker=WORKER, info={"seen": 5})
    return {
        "channels": {
            "c": {
                "producers": {"sim": producer.as_dict()},
                "consumers": {"lrn/data": {**buffer.as_dict(), "policy": "QueueBuffer", "worker": WORKER}},
                "links": [{"consumer": "lrn/data", "stream": "10.0.0.1:9", "shm": False}],
            }
        },
        "actors": {"lrn": {**status.to_dict(), "metrics": log.recent()}},
        "retire_at": None,
    }


def _broker() -> Broker:
    b = Broker()
    assert b.declare(name="c", policy={"kind": "queue", "maxsize": 4})["status"] == "OK"
    assert b.report(WORKER, **_genuine())["status"] == "OK"
    return b


@pytest.mark.parametrize("comm", [False, True])
def test_a_genuine_report_is_kept_and_counted(comm: bool) -> None:
    """Also as it comes through Dask's comm, whose msgpack hands lists over as tuples."""
    b = Broker()
    assert b.declare(name="c", policy={"kind": "queue", "maxsize": 4})["status"] == "OK"
    report = _genuine()
    if comm:
        report = msgpack.unpackb(msgpack.packb(report), use_list=False)
    assert b.report(WORKER, **report)["status"] == "OK"
    totals = b.snapshot()["channels"]["c"]["totals"]
    assert totals["sent"] == 5 and totals["received"] == 5 and totals["depth"] == 2
    assert b.snapshot()["actors"]["lrn"]["steps"] == 3


#: Paths into a report (channels/c/..., actors/lrn/...) and values that are not what workers send there.
_PATHS = [
    ("channels", "c", "producers", "sim", "sent"),
    ("channels", "c", "producers", "sim", "nbytes"),
    ("channels", "c", "producers", "sim", "last_seq"),
    ("channels", "c", "consumers", "lrn/data", "received"),
    ("channels", "c", "consumers", "lrn/data", "depth"),
    ("channels", "c", "consumers", "lrn/data", "taken"),
    ("channels", "c", "consumers", "lrn/data", "nbytes"),
    ("channels", "c", "consumers", "lrn/data", "dropped"),
    ("channels", "c", "links"),
    ("channels", "c", "producers"),
    ("channels", "c"),
    ("actors", "lrn", "steps"),
    ("actors", "lrn", "state"),
    ("actors", "lrn", "started_at"),
    ("actors", "lrn", "info"),
    ("actors", "lrn", "metrics"),
    ("actors", "lrn"),
    ("retire_at",),
]
_BAD = st.sampled_from(["7", None, -2, 2.5, float("nan"), [1], {"x": 1}, True])


def _set(report: dict[str, Any], path: tuple[str, ...], value: Any) -> bool:
    """Put ``value`` at ``path``; False where it is what a worker may send there (then nothing to test)."""
    *parents, last = path
    node = report
    for key in parents:
        node = node[key]
    old = node[last]
    if last in ("retire_at", "started_at") and type(value) in (int, float) and value == value:
        return False  # any finite number is a time
    if last == "last_seq" and value == -1:
        return False
    if last in ("info", "metrics", "retire_at") and value is None:
        return False  # optional
    if type(old) is dict and type(value) is dict:
        return False  # {"x": 1} is a plain map: an entry, a status, info and the like may hold other keys
    node[last] = value
    return True


@settings(max_examples=120, deadline=None)
@given(path=st.sampled_from(_PATHS), bad=_BAD)
def test_a_report_with_a_value_workers_never_send_is_refused_and_changes_nothing(path: tuple[str, ...], bad: Any) -> None:
    b = _broker()
    before = copy.deepcopy(b.snapshot())
    report = _genuine()
    if not _set(report, path, bad):
        return
    reply = b.report(ROGUE, **report)
    assert reply["status"] == "error" and reply["error"] == "InvalidRequest", (path, bad, reply)
    assert path[-1] in reply["message"] or path[0] in reply["message"], reply  # it names what is wrong
    # Nothing of it was kept, and every client's view still works.
    assert ROGUE not in b.tallies.by_worker
    b.tallies.sample(list(b.channels))
    after = b.snapshot()
    assert after["actors"] == before["actors"]
    assert after["channels"]["c"]["totals"] == before["channels"]["c"]["totals"]
    b.channel_stats()  # what the dashboard and /metrics read


@pytest.mark.parametrize(
    "status",
    [{"state": "running", "steps": "3"}, {"state": "dancing"}, {"steps": -1}, {"metrics": {"points": [[0, "loss", "x", 1.0]]}}, []],
)
def test_a_final_status_workers_never_send_is_refused(status: Any) -> None:
    b = _broker()
    reply = b.actor_ended("lrn", status)
    assert reply["status"] == "error" and reply["error"] == "InvalidRequest", reply
    assert b.snapshot()["actors"]["lrn"]["state"] == "running"
    b.tallies.sample(list(b.channels))  # the rate meters still read the steps


def test_a_final_status_as_actors_send_it_is_kept() -> None:
    b = _broker()
    final = ActorStatus(name="lrn", cls="Learner", state="finished", steps=9, worker=WORKER, stopped_at=1.0)
    assert b.actor_ended("lrn", {**final.to_dict(), "metrics": MetricLog().recent()})["status"] == "OK"
    assert b.snapshot()["actors"]["lrn"]["state"] == "finished"

"""Gathering a restarted producer's records from its consumers' workers (runtime/dataplane/gathering.py), with fake workers."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import numpy as np
import pytest

from coupler.runtime.control.routing_table import ConsumerRef, RoutingTable
from coupler.runtime.dataplane import gathering
from coupler.runtime.dataplane.buffers import QueueBuffer
from coupler.runtime.dataplane.gathering import ConsumerRecords
from coupler.runtime.dataplane.receipts import FLOOR_KEY, Avoid, Pin
from coupler.runtime.message import Message
from coupler.runtime.policies import Queue


class _Worker:
    """Each address answers from its own ConsumerRecords; ``hangs`` never answers (a partition)."""

    def __init__(self, peers: dict[str, ConsumerRecords], hangs: set[str]) -> None:
        self.peers, self.hangs = peers, hangs

    def rpc(self, address: str) -> Any:
        peers, hangs = self.peers, self.hangs

        class _Rpc:
            async def coupler_receipts(self, **kw: Any) -> dict[str, Any]:
                if address in hangs:
                    await asyncio.sleep(3600)
                return peers[address].held_receipts(**kw)

        return _Rpc()


def _member(channel: str, cid: str, seqs: list[int], floor: int) -> QueueBuffer:
    buf = QueueBuffer(channel, Queue(8, shared=True))
    for q in seqs:
        # A work-sharing member has room only while its consumer waits for a message (pulled).
        taker = threading.Thread(target=buf.get, kwargs={"timeout": 5})
        taker.start()
        buf.put([Message({"v": np.zeros(1)}, source="p", seq=q, meta={FLOOR_KEY: floor})], timeout=5)
        taker.join()
    return buf


def _records(here: str, table: RoutingTable, buffers: dict[tuple[str, str], QueueBuffer], peers: dict[str, ConsumerRecords], hangs: set[str]) -> ConsumerRecords:
    async def broker(op: str, **kw: Any) -> dict[str, Any]:
        assert op == "coupler_routing"
        return table.to_wire()

    return ConsumerRecords(_Worker(peers, hangs), buffers, lambda: here, broker)


def test_a_plan_joins_what_members_on_other_workers_had_and_leaves_out_one_that_does_not_answer(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(gathering, "ASK_TIMEOUT", 0.2)
    ch = "pool"
    members = [ConsumerRef("a", "w-a", "s-a", "h"), ConsumerRef("b", "w-b", "s-b", "h"), ConsumerRef("c", "w-c", "s-c", "h")]
    table = RoutingTable(ch, 3, Queue(8, shared=True), consumers=tuple(members))
    peers: dict[str, ConsumerRecords] = {}
    # a had 10 and 12 (3 and 5 are below the floor, forgotten); b had 11 and 14; c's worker is cut off.
    peers["w-a"] = _records("w-a", table, {(ch, "a"): _member(ch, "a", [3, 5, 10, 12], 10)}, peers, set())
    peers["w-b"] = _records("w-b", table, {(ch, "b"): _member(ch, "b", [11, 14], 10)}, peers, set())
    here = _records("w-p", table, {}, peers, {"w-c"})
    with caplog.at_level(logging.WARNING):
        plan = asyncio.run(here.gather_receipts(ch, "p", 10))
    assert plan is not None
    assert [plan.route(q) for q in (10, 11, 12, 14)] == [Pin("a"), Pin("b"), Pin("a"), Pin("b")]
    assert plan.route(13) == Avoid(frozenset({"b"}))  # lost on its way: not to b, which would drop it
    assert "member worker w-c did not answer" in caplog.text


def test_no_plan_for_a_channel_that_does_not_share_work() -> None:
    table = RoutingTable("q", 1, Queue(8), consumers=(ConsumerRef("a", "w-a", "s", "h"),))
    assert asyncio.run(_records("w-p", table, {}, {}, set()).gather_receipts("q", "p", 0)) is None

"""The broker's handlers when they interleave: a push awaits, and other handlers run meanwhile."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from coupler.runtime.control.broker import Broker

LOST, ALIVE = "tcp://10.0.0.1:1", "tcp://10.0.0.2:1"
QUEUE = {"kind": "queue", "maxsize": 4}


class _Worker:
    """A worker's routing-update handler as the scheduler's rpc reaches it: it yields, as a real send does."""

    def __init__(self, address: str, pushed: list[tuple[str, str]]) -> None:
        self.address, self.pushed = address, pushed

    async def coupler_routing_update(self, table: dict[str, Any]) -> None:
        await asyncio.sleep(0)  # the other handlers run here
        self.pushed.append((self.address, table["channel"]))


class _Scheduler:
    """What the broker uses of its scheduler here: a running status and an rpc to the workers."""

    def __init__(self) -> None:
        self.status = type("Status", (), {"name": "running"})()
        self.pushed: list[tuple[str, str]] = []

    def rpc(self, address: str) -> _Worker:
        return _Worker(address, self.pushed)


async def _broker_with_consumers_on_the_lost_worker(n: int) -> Broker:
    b = Broker()
    b.scheduler = _Scheduler()
    for i in range(n):
        assert b.declare(name=f"c{i}", policy=QUEUE)["status"] == "OK"
        await b.attach(name=f"c{i}", role="producer", ident=f"p{i}", address=ALIVE)
        await b.attach(name=f"c{i}", role="consumer", ident=f"a{i}/in", address=LOST, stream="10.0.0.1:9")
    b.scheduler.pushed.clear()
    return b


@pytest.mark.parametrize("churn", ["declare", "close"])
def test_remove_worker_tells_every_channel_while_others_are_declared_and_closed(churn: str) -> None:
    """The loss is applied to a snapshot of the channels: a concurrent declare or close
    (which forgets a drained channel) no longer breaks the iteration ("dictionary changed size")."""
    n = 8

    async def scenario() -> Broker:
        b = await _broker_with_consumers_on_the_lost_worker(n)

        async def meanwhile() -> None:
            for i in range(n):
                if churn == "declare":
                    assert b.declare(name=f"new{i}", policy=QUEUE)["status"] == "OK"
                else:
                    assert (await b.close_channel(name=f"c{n - 1 - i}"))["status"] == "OK"
                await asyncio.sleep(0)

        await asyncio.gather(b.remove_worker(b.scheduler, LOST), meanwhile())
        return b

    b = asyncio.run(scenario())
    pushed = b.scheduler.pushed
    if churn == "declare":
        for i in range(n):
            table = b.routing(name=f"c{i}")
            assert table["consumers"] == [] and table["gone"] == [[f"a{i}/in", "lost", f"worker {LOST} was lost"]]
            assert (ALIVE, f"c{i}") in pushed  # every producer heard of its consumer's loss
        assert {f"new{i}" for i in range(n)} <= set(b.channels)
    else:
        # Closed with their only consumer lost: drained and forgotten; nothing was pushed for a forgotten one after.
        assert not [name for name in b.channels if name.startswith("c")]
        assert {addr for addr, _ in pushed} <= {ALIVE, LOST}

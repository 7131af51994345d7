"""The broker's handlers when they interleave: a push awaits, and other handlers run meanwhile."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

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


def _broker_with_channel_c() -> Broker:
    """A broker outside a scheduler (pushes go to stand-in workers) with a Queue channel ``c``."""
    b = Broker()
    b.scheduler = _Scheduler()
    assert b.declare(name="c", policy=QUEUE)["status"] == "OK"
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


@pytest.mark.parametrize("order", ["close, then lose the consumer", "lose the consumer, then close"])
def test_a_closed_channel_whose_last_consumer_was_lost_is_forgotten_and_its_successor_finds_it_closed(order: str) -> None:
    """Forgotten whichever comes first. A successor of the lost consumer (its restart)
    attaches to a closed, empty channel and records nothing; a producer is refused."""

    async def scenario() -> Broker:
        b = await _broker_with_consumers_on_the_lost_worker(1)
        if order.startswith("close"):
            assert (await b.close_channel(name="c0"))["status"] == "OK"
            assert "c0" in b.channels  # its consumer has not drained it yet
            await b.remove_worker(b.scheduler, LOST)
        else:
            await b.remove_worker(b.scheduler, LOST)
            assert (await b.close_channel(name="c0"))["status"] == "OK"
        return b

    b = asyncio.run(scenario())
    assert "c0" not in b.channels and "c0" not in b.snapshot()["channels"]
    late = asyncio.run(b.attach(name="c0", role="consumer", ident="a0/in", address=ALIVE, stream="10.0.0.2:9", host="h"))
    assert late["status"] == "OK" and late["closed"] is True and late["consumers"] == [] and late["policy"]["kind"] == "queue"
    assert b.routing(name="c0", forgotten_ok=True) == late and b.routing(name="c0")["error"] == "ChannelClosed"
    assert "c0" not in b.channels  # nothing recorded for the late consumer
    assert asyncio.run(b.detach(name="c0", ident="a0/in", address=ALIVE))["status"] == "OK"
    refused = asyncio.run(b.attach(name="c0", role="producer", ident="p0", address=ALIVE))
    assert refused["status"] == "error" and refused["error"] == "ChannelClosed"
    assert b.declare(name="c0", policy=QUEUE)["status"] == "OK" and not b.routing(name="c0")["closed"]  # the name is free


def test_consumers_given_up_leave_for_good_and_a_closed_channel_they_drained_is_forgotten() -> None:
    async def scenario() -> Broker:
        b = await _broker_with_consumers_on_the_lost_worker(3)
        await b.attach(name="c1", role="consumer", ident="x/in", address=ALIVE, stream="10.0.0.2:9", host="h")
        await b.remove_worker(b.scheduler, LOST)
        assert (await b.close_channel(name="c2"))["status"] == "OK"  # drained already (its consumer is lost): forgotten
        b.scheduler.pushed.clear()
        reply = await b.consumers_given_up(
            consumers=[["c0", "a0/in"], ["c1", "a1/in"], ["c1", "x/in"], ["c2", "a2/in"], ["nope", "a9/in"]], detail="gave up",
        )
        assert reply["status"] == "OK"
        return b

    b = asyncio.run(scenario())
    for name in ("c0", "c1"):
        gone = b.routing(name=name)["gone"]
        assert [g[:2] for g in gone] == [[f"a{name[1]}/in", "detached"]] and gone[0][2] == "gave up"
    assert [c[0] for c in b.routing(name="c1")["consumers"]] == ["x/in"]  # an attached consumer is not given up
    assert {ch for _, ch in b.scheduler.pushed} == {"c0", "c1"}  # the producers heard it
    assert asyncio.run(b.consumers_given_up(consumers=[["c0"]]))["error"] == "InvalidRequest"


@pytest.mark.parametrize(
    "counters",
    [{"received": -1, "nbytes": 0, "dropped": 0, "taken": 0}, {"received": 1}, {"received": True, "nbytes": 0, "dropped": 0, "taken": 0}, [1]],
)
def test_a_detach_with_counters_that_are_not_counts_is_refused(counters: Any) -> None:
    b = Broker()
    b.scheduler = _Scheduler()
    reply = asyncio.run(b.detach(name="c", ident="a/in", address=ALIVE, counters=counters))
    assert reply["error"] == "InvalidRequest" and "final counters must be integers >= 0" in reply["message"]


def test_a_producer_replaced_on_a_live_worker_gets_a_successor_of_the_next_epoch() -> None:
    # An incomplete hand-over restarts the actor from an older checkpoint while its old worker lives
    # on, its links still holding what a cut-off consumer did not take: the successor's epoch fences them.
    async def scenario() -> tuple[int, int, int]:
        b = _broker_with_channel_c()
        first = (await b.attach(name="c", role="producer", ident="p", address=ALIVE))["epoch"]
        moved = (await b.attach(name="c", role="producer", ident="p", address=LOST))["epoch"]  # a complete move keeps it
        assert b.producers_replaced(producers=[["c", "p"], ["gone", "p"]])["status"] == "OK"  # a forgotten channel: nothing
        replaced = (await b.attach(name="c", role="producer", ident="p", address=ALIVE))["epoch"]
        assert b.producers_replaced(producers=[["c"]])["error"] == "InvalidRequest"
        return first, moved, replaced

    assert asyncio.run(scenario()) == (0, 0, 1)


@pytest.mark.parametrize(
    "fields",
    [
        [["x", [2], "object"]],  # every stream of it failed when a payload was split
        [["x", [2], "V4"]],
        [["x", [2], "<U2"]],
        [["x", [2], ">f8"]],  # not this machine's order (a sender's big-endian array is refused too)
        [["x", [2**40, 2**40], "float64"]],  # 2**83 bytes: past every 64-bit size computed from it
        [["x", [2**20, 2**20], "float32"], ["y", [2**20], "float32"]],
    ],
)
def test_a_spec_no_message_can_have_is_refused(fields: Any) -> None:
    b = Broker()
    spec = {"treedef": ["dict", ["x", "y"][: len(fields)], ["*"] * len(fields)], "fields": fields}
    reply = b.declare(name="c", policy=QUEUE, spec=spec)
    assert reply["status"] == "error" and reply["error"] == "SpecMismatch", reply
    assert "c" not in b.channels


def test_a_detach_from_another_worker_than_the_consumers_changes_nothing() -> None:
    """Before, any client could detach another's consumer by its id: its producer failed with ConsumerGone."""

    async def scenario() -> Broker:
        b = _broker_with_channel_c()
        await b.attach(name="c", role="consumer", ident="a/in", address=ALIVE, stream="10.0.0.2:9", host="h")
        assert (await b.detach(name="c", ident="a/in"))["error"] == "InvalidRequest"  # no worker named
        assert (await b.detach(name="c", ident="a/in", address=LOST))["status"] == "OK"  # not its worker
        return b

    b = asyncio.run(scenario())
    assert [c[0] for c in b.routing(name="c")["consumers"]] == ["a/in"] and b.routing(name="c")["gone"] == []
    asyncio.run(b.detach(name="c", ident="a/in", address=ALIVE))
    assert b.routing(name="c")["consumers"] == []


def test_an_actor_name_belongs_to_one_live_run_at_a_time() -> None:
    """Two identical scripts on one cluster: both spawned ``summer``, whose input ``summer/inp`` was then one
    consumer of the shared channel, and one script's actor never got a message (2 runs in 3)."""
    b = Broker()
    for run in ("A", "B", "C"):
        assert b.begin_run(run=run, client=f"client-{run}")["status"] == "OK"
    assert b.claim_actor(name="summer", run="A")["status"] == "OK"
    assert b.claim_actor(name="summer", run="A")["status"] == "OK"  # its own again (a respawn after release)
    refused = b.claim_actor(name="summer", run="B")
    assert refused["error"] == "InvalidRequest" and "'A'" in refused["message"] and "summer" in refused["message"]
    assert b.claim_actor(name="counter", run="B")["status"] == "OK"  # other names are free
    assert b.free_actors(names=["summer"], run="B")["status"] == "OK"  # not B's to free: nothing changes
    assert b.claim_actor(name="summer", run="B")["error"] == "InvalidRequest"
    b.free_actors(names=["summer"], run="A")
    assert b.claim_actor(name="summer", run="B")["status"] == "OK"
    asyncio.run(b.end_run(run="B"))  # an ended run's names are free
    assert b.claim_actor(name="summer", run="C")["status"] == "OK" and b.claim_actor(name="counter", run="C")["status"] == "OK"
    assert b.claim_actor(name="x", run="B")["error"] == "ChannelClosed"  # an ended run claims nothing
    assert set(b.actor_names) == {"summer", "counter"}
    asyncio.run(b.end_run(run="C"))
    assert b.actor_names == {}



class _HeldWorker(_Worker):
    """A worker whose first routing update waits until ``release`` is set (a slow push)."""

    def __init__(self, address: str, pushed: list[tuple[str, str]], release: asyncio.Event, held: list[int]) -> None:
        super().__init__(address, pushed)
        self.release, self.held = release, held

    async def coupler_routing_update(self, table: dict[str, Any]) -> None:
        if not self.held:
            self.held.append(1)
            await self.release.wait()
        await super().coupler_routing_update(table)


def test_a_detach_and_a_close_that_interleave_leave_no_tallies_of_the_forgotten_channel() -> None:
    """The detach's final counters were added after its push awaited, while a close forgot the channel:
    ``departed`` kept an entry for a channel that no longer existed, one per such close."""

    async def scenario() -> Broker:
        b = _broker_with_channel_c()
        await b.attach(name="c", role="producer", ident="p", address=ALIVE)
        await b.attach(name="c", role="consumer", ident="a/in", address=LOST, stream="10.0.0.1:9", host="h")
        release, held = asyncio.Event(), []
        b.scheduler.rpc = lambda address: _HeldWorker(address, b.scheduler.pushed, release, held)  # type: ignore[method-assign]
        final = {"received": 3, "nbytes": 12, "dropped": 0, "taken": 3}
        detach = asyncio.ensure_future(b.detach(name="c", ident="a/in", address=LOST, counters=final))
        while not held:  # the detach's push is under way
            await asyncio.sleep(0)
        assert (await b.close_channel(name="c"))["status"] == "OK"  # drained: forgotten, its tallies too
        release.set()
        assert (await detach)["status"] == "OK"
        return b

    b = asyncio.run(scenario())
    assert "c" not in b.channels and "c" not in b.tallies.departed


def test_a_long_lived_channel_keeps_the_newest_departed_consumers_and_every_one_expected_back() -> None:
    """Each routing table carried every consumer that ever left: +1 per driver subscription or pool member."""
    from coupler.runtime.control.channel_record import DETACHED_KEPT

    async def scenario() -> Broker:
        b = _broker_with_channel_c()
        await b.attach(name="c", role="consumer", ident="lost/in", address=LOST, stream="10.0.0.1:9", host="h")
        await b.remove_worker(b.scheduler, LOST)  # expected back: never pruned
        for i in range(DETACHED_KEPT + 40):
            await b.attach(name="c", role="consumer", ident=f"s{i}/in", address=ALIVE, stream="10.0.0.2:9", host="h")
            assert (await b.detach(name="c", ident=f"s{i}/in", address=ALIVE))["status"] == "OK"
        return b

    b = asyncio.run(scenario())
    gone = {g[0]: g[1] for g in b.routing(name="c")["gone"]}
    assert gone.pop("lost/in") == "lost"
    assert sorted(gone) == sorted(f"s{i}/in" for i in range(40, DETACHED_KEPT + 40))  # the newest
    assert set(gone.values()) == {"detached"}


def test_a_producer_cannot_attach_to_a_closed_channel_that_still_drains() -> None:
    """It was recorded, and its worker made a route and counters again after it had forgotten the channel."""

    async def scenario() -> tuple[Broker, dict[str, Any]]:
        b = _broker_with_channel_c()
        await b.attach(name="c", role="consumer", ident="a/in", address=LOST, stream="10.0.0.1:9", host="h")
        assert (await b.close_channel(name="c"))["status"] == "OK"  # its consumer still drains it
        return b, await b.attach(name="c", role="producer", ident="late", address=ALIVE)

    b, reply = asyncio.run(scenario())
    assert reply["status"] == "error" and reply["error"] == "ChannelClosed", reply
    assert "late" not in b.channels["c"].producers


class NameClaims(RuleBasedStateMachine):
    """Runs begin and end, claim and free actor names in any order: a name a live run holds is never granted
    to another run, a run's own claims always succeed again, and an ended run holds and claims nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.b = Broker()
        self.live: set[str] = set()
        self.ended: set[str] = set()
        self.claims: dict[str, str] = {}  # the model: name -> the run that claimed it (not ended)

    @rule(run=st.sampled_from(["A", "B", "C"]))
    def begin(self, run: str) -> None:
        if run in self.live or run in self.ended:
            return
        assert self.b.begin_run(run=run, client=f"client-{run}")["status"] == "OK"
        self.live.add(run)

    @rule(run=st.sampled_from(["A", "B", "C"]))
    def end(self, run: str) -> None:
        asyncio.run(self.b.end_run(run=run))
        if run in self.live:
            self.live.discard(run)
            self.ended.add(run)
            self.claims = {n: r for n, r in self.claims.items() if r != run}

    @rule(run=st.sampled_from(["A", "B", "C"]), name=st.sampled_from(["x", "y", "z"]))
    def claim(self, run: str, name: str) -> None:
        reply = self.b.claim_actor(name=name, run=run)
        owner = self.claims.get(name)
        if run in self.ended:
            assert reply["error"] == "ChannelClosed", reply
        elif owner is not None and owner != run and owner in self.live:
            assert reply["error"] == "InvalidRequest" and repr(owner) in reply["message"], reply
        else:
            assert reply["status"] == "OK", reply
            self.claims[name] = run

    @rule(run=st.sampled_from(["A", "B", "C"]), name=st.sampled_from(["x", "y", "z"]))
    def free(self, run: str, name: str) -> None:
        assert self.b.free_actors(names=[name], run=run)["status"] == "OK"
        if self.claims.get(name) == run:
            del self.claims[name]

    @invariant()
    def claims_match(self) -> None:
        assert self.b.actor_names == self.claims
        assert not set(self.b.actor_names.values()) & self.ended


TestNameClaims = NameClaims.TestCase
TestNameClaims.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)

"""The coupling script as a participant (issue 26, part 1): it sends, receives and subscribes like an actor.

Every test runs on the session's real 2-worker LocalCluster: the driver's
ports are relay actors there, so what is checked is the same data plane the
actors use (policies, back-pressure, spec checks, typed errors, detaching),
reached from the script. The last tests check that every end of a driver port
gives back its relay actor, its buffers and its threads.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
import threading
import time
from typing import Any

import cloudpickle
import numpy as np
import pytest

from coupler.actors import ActorHost
from coupler.runtime import (
    ActorFailed,
    ChannelClosed,
    ChannelTimeout,
    ConsumerGone,
    Coupling,
    Latest,
    Policy,
    Queue,
    Reservoir,
    Spec,
    SpecMismatch,
    UnknownChannel,
    Window,
    WrongPolicy,
)
from coupler.runtime.dataplane.endpoint import ENDPOINT_NAME
from coupler.runtime.driver import Publisher, Subscription
from helper_actors import Collector
from lifecycle_actors import SendN
from polling import until

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Doubler: workers cannot import this module

QUEUES = [pytest.param(Queue(1), id="Queue(1)"), pytest.param(Queue(16), id="Queue(16)")]
TAKING = [*QUEUES, pytest.param(Latest(), id="Latest")]  # policies a consumer receives from
REPLAY = [pytest.param(Reservoir(8, seed=1), id="Reservoir"), pytest.param(Window(8, seed=1), id="Window")]


class Doubler(ActorHost):
    """Sends back ``{"x": 2 * x}`` for every ``{"x": x}`` it takes, with the message's seq as its step."""

    def step(self) -> bool:
        m = self.inputs["inp"].receive()
        self.outputs["out"].send({"x": 2 * m.data["x"]}, step=m.seq, timestamp=m.timestamp)
        return True




def _x(value: float, size: int = 4) -> dict[str, np.ndarray]:
    return {"x": np.full(size, value, np.float32)}


def _relay_leftovers(dask_worker: Any, names: list[str], counters: bool = True) -> dict[str, list[str]]:
    """What a worker still holds for the relays ``names`` (run on the worker).

    A producer's counters stay until its channel closes (like any actor's: the
    broker's totals count them), so they count only where ``counters`` is asked.
    """
    ep = dask_worker.plugins[ENDPOINT_NAME]
    mine = lambda who: any(who == n or who.startswith(n + "/") for n in names)  # noqa: E731
    return {
        "dask_actors": sorted(str(k) for k in dask_worker.state.actors if any(str(k).endswith(n) for n in names)),
        "buffers": sorted(c for (_, c) in ep.buffers if mine(c)),
        "producers": sorted(s for (_, s) in ep.producers if mine(s)) if counters else [],
        "reported_actors": sorted(a for a in ep.actors if a in names),
        "threads": sorted(t.name for t in threading.enumerate() if t.name.startswith("coupler-relay-") and mine(t.name[14:])),
    }


def _wait_relays_gone(cp: Coupling, names: list[str], counters: bool = True, timeout: float = 30.0) -> None:
    """Wait until no worker holds anything of the relays ``names`` and the supervisor forgot them."""

    def left() -> dict[str, Any]:
        held = cp.client.run(_relay_leftovers, names=names, counters=counters)
        out: dict[str, Any] = {w: {k: v for k, v in h.items() if v} for w, h in held.items() if any(h.values())}
        supervised = sorted(set(names) & set(cp.supervisor._records))
        if supervised:
            out["supervisor"] = supervised
        return out

    deadline = time.monotonic() + timeout
    while leftovers := left():
        assert time.monotonic() < deadline, f"after {timeout} s the driver's relays are still held: {leftovers}"
        time.sleep(0.1)


# -- sending and receiving -------------------------------------------------------------------------
@pytest.mark.parametrize("policy", QUEUES)
@pytest.mark.parametrize("explicit", [False, True], ids=["cp.send", "publisher"])
def test_the_driver_sends_to_an_actor_and_receives_its_answers(coupling: Coupling, unique: str, policy: Policy, explicit: bool) -> None:
    to, back = coupling.channel(f"to-{unique}", policy), coupling.channel(f"back-{unique}", policy)
    with coupling.subscribe(back, timeout=30) as answers:
        doubler = coupling.spawn(Doubler, name=f"doubler-{unique}", inputs={"inp": to}, outputs={"out": back})
        doubler.start()
        pub = coupling.publisher(to) if explicit else None
        for i in range(6):  # more than Queue(1) holds: the two sides take turns through back-pressure
            data = _x(float(i))
            seq = pub.send(data, timestamp=0.5 * i) if pub else coupling.send(to, data, timestamp=0.5 * i)
            assert seq == i  # one gap-free sequence per driver producer
            m = answers.receive()
            assert (m.source, m.step, m.timestamp) == (doubler.name, i, 0.5 * i)
            np.testing.assert_array_equal(m.data["x"], np.full(4, 2.0 * i, np.float32))
        if pub:
            assert pub.source.startswith("driver-pub") and pub.source != answers.relay.name
            pub.close()
    doubler.release()


@pytest.mark.parametrize("policy", TAKING)
def test_coupling_receive_is_a_consumer_that_stays_attached(coupling: Coupling, unique: str, policy: Policy) -> None:
    ch = coupling.channel(f"inbox-{unique}", policy)
    with pytest.raises(ChannelTimeout, match=ch):
        coupling.receive(ch, timeout=0.2)  # attaches the driver's consumer; nothing was sent yet
    sender = coupling.spawn(SendN, 0, name=f"sender-{unique}", outputs={"out": ch})
    sender.call("send_now", 7.0, 30)  # the consumer attached above is there to take it
    m = coupling.receive(ch, timeout=30)
    assert (m.source, m.seq, float(m.data["x"][0])) == (sender.name, 0, 7.0)
    assert coupling.receive(ch, timeout=0.1, default=None) is None
    sender.release()


@pytest.mark.parametrize("policy", [*TAKING, *REPLAY])
def test_a_receive_that_gets_nothing_in_time_raises_channel_timeout(coupling: Coupling, unique: str, policy: Policy) -> None:
    ch = coupling.channel(f"quiet-{unique}", policy)
    with coupling.subscribe(ch, timeout=0.2) as sub:
        if isinstance(policy, (Reservoir, Window)):
            with pytest.raises(ChannelTimeout, match=ch):
                sub.sample(2, timeout=0.2)
            return
        with pytest.raises(ChannelTimeout, match=ch):
            sub.receive(timeout=0.2)
        assert sub.receive(timeout=0, default="nothing") == "nothing"
        with pytest.raises(ChannelTimeout, match=ch):
            next(iter(sub))  # an iteration step waits the subscription's timeout
        assert not sub.closed  # a timeout ends nothing


@pytest.mark.parametrize("policy", QUEUES)
def test_a_driver_send_with_no_consumer_times_out(coupling: Coupling, unique: str, policy: Policy) -> None:
    ch = coupling.channel(f"nobody-{unique}", policy)
    with pytest.raises(ChannelTimeout, match=ch):
        coupling.send(ch, _x(1.0), timeout=0.3)


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"x": np.zeros(5, np.float32)}, id="shape"),
        pytest.param({"x": np.zeros(4, np.float64)}, id="dtype"),
        pytest.param({"y": np.zeros(4, np.float32)}, id="field"),
        pytest.param({"x": np.zeros(4, np.float32), "extra": np.zeros(1)}, id="extra-field"),
    ],
)
@pytest.mark.parametrize("declared", [True, False], ids=["declared-spec", "first-message-spec"])
def test_a_driver_send_that_does_not_fit_the_spec_raises_spec_mismatch(
    coupling: Coupling, unique: str, bad: dict[str, np.ndarray], declared: bool
) -> None:
    ch = coupling.channel(f"spec-{unique}", Queue(8), spec=Spec.of(_x(0.0)) if declared else None)
    with coupling.subscribe(ch, timeout=30) as sub:
        if not declared:
            coupling.send(ch, _x(1.0))  # fixes the spec
            assert float(sub.receive().data["x"][0]) == 1.0
        with pytest.raises(SpecMismatch, match=ch):
            coupling.send(ch, bad)
        coupling.send(ch, _x(2.0))  # nothing else is lost: the channel and the driver's producer go on
        assert float(sub.receive().data["x"][0]) == 2.0
        assert sub.receive(timeout=0.2, default=None) is None  # the refused message never went out


def test_a_port_of_an_undeclared_channel_raises_unknown_channel(coupling: Coupling, unique: str) -> None:
    with pytest.raises(UnknownChannel, match=f"never-{unique}"):
        coupling.subscribe(f"never-{unique}")
    with pytest.raises(UnknownChannel, match=f"never-{unique}"):
        coupling.send(f"never-{unique}", _x(0.0))


# -- policies --------------------------------------------------------------------------------------
@pytest.mark.parametrize("maxsize", [1, 3])
def test_a_subscription_that_does_not_take_holds_up_a_queue_producer(coupling: Coupling, unique: str, maxsize: int) -> None:
    ch = coupling.channel(f"slow-{unique}", Queue(maxsize))
    sub = coupling.subscribe(ch, timeout=30)
    sender = coupling.spawn(SendN, 0, name=f"sender-{unique}", outputs={"out": ch})
    sent: list[float] = []
    for i in range(64):  # fill its queue (and what the stream holds in flight)
        try:
            sender.call("send_now", float(i), 0.5)
            sent.append(float(i))
        except ChannelTimeout:  # nothing went out
            break
    else:
        pytest.fail(f"a subscription that took nothing never pushed back on its Queue({maxsize}) producer")
    assert len(sent) >= maxsize
    # A slow iterator: each message it takes makes room for one more send, and all come in order.
    for i, m in zip(range(len(sent) + 2), sub):
        assert (m.seq, float(m.data["x"][0])) == (i, sent[i])
        sender.call("send_now", 100.0 + i, 30)
        sent.append(100.0 + i)
    sub.close()
    sender.release()


@pytest.mark.parametrize("maxsize", [1, 3])
def test_a_driver_send_is_held_up_by_a_queue_consumer_that_does_not_take(coupling: Coupling, unique: str, maxsize: int) -> None:
    ch = coupling.channel(f"full-{unique}", Queue(maxsize))
    idle = coupling.spawn(Collector, name=f"idle-{unique}", inputs={"inp": ch})  # never started: takes only when asked
    pub = coupling.publisher(ch)
    for i in range(64):
        try:
            pub.send(_x(float(i)), timeout=0.5)
        except ChannelTimeout:
            break
    else:
        pytest.fail(f"an idle Queue({maxsize}) consumer never pushed back on the driver")
    assert idle.call("receive_now", 10)[1:] == (0, 0.0)  # it takes one: the driver may send again
    pub.send(_x(99.0), timeout=30)
    idle.stop()
    with pytest.raises(ConsumerGone, match=f"idle-{unique}/inp"):  # told its consumer left, not held up for ever
        pub.send(_x(100.0), timeout=20)
    pub.close(flush=False)  # what it sent can no longer be accepted
    assert pub.closed
    idle.release()


@pytest.mark.parametrize("n", [1, 20])
def test_a_latest_subscription_gets_the_newest_message(coupling: Coupling, unique: str, n: int) -> None:
    ch = coupling.channel(f"latest-{unique}", Latest())
    with coupling.subscribe(ch, timeout=30) as sub:
        sender = coupling.spawn(SendN, n, name=f"sender-{unique}", outputs={"out": ch})
        sender.start()
        assert sender.wait(30).state == "finished"  # finished: what it sent was accepted, never held up
        newest = sub.latest()
        assert newest is not None and (newest.seq, float(newest.data["x"][0])) == (n - 1, n - 1.0)
        m = sub.receive()
        assert (m.seq, float(m.data["x"][0])) == (n - 1, n - 1.0)
        with pytest.raises(ChannelTimeout):
            sub.receive(timeout=0.2)  # the newest was taken; the older ones were replaced, never kept
    sender.release()


def test_a_driver_sending_on_latest_is_never_held_up_and_its_consumer_gets_the_newest(coupling: Coupling, unique: str) -> None:
    ch = coupling.channel(f"latest-out-{unique}", Latest())
    taker = coupling.spawn(Collector, name=f"taker-{unique}", inputs={"inp": ch})  # never started: does not take
    with coupling.publisher(ch) as pub:
        for i in range(20):
            pub.send(_x(float(i)), timeout=5)
        pub.flush(30)
    assert taker.call("receive_now", 10)[1:] == (19, 19.0)
    taker.release()


def test_a_subscription_on_a_work_sharing_queue_is_one_member_of_the_pool(coupling: Coupling, unique: str) -> None:
    ch = coupling.channel(f"pool-{unique}", Queue(1, shared=True))
    member = coupling.spawn(Collector, 0.02, name=f"member-{unique}", inputs={"inp": ch})
    with coupling.subscribe(ch) as sub:
        member.start()
        sender = coupling.spawn(SendN, 40, name=f"sender-{unique}", outputs={"out": ch})
        sender.start()
        mine: list[int] = []
        # A shared Queue hands a message only to a consumer that waits: the driver waits in receive.
        while len(mine) + len(member.call("received")) < 40:
            m = sub.receive(timeout=0.5, default=None)
            if m is not None:
                mine.append(m.seq)
        theirs = [seq for _, seq, *_ in member.call("received")]
    assert sender.wait(30).state == "finished"
    assert mine and theirs, (mine, theirs)  # both members took a share
    assert sorted(mine + theirs) == list(range(40))  # each message to exactly one of them
    member.release()
    sender.release()


@pytest.mark.parametrize("policy", REPLAY)
def test_a_replay_subscription_samples_and_refuses_receive(coupling: Coupling, unique: str, policy: Policy) -> None:
    ch = coupling.channel(f"replay-{unique}", policy)
    with coupling.subscribe(ch, timeout=5) as sub:
        with coupling.publisher(ch) as pub:
            for i in range(12):
                pub.send(_x(float(i)))
            pub.flush(30)  # all 12 accepted by the subscription's buffer
        batch = sub.sample(4)["x"]
        assert batch.shape == (4, 4)
        lowest = 4.0 if isinstance(policy, Window) else 0.0  # a Window keeps the newest 8 of 12
        assert set(batch[:, 0]) <= {float(i) for i in range(int(lowest), 12)}, batch[:, 0]
        with pytest.raises(WrongPolicy, match=ch):
            sub.receive(timeout=1)
        with pytest.raises(WrongPolicy):
            sub.latest()


# -- ends -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", TAKING)
def test_closing_the_channel_ends_the_iteration_after_what_is_held(coupling: Coupling, unique: str, policy: Policy) -> None:
    ch = coupling.channel(f"ending-{unique}", policy)
    sub = coupling.subscribe(ch, timeout=30)
    n = min(getattr(policy, "maxsize", 8), 4)  # what a Queue(1) holds without a taker
    sender = coupling.spawn(SendN, n, name=f"sender-{unique}", outputs={"out": ch})
    sender.start()
    assert sender.wait(30).state == "finished"
    coupling.close_channel(ch)
    got = [(m.seq, float(m.data["x"][0])) for m in sub]
    expected = [(n - 1, n - 1.0)] if isinstance(policy, Latest) else [(i, float(i)) for i in range(n)]
    assert got == expected
    assert sub.closed  # it ended with the channel, and detached
    until("the broker forgets the drained channel", lambda: ch not in coupling.channels(), timeout=30)
    with pytest.raises(ChannelClosed):
        sub.receive(timeout=1)
    sender.release()
    _wait_relays_gone(coupling, [sub.relay.name])


@pytest.mark.parametrize("form", ["loop-over-cp.subscribe", "with-block", "close"])
def test_leaving_a_loop_detaches_so_the_producer_is_not_held_up_for_ever(coupling: Coupling, unique: str, form: str) -> None:
    ch = coupling.channel(f"leave-{unique}", Queue(2))
    sender = coupling.spawn(SendN, 500, name=f"sender-{unique}", outputs={"out": ch})
    sender.start()  # it waits for a consumer
    if form == "loop-over-cp.subscribe":
        seqs = []
        for m in coupling.subscribe(ch, timeout=30):  # nothing else holds it: it goes when the loop is left
            seqs.append(m.seq)
            if len(seqs) == 3:
                break
    else:
        sub = coupling.subscribe(ch, timeout=30)
        with sub if form == "with-block" else _closing(sub):
            seqs = [m.seq for _, m in zip(range(3), sub)]
        assert sub.closed
    assert seqs == [0, 1, 2]
    # The producer was held up by the full queue of a consumer that no longer takes: now it is told it left.
    with pytest.raises(ActorFailed, match="ConsumerGone"):
        sender.wait(60)
    sender.release()


class _closing:
    def __init__(self, sub: Subscription) -> None:
        self.sub = sub

    def __enter__(self) -> Subscription:
        return self.sub

    def __exit__(self, *exc: Any) -> None:
        self.sub.close()


# -- async --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", QUEUES)
def test_the_async_twins_in_asyncio_run(coupling: Coupling, unique: str, policy: Policy) -> None:
    to, back = coupling.channel(f"ato-{unique}", policy), coupling.channel(f"aback-{unique}", policy)
    doubler = coupling.spawn(Doubler, name=f"doubler-{unique}", inputs={"inp": to}, outputs={"out": back})
    doubler.start()

    async def main() -> list[tuple[int, float]]:
        got: list[tuple[int, float]] = []
        async with coupling.subscribe(back, timeout=30) as answers:

            async def feed() -> None:
                for i in range(5):
                    await coupling.asend(to, _x(float(i)))

            feeding = asyncio.create_task(feed())
            async for m in answers:  # the event loop stays free: the feeder runs meanwhile
                got.append((m.step, float(m.data["x"][0])))
                if len(got) == 5:
                    break
            await feeding
        assert answers.closed
        return got

    assert asyncio.run(main()) == [(i, 2.0 * i) for i in range(5)]
    doubler.release()


@pytest.mark.parametrize("policy", TAKING)
def test_coupling_asend_and_areceive_in_asyncio_run(coupling: Coupling, unique: str, policy: Policy) -> None:
    ch = coupling.channel(f"aset-{unique}", policy)

    async def main() -> tuple[Any, list[float]]:
        nothing = await coupling.areceive(ch, timeout=0.1, default="nothing")  # attaches the driver's consumer
        if isinstance(policy, Latest):  # never held up: send both; the 1.5 may be replaced before it is taken
            assert [await coupling.asend(ch, {"v": np.float64(v)}) for v in (1.5, 2.5)] == [0, 1]
            got = [float((await coupling.areceive(ch, timeout=30)).data["v"])]
            if got[-1] != 2.5:
                got.append(float((await coupling.areceive(ch, timeout=30)).data["v"]))
            return nothing, got[-1:]
        got = []
        for v in (1.5, 2.5):  # one at a time: a Queue(1) consumer that does not take holds the sender up
            await coupling.asend(ch, {"v": np.float64(v)})
            got.append(float((await coupling.areceive(ch, timeout=30)).data["v"]))
        return nothing, got

    nothing, got = asyncio.run(main())
    assert nothing == "nothing"
    assert got == ([2.5] if isinstance(policy, Latest) else [1.5, 2.5])


def test_a_message_that_arrives_after_a_cancelled_receive_is_kept_for_the_next(coupling: Coupling, unique: str) -> None:
    ch = coupling.channel(f"cancel-{unique}", Queue(4))

    async def main() -> list[float]:
        async with coupling.subscribe(ch) as sub:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(sub.areceive(), 0.3)  # its call stays in flight, waiting for a message
            await coupling.asend(ch, _x(1.0))  # taken by the abandoned call
            await coupling.asend(ch, _x(2.0))
            first, second = await sub.areceive(timeout=30), await sub.areceive(timeout=30)
            return [float(first.data["x"][0]), float(second.data["x"][0])]

    assert asyncio.run(main()) == [1.0, 2.0]  # neither lost nor reordered


def test_a_message_that_arrives_after_an_interrupted_receive_is_kept_for_the_next(coupling: Coupling, unique: str) -> None:
    """Ctrl-C in a notebook while a receive waits: the call is given up, the message it takes later is not."""
    ch = coupling.channel(f"ctrl-c-{unique}", Queue(4))
    # Python's own Ctrl-C handler, as in a notebook: importing dask_jobqueue's runner (other tests
    # do) replaces it in this process with one that exits.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    with coupling.subscribe(ch) as sub:
        timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                sub.receive()  # waits for ever: nothing is sent until it was interrupted
        finally:
            timer.join()
            signal.signal(signal.SIGINT, previous)
        coupling.send(ch, _x(1.0))
        coupling.send(ch, _x(2.0))
        assert [float(sub.receive(timeout=30).data["x"][0]) for _ in range(2)] == [1.0, 2.0]


def test_driver_ports_follow_their_relays_when_the_supervisor_moves_them(coupling: Coupling, unique: str) -> None:
    ch = coupling.channel(f"moving-{unique}", Queue(8))
    with coupling.subscribe(ch, timeout=30) as sub, coupling.publisher(ch) as pub:
        for i in range(3):
            pub.send(_x(float(i)))
        assert float(sub.receive().data["x"][0]) == 0.0
        pub.flush(30)
        before = {r: coupling.supervisor._records[r].worker for r in (sub.relay.name, pub.source)}
        for relay in before:  # as when its worker retires: hand over to a new instance on another worker
            assert coupling.supervisor.move(relay) != before[relay]
        pub.send(_x(3.0))
        got = [(m.seq, float(m.data["x"][0])) for _, m in zip(range(3), sub)]
    # What the subscription held travelled with it; the publisher's sequence went on.
    assert got == [(1, 1.0), (2, 2.0), (3, 3.0)]


# -- nothing left behind ------------------------------------------------------------------------------
def _holds_any(cp: Coupling, names: list[str]) -> bool:
    """Whether some worker holds something of the relays ``names``."""
    return any(v for h in cp.client.run(_relay_leftovers, names=names).values() for v in h.values())


def _open_ports(cp: Coupling, ch: str) -> tuple[Subscription, Publisher, list[str]]:
    """A subscription, a publisher and the coupling's own publisher on ``ch``, each used once; their relays' names."""
    sub, pub = cp.subscribe(ch, timeout=30), cp.publisher(ch)
    cp.send(ch, _x(1.0))
    pub.send(_x(2.0))
    got = {float(m.data["x"][0]): m.source for m in (sub.receive(), sub.receive())}
    assert sorted(got) == [1.0, 2.0]
    names = [sub.relay.name, pub.source, got[1.0]]
    assert _holds_any(cp, names)
    return sub, pub, names


@pytest.mark.parametrize("end", ["close", "garbage-collected", "channel-closed", "coupling-closed"])
def test_every_end_of_a_driver_port_gives_back_its_relay(coupling: Coupling, unique: str, end: str) -> None:
    ch = f"gone-{unique}"
    if end == "coupling-closed":
        with Coupling(coupling.client.scheduler.address) as cp:
            cp.channel(ch, Queue(4))
            names = _open_ports(cp, ch)[2]
    else:
        coupling.channel(ch, Queue(4))
        sub, pub, names = _open_ports(coupling, ch)
        if end == "close":
            sub.close()
            pub.close()
            names.pop()  # the coupling's own publisher stays until the channel or the coupling ends
        elif end == "garbage-collected":
            del sub, pub
            gc.collect()
            names.pop()
        else:
            coupling.close_channel(ch)
            assert list(sub) == []  # drained: the iteration ends, and the subscription with it
            with pytest.raises(ChannelClosed):
                coupling.send(ch, _x(3.0))  # the coupling's publisher ends with the channel
            with pytest.raises(ChannelClosed):
                pub.send(_x(3.0))
            pub.close(flush=False)
            until("the broker forgets the channel", lambda: ch not in coupling.channels(), timeout=30)
    _wait_relays_gone(coupling, names, counters=end in ("channel-closed", "coupling-closed"))
    until("the driver's call threads end", lambda: not [t for t in threading.enumerate() if t.name == "coupler-driver-call"], timeout=30)


# -- the demo -----------------------------------------------------------------------------------------
def test_the_live_stream_demo_steers_a_simulation_and_plots_what_it_receives(
    coupling: Coupling, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    import dask.config

    from coupler.demos.live_stream import QUICK, main

    with dask.config.set({"coupler.scheduler-address": coupling.client.scheduler.address}):  # as `coupler demo --cluster`
        result = main(["--quick", "--out", str(tmp_path)])
    assert result["frames"] == QUICK["frames"] and result["in_order"]
    # Lorenz-96 at F = 3 holds far less energy than at F = 8: the steering reached the running simulation.
    assert result["energy_last_quarter"] < 0.5 * result["energy_first_quarter"]
    assert result["png"] == str(tmp_path / "live_stream.png") and (tmp_path / "live_stream.png").stat().st_size > 10_000
    assert "frames received by the script: 120" in capsys.readouterr().out


def test_closing_a_channel_gives_back_the_ports_send_and_receive_made_on_it(coupling: Coupling, unique: str) -> None:
    """Before, each channel used through ``Coupling.send``/``receive`` and then closed kept both relay actors,
    their buffer and the broker's record of the channel (its inbox never detached) until the coupling closed."""
    ch = coupling.channel(f"helpers-{unique}", Queue(4))
    with pytest.raises(ChannelTimeout):
        coupling.receive(ch, timeout=0.2)  # attaches the driver's inbox
    coupling.send(ch, _x(1.0), timeout=30)
    assert float(coupling.receive(ch, timeout=30).data["x"][0]) == 1.0
    ports = coupling._ports
    relays = [ports._publishers[ch].relay.name, ports._inboxes[ch].relay.name]
    coupling.close_channel(ch)
    assert ch not in ports._publishers and ch not in ports._inboxes
    _wait_relays_gone(coupling, relays)
    until("the broker to forget the channel", lambda: ch not in coupling.channels(), timeout=30)
    coupling.channel(ch, Queue(2))  # the name is free again

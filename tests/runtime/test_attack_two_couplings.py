"""Two couplings open at once on one cluster (two scripts on a long-lived cluster, `coupler run --cluster`).

Each script's driver ports are relay actors named ``driver-pub<k>:<channel>``
with ``k`` counted per coupling. When both scripts send on one channel, the
consumer must get both scripts' messages: they are different producers.
"""

from __future__ import annotations

import time

import cloudpickle
import numpy as np
import pytest

import helper_actors
from coupler.runtime import Coupling, InvalidRequest, Queue
from helper_actors import Collector

cloudpickle.register_pickle_by_value(helper_actors)


def test_two_open_couplings_sending_on_one_channel_are_two_producers(coupling: Coupling, unique: str) -> None:
    """Three channels, so three pairs of alike-named publishers (driver-pub0, 1, 2 in both scripts)."""
    address = coupling.client.scheduler.address
    lost = {}
    with Coupling(address) as first, Coupling(address) as other:  # two scripts, each with its first ports
        for k in range(3):
            ch = first.channel(f"two{k}-{unique}", Queue(16))
            sink = coupling.spawn(Collector, name=f"sink{k}-{unique}", inputs={"inp": ch})
            sink.start()
            try:
                other.channel(ch, Queue(16))
            except Exception as e:  # a refusal with a clear error would be a fair answer too
                raise AssertionError(f"the second script cannot use the channel: {e!r}") from None
            for i in range(3):
                first.send(ch, {"x": np.full(16, float(i), np.float32)}, timeout=30)
                other.send(ch, {"x": np.full(16, 100.0 + i, np.float32)}, timeout=30)
            deadline = time.monotonic() + 10
            while len(sink.call("received")) < 6 and time.monotonic() < deadline:
                time.sleep(0.1)
            got = sink.call("received")
            sink.release()
            values = sorted(v for _, _, _, v, _ in got)
            if values != [0.0, 1.0, 2.0, 100.0, 101.0, 102.0]:
                lost[ch] = [(s, q, v) for s, q, _, v, _ in got]
    assert not lost, f"accepted sends that never arrived; what the consumers got: {lost}"


def test_two_open_couplings_subscribing_to_one_channel_are_two_consumers(coupling: Coupling, unique: str) -> None:
    address = coupling.client.scheduler.address
    with Coupling(address) as first, Coupling(address) as other:  # two scripts, each with its first port
        ch = first.channel(f"twosub-{unique}", Queue(16))
        other.channel(ch, Queue(16))
        mine, theirs = first.subscribe(ch, timeout=30), other.subscribe(ch, timeout=30)
        prod = coupling.spawn(helper_actors.Producer, 3, name=f"prod-{unique}", outputs={"out": ch})
        prod.start()
        got = {}
        for who, sub in (("first", mine), ("second", theirs)):
            vals = []
            try:
                for _ in range(3):
                    vals.append(float(sub.receive(timeout=15).data["x"][0]))
            except Exception as e:  # noqa: BLE001
                vals.append(repr(e)[:120])
            got[who] = vals
        prod.release()
        mine.close()
        theirs.close()
    assert got == {"first": [0.0, 1.0, 2.0], "second": [0.0, 1.0, 2.0]}, got


def test_a_second_open_coupling_cannot_spawn_an_actor_name_the_first_uses(coupling: Coupling, unique: str) -> None:
    """Two identical scripts at once: the second's spawn of the first's actor name is refused, saying why
    (before, both actors' inputs were one consumer and one script's actor waited for ever)."""
    address = coupling.client.scheduler.address
    name = f"summer-{unique}"
    with Coupling(address) as first:
        ch = first.channel(f"summer-ch-{unique}", Queue(4))
        mine = first.spawn(Collector, name=name, inputs={"inp": ch})
        with Coupling(address) as other:
            with pytest.raises(InvalidRequest, match="in use by another coupling on this cluster"):
                other.spawn(Collector, name=name, inputs={"inp": ch})
            mine.release()  # released: the name is free for another coupling
            other.spawn(Collector, name=name, inputs={"inp": ch}).release()
        first.spawn(Collector, name=name, inputs={"inp": ch}).release()  # the other's run ended: free again

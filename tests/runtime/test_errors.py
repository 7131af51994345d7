"""Every bad input gives its typed error, and the channel keeps working after it."""

from __future__ import annotations

import time

import numpy as np
import pytest

from helper_actors import Collector, FailingProducer, FailOnFirst, Producer
from coupler.runtime import (
    ActorFailed,
    ChannelClosed,
    ChannelExists,
    ChannelTimeout,
    ConsumerGone,
    Coupling,
    Queue,
    Reservoir,
    SpecMismatch,
    UnknownChannel,
)


def _pair(coupling: Coupling, unique: str, policy=None, spec=None):
    ch = coupling.channel(f"err-{unique}", policy or Queue(8), spec=spec)
    w = coupling.workers()
    col = coupling.spawn(Collector, name=f"col-{unique}", inputs={"inp": ch}, workers=w[1])
    prod = coupling.spawn(Producer, 0, name=f"prod-{unique}", outputs={"out": ch}, workers=w[0])
    return ch, col, prod


def good(v: float = 1.0) -> dict:
    return {"x": np.full(16, v, np.float32)}


def test_spec_mismatch_names_field_expected_and_got_and_loses_nothing(coupling: Coupling, unique: str) -> None:
    ch, col, prod = _pair(coupling, unique)
    assert prod.call("send_now", good(1.0)) == 0  # fixes the spec from the first message
    with pytest.raises(SpecMismatch, match=r"field 'x' expected shape \(16,\) dtype float32, got shape \(8,\) dtype float32"):
        prod.call("send_now", {"x": np.zeros(8, np.float32)})
    with pytest.raises(SpecMismatch, match=r"field 'x' expected shape \(16,\) dtype float32, got shape \(16,\) dtype float64"):
        prod.call("send_now", {"x": np.zeros(16)})
    with pytest.raises(SpecMismatch, match=r"expected fields \['x'\], got \['x', 'y'\]"):
        prod.call("send_now", {"x": np.zeros(16, np.float32), "y": np.zeros(1, np.float32)})
    assert prod.call("send_now", good(2.0)) == 1  # the channel still works; seq has no gap
    assert col.call("receive_now", 5) == (f"prod-{unique}", 0, 1.0)
    assert col.call("receive_now", 5) == (f"prod-{unique}", 1, 2.0)
    assert col.call("receive_now", 0.2) is None


def test_declared_spec_is_enforced_from_the_first_message(coupling: Coupling, unique: str) -> None:
    ch, col, prod = _pair(coupling, unique, spec={"x": np.zeros(16, np.float32)})
    with pytest.raises(SpecMismatch, match="int32"):
        prod.call("send_now", {"x": np.zeros(16, np.int32)})
    prod.call("send_now", good(3.0))
    assert col.call("receive_now", 5)[2] == 3.0


def test_unknown_channel(coupling: Coupling, unique: str) -> None:
    with pytest.raises(UnknownChannel, match=rf"unknown channel 'nope-{unique}'"):
        coupling.spawn(Collector, name=f"col-{unique}", inputs={"inp": f"nope-{unique}"})
    with pytest.raises(UnknownChannel):
        coupling.close_channel(f"nope-{unique}")
    prod = coupling.spawn(Producer, 0, name=f"prod-{unique}", outputs={"out": f"nope2-{unique}"})
    with pytest.raises(UnknownChannel, match="declared channels"):
        prod.call("send_now", good())


def test_bad_declarations(coupling: Coupling, unique: str) -> None:
    coupling.channel(f"decl-{unique}", Queue(4))
    coupling.channel(f"decl-{unique}", Queue(4))  # identical: idempotent
    with pytest.raises(ChannelExists, match="already declared"):
        coupling.channel(f"decl-{unique}", Reservoir(4))
    with pytest.raises(ValueError, match="channel name"):
        coupling.channel("bad name with spaces", Queue(4))
    with pytest.raises(ValueError, match="maxsize"):
        Queue(0)


def test_send_after_close(coupling: Coupling, unique: str) -> None:
    ch, col, prod = _pair(coupling, unique)
    prod.call("send_now", good(1.0))
    coupling.close_channel(ch)
    time.sleep(0.2)
    with pytest.raises(ChannelClosed, match="closed"):
        prod.call("send_now", good(2.0))
    # What was accepted before the close is still delivered, then the end of stream.
    assert col.call("receive_now", 5) == (f"prod-{unique}", 0, 1.0)
    with pytest.raises(ChannelClosed):
        col.call("receive_now", 1)


def test_consumer_gone(coupling: Coupling, unique: str) -> None:
    ch, col, prod = _pair(coupling, unique)
    prod.call("send_now", good(1.0))
    col.call("detach")
    with pytest.raises(ConsumerGone, match=f"col-{unique}/inp"):
        prod.call("send_now", good(2.0), 5)
    # A new consumer attaches: the channel works again.
    col2 = coupling.spawn(Collector, name=f"col2-{unique}", inputs={"inp": ch}, workers=coupling.workers()[0])
    assert prod.call("send_now", good(3.0), 5) == 1
    assert col2.call("receive_now", 5) == (f"prod-{unique}", 1, 3.0)


def test_timeouts_full_queue_and_no_consumer(coupling: Coupling, unique: str) -> None:
    ch, col, prod = _pair(coupling, unique, policy=Queue(2))
    prod.call("send_now", good(0.0))
    prod.call("send_now", good(1.0))
    with pytest.raises(ChannelTimeout, match="back-pressure"):
        prod.call("send_now", good(2.0), 0.3)
    # Nothing accepted is lost, and after the consumer takes one the producer goes on.
    assert col.call("receive_now", 5)[2] == 0.0
    prod.call("send_now", good(3.0), 5)
    assert [col.call("receive_now", 5)[2] for _ in range(2)] == [1.0, 3.0]
    lonely = coupling.channel(f"lonely-{unique}", Queue(2))
    p2 = coupling.spawn(Producer, 0, name=f"p2-{unique}", outputs={"out": lonely})
    with pytest.raises(ChannelTimeout, match="no consumer attached"):
        p2.call("send_now", good(), 0.3)


def test_waiting_on_a_consumer_whose_producer_failed_says_so(coupling: Coupling, unique: str) -> None:
    """README's first script with a bug in the producer's step: the consumer's wait timed out saying only
    "waits 15 s for input", and the failure's traceback was nowhere in sight."""
    ch = coupling.channel(f"fail-{unique}", Queue(4))
    col = coupling.spawn(Collector, name=f"col-{unique}", inputs={"inp": ch})
    prod = coupling.spawn(FailingProducer, 10, 3, name=f"prod-{unique}", outputs={"out": ch})
    col.start()
    prod.start()
    with pytest.raises(ActorFailed, match="boom at step 3"):
        prod.wait(30)
    with pytest.raises(TimeoutError, match=f"every producer has ended: prod-{unique} \\(failed: ValueError: boom at step 3\\)"):
        col.wait(timeout=1)
    col.stop()
    prod.release()
    col.release()


def test_a_producer_whose_consumer_failed_hears_that_it_failed(coupling: Coupling, unique: str) -> None:
    """The producer's ConsumerGone said only "(detached)", hiding that the consumer's step raised."""
    ch = coupling.channel(f"failcons-{unique}", Queue(4))
    col = coupling.spawn(FailOnFirst, name=f"col-{unique}", inputs={"inp": ch})
    prod = coupling.spawn(Producer, 0, name=f"prod-{unique}", outputs={"out": ch})
    col.start()
    prod.call("send_now", good(1.0), 30)
    with pytest.raises(ActorFailed, match="cannot use message 0"):
        col.wait(30)
    with pytest.raises(ConsumerGone, match=f"col-{unique}/inp \\(detached: its actor failed: RuntimeError: cannot use message 0\\)"):
        prod.call("send_now", good(2.0), 30)
    prod.release()
    col.release()

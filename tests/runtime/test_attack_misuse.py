"""Driver API misuse: a wrong argument gets a clear error that says what was expected and what came.

Each test pins one misuse's error: its type, and that its message names what
was expected and what came (before, some got a bare AttributeError from deep
inside, or no error at all).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest

from coupler.actors import ActorHost
from coupler.runtime import (
    ChannelExists,
    ChannelTimeout,
    CouplerError,
    Coupling,
    Latest,
    Queue,
    Reservoir,
    UnknownChannel,
    Window,
    WrongPolicy,
)


class Idle(ActorHost):
    def step(self) -> bool:
        time.sleep(0.01)
        return True


@pytest.mark.parametrize("bad", ["Queue", Queue, None, {"kind": "queue"}])
def test_a_channel_policy_that_is_not_a_policy_is_a_type_error_naming_the_policies(coupling: Coupling, unique: str, bad: Any) -> None:
    with pytest.raises(TypeError, match="expected a policy"):
        coupling.channel(f"pol-{unique}", bad)


@pytest.mark.parametrize("make", [lambda: Queue(0), lambda: Queue(-3), lambda: Window(0), lambda: Reservoir(2.5), lambda: Queue(2, shared=1)])
def test_policy_sizes_are_checked_when_made(make: Any) -> None:
    with pytest.raises(ValueError, match="needs"):
        make()


def test_misused_channels_and_actors_get_typed_errors(coupling: Coupling, unique: str) -> None:
    cp = coupling
    ch = cp.channel(f"m-{unique}", Queue(2))
    with pytest.raises(ChannelExists, match="already declared with policy"):
        cp.channel(ch, Latest())
    with pytest.raises(UnknownChannel, match=f"unknown channel 'nope-{unique}'"):
        cp.close_channel(f"nope-{unique}")
    with pytest.raises(UnknownChannel, match="unknown channel"):
        cp.spawn(Idle, name=f"in-undeclared-{unique}", inputs={"x": f"undeclared-{unique}"})
    with pytest.raises(TypeError, match="inputs must be a dict {port name: channel name}, got {'x': 5}"):
        cp.spawn(Idle, name=f"in-int-{unique}", inputs={"x": 5})  # refused at spawn, before any worker sees it
    a = cp.spawn(Idle, name=f"twice-{unique}")
    with pytest.raises(ValueError, match="already exists"):
        cp.spawn(Idle, name=f"twice-{unique}")
    with pytest.raises(WrongPolicy, match="use receive"):
        cp.subscribe(ch).sample(2, timeout=1)
    a.release()


def test_a_receive_with_a_negative_timeout_is_a_poll(coupling: Coupling, unique: str) -> None:
    ch = coupling.channel(f"neg-{unique}", Queue(2))
    t0 = time.monotonic()
    with pytest.raises(ChannelTimeout):
        coupling.receive(ch, timeout=-1.0)
    assert time.monotonic() - t0 < 5


def test_spawning_a_class_that_is_not_an_actor_host_is_a_type_error(coupling: Coupling, unique: str) -> None:
    ref = None
    try:
        with pytest.raises(TypeError, match="ActorHost"):
            ref = coupling.spawn(dict, name=f"notactor-{unique}")
    finally:
        if ref is not None:
            try:
                ref.release()
            except Exception:
                pass


def test_ports_given_as_a_list_are_a_type_error_saying_a_dict_is_expected(coupling: Coupling, unique: str) -> None:
    ch = coupling.channel(f"lst-{unique}", Queue(2))
    with pytest.raises(TypeError, match="dict"):
        coupling.spawn(Idle, name=f"lst-{unique}", inputs=[ch])


def test_a_nan_timeout_is_refused_not_a_wait_for_ever(coupling: Coupling, unique: str) -> None:
    ch = coupling.channel(f"nan-{unique}", Queue(2))
    out: list[BaseException | object] = []

    def receive() -> None:
        try:
            out.append(coupling.receive(ch, timeout=float("nan")))
        except BaseException as e:
            out.append(e)

    t = threading.Thread(target=receive, daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():  # release the waiter: one message ends it
        coupling.send(ch, {"x": np.zeros(1)}, timeout=10)
        t.join(10)
        pytest.fail("receive(timeout=nan) was still waiting after 10 s")
    assert isinstance(out[0], ValueError), out


def test_using_a_closed_coupling_says_it_is_closed(coupling: Coupling, unique: str) -> None:
    other = Coupling(coupling.client.scheduler.address)
    other.close()
    with pytest.raises(CouplerError, match="closed"):
        other.channel(f"after-{unique}", Queue(2))

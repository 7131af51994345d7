"""A Queue broadcast to three consumers, sends with timeouts, takes in any order (hypothesis).

No consumer runs a loop: each takes only when the test says so (``receive_now``),
so which consumers have room at each send is chosen by hypothesis. Whatever a
send's outcome (a seq, ``PartiallyDelivered``, a plain ``ChannelTimeout``),
afterwards every consumer must get every message that was sent, once, in
order, each seq with its own payload, and nothing that was not sent
(docs/reliability.md: "A broadcast Queue send with a timeout ... never gives
one (source, seq) two payloads").
"""

from __future__ import annotations

import itertools
import os
import time

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from coupler.runtime import ChannelTimeout, Coupling, PartiallyDelivered, Queue
from helper_actors import Collector, Producer

_n = itertools.count()

ACTIONS = st.lists(
    st.one_of(st.just(("send",)), st.tuples(st.just("take"), st.integers(0, 2))),
    min_size=4,
    max_size=16,
)


@settings(max_examples=int(os.environ.get("COUPLER_ATTACK_EXAMPLES", "6")), deadline=None, derandomize=not os.environ.get("COUPLER_ATTACK_EXAMPLES"), phases=(Phase.explicit, Phase.generate),
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions=ACTIONS, maxsize=st.sampled_from([1, 2]))
def test_a_timed_out_broadcast_never_gives_a_seq_two_payloads_nor_drops_one(coupling: Coupling, actions: list, maxsize: int) -> None:
    cp = coupling
    tag = f"bc3-{next(_n)}-{time.monotonic_ns() % 10**6}"
    ch = cp.channel(f"bc-{tag}", Queue(maxsize))
    w = cp.workers()
    prod = cp.spawn(Producer, 0, name=f"prod-{tag}", outputs={"out": ch}, workers=w[0])
    cons = [cp.spawn(Collector, name=f"c{k}-{tag}", inputs={"inp": ch}, workers=w[k % len(w)]) for k in range(3)]
    try:
        for c in cons:  # attach every consumer before the first send
            assert c.call("receive_now", 0.05) is None
        sent: dict[int, float] = {}  # seq -> payload value, for sends that used their seq
        got: list[list[tuple[int, float]]] = [[] for _ in cons]
        value = 0.0
        for act in actions:
            if act[0] == "send":
                value += 1.0
                try:
                    seq = prod.call("send_now", {"x": np.full(4, value, np.float32)}, 0.3)
                except PartiallyDelivered as e:
                    seq = e.seq
                except ChannelTimeout:
                    continue  # taken by none: not sent
                assert seq not in sent, f"seq {seq} used for payloads {sent[seq]} and {value}"
                sent[seq] = value
            else:
                k = act[1]
                r = cons[k].call("receive_now", 0.3)
                if r is not None:
                    got[k].append((r[1], r[2]))
        deadline = time.monotonic() + 30
        for k, c in enumerate(cons):
            while len(got[k]) < len(sent) and time.monotonic() < deadline:
                r = c.call("receive_now", 0.5)
                if r is not None:
                    got[k].append((r[1], r[2]))
            extra = c.call("receive_now", 0.3)
            assert extra is None, f"consumer {k} got a message that was never sent: {extra}; sent {sent}"
            assert got[k] == sorted(sent.items()), f"consumer {k}: got {got[k]}, sent {sorted(sent.items())}"
    finally:
        for r in (prod, *cons):
            try:
                r.release()
            except Exception:
                pass

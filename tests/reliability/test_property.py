"""Bad input, thrown by hypothesis: each gets its typed error, and the runtime keeps working with its data intact.

Targets: the broker's handlers, message specs
and payloads, ``Queue`` buffers fed replays, the data-plane listener fed junk
streams, the command line, and the settings. ``EXAMPLES`` examples per target.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
from typing import Any

import dask
import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coupler.runtime.dataplane.auth import StreamKey, new_secret
from coupler.runtime.control.broker import Broker
from coupler.runtime.dataplane.buffers import QueueBuffer, make_buffer
from coupler.runtime.launch.cli import UsageError, build_parser, cluster_choice, walltime_choice
from coupler.runtime.launch.cluster import walltime_seconds
from coupler.runtime.dataplane.settings import delivery_config, transport_config
from coupler.runtime.errors import ERRORS, SpecMismatch
from coupler.runtime.dataplane.link import Link
from coupler.runtime.dataplane.settings import TransportConfig
from coupler.runtime.message import Message, Spec, flatten
from coupler.runtime.policies import Queue
from coupler.runtime.dataplane.receiver import ChannelSpecs, Listener
from coupler.runtime.control.supervisor import SupervisionPolicy

EXAMPLES = 200
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=True) | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
names = st.text(max_size=40) | st.sampled_from(["", "a" * 201, "ok/name", "with space", "é", "x\x00y"]) | junk
policies = st.fixed_dictionaries(
    {"kind": st.sampled_from(["queue", "latest", "reservoir", "window", "nope"]) | junk},
    optional={"maxsize": junk | st.integers(-3, 3), "capacity": junk | st.integers(-3, 3), "shared": junk, "extra": junk},
) | junk
specs = st.none() | junk | st.fixed_dictionaries({"treedef": junk, "fields": st.lists(st.lists(junk, max_size=4), max_size=3)})


def _typed(reply: Any) -> bool:
    """A handler reply is OK, or an error naming a typed coupler error or ValueError."""
    return isinstance(reply, dict) and (
        reply.get("status") == "OK" or (reply.get("status") == "error" and reply.get("error") in ERRORS)
    )


@SETTINGS
@given(name=names, policy=policies, spec=specs, ident=names, role=junk | st.just("producer"))
def test_broker_handlers_answer_bad_input_with_typed_errors(name: Any, policy: Any, spec: Any, ident: Any, role: Any) -> None:
    """The handlers themselves, on a broker outside a scheduler (consumer attaches push to workers: not here)."""
    broker = Broker()
    assert broker.declare(name="good", policy={"kind": "queue", "maxsize": 4})["status"] == "OK"
    before = broker.routing(name="good")
    replies = [
        broker.declare(name=name, policy=policy, spec=spec),
        broker.routing(name=name),
        broker.fix_spec(name=name, spec=spec),
        broker.fix_spec(name="good", spec=spec),
        asyncio.run(broker.attach(name=name, role=role, ident=ident, address="tcp://0.0.0.0:1")),
        asyncio.run(broker.detach(name=name, ident=ident)),
        asyncio.run(broker.detach(name=name, ident=ident, address="tcp://0.0.0.0:1", detail=role)),
        broker.claim_actor(name=name, run=ident),
        broker.report(address="tcp://0.0.0.9:1", channels={"good": spec}, actors={"a": policy}, retire_at=role),
        broker.actor_ended(name=name, status=policy),
    ]
    for r in replies:
        assert _typed(r), r
        msgpack.packb(r, use_bin_type=True)  # every reply can travel back over Dask's comms
    broker.sample()  # reports kept are still summed: every client's view works
    broker.channel_stats()
    after = broker.routing(name="good")  # the broker still works; the good channel kept its policy
    assert after["status"] == "OK" and after["policy"] == before["policy"] and before["policy"]["maxsize"] == 4
    assert set(broker.channels) <= {"good"} | ({name} if isinstance(name, str) else set())


leaf_arrays = st.sampled_from([np.float32, np.float64, np.int32, np.uint8]).flatmap(
    lambda dt: st.lists(st.integers(0, 3), max_size=3).map(lambda shape: np.zeros(shape, dt))
)
payloads = st.recursive(leaf_arrays, lambda inner: st.dictionaries(st.sampled_from("abc"), inner, min_size=1, max_size=3), max_leaves=5)


@SETTINGS
@given(data=payloads)
def test_a_payload_fits_its_spec_or_gets_a_spec_mismatch(data: Any) -> None:
    spec = Spec.of({"a": np.zeros((2, 2), np.float32), "b": np.zeros(3, np.int32)})
    leaves, td = flatten(data)
    fits = td == spec.treedef and all(
        x.shape == (f.shape) and x.dtype.name == f.dtype for x, f in zip(leaves, spec.fields)
    )
    if fits:
        spec.check("c", td, leaves)
    else:
        with pytest.raises(SpecMismatch, match="channel 'c'"):
            spec.check("c", td, leaves)
    assert Spec.from_wire(Spec.of(data).to_wire()) == Spec.of(data)


@SETTINGS
@given(
    n=st.integers(1, 30),
    sources=st.lists(st.sampled_from("pqr"), min_size=1, max_size=3, unique=True),
    replays=st.lists(st.tuples(st.integers(0, 29), st.integers(0, 29)), max_size=6),
    taken_at=st.integers(0, 30),
)
def test_replays_into_a_queue_leave_each_message_exactly_once_in_order(
    n: int, sources: list[str], replays: list[tuple[int, int]], taken_at: int
) -> None:
    """Producers resend suffixes of their streams (as after a restart); a restored consumer sees each seq once."""
    buf = make_buffer("q", Queue(maxsize=10_000))
    assert isinstance(buf, QueueBuffer)
    sent = {s: 0 for s in sources}
    schedule: list[tuple[str, int]] = []
    for when, back in replays:
        for s in sources:
            upto = min(n, max(sent[s], when))
            schedule += [(s, q) for q in range(sent[s], upto)]
            sent[s] = upto
            schedule += [(s, q) for q in range(max(0, sent[s] - back), sent[s])]  # a replay of the last `back`
    for s in sources:
        schedule += [(s, q) for q in range(sent[s], n)]
    for s, q in schedule[:taken_at]:
        buf.put([Message(data={"v": np.array([q])}, source=s, seq=q)])
    got = [buf.get(0) for _ in range(len(buf))]
    restored = make_buffer("q", Queue(maxsize=10_000))  # a successor restored from a checkpoint taken here
    assert isinstance(restored, QueueBuffer)
    marks = buf.taken_marks()
    for s, q in schedule:  # everything comes again from the start (nothing was committed)
        restored.put([Message(data={"v": np.array([q])}, source=s, seq=q)])
    restored.resume(marks)
    got += [restored.get(0) for _ in range(len(restored))]
    for s in sources:
        seqs = [m.seq for m in got if m.source == s]
        assert seqs == list(range(n)), (s, seqs)
        assert [int(m.data["v"][0]) for m in got if m.source == s] == seqs  # payloads intact


@pytest.fixture(scope="module")
def listener() -> Any:
    spec = Spec.of({"x": np.zeros(4, np.float64)})
    buf = make_buffer("fuzz", Queue(maxsize=64))
    key = StreamKey(new_secret())
    lst = Listener("127.0.0.1", lambda ch, cid: buf if (ch, cid) == ("fuzz", "k/in") else None,
                   key=key, specs=ChannelSpecs(lambda ch: spec.to_wire()))
    yield lst, buf, spec, key
    lst.close()


# What msgpack can encode (64-bit integers).
wire_junk = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
frames = st.lists(
    st.binary(max_size=64)
    | st.builds(
        lambda kind, header: bytes([kind]) + len(header).to_bytes(4, "big") + header,
        st.integers(0, 255),
        st.dictionaries(st.sampled_from(["channel", "consumer", "spec", "c", "offs", "n", "probe", "len"]), wire_junk, max_size=5).map(
            lambda d: msgpack.packb({k: (min(v, 64) if k == "len" and isinstance(v, int) else v) for k, v in d.items()}, use_bin_type=True)
        ),
    ),
    max_size=4,
)


def test_the_data_plane_survives_junk_streams_and_delivers_intact(listener: Any) -> None:
    lst, buf, spec, key = listener
    host, port = lst.address.rsplit(":", 1)

    @SETTINGS
    @given(chunks=frames)
    def throw(chunks: list[bytes]) -> None:
        with socket.create_connection((host, int(port)), timeout=5) as s:
            try:
                for c in chunks:
                    s.sendall(c)
                s.shutdown(socket.SHUT_WR)
                s.settimeout(0.5)
                while s.recv(4096):
                    pass
            except OSError:
                pass  # the receiver may cut a junk stream at once

    throw()
    assert len(buf) == 0  # junk never became a message
    link = Link("fuzz", "k/in", lst.address, spec, queue=True, maxsize=64, host="a", peer_host="b",
                config=TransportConfig(shared_memory=False), key=key)
    for i in range(20):
        link.submit({"timestamp": 0.0, "step": i, "source": "p", "seq": i, "meta": {}, "sent_at": 0.0}, [np.full(4, i, np.float64)], 10)
    link.flush(10)
    got = [buf.get(1) for _ in range(20)]
    assert [m.seq for m in got] == list(range(20))
    assert all(np.array_equal(m.data["x"], np.full(4, m.seq, np.float64)) for m in got)
    link.close(orphan=False)


argv_tokens = st.sampled_from(
    ["run", "demo", "info", "--jobs", "--walltime", "--cluster", "--workers", "--gpus-per-job", "--tls", "--config",
     "-1", "0", "3", "01:00:00", "1:2", "slurm", "tcp://h:1", "bogus", "x.py", "--", "--nope", ""]
) | st.text(max_size=12)


@SETTINGS
@given(argv=st.lists(argv_tokens, max_size=7))
def test_the_command_line_parses_or_gives_a_usage_error(argv: list[str]) -> None:
    try:
        ns = build_parser().parse_args(argv)
    except UsageError as e:
        assert str(e).startswith("coupler") and "error:" in str(e) and "(see coupler" in str(e)
    except SystemExit as e:  # --help and friends exit cleanly; argparse's own errors are UsageErrors
        assert e.code == 0
    else:
        assert ns.command in ("run", "demo", "info")


@SETTINGS
@given(text=st.text(max_size=16) | st.from_regex(r"\A(\d{1,3}-)?\d{1,3}(:\d{1,3}){0,2}\Z"))
def test_walltimes_and_cluster_choices_are_checked(text: str) -> None:
    try:
        s = walltime_seconds(text)
    except ValueError as e:
        assert "walltime expects" in str(e)
    else:
        assert s >= 0
    try:
        walltime_choice(text)
    except argparse.ArgumentTypeError:
        pass
    try:
        cluster_choice(text)
    except argparse.ArgumentTypeError as e:
        assert "expected one of" in str(e)


@SETTINGS
@given(
    key=st.sampled_from(["poll-interval", "retire-margin", "checkpoint-interval", "max-restarts", "restart-backoff"]),
    value=st.integers(-5, 5) | st.floats(-5, 5) | st.text(max_size=10) | st.sampled_from(["2 minutes", "1s", "-1", None]),
    dkey=st.sampled_from(["retain-bytes", "lost-consumer-wait", "replay-order-wait"]),
    dvalue=st.integers(-5, 5) | st.text(max_size=10) | st.sampled_from(["1 GiB", "10s", "-1"]),
    spin=st.integers(-5, 5) | st.floats(-1, 1) | st.text(max_size=10) | st.sampled_from(["500us", "1ms", "-1us", None]),
    tkey=st.sampled_from(["inline-max", "batch-bytes", "window-bytes", "shm-pool-bytes"]),
    tvalue=st.integers(-5, 5) | st.text(max_size=10) | st.sampled_from(["1 MiB", "big", "-1kB", "0", None]),
)
def test_settings_are_accepted_or_refused_with_a_value_error(
    key: str, value: Any, dkey: str, dvalue: Any, spin: Any, tkey: str, tvalue: Any
) -> None:
    with dask.config.set({f"coupler.supervision.{key}": value}):
        try:
            p = SupervisionPolicy.from_config()
        except ValueError as e:
            assert f"coupler.supervision.{key}" in str(e)
        else:
            assert p.max_restarts >= 0 and p.poll_interval > 0 and p.checkpoint_interval >= 0
    with dask.config.set({f"coupler.delivery.{dkey}": dvalue}):
        try:
            d = delivery_config()
        except ValueError as e:
            assert "coupler.delivery" in str(e)
        else:
            assert d.retain_bytes >= 0 and d.lost_consumer_wait >= 0 and d.replay_order_wait >= 0
    with dask.config.set({"coupler.transport.spin": spin}):
        try:
            t = transport_config()
        except ValueError as e:
            assert "coupler.transport.spin" in str(e)
        else:
            assert t.spin_s >= 0
    with dask.config.set({f"coupler.transport.{tkey}": tvalue}):
        try:
            t = transport_config()
        except ValueError as e:
            assert f"coupler.transport.{tkey} must be" in str(e)
        else:
            assert min(t.inline_max, t.shm_pool_bytes) >= 0 and min(t.batch_bytes, t.window_bytes) >= 1

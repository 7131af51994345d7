"""The data port against hostile and broken peers: it keeps serving its genuine streams.

Unit tests drive a :class:`~coupler.runtime.dataplane.receiver.Listener` in this process;
the last test throws (hypothesis) junk, oversized frames, forged sequence
numbers and credit requests, unauthenticated and idle connections at a real
worker's port while a simulator streams to a learner there, and checks that
every genuine message arrives once, in order, intact.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cloudpickle
import msgpack
import numpy as np
import pytest
from distributed.security import Security
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import chaos_actors
from chaos_actors import QueueLearner, Simulator, checksum, sample
from coupler.runtime.dataplane import auth, receiver, shm, wire
from coupler.runtime.dataplane.auth import StreamKey, new_secret
from coupler.runtime.dataplane.buffers import QueueBuffer, make_buffer
from coupler.runtime.launch.cluster import make_tls_files
from coupler.runtime.coupling import Coupling
from coupler.runtime.dataplane.endpoint import ENDPOINT_NAME
from coupler.runtime.errors import ConsumerGone
from coupler.runtime.dataplane.dial import probe_segment
from coupler.runtime.dataplane.link import Link
from coupler.runtime.dataplane.settings import TransportConfig
from coupler.runtime.message import Spec
from coupler.runtime.policies import Queue
from coupler.runtime.dataplane.receiver import ChannelSpecs, Listener
from coupler.runtime.dataplane.security import ssl_contexts

cloudpickle.register_pickle_by_value(chaos_actors)

SPEC = Spec.of({"x": np.zeros(4, np.float64)})
CHANNEL, CONSUMER = "port", "k/in"


def _header(q: int, source: str = "p") -> dict[str, Any]:
    return {"timestamp": 0.0, "step": q, "source": source, "seq": q, "meta": {}, "sent_at": 0.0}


@pytest.fixture
def port() -> Iterator[tuple[Listener, QueueBuffer, StreamKey]]:
    """A listener for one Queue consumer of ``CHANNEL``, whose spec is ``SPEC`` at the 'broker'."""
    buf = make_buffer(CHANNEL, Queue(maxsize=16))
    assert isinstance(buf, QueueBuffer)
    key = StreamKey(new_secret())
    lst = Listener("127.0.0.1", lambda ch, cid: buf if (ch, cid) == (CHANNEL, CONSUMER) else None,
                   key=key, specs=ChannelSpecs(lambda ch: SPEC.to_wire() if ch == CHANNEL else None), max_pending=8)
    yield lst, buf, key
    lst.close()


def _connect(address: str, timeout: float = 5.0) -> socket.socket:
    host, p = address.rsplit(":", 1)
    return socket.create_connection((host.strip("[]"), int(p)), timeout=timeout)


def _closed_by_peer(s: socket.socket, within: float) -> bool:
    """Whether the peer closes ``s`` within ``within`` seconds (whatever it sends first is read and dropped)."""
    end = time.monotonic() + within
    try:
        while time.monotonic() < end:
            s.settimeout(max(0.01, end - time.monotonic()))
            if not s.recv(65536):
                return True
    except TimeoutError:
        return False
    except OSError:
        return True  # reset
    return False


def _genuine_roundtrip(lst: Listener, buf: QueueBuffer, key: StreamKey, n: int = 40, source: str = "g") -> None:
    """A genuine link delivers ``n`` messages once, in order, intact."""
    link = Link(CHANNEL, CONSUMER, lst.address, SPEC, queue=True, maxsize=16, host="a", peer_host="b",
                config=TransportConfig(shared_memory=False), key=key)
    got = []
    try:
        for i in range(n):  # one at a time: more than the queue holds needs every slot to come back
            link.submit(_header(i, source), [np.full(4, i, np.float64)], 10)
            got.append(buf.get(10))
    finally:
        link.close(orphan=False)
    assert [(m.source, m.seq) for m in got] == [(source, i) for i in range(n)]
    assert all(np.array_equal(m.data["x"], np.full(4, m.seq, np.float64)) for m in got)


def _authenticated(address: str, key: StreamKey, spec: Any = None) -> tuple[socket.socket, dict[str, Any]]:
    """A raw stream that passed the handshake as the producer of ``CHANNEL`` (a forger who holds the secret)."""
    s = _connect(address)
    hello = {"channel": CHANNEL, "consumer": CONSUMER, "spec": SPEC.to_wire() if spec is None else spec, "probe": None, "pid": 1}
    _, welcome = auth.open_stream(s, key, hello)
    return s, welcome


def _batch(seqs: list[int], source: str = "p", **override: Any) -> tuple[dict[str, Any], list[bytes]]:
    """A well-formed batch frame's header and payload for ``SPEC`` (then ``override`` breaks it)."""
    items = [[np.full(4, q, np.float64)] for q in seqs]
    offsets, total, bufs = wire.batch_payload(SPEC, items)
    header = {"c": wire.header_columns([_header(q, source) for q in seqs]), "offs": offsets, "len": total}
    header.update(override)
    return header, [bytes(b) for b in bufs]


# -- handshake: deadline, pending bound, authentication --------------------------------------------


def test_a_connection_that_sends_no_hello_is_cut_after_the_handshake_deadline(
    port: tuple[Listener, QueueBuffer, StreamKey], monkeypatch: pytest.MonkeyPatch
) -> None:
    lst, buf, key = port
    monkeypatch.setattr(auth, "HANDSHAKE_S", 0.5)
    with _connect(lst.address) as idle, _connect(lst.address) as slow:
        slow.sendall(bytes([wire.HELLO]))  # a frame begun, never finished (a slow-loris peer)
        assert _closed_by_peer(idle, within=3.0), "an idle connection was still open 3 s after a 0.5 s deadline"
        assert _closed_by_peer(slow, within=3.0), "a connection trickling its hello was not cut at the deadline"
    end = time.monotonic() + 2
    while lst.pending and time.monotonic() < end:  # (their threads close the sockets, then leave the count)
        time.sleep(0.01)
    assert not lst.pending
    _genuine_roundtrip(lst, buf, key)


def test_pending_connections_are_bounded_and_a_genuine_link_gets_through_a_flood(port: tuple[Listener, QueueBuffer, StreamKey]) -> None:
    lst, buf, key = port
    flood = [_connect(lst.address) for _ in range(40)]  # 5x the bound of 8, none says a word
    try:
        end = time.monotonic() + 5
        while lst.cut < 40 - 8 and time.monotonic() < end:
            time.sleep(0.02)
        assert lst.cut >= 40 - 8, f"only {lst.cut} of 40 idle connections were cut with 8 pending allowed"
        assert len(lst.pending) <= 8
        _genuine_roundtrip(lst, buf, key)  # it answers the challenge at once: newer than the flood, it is not cut
    finally:
        for s in flood:
            s.close()


def test_pending_tls_handshakes_are_bounded_too(tls_files: Any) -> None:
    """Idle connections to a TLS port are cut by newer ones, not only by the deadline."""
    security = Security(tls_ca_file=tls_files.ca_file, tls_worker_cert=tls_files.cert, tls_worker_key=tls_files.key, require_encryption=True)
    server_ctx = security.get_listen_args("worker")["ssl_context"]
    client_ctx = security.get_connection_args("worker")["ssl_context"]
    buf = make_buffer(CHANNEL, Queue(maxsize=16))
    assert isinstance(buf, QueueBuffer)
    key = StreamKey(new_secret())
    lst = Listener("127.0.0.1", lambda ch, cid: buf, server_ctx, key=key, specs=ChannelSpecs(lambda ch: SPEC.to_wire()), max_pending=8)
    flood = [_connect(lst.address) for _ in range(40)]  # no TLS hello from any of them
    try:
        t0 = time.monotonic()
        closed = sum(_closed_by_peer(s, within=max(0.01, t0 + 2.0 - time.monotonic())) for s in flood[:32])
        assert closed == 32, f"{closed} of the 32 oldest idle TLS connections were cut within 2 s (the deadline is 5 s)"
        link = Link(CHANNEL, CONSUMER, lst.address, SPEC, queue=True, maxsize=16, host="a", peer_host="b",
                    config=TransportConfig(shared_memory=False), ssl_context=client_ctx, key=key)
        try:
            link.submit(_header(0), [np.zeros(4)], 10)
            assert buf.get(10).seq == 0
        finally:
            link.close(orphan=False)
    finally:
        for s in flood:
            s.close()
        lst.close()


def test_the_open_file_limit_is_raised_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else int(Path("/proc/sys/fs/nr_open").read_text())
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, target) - 1, hard))
        assert receiver.raise_open_file_limit() == target
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == target
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


_EMFILE_SCRIPT = textwrap.dedent("""
    import json, os, resource, socket, time
    import numpy as np
    from coupler.runtime.dataplane.auth import StreamKey, new_secret
    from coupler.runtime.dataplane.buffers import make_buffer
    from coupler.runtime.dataplane.link import Link
    from coupler.runtime.dataplane.settings import TransportConfig
    from coupler.runtime.message import Spec
    from coupler.runtime.policies import Queue
    from coupler.runtime.dataplane.receiver import ChannelSpecs, Listener

    spec = Spec.of({"x": np.zeros(4, np.float64)})
    buf = make_buffer("c", Queue(maxsize=16))
    key = StreamKey(new_secret())
    lst = Listener("127.0.0.1", lambda ch, cid: buf if (ch, cid) == ("c", "k/in") else None,
                   key=key, specs=ChannelSpecs(lambda ch: spec.to_wire()))
    host, port = lst.address.rsplit(":", 1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    clients = [socket.socket() for _ in range(5)]  # their descriptors first: connecting needs none more
    fillers = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 16, hard))
    try:
        while True:
            fillers.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        pass  # the table is full: the listener's accept gets EMFILE for every connection now
    for c in clients:
        c.connect((host, int(port)))
    end = time.monotonic() + 10
    while lst.accept_errors == 0 and time.monotonic() < end:
        time.sleep(0.01)
    errors_while_full = lst.accept_errors
    for fd in fillers:
        os.close(fd)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    # The loop is still accepting: the waiting connections get their challenge, a new link streams.
    challenged = 0
    for c in clients:
        c.settimeout(5)
        challenged += c.recv(1) == bytes([10])
    link = Link("c", "k/in", lst.address, spec, queue=True, maxsize=16, host="a", peer_host="b",
                config=TransportConfig(shared_memory=False), key=key)
    for i in range(5):
        link.submit({"timestamp": 0.0, "step": i, "source": "p", "seq": i, "meta": {}, "sent_at": 0.0}, [np.full(4, i, np.float64)], 10)
    link.flush(10)
    seqs = [buf.get(5).seq for _ in range(5)]
    link.close(orphan=False)
    print(json.dumps({"errors_while_full": errors_while_full, "challenged": challenged, "seqs": seqs}))
""")


def test_the_accept_loop_survives_running_out_of_descriptors() -> None:
    """In a child process: its descriptor table is filled on purpose (EMFILE for every accept)."""
    out = subprocess.run([sys.executable, "-c", _EMFILE_SCRIPT], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["errors_while_full"] > 0, "the listener never met EMFILE: the test did not fill the table"
    assert got["challenged"] == 5, f"{got['challenged']} of 5 connections made while out of descriptors were served"
    assert got["seqs"] == list(range(5))


def test_streams_without_the_clusters_secret_are_refused_both_ways(port: tuple[Listener, QueueBuffer, StreamKey]) -> None:
    lst, buf, key = port
    # The old handshake (a bare HELLO), then a forged batch (seq 2**62) and a WANT for 10^9 credits: all ignored.
    with _connect(lst.address) as s:
        h, payload = _batch([2**62], source="g")
        try:
            wire.send_frame(s, wire.HELLO, {"channel": CHANNEL, "consumer": CONSUMER, "spec": SPEC.to_wire(), "probe": None, "pid": 1})
            wire.send_frame(s, wire.BATCH, h, payload)
            wire.send_frame(s, wire.WANT, {"n": 10**9})
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before it finished writing
        assert _closed_by_peer(s, within=5.0)
    # A producer with another cluster's secret is told so; so is one that reaches a consumer with another secret.
    stranger = StreamKey(new_secret())
    with pytest.raises(ConsumerGone, match="cluster secret is not ours"):
        Link(CHANNEL, CONSUMER, lst.address, SPEC, queue=True, maxsize=16, host="a", peer_host="b",
             config=TransportConfig(shared_memory=False), key=stranger)
    impostor = Listener("127.0.0.1", lambda ch, cid: buf, key=stranger, specs=ChannelSpecs(lambda ch: SPEC.to_wire()))
    try:
        with pytest.raises(ConsumerGone, match="unreachable"):
            Link(CHANNEL, CONSUMER, impostor.address, SPEC, queue=True, maxsize=16, host="a", peer_host="b",
                 config=TransportConfig(shared_memory=False), key=key)
    finally:
        impostor.close()
    assert len(buf) == 0
    _genuine_roundtrip(lst, buf, key)  # source "g" from seq 0, 40 messages through 16 slots: no mark, no slot taken


def test_a_signed_hello_is_good_for_its_own_connection_only(port: tuple[Listener, QueueBuffer, StreamKey]) -> None:
    """A recorded handshake replayed on a new connection fails: the consumer's nonce differs."""
    lst, _, key = port
    with _connect(lst.address) as first:
        reader = wire.FrameReader(first)
        _, challenge, _ = reader.read(time.monotonic() + 5)
        signed = auth._signed(key.secret(), auth._HELLO, challenge["nonce"], {"channel": CHANNEL, "consumer": CONSUMER,
                              "spec": SPEC.to_wire(), "probe": None, "pid": 1, "nonce": os.urandom(16)})
    with _connect(lst.address) as replay:
        reader = wire.FrameReader(replay)
        reader.read(time.monotonic() + 5)  # a fresh challenge
        wire.send_frame(replay, wire.HELLO, signed)
        kind, reply, _ = reader.read(time.monotonic() + 5)
        assert (kind, reply) == (wire.WELCOME, {"status": "denied"})


# -- what an authenticated peer says is checked all the same ----------------------------------------

BAD_FRAMES: dict[str, Any] = {
    "a payload of 1.6 GiB announced": lambda: (wire.BATCH, _batch([0], len=1_717_986_918)[0], []),
    "a payload longer than the spec's": lambda: (wire.BATCH, *_batch([0], len=SPEC.nbytes + 64)),
    "offsets other than the spec's layout": lambda: (wire.BATCH, *_batch([0, 1], offs=[8])),
    "a header beyond the read-ahead buffer": lambda: (wire.BATCH, {"pad": bytes(300 << 10)}, []),
    "a sequence number of 2**64 - 1": lambda: (wire.BATCH, *_batch([2**64 - 1])),
    "a negative sequence number": lambda: (wire.BATCH, *_batch([-1])),
    "a source that is not a string": lambda: (wire.BATCH, *_batch([0], c=[[0.0], [0], [7], [0], [{}], [0.0]])),
    "a segment name with a path": lambda: (wire.BATCH, _batch([0], seg="../../etc/passwd")[0] | {"len": 0}, []),
    "another process's segment": lambda: (wire.BATCH, _batch([0], seg=f"coupler-2-{'0' * 16}")[0] | {"len": 0}, []),
    "a negative credit request": lambda: (wire.WANT, {"n": -5}, []),
    "a credit request that is no number": lambda: (wire.WANT, {"n": "all"}, []),
}


@pytest.mark.parametrize("what", sorted(BAD_FRAMES))
def test_a_bad_frame_from_an_authenticated_peer_closes_its_stream_only(port: tuple[Listener, QueueBuffer, StreamKey], what: str) -> None:
    lst, buf, key = port
    s, welcome = _authenticated(lst.address, key)
    with s:
        assert welcome["status"] == "OK"
        kind, header, payload = BAD_FRAMES[what]()
        wire.send_frame(s, kind, header, payload)
        assert _closed_by_peer(s, within=5.0), f"{what}: the stream stayed open"
    assert len(buf) == 0
    _genuine_roundtrip(lst, buf, key)


def _segment(nbytes: int) -> Path:
    """A segment of this process in /dev/shm, as a producer would name it."""
    path = Path(shm.SHM_DIR) / f"coupler-{os.getpid()}-{uuid.uuid4().hex[:16]}"
    path.write_bytes(bytes(nbytes))
    return path


@pytest.mark.parametrize("case", ["no shared memory agreed", "the probe", "too small"])
def test_a_segment_a_frame_may_not_name_is_refused_and_left_where_it_is(
    port: tuple[Listener, QueueBuffer, StreamKey], case: str
) -> None:
    """Before, a peer could have the consumer map and unlink a segment on a link that never agreed on shared
    memory, the producer's probe (which pushed the genuine link back to TCP), or a segment too small for
    its message (refused only after its name was gone)."""
    lst, buf, key = port
    probe = probe_segment()
    assert probe is not None
    seg = _segment(shm.HEADER + SPEC.nbytes)
    small = _segment(16)
    try:
        s = _connect(lst.address)
        hello = {"channel": CHANNEL, "consumer": CONSUMER, "spec": SPEC.to_wire(), "pid": os.getpid(),
                 "probe": None if case == "no shared memory agreed" else probe}  # fmt: skip
        _, welcome = auth.open_stream(s, key, hello)
        with s:
            assert welcome == {"status": "OK", "shm": case != "no shared memory agreed"}
            named = {"no shared memory agreed": seg.name, "the probe": probe, "too small": small.name}[case]
            wire.send_frame(s, wire.BATCH, _batch([0], seg=named)[0] | {"len": 0}, [])
            assert _closed_by_peer(s, within=5.0), f"{case}: the stream stayed open"
        assert len(buf) == 0
        assert (Path(shm.SHM_DIR) / named).exists(), f"{case}: the consumer unlinked {named}"
    finally:
        for path in (seg, small, Path(shm.SHM_DIR) / probe):
            path.unlink(missing_ok=True)
    _genuine_roundtrip(lst, buf, key)


def test_sizes_come_from_the_brokers_spec_never_from_the_hello(port: tuple[Listener, QueueBuffer, StreamKey]) -> None:
    lst, buf, key = port
    huge = Spec.of({"x": np.zeros(1, np.float64)}).to_wire()
    huge["fields"][0][1] = [200_000_000]  # 1.6 GB per message, as claimed by the sender
    s, welcome = _authenticated(lst.address, key, spec=huge)
    s.close()
    assert welcome["status"] == "spec" and "expected spec" in welcome["reason"]
    _genuine_roundtrip(lst, buf, key)


def test_a_credit_request_is_clamped_to_the_queue_size(port: tuple[Listener, QueueBuffer, StreamKey]) -> None:
    """A WANT for 10^9 wants 16 slots at most: once it got them, freed slots go to the others, not to it."""
    lst, buf, key = port
    s, _ = _authenticated(lst.address, key)
    with s:
        wire.send_frame(s, wire.WANT, {"n": 10**9})
        reader = wire.FrameReader(s, payload_limit=lambda k, h: 0)

        def grants(within: float) -> int:
            got, end = 0, time.monotonic() + within
            try:
                while True:
                    kind, h, _ = reader.read(end)
                    got += h.get("n", 0) if kind == wire.GRANT else 0
                    if got >= 16:
                        return got
            except TimeoutError:
                return got

        assert grants(5.0) == 16  # every slot of the empty queue: it asked first
        h, payload = _batch(list(range(16)), source="f")  # it uses them all
        wire.send_frame(s, wire.BATCH, h, payload)
        assert [buf.get(10).seq for _ in range(16)] == list(range(16))  # 16 slots freed
        _genuine_roundtrip(lst, buf, key)
        assert grants(0.5) == 0, "freed slots went to a link that asked for 10^9 an age ago"


# -- shared memory ----------------------------------------------------------------------------------


def test_segment_names_from_a_peer_are_checked_and_symlinks_never_followed(tmp_path: Path) -> None:
    pid = os.getpid()
    for bad in ["../x", f"coupler-{pid}-{'0' * 15}/", f"coupler-{pid + 1}-{'0' * 16}", "/etc/passwd", 7]:
        with pytest.raises(ValueError, match="expected a segment name"):
            shm.check_name(bad, pid)
    target = tmp_path / "victim"
    target.write_bytes(b"\x07" * 4096)
    name = f"coupler-{pid}-{uuid.uuid4().hex[:16]}"
    link = Path(shm.SHM_DIR) / name
    link.symlink_to(target)
    try:
        with pytest.raises(OSError) as e:
            shm.Mappings(pid).open(name)
        assert e.value.errno == errno.ELOOP
        assert not shm.probe(name, pid)
        assert link.is_symlink() and target.read_bytes() == b"\x07" * 4096  # nothing unlinked, nothing written
    finally:
        link.unlink()


def test_a_probe_leaves_the_producers_segment_where_it_is() -> None:
    name = probe_segment()
    assert name is not None
    try:
        assert shm.probe(name, os.getpid())
        assert (Path(shm.SHM_DIR) / name).exists(), "the consumer's probe unlinked a name its endpoint did not create"
    finally:
        os.unlink(Path(shm.SHM_DIR) / name)


def test_the_sweep_skips_what_it_cannot_remove(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    names = [f"coupler-{dead}-{uuid.uuid4().hex[:16]}" for _ in range(3)]
    (tmp_path / names[0]).mkdir()  # a directory named like a segment
    (tmp_path / names[1]).write_bytes(b"x")  # another user's file
    os.chown(tmp_path / names[1], 65534, 65534) if os.getuid() == 0 else None
    (tmp_path / names[2]).write_bytes(b"x")  # ours: an orphan to remove
    removed = shm.sweep_orphans(str(tmp_path))
    assert removed == [names[2]]
    assert (tmp_path / names[0]).is_dir() and (tmp_path / names[1]).exists()


# -- TLS whenever the Dask comm is secured --------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.mark.parametrize("scheme", ["tls", "wss", "tcp", "ws"])
def test_the_data_port_uses_tls_whenever_the_dask_comm_is_secured(tls_files: Any, scheme: str) -> None:
    files = tls_files
    security = Security(tls_ca_file=files.ca_file, tls_worker_cert=files.cert, tls_worker_key=files.key, require_encryption=True)
    server, client = ssl_contexts(SimpleNamespace(address=f"{scheme}://127.0.0.1:1", security=security))
    secured = scheme in ("tls", "wss")
    assert isinstance(server, ssl.SSLContext) is secured and isinstance(client, ssl.SSLContext) is secured


# -- a real worker's port under attack while it serves a genuine stream ------------------------------


def _unsigned(kind: int, header: dict[str, Any]) -> bytes:
    h = msgpack.packb(header, use_bin_type=True)
    return bytes([kind]) + len(h).to_bytes(4, "big") + h


_junk_header = st.dictionaries(
    st.sampled_from(["channel", "consumer", "spec", "c", "offs", "n", "len", "seg", "body", "mac", "nonce", "ret"]),
    # (integers within what msgpack can encode: an attacker cannot send others)
    st.none() | st.integers(-(2**63), 2**64 - 1) | st.binary(max_size=32) | st.text(max_size=12)
    | st.lists(st.integers(-(2**63), 2**64 - 1), max_size=3),
    max_size=5,
)
attacks = st.one_of(
    st.tuples(st.just("junk"), st.binary(max_size=200)),
    st.tuples(st.just("unsigned"), st.lists(st.tuples(st.sampled_from([1, 2, 3, 4, 10, 11]), _junk_header), min_size=1, max_size=3)),
    st.tuples(st.just("forged-seq"), st.integers(0, 2**63 - 1)),
    st.tuples(st.just("bad-frame"), st.sampled_from(sorted(BAD_FRAMES))),
    st.tuples(st.just("idle"), st.integers(1, 20)),
)


def test_a_workers_port_keeps_serving_its_genuine_streams_under_attack(coupling: Coupling, unique: str) -> None:
    cp = coupling
    w = cp.workers()
    ch = cp.channel(f"attacked-{unique}", Queue(16))
    n = 120
    learner = cp.spawn(QueueLearner, name=f"target-{unique}", inputs={"data": ch}, workers=w[0])
    sim = cp.spawn(Simulator, n, 3, 0.1, name=f"genuine-{unique}", outputs={"out": ch}, workers=w[1])
    learner.start()
    sim.start()
    address = cp.client.run(lambda dask_worker: dask_worker.plugins[ENDPOINT_NAME].listener.address, workers=[w[0]])[w[0]]
    key = StreamKey(cp.client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.plugins["coupler-broker"].stream_secret))
    spec = Spec.of(sample(3, 0)).to_wire()
    idle: list[socket.socket] = []

    def signed() -> socket.socket:
        s = _connect(address)
        auth.open_stream(s, key, {"channel": ch, "consumer": f"target-{unique}/data", "spec": spec, "probe": None, "pid": 1})
        return s

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(attack=attacks)
    def throw(attack: tuple[str, Any]) -> None:
        kind, arg = attack
        if kind == "idle":
            idle.extend(_connect(address) for _ in range(arg))  # held until the end: more than the pending bound
            return
        try:
            if kind == "junk":
                with _connect(address) as s:
                    s.sendall(arg)
                    _closed_by_peer(s, within=0.2)
            elif kind == "unsigned":
                with _connect(address) as s:
                    s.sendall(b"".join(_unsigned(k, h) for k, h in arg))
                    assert _closed_by_peer(s, within=6.0), "an unauthenticated stream outlived the handshake deadline"
            elif kind == "forged-seq":  # the genuine source's name, a far-ahead seq, without the secret
                with _connect(address) as s:
                    h = {"c": [[0.0], [0], [f"genuine-{unique}"], [arg], [{}], [0.0]], "offs": [0, 64], "len": 128}
                    s.sendall(_unsigned(wire.HELLO, {"channel": ch, "consumer": f"target-{unique}/data", "spec": spec, "pid": 1}))
                    s.sendall(_unsigned(wire.BATCH, h) + bytes(128) + _unsigned(wire.WANT, {"n": 10**9}))
                    assert _closed_by_peer(s, within=6.0)
            else:  # a peer with the secret sends one bad frame: its stream is closed, nothing else
                with signed() as s:
                    frame_kind, header, payload = BAD_FRAMES[arg]()
                    wire.send_frame(s, frame_kind, header, payload)
                    assert _closed_by_peer(s, within=5.0), f"{arg}: the stream stayed open"
        except (ConnectionError, BrokenPipeError):
            pass  # the port may cut a junk stream while it is still being written

    try:
        throw()
        assert sim.wait(60).state == "finished"
        deadline = time.monotonic() + 30
        while learner.status().info["count"] < n:
            assert time.monotonic() < deadline, f"{learner.status().info['count']} of {n} genuine messages arrived"
            time.sleep(0.05)
        # A new genuine stream opens while idle connections still hold the port.
        late = cp.spawn(Simulator, 10, 4, name=f"late-{unique}", outputs={"out": ch}, workers=w[1])
        late.start()
        assert late.wait(60).state == "finished"
        while learner.status().info["count"] < n + 10:
            assert time.monotonic() < deadline + 30
            time.sleep(0.05)
        record = learner.call("record")
    finally:
        for s in idle:
            s.close()
        learner.stop()
    trained = [tuple(t) for t in record["trained"]]
    assert [t for t in trained if t[0] == f"genuine-{unique}"] == [(f"genuine-{unique}", i) for i in range(n)]
    assert [t for t in trained if t[0] == f"late-{unique}"] == [(f"late-{unique}", i) for i in range(10)]
    assert len(trained) == n + 10  # nothing forged got in
    expected = sum(checksum(sample(3, i)) for i in range(n)) + sum(checksum(sample(4, i)) for i in range(10))
    assert record["total"] == pytest.approx(expected, rel=1e-12)  # every payload intact (float64 sums, same order)


def test_a_producer_that_stops_reading_ends_its_stream_instead_of_holding_the_consumer() -> None:
    """A grant is sent by the consumer's own thread as it takes a message: to a producer that never read
    it blocked for ever once the socket filled, and the consumer with it (its other producers starved)."""
    mine, peer = socket.socketpair()
    mine.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    receiver.limit_send_wait(mine, 0.3)
    r = receiver.Receiver(mine, lambda ch, cid: None, StreamKey(new_secret()), ChannelSpecs(lambda ch: None), 0, 0.0, lambda: None)
    sent = []

    def grants() -> None:
        for i in range(2000):  # far more than the socket holds: the peer reads none of them
            r._send(wire.GRANT, {"n": 1, "pad": bytes(256)})
            sent.append(i)

    t = threading.Thread(target=grants, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), f"the consumer's thread is still blocked after {len(sent)} grants"
    # The stream ended: the peer reads what fitted, then the end.
    peer.settimeout(10)
    while peer.recv(65536):
        pass
    mine.close()
    peer.close()

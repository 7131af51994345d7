"""The data plane on a real LocalCluster: shared memory, coalescing, credits, scale, no leaks.

Timing is never asserted here (see benchmarks/transport.py); these tests check
what the transport does: which path a message took, how many frames carried
how many messages, what the scheduler saw, and what is left in /dev/shm.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import cloudpickle
import dask
import numpy as np
import pytest

import transport_actors
from helper_actors import Collector, Producer
from transport_actors import Blank, DeviceStreamer, FakeDeviceArray, Inspector, Keeper, Streamer
from coupler.runtime import Coupling, Queue
from coupler.runtime.dataplane import shm
from coupler.runtime.dataplane.auth import StreamKey, new_secret
from coupler.runtime.dataplane.buffers import make_buffer
from coupler.runtime.dataplane.link import Link
from coupler.runtime.dataplane.payloads import detach_leaves, owned_leaves
from coupler.runtime.dataplane.settings import TransportConfig
from coupler.runtime.message import Spec, flatten, on_device, to_host
from coupler.runtime.dataplane.receiver import ChannelSpecs, Listener

cloudpickle.register_pickle_by_value(transport_actors)


def _wait_for(pred: Any, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_large_messages_go_through_shared_memory_and_the_consumer_owns_them(coupling: Coupling, unique: str) -> None:
    ch = coupling.channel(f"big-{unique}", Queue(4))
    w = coupling.workers()
    n, size = 24, 1 << 18  # 1 MiB float32: above coupler.transport.inline-max
    keep = coupling.spawn(Keeper, name=f"keep-{unique}", inputs={"inp": ch}, workers=w[1])
    src = coupling.spawn(Streamer, n, size, name=f"src-{unique}", outputs={"out": ch}, workers=w[0])
    keep.start()
    src.start()
    assert src.wait(60).state == "finished"
    _wait_for(lambda: keep.call("count") == n, what="all messages")
    links = [s for s in src.call("link_stats") if s["consumer"] == f"keep-{unique}/inp"]
    assert len(links) == 1 and links[0]["shm"] and links[0]["shm_messages"] == n
    # The producer holds no array of a message in shared memory: the consumer's grants
    # acknowledge them, not one ACK frame per message (flush at the end asks for one).
    assert links[0]["ack_frames"] < n // 4, links[0]
    got = keep.call("summary")
    # Exactly what was sent, in order, and the consumer holds writable arrays of its own:
    # it keeps all 24 while the producer reuses segments only as they are released.
    assert got["seq"] == list(range(n)) and got["first"] == [float(i) for i in range(n)]
    assert got["uniform"] and got["writable"]
    keep.stop()


def test_a_segment_is_reused_only_once_its_consumer_released_it_and_acknowledged_its_message() -> None:
    if not shm.available():
        pytest.fail("/dev/shm is not writable on this machine: the shared-memory path cannot be tested")
    arena = shm.Arena(64 << 20)
    x = np.arange(1 << 16, dtype=np.float32)
    try:
        seg, offs, _ = arena.reserve([x.nbytes])
        shm.fill(seg, offs, [x])
        view = np.frombuffer(seg.mm, np.uint8, count=x.nbytes, offset=shm.HEADER + offs[0]).view(np.float32)
        assert np.array_equal(view, x)
        del view
        seg.mm[0] = shm.FREE  # the consumer let go of it, but the acknowledgement has not come
        other, _, _ = arena.reserve([x.nbytes])
        assert other is not seg  # the producer may still have to hand these bytes on
        other.mm[0] = shm.FREE
        other.held = False  # released and acknowledged: reusable
        assert arena.reserve([x.nbytes])[0] is other
    finally:
        arena.close()
    assert not [n for n in shm.own_segments() if n in (seg.name, other.name)]
    with pytest.raises(shm.ShmUnavailable):
        arena.reserve([x.nbytes])  # a closed pool makes no segment nobody would unlink


def test_producers_that_share_a_link_and_finish_one_by_one_give_every_queue_slot_back() -> None:
    """A producer that finishes returns the link's unused credits; several finishing
    close together once lost all but the last return (overwritten before it was
    written), and the queue then kept those slots reserved for nobody: producers
    blocked on a queue with free room (the 8:1 benchmark hung once in ten runs)."""
    spec = Spec.of({"x": np.zeros(8, np.float32)})
    buf = make_buffer("credits", Queue(maxsize=64))
    key = StreamKey(new_secret())
    lst = Listener("127.0.0.1", lambda ch, cid: buf if (ch, cid) == ("credits", "k/in") else None,
                   key=key, specs=ChannelSpecs(lambda ch: spec.to_wire()))
    link = Link("credits", "k/in", lst.address, spec, queue=True, maxsize=64, host="a", peer_host="b",
                config=TransportConfig(shared_memory=False), key=key)
    sent: dict[str, int] = {}

    def send(source: str, timeout: float) -> None:
        q = sent[source] = sent.get(source, -1) + 1
        header = {"timestamp": 0.0, "step": q, "source": source, "seq": q, "meta": {}, "sent_at": 0.0}
        link.submit(header, [np.full(8, q, np.float32)], timeout)

    def producer(k: int, n: int) -> None:
        for _ in range(n):
            send(f"p{k}", 30)
        link.flush(30)  # what an actor does when it finishes

    try:
        for r in range(100):
            counts = [30 + (r + k) % 8 for k in range(8)]  # they finish close together
            threads = [threading.Thread(target=producer, args=(k, n)) for k, n in enumerate(counts)]
            for t in threads:
                t.start()
            got = [buf.get(30) for _ in range(sum(counts))]
            for t in threads:
                t.join(30)
            assert len(got) == sum(counts)
        # Nobody takes now: every one of the 64 slots must still be there for a sender.
        for _ in range(64):
            send("last", 10)  # ChannelTimeout here: slots were lost
        link.flush(10)
        assert len(buf) == 64
    finally:
        link.close(orphan=False)
        lst.close()


@pytest.mark.parametrize("size", [1024, 1 << 18])
def test_a_consumer_on_the_producers_worker_owns_writable_arrays_too(coupling: Coupling, unique: str, size: int) -> None:
    """Same contract as across processes, even for read-only arrays sent (JAX's host buffers are)."""
    ch = coupling.channel(f"local-{unique}", Queue(8))
    w = coupling.workers()
    n = 6
    keep = coupling.spawn(Keeper, name=f"lkeep-{unique}", inputs={"inp": ch}, workers=w[0])
    src = coupling.spawn(Streamer, n, size, True, name=f"lsrc-{unique}", outputs={"out": ch}, workers=w[0])
    keep.start()
    src.start()
    assert src.wait(60).state == "finished"
    _wait_for(lambda: keep.call("count") == n, what="all messages")
    got = keep.call("summary")
    assert got["seq"] == list(range(n)) and got["uniform"] and got["writable"]
    keep.stop()


def test_messages_without_arrays_cross_workers(coupling: Coupling, unique: str) -> None:
    """A payload of ``{}`` (a step and metadata only) has no bytes to send: the batch carries headers alone."""
    ch = coupling.channel(f"blank-{unique}", Queue(16))
    w = coupling.workers()
    n = 300
    keep = coupling.spawn(Keeper, name=f"bkeep-{unique}", inputs={"inp": ch}, workers=w[1])
    src = coupling.spawn(Blank, n, name=f"bsrc-{unique}", outputs={"out": ch}, workers=w[0])
    keep.start()
    src.start()
    assert src.wait(60).state == "finished"
    _wait_for(lambda: keep.call("count") == n, what="all messages")
    assert keep.call("steps") == list(range(n))
    keep.stop()


def test_small_messages_are_coalesced_without_reordering(coupling: Coupling, unique: str) -> None:
    ch = coupling.channel(f"small-{unique}", Queue(1024))
    w = coupling.workers()
    n = 3000
    keep = coupling.spawn(Keeper, name=f"keep-{unique}", inputs={"inp": ch}, workers=w[1])
    src = coupling.spawn(Streamer, n, 1024, name=f"src-{unique}", outputs={"out": ch}, workers=w[0])
    keep.start()
    src.start()
    assert src.wait(60).state == "finished"
    _wait_for(lambda: keep.call("count") == n, what="all messages")
    (link,) = [s for s in src.call("link_stats") if s["consumer"] == f"keep-{unique}/inp"]
    assert link["messages"] == n and link["shm_messages"] == 0
    # Each frame carried several messages on average; the exact figure depends on timing.
    assert link["batches"] < n / 2, link
    # A batch asks for an acknowledgement only when a second one is in flight (grants
    # acknowledge the rest), and flush asks once: at most every other batch is answered.
    assert link["acked"] == n and link["ack_frames"] <= link["batches"] // 2 + 2, link
    got = keep.call("summary")
    assert got["seq"] == list(range(n)) and got["step"] == list(range(n))
    assert got["timestamp"] == [0.25 * i for i in range(n)] and got["uniform"] and got["lag_ok"]
    assert got["first"] == [float(i) for i in range(n)]  # each message carries its own values
    keep.stop()


def test_a_link_reuses_its_copies_of_accepted_small_messages_and_every_message_keeps_its_values() -> None:
    """Without retention a link copies a small message into an array it recycles once the consumer accepted it.

    Reused too early, a later message would overwrite one on its way: every value is checked.
    """
    n = 3000
    with dask.config.set({"coupler.delivery.retain": False}), Coupling(
        n_workers=2, threads_per_worker=1, dashboard_address=":0", env={"DASK_COUPLER__DELIVERY__RETAIN": "False"}
    ) as cp:
        ch = cp.channel("recycle", Queue(64))
        w = cp.workers()
        keep = cp.spawn(Keeper, name="keep", inputs={"inp": ch}, workers=w[1])
        src = cp.spawn(Streamer, n, 1024, name="src", outputs={"out": ch}, workers=w[0])
        keep.start()
        src.start()
        assert src.wait(60).state == "finished"
        _wait_for(lambda: keep.call("count") == n, what="all messages")
        (link,) = [s for s in src.call("link_stats") if s["consumer"] == "keep/inp"]
        got = keep.call("summary")
    assert link["recycled"] > n // 2, link
    assert got["seq"] == list(range(n)) and got["uniform"] and got["first"] == [float(i) for i in range(n)]


def test_queue_bound_is_exact_across_links_then_everything_arrives(coupling: Coupling, unique: str) -> None:
    ch = coupling.channel(f"bound-{unique}", Queue(4))
    w = coupling.workers()
    col = coupling.spawn(Collector, name=f"col-{unique}", inputs={"inp": ch}, workers=w[1])
    # One producer on the consumer's worker (local puts), one on the other (credits).
    prods = [coupling.spawn(Producer, 30, ident=i, name=f"p{i}-{unique}", outputs={"out": ch}, workers=w[i]) for i in range(2)]
    for p in prods:
        p.start()
    _wait_for(lambda: col.call("buffer_stats")["depth"] == 4, what="a full queue")
    time.sleep(0.5)  # producers keep trying; nothing more may get in
    stats = col.call("buffer_stats")
    assert stats["depth"] == 4 and stats["received"] == 4
    col.start()
    for p in prods:
        assert p.wait(60).state == "finished"
    _wait_for(lambda: len(col.call("received")) == 60, what="all messages")
    got = col.call("received")
    for i in range(2):
        seqs = [s for src, s, *_ in got if src == f"p{i}-{unique}"]
        assert seqs == list(range(30))
    col.stop()


def test_64_producers_fan_in_to_one_consumer_without_loss(coupling: Coupling, unique: str) -> None:
    ch = coupling.channel(f"fan64-{unique}", Queue(64))
    w = coupling.workers()
    n, k = 40, 64
    col = coupling.spawn(Collector, name=f"col-{unique}", inputs={"inp": ch}, workers=w[1])
    col.start()
    prods = [
        coupling.spawn(Producer, n, ident=i, name=f"p{i}-{unique}", outputs={"out": ch}, workers=w[i % 2])
        for i in range(k)
    ]
    for p in prods:
        p.start()
    for p in prods:
        assert p.wait(120).state == "finished"
    _wait_for(lambda: len(col.call("received")) >= n * k, timeout=60, what="all messages")
    got = col.call("received")
    col.stop()
    assert len(got) == n * k
    by_source: dict[str, list[int]] = {}
    for src, seq, step, first, _ in got:
        ident = int(src.split("-")[0][1:])
        assert first == float(np.float32(ident * 1e6 + seq)) and step == seq  # float32 payload
        by_source.setdefault(src, []).append(seq)
    assert len(by_source) == k and all(seqs == list(range(n)) for seqs in by_source.values())


def _scheduler_ops(dask_scheduler: Any) -> dict[str, float]:
    """Every request the scheduler has handled, by operation (Dask's own counters)."""
    out: dict[str, float] = {}
    for component in dask_scheduler.counters["op"].components:
        for op, v in component.items():
            out[op] = out.get(op, 0.0) + v
    return out


def test_the_scheduler_handles_no_per_message_traffic(coupling: Coupling, unique: str) -> None:
    ch = coupling.channel(f"quiet-{unique}", Queue(256))
    w = coupling.workers()
    n = 20000
    keep = coupling.spawn(Keeper, name=f"keep-{unique}", inputs={"inp": ch}, workers=w[1])
    src = coupling.spawn(Streamer, n, 16, name=f"src-{unique}", outputs={"out": ch}, workers=w[0])
    keep.start()
    before = coupling.client.run_on_scheduler(_scheduler_ops)
    t0 = time.monotonic()
    src.start()
    assert src.wait(120).state == "finished"
    _wait_for(lambda: keep.call("count") == n, what="all messages")
    elapsed = time.monotonic() - t0
    after = coupling.client.run_on_scheduler(_scheduler_ops)
    keep.stop()
    delta = {op: after.get(op, 0.0) - before.get(op, 0.0) for op in after}
    delta = {op: d for op, d in delta.items() if d > 0.5}
    # What the scheduler did meanwhile is the steady control traffic (heartbeats and
    # coupler_report, a few per worker per second) plus this test's own requests:
    # bounded by time, not by the 20,000 messages.
    per_second = sum(delta.values()) / max(elapsed, 1.0)
    assert sum(delta.values()) < 0.02 * n, delta
    assert per_second < 40, (per_second, delta)
    assert all(d < 0.01 * n for d in delta.values()), delta


def test_jax_host_arrays_are_sent_without_a_copy() -> None:
    import jax.numpy as jnp

    x = jnp.arange(1024, dtype=jnp.float32) * 2
    leaves, _ = flatten({"x": x})
    # np.asarray of a host (CPU) JAX array is its own buffer: no copy, and read-only,
    # so the link does not copy it either before the write.
    assert leaves[0].ctypes.data == x.unsafe_buffer_pointer()
    assert not leaves[0].flags.writeable
    assert detach_leaves(leaves)[0] is leaves[0]
    y = np.ones(4)
    assert detach_leaves([y])[0] is not y  # writable numpy: copied, the producer may change y


def test_workers_take_their_startup_objects_out_of_full_collections(coupling: Coupling) -> None:
    """coupler.gc-freeze (default on): a full collection no longer scans Dask's and coupler's own objects.

    Without it a full collection of a worker took ~150 ms, every few seconds under a 4 KiB stream.
    """
    frozen = coupling.client.run(gc.get_freeze_count)
    assert len(frozen) == 2 and all(n > 10_000 for n in frozen.values()), frozen


def test_object_leaves_are_copied_for_a_consumer_on_the_producers_worker() -> None:
    """Object arrays hold references, not bytes: the byte copy of the hot path refuses them."""
    small, big = np.asarray(None), np.array([{"k": i} for i in range(40_000)], dtype=object)
    for kept, sent in zip(owned_leaves([small, big]), (small, big)):
        assert kept is not sent and kept.dtype == object and kept.flags.writeable
        assert kept.shape == sent.shape and kept.tolist() == sent.tolist()
    (detached,) = detach_leaves([big])
    assert detached is not big and detached[7] == {"k": 7}  # the producer may change big afterwards


def test_device_leaves_stay_on_their_device_until_the_data_plane_reads_them_once() -> None:
    FakeDeviceArray.host_reads = 0
    d = FakeDeviceArray(np.arange(6, dtype=np.float32))
    leaves, _ = flatten({"d": d, "h": np.zeros(2)})
    assert leaves[0] is d and on_device(d) and not on_device(leaves[1])
    assert FakeDeviceArray.host_reads == 0  # flattening and the spec check read nothing off the device
    host = to_host(leaves)
    assert all(a is b for a, b in zip(to_host(leaves), host))  # twice: one message, several consumers, one read
    assert FakeDeviceArray.host_reads == 1
    assert type(host) is list and host[0] is leaves[0]  # converted in place; no device array in what is returned
    assert type(leaves[0]) is np.ndarray and not leaves[0].flags.writeable
    assert detach_leaves(leaves)[0] is leaves[0]  # read-only: nobody copies it again
    e = FakeDeviceArray(np.ones(3, np.float32))
    (kept,) = detach_leaves([e])
    assert kept is not e and type(kept) is FakeDeviceArray  # mutable device array: copied on its device
    assert FakeDeviceArray.host_reads == 1


def _stream_device_arrays(cp: Coupling, unique: str, n: int, size: int) -> tuple[dict[str, Any], list[Any], list[Any]]:
    """A producer of (fake) GPU arrays on worker 0 broadcasts to a consumer on worker 1 and one on worker 0."""
    ch = cp.channel(f"dev-{unique}", Queue(64))
    w = cp.workers()
    far = cp.spawn(Inspector, name=f"far-{unique}", inputs={"inp": ch}, workers=w[1])
    near = cp.spawn(Inspector, name=f"near-{unique}", inputs={"inp": ch}, workers=w[0])
    src = cp.spawn(DeviceStreamer, n, size, name=f"dsrc-{unique}", outputs={"out": ch}, workers=w[0])
    far.start()
    near.start()
    src.start()
    assert src.wait(60).state == "finished"
    _wait_for(lambda: far.call("count") == n and near.call("count") == n, what="all messages at both consumers")
    sent = src.call("report")
    got = far.call("report"), near.call("report")
    far.stop()
    near.stop()
    return sent, got[0], got[1]


@pytest.mark.parametrize("size", [1024, 1 << 18])  # 4 KiB coalesced; 1 MiB alone (shared memory)
def test_device_arrays_go_to_host_once_per_message(coupling: Coupling, unique: str, size: int) -> None:
    n = 12
    sent, far, near = _stream_device_arrays(coupling, unique, n, size)
    assert sent["host_reads"] == n  # one device-to-host copy per message, for both consumers
    for rows in (far, near):
        assert [r["seq"] for r in rows] == list(range(n))
        assert all(r["host"] and r["uniform"] for r in rows), rows
    assert all(r["writable"] for r in far)  # received into the consumer's own memory
    # On the producer's worker: that host copy itself, read-only (no second copy).
    assert not any(r["writable"] for r in near)


def test_device_to_device_option_keeps_arrays_on_the_device_within_a_worker(unique: str) -> None:
    n = 12
    with dask.config.set({"coupler.transport.device-to-device": True}), Coupling(
        n_workers=2, threads_per_worker=1, dashboard_address=":0"
    ) as cp:
        sent, far, near = _stream_device_arrays(cp, unique, n, 1 << 18)
    assert sent["host_reads"] == n  # for the consumer on the other worker only
    # At-least-once retention (on by default) keeps host copies, in plain lists or in the
    # stream's shared-memory segments: no GPU memory held.
    assert sent["kept"] == ["ndarray"] and set(sent["logs"]) <= {"list", "segment"} and "list" in sent["logs"], sent
    assert [r["seq"] for r in far] == list(range(n)) and all(r["host"] and r["uniform"] for r in far)
    # The consumer on the producer's worker got device arrays (copies on the device:
    # the stand-in is mutable; a JAX array is shared as it is, see tests/gpu).
    assert [r["seq"] for r in near] == list(range(n))
    assert all(r["type"] == "FakeDeviceArray" and not r["host"] and r["uniform"] for r in near), near


def _segments_of(pids: set[int]) -> list[str]:
    return [n for n in shm.own_segments() if int(n.split("-")[1]) in pids]


@pytest.mark.skipif(not shm.available(), reason="needs /dev/shm (Linux)")
def test_no_shared_memory_is_left_after_kill_crash_or_exit() -> None:
    orphan_code = (
        "import os, signal, sys\n"
        "name = f'coupler-{os.getpid()}-' + os.urandom(8).hex()\n"
        "open(os.path.join('/dev/shm', name), 'wb').write(bytes(64))\n"
        "print(name, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    with Coupling(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cp:
        w = cp.workers()
        pids = set(cp.client.run(os.getpid).values())
        ch = cp.channel("leak-big", Queue(4))
        keep = cp.spawn(Keeper, name="keep", inputs={"inp": ch}, workers=w[1])
        src = cp.spawn(Streamer, 10**6, 1 << 20, name="src", outputs={"out": ch}, workers=w[0])
        keep.start()
        src.start()
        _wait_for(lambda: keep.call("count") > 10, what="a running stream")
        victim = src.call("pid")
        os.kill(victim, signal.SIGKILL)  # the producer dies mid-stream, segments in flight
        # A process killed right after creating a segment, before any consumer mapped it.
        proc = subprocess.run([sys.executable, "-c", orphan_code], capture_output=True, text=True)
        assert proc.returncode == -signal.SIGKILL
        orphan = proc.stdout.strip()
        assert orphan in shm.own_segments()
        # The surviving workers' endpoints sweep names of dead creators periodically.
        _wait_for(lambda: orphan not in shm.own_segments(), timeout=30, what="the sweep of a dead process's segment")
        _wait_for(lambda: not _segments_of({victim}), timeout=30, what="the killed producer's segments")
        pids |= set(cp.client.run(os.getpid).values())  # the restarted worker too
        keep.call("drop")
    assert not _segments_of(pids | {victim})


class _DLPackOnlyDeviceArray:
    """A device array that refuses np.asarray (as CuPy and PyTorch do) but exports itself through DLPack."""

    def __init__(self, a: np.ndarray, exportable: bool = True) -> None:
        self._a, self.exportable = a, exportable
        self.shape, self.dtype = a.shape, a.dtype

    def __dlpack_device__(self) -> tuple[int, int]:
        return (2, 0)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise TypeError("Implicit conversion to a NumPy array is not allowed")

    def __dlpack__(self, *, stream: Any = None, max_version: Any = None, dl_device: Any = None, copy: Any = None) -> Any:
        if not self.exportable or dl_device != (1, 0):
            raise BufferError("cannot export to the host")
        return self._a.copy().__dlpack__(max_version=max_version)


def test_device_arrays_that_refuse_numpy_reach_the_host_through_dlpack() -> None:
    a = np.arange(5, dtype=np.float32)
    leaves = to_host(flatten([_DLPackOnlyDeviceArray(a)])[0])
    assert type(leaves[0]) is np.ndarray
    np.testing.assert_array_equal(leaves[0], a)
    with pytest.raises(TypeError, match=r"_DLPackOnlyDeviceArray lives on a device .*expected a JAX array"):
        to_host(flatten([_DLPackOnlyDeviceArray(a, exportable=False)])[0])

"""The wire format: the payload pool (large receive buffers recycled, never shared) and batch header columns."""

from __future__ import annotations

import gc

import ml_dtypes  # JAX's extra dtypes (installed with jax)
import numpy as np
import pytest

from coupler.runtime.dataplane.wire import PayloadPool, copy_small


def test_a_released_payload_block_is_reused_and_a_held_one_never() -> None:
    pool = PayloadPool(min_bytes=1024, max_bytes=1 << 20, idle_s=60.0)
    a = pool.take(4096)
    a[:] = 7
    view = a[100:200].view(np.uint32)  # a consumer's derived view keeps the block alive
    addr = a.ctypes.data
    del a
    gc.collect()
    b = pool.take(4096)
    assert b.ctypes.data != addr, "a block still referenced by a view was handed out again"
    assert (view == 0x07070707).all()
    del view
    gc.collect()
    assert pool.idle_bytes() == 4096
    c = pool.take(4096)
    assert c.ctypes.data == addr and c.flags.writeable
    assert pool.idle_bytes() == 0


def test_small_payloads_bypass_the_pool_and_idle_blocks_expire() -> None:
    pool = PayloadPool(min_bytes=1024, max_bytes=8192, idle_s=0.0)
    small = pool.take(100)
    assert small.nbytes == 100
    del small
    gc.collect()
    assert pool.idle_bytes() == 0
    blocks = [pool.take(4096) for _ in range(3)]
    del blocks
    gc.collect()
    assert pool.idle_bytes() <= 8192  # bounded by max_bytes
    held = pool.take(2048)  # any call trims blocks idle longer than idle_s (0 here)
    assert pool.idle_bytes() == 0
    assert held.nbytes == 2048


def test_a_frame_reader_refuses_sizes_beyond_its_limits_before_allocating() -> None:
    import socket
    import struct

    import msgpack
    import pytest

    from coupler.runtime.dataplane.wire import BATCH, FrameReader, send_frame

    a, b = socket.socketpair()
    with a, b:
        # A payload of 1 TiB announced: refused from the header alone (nothing follows it).
        send_frame(a, BATCH, {"h": [{}], "len": 1 << 40})
        reader = FrameReader(b, payload_limit=lambda kind, h: 4096 * len(h["h"]))
        with pytest.raises(ValueError, match="at most 4096 expected"):
            reader.read()
        # Without a limit no payload is accepted at all; a header larger than the buffer is refused.
        send_frame(a, BATCH, {"h": [], "len": 10}, [b"0123456789"])
        with pytest.raises(ValueError, match="at most 0 expected"):
            FrameReader(b).read()
    a, b = socket.socketpair()
    with a, b:
        a.sendall(struct.pack("!BI", BATCH, 1 << 30))
        with pytest.raises(ValueError, match="frame header of 1073741824 bytes"):
            FrameReader(b, size=1024).read()
    a, b = socket.socketpair()
    with a, b:
        send_frame(a, BATCH, {"h": [{}], "len": 8}, [b"abcdefgh"])
        kind, header, payload = FrameReader(b, payload_limit=lambda kind, h: 8).read()
        assert kind == BATCH and bytes(payload) == b"abcdefgh"
        assert msgpack.packb(header) == msgpack.packb({"h": [{}], "len": 8})


def test_batch_headers_travel_as_columns_and_malformed_columns_are_refused() -> None:
    """The receiver trusts a batch's size for its payload limit only once the columns check out."""
    from coupler.runtime.dataplane.wire import HEADER_FIELDS, batch_size, header_columns

    headers = [{"timestamp": 0.5 * i, "step": i, "source": "sim", "seq": 10 + i, "meta": {"k": i}, "sent_at": 1.0 + i} for i in range(3)]
    cols = header_columns(headers)
    assert batch_size({"c": cols}) == 3
    assert [dict(zip(HEADER_FIELDS, row)) for row in zip(*cols)] == headers  # nothing lost or reordered
    with pytest.raises(ValueError, match="6 header columns"):
        batch_size({"c": cols[:5]})
    with pytest.raises(ValueError, match="6 header columns"):
        batch_size({"h": headers})  # the old layout, or no headers at all
    with pytest.raises(ValueError, match="differ in length"):
        batch_size({"c": [*cols[:5], cols[5][:2]]})


@pytest.mark.parametrize(
    "a",
    [
        np.arange(1024, dtype=np.float32),
        np.array(3.5),  # 0-d
        np.zeros((0, 3)),  # empty: memoryview cannot cast it
        np.arange(12.0).reshape(3, 4).T,  # not C-contiguous
        np.arange(10)[::2],  # strided
        np.array([True, False, True]),
        np.arange(6).astype(ml_dtypes.bfloat16),  # a dtype the buffer protocol does not know
    ],
    ids=["float32", "0-d", "empty", "transposed", "strided", "bool", "bfloat16"],
)
def test_a_small_copy_is_equal_writable_and_owns_its_memory(a: np.ndarray) -> None:
    b = copy_small(a)
    assert b.shape == a.shape and b.dtype == a.dtype
    assert np.array_equal(b.astype(np.float64), a.astype(np.float64))
    assert b.flags.writeable and b.flags.c_contiguous
    # Its own memory, no memoryview or bytearray behind it: a replay log keeps such copies by the ten thousand.
    assert b.base is None
    before = a.copy()
    b[...] = 1
    assert np.array_equal(a.astype(np.float64), before.astype(np.float64))  # a copy, not a view


def test_a_batch_layout_comes_from_the_spec_and_nothing_else() -> None:
    """BatchChecker: sizes, offsets and header types against the consumer's spec (the sender's word counts for nothing)."""
    from coupler.runtime.message import Spec
    from coupler.runtime.dataplane.wire import MAX_SEQ, BatchChecker, batch_payload, header_columns

    spec = Spec.of({"a": np.zeros(3, np.float32), "b": np.zeros((2, 2), np.int64)})  # 12 + 32 bytes
    items = [[np.zeros(3, np.float32), np.zeros((2, 2), np.int64)] for _ in range(5)]
    offsets, total, _ = batch_payload(spec, items)
    cols = header_columns([{"timestamp": 0.0, "step": i, "source": "s", "seq": i, "meta": {}, "sent_at": 1.5} for i in range(5)])
    good = {"c": cols, "offs": offsets, "len": total}
    check = BatchChecker(spec).check
    lay = check(good)
    assert check(good) is lay  # kept per message count
    assert (lay.n, lay.offsets, lay.total) == (5, [0, 64], 64 + 192)  # blocks of 5 * 12 and 5 * 32 bytes, each padded to 64
    for bad, match in [
        ({"len": total + 1}, "carries 256 payload bytes"),
        ({"len": 1_717_986_918}, "carries 256 payload bytes"),
        ({"offs": [0, 60]}, "field offsets"),
        ({"c": [c[:4] for c in cols]}, None),  # 4 messages described: the offsets are not theirs
        ({"c": cols[:5]}, "header columns"),
    ]:
        with pytest.raises(ValueError, match=match):
            check({**good, **bad})
    # Header columns, in a batch of 5 (checked in Python) and of 40 (converted by numpy).
    for n in (5, 40):
        offs, size, _ = batch_payload(spec, [items[0]] * n)
        base = {"c": header_columns([{"timestamp": 0.0, "step": 0, "source": "s", "seq": i, "meta": {}, "sent_at": 1.5} for i in range(n)]),
                "offs": offs, "len": size}

        def column(k: int, last: object) -> dict:
            return {**base, "c": [c if j != k else c[:-1] + [last] for j, c in enumerate(base["c"])]}

        # Every column as Sender.send writes it: a peer's timestamp "x", step None or meta "junk" reached
        # actors and checkpoints, which compute with them (int(msg.step), float(timestamp)).
        for bad in [column(3, MAX_SEQ), column(3, -1), column(3, {}), column(3, 2.5) if n == 5 else column(3, "x"),
                    column(2, b"s"), column(2, ["s"]), column(5, "now"), column(0, "x"), column(0, None) if n == 5 else column(0, "later"),
                    column(1, None), column(1, 2.5) if n == 5 else column(1, "x"), column(4, "junk"), column(4, [1])]:
            with pytest.raises(ValueError, match="numeric timestamps, integer steps, string sources, integer seqs"):
                check(bad)
        check(base)
    # numpy converts what it can (a None timestamp is NaN, as float(nan) from a sender): the buffer and
    # the actor get ints and floats all the same.
    converted = column(3, "39")
    check(converted)
    assert converted["c"][3] == list(range(40)) and all(type(q) is int for q in converted["c"][3])
    for k, odd, kind in ((0, None, float), (1, "7", int)):
        converted = column(k, odd)
        check(converted)
        assert all(type(v) is kind for v in converted["c"][k])
    with pytest.raises(ValueError, match="at least one message"):
        check({**good, "c": [[] for _ in cols], "offs": [0, 0], "len": 0})
    # Several messages: at most max_bytes; one message: as large as its spec, however large.
    with pytest.raises(ValueError, match="exceeds 128 bytes"):
        BatchChecker(spec, max_bytes=128).check(good)
    one = {"c": [c[:1] for c in cols], "offs": [0, 64], "len": 128}
    assert BatchChecker(spec, max_bytes=16).check(one).total == 128


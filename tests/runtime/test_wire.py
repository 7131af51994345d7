"""The wire format's payload pool: large receive buffers are recycled, never shared."""

from __future__ import annotations

import gc

import numpy as np

from coupler.runtime.wire import PayloadPool


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

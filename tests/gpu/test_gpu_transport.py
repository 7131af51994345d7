"""JAX arrays on a real GPU through channels: one host copy, or none with device-to-device.

Two workers share GPU 0 (``coupler.local.gpus: ["0", "0"]``). The producer
makes each array on the GPU; a consumer on the other worker must get its values
on the host, and one on the producer's worker gets either the host copy or,
with ``coupler.transport.device-to-device``, the very same GPU buffer.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import cloudpickle
import dask
import pytest

import transport_actors
from transport_actors import DeviceStreamer, Inspector
from coupler.runtime import Coupling, Queue

cloudpickle.register_pickle_by_value(transport_actors)
N = 8


@pytest.fixture(scope="module", params=[False, True], ids=["host", "device-to-device"])
def gpu_coupling(request: pytest.FixtureRequest) -> Iterator[tuple[Coupling, bool]]:
    settings = {"coupler.local.gpus": ["0", "0"], "coupler.transport.device-to-device": request.param}
    with dask.config.set(settings), Coupling(dashboard_address=":0") as cp:
        platforms = cp.client.run(lambda: __import__("jax").devices()[0].platform)
        assert set(platforms.values()) == {"gpu"}, f"these tests need a GPU in every worker; JAX found {platforms}"
        yield cp, request.param


def _wait_for(pred: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out waiting for the consumers"
        time.sleep(0.05)


@pytest.mark.parametrize("size", [1024, 1 << 22])  # 4 KiB (coalesced) and 16 MiB (shared memory)
def test_jax_gpu_arrays_through_a_channel(gpu_coupling: tuple[Coupling, bool], size: int) -> None:
    cp, d2d = gpu_coupling
    ch = cp.channel(f"gpu-{int(d2d)}-{size}", Queue(16))
    w = cp.workers()
    far = cp.spawn(Inspector, name=f"far-{int(d2d)}-{size}", inputs={"inp": ch}, workers=w[1])
    near = cp.spawn(Inspector, name=f"near-{int(d2d)}-{size}", inputs={"inp": ch}, workers=w[0])
    src = cp.spawn(DeviceStreamer, N, size, "jax", name=f"src-{int(d2d)}-{size}", outputs={"out": ch}, workers=w[0])
    far.start()
    near.start()
    src.start()
    assert src.wait(120).state == "finished", src.status()
    _wait_for(lambda: far.call("count") == N and near.call("count") == N)
    sent, far_rows, near_rows = src.call("report"), far.call("report"), near.call("report")
    assert len(sent["pointers"]) == N
    # Another process: the values, on the host (one device-to-host copy per message).
    assert [r["seq"] for r in far_rows] == list(range(N))
    assert all(r["host"] and r["uniform"] for r in far_rows), far_rows
    assert [r["seq"] for r in near_rows] == list(range(N))
    if d2d:
        # The producer's own worker: the same GPU buffer, no copy at all.
        assert all(r["platform"] == "gpu" and r["uniform"] for r in near_rows), near_rows
        assert [r["pointer"] for r in near_rows] == sent["pointers"]
    else:
        assert all(r["host"] and r["uniform"] for r in near_rows), near_rows


def _host_copy_in_worker() -> dict[str, Any]:
    import jax
    import numpy as np

    from coupler.runtime import message

    x = jax.device_put(np.arange(1 << 20, dtype=np.float32), jax.devices()[0])
    leaves = message.to_host(message.flatten([x])[0])
    return {"equal": bool(np.array_equal(leaves[0], np.arange(1 << 20, dtype=np.float32))),
            "read_only": not leaves[0].flags.writeable, "pinned": message._pinned_ok}


def test_gpu_arrays_go_to_host_through_pinned_memory(gpu_coupling: tuple[Coupling, bool]) -> None:
    cp, _ = gpu_coupling
    for got in cp.client.run(_host_copy_in_worker).values():
        # Pinned: one DMA copy that numpy then views (10x a pageable copy on an H200).
        assert got == {"equal": True, "read_only": True, "pinned": True}


def test_to_device_stages_through_pinned_memory_onto_the_gpu() -> None:
    import jax
    import numpy as np

    from coupler.learners import to_device

    x = np.arange(1 << 22, dtype=np.float32)  # 16 MiB
    y = to_device({"x": x})["x"]
    assert next(iter(y.devices())).platform == "gpu" and y.sharding.memory_kind == "device"
    np.testing.assert_array_equal(np.asarray(y), x)
    assert jax.devices()[0].platform == "gpu"

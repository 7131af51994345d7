"""Actor hosts of the GPU transport benchmark (shipped to the workers by value).

They import JAX in the worker, where the worker's ``CUDA_VISIBLE_DEVICES`` and
``XLA_PYTHON_CLIENT_PREALLOCATE=false`` are already set.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from coupler.actors import ActorHost


class GpuProducer(ActorHost):
    """Make ``n`` fresh float32 arrays of ``nbytes`` on the GPU and send each (or only copy it to host).

    Each array is new (``x + 1`` on the device), as a simulation's next state
    would be, so no host copy cached by JAX is reused.

    Args:
        nbytes: bytes per array.
        n: counted arrays.
        limit: instead of sending, copy each array to host: ``"pinned"`` (by DMA
            into page-locked memory, the device-to-host limit) or ``"pageable"``
            (``np.asarray``, what a plain host copy costs); ``""`` sends.
    """

    def __init__(self, nbytes: int, n: int, limit: str = "", **kw: Any) -> None:
        super().__init__(**kw)
        self.nbytes, self.n, self.limit = nbytes, n, limit
        self.window: dict[str, Any] = {}

    def setup(self) -> None:
        import jax

        self.x = jax.device_put(np.zeros(self.nbytes // 4, np.float32), jax.devices()[0])
        self.bump = jax.jit(lambda x: x + 1.0)
        self.platform = jax.devices()[0].platform
        pinned = jax.sharding.SingleDeviceSharding(jax.devices()[0], memory_kind="pinned_host")
        # The limit: one copy by DMA into pinned host memory (np.asarray of that is a view).
        self.to_host = {"pinned": lambda x: np.asarray(jax.device_put(x, pinned)), "pageable": np.asarray}.get(self.limit)

    def step(self) -> bool:
        x = self.bump(self.x)  # warm-up: compile, connect, first allocations
        if self.limit:
            self.to_host(x)
        else:
            self.outputs["out"].send({"x": x}, meta={"warm": True})
            self.outputs["out"].flush(timeout=120)
        start = time.time()
        for i in range(self.n):
            x = self.bump(x)
            x.block_until_ready()
            if self.limit:
                self.to_host(x)
            else:
                self.outputs["out"].send({"x": x}, step=i, meta={"last": i == self.n - 1})
        if not self.limit:
            self.outputs["out"].flush(timeout=120)
        self.window = {"start": start, "end": time.time(), "platform": self.platform}
        return False

    def result(self) -> dict[str, Any]:
        return self.window


class GpuConsumer(ActorHost):
    """Receive until the last message; optionally put each payload on this worker's GPU.

    Args:
        to_device: put each payload on this worker's GPU and wait for it: ``"plain"``
            (``jax.device_put``), ``"pinned"`` (``coupler.learners.to_device``, staged
            through pinned host memory); ``""``: only touch it.
    """

    def __init__(self, to_device: str = "", **kw: Any) -> None:
        super().__init__(**kw)
        self.to_device = to_device
        self.count, self.last, self.on_device = 0, 0.0, 0

    def setup(self) -> None:
        import jax

        from coupler.learners import to_device

        self.put = {"plain": lambda x: jax.device_put(x, jax.devices()[0]), "pinned": to_device}.get(self.to_device)

    def step(self) -> bool:
        msg = self.inputs["in"].receive()
        x = msg.data["x"]
        if not isinstance(x, np.ndarray):
            self.on_device += 1
        if self.put is not None:
            self.put(x).block_until_ready()
        elif isinstance(x, np.ndarray):
            float(x[:1024].sum()) + float(x[-1])  # touch it, as a consumer starting to use it would
        if msg.meta.get("warm"):
            return True
        self.count += 1
        self.last = time.time()
        return not msg.meta.get("last")

    def result(self) -> dict[str, Any]:
        return {"count": self.count, "last": self.last, "on_device": self.on_device}

"""Putting received payloads on an accelerator, through pinned host memory.

A consumer gets its messages as numpy arrays in host memory (see the runtime's
data plane). ``jax.device_put`` of such an array copies it through pageable
memory, which the driver stages through a bounce buffer: about 2.5 GB/s on an
H200 (benchmarks/gpu_transport.py). Copied first into page-locked ("pinned")
host memory, the array then reaches the GPU by DMA at tens of GB/s.
"""

from __future__ import annotations

from typing import Any

import jax


def to_device(tree: Any, device: jax.Device | None = None) -> Any:
    """Put a pytree of host arrays on ``device``, staged through pinned host memory.

    Args:
        tree: a received payload (nested dict/list/tuple of numpy arrays), or
            arrays already on a device (moved as ``jax.device_put`` would).
        device: where to put it (default: JAX's first device).

    Returns:
        The same structure of ``jax.Array`` on ``device``.

    Raises:
        ValueError: if the device's platform offers no pinned host memory and is
            not the CPU (where no staging is needed).
    """
    dev = jax.devices()[0] if device is None else device
    target = jax.sharding.SingleDeviceSharding(dev)
    if dev.platform == "cpu":
        return jax.device_put(tree, target)
    kinds = {m.kind for m in dev.addressable_memories()}
    if "pinned_host" not in kinds:
        raise ValueError(f"device {dev} offers no pinned host memory (its memories: {sorted(kinds)}); expected 'pinned_host'")
    staged = jax.device_put(tree, jax.sharding.SingleDeviceSharding(dev, memory_kind="pinned_host"))
    return jax.device_put(staged, target)

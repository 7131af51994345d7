"""The data plane's settings: ``coupler.transport`` (links) and ``coupler.delivery`` (retention) in dask.config."""

from __future__ import annotations

from dataclasses import dataclass

import dask.utils

from coupler.runtime import config
from coupler.runtime.dataplane.spin import SPIN_S


@dataclass
class TransportConfig:
    """Tuning of links (``coupler.transport`` in dask.config).

    Attributes:
        shared_memory: use shared memory between processes of one host.
        inline_max: messages up to this many bytes are copied and coalesced; larger ones go alone.
        batch_bytes: most payload bytes in one batch of small messages.
        window_bytes: most bytes queued or unacknowledged per link (non-Queue channels).
        shm_pool_bytes: most shared memory a link keeps.
        device_to_device: hand accelerator arrays (JAX arrays on a GPU) to consumers
            in the producer's process as they are, on their device; off, every
            consumer gets one host copy. Between processes they always go by host.
        spin_s: seconds a consumer waiting on its stream polls without sleeping, at most,
            when its last wait was no longer (0: never; see ``runtime/dataplane/spin.py``).
    """

    shared_memory: bool = True
    inline_max: int = 256 << 10
    batch_bytes: int = 4 << 20
    window_bytes: int = 256 << 20
    shm_pool_bytes: int = 2 << 30
    device_to_device: bool = False
    spin_s: float = SPIN_S


@dataclass(frozen=True)
class DeliveryConfig:
    """At-least-once delivery on ``Queue`` channels (``coupler.delivery`` in dask.config).

    Attributes:
        retain: keep what was sent to each ``Queue`` consumer until its stored checkpoint
            covers it, to replay to its successor after a loss.
        retain_bytes: most payload bytes kept per (channel, consumer) on a worker.
        lost_consumer_wait: seconds producers wait for a consumer whose worker was lost
            to come back (restarted by the supervisor) before sends fail with ConsumerGone.
        replay_order_wait: seconds a restarted merging actor waits for the next input of its
            predecessor's recorded order before it gives the order up (runtime/dataplane/lineage.py).
    """

    retain: bool = True
    retain_bytes: int = 256 << 20
    lost_consumer_wait: float = 300.0
    replay_order_wait: float = 60.0


def _duration(section: str, c: dict, key: str, default: float) -> float:
    """The duration ``coupler.<section>.<key>`` in seconds (a number, or e.g. ``"5 minutes"``, ``"100us"``).

    Raises:
        ValueError: for anything else, or a negative duration.
    """
    return config.duration(f"coupler.{section}.{key}", c.get(key, default))


def _size(section: str, c: dict, key: str, default: int, least: int = 0) -> int:
    """The size ``coupler.<section>.<key>`` in bytes (a number, or e.g. ``"256 MiB"``).

    Raises:
        ValueError: for anything else, or a size below ``least``.
    """
    value = c.get(key, default)
    try:
        size = int(dask.utils.parse_bytes(value))
    except (TypeError, ValueError, OverflowError, AttributeError):  # AttributeError: None
        raise ValueError(f"coupler.{section}.{key} must be a size (bytes or e.g. '256 MiB'), got {value!r}") from None
    if size < least:
        raise ValueError(f"coupler.{section}.{key} must be at least {least} bytes, got {value!r}")
    return size


def delivery_config() -> DeliveryConfig:
    """The ``coupler.delivery`` settings of this process.

    Raises:
        ValueError: naming the setting, for a size or duration that is not one, or negative.
    """
    c = config.section("delivery")
    d = DeliveryConfig()
    return DeliveryConfig(
        retain=config.flag("delivery", c, "retain", d.retain),
        retain_bytes=_size("delivery", c, "retain-bytes", d.retain_bytes),
        lost_consumer_wait=_duration("delivery", c, "lost-consumer-wait", d.lost_consumer_wait),
        replay_order_wait=_duration("delivery", c, "replay-order-wait", d.replay_order_wait),
    )


def transport_config() -> TransportConfig:
    """The ``coupler.transport`` settings of this process.

    Raises:
        ValueError: naming the setting, for a size or duration that is not one, or out of range.
    """
    c = config.section("transport")
    d = TransportConfig()
    return TransportConfig(
        shared_memory=config.flag("transport", c, "shared-memory", d.shared_memory),
        inline_max=_size("transport", c, "inline-max", d.inline_max),
        # A batch and a window must hold at least one byte, or nothing is ever sent.
        batch_bytes=_size("transport", c, "batch-bytes", d.batch_bytes, least=1),
        window_bytes=_size("transport", c, "window-bytes", d.window_bytes, least=1),
        shm_pool_bytes=_size("transport", c, "shm-pool-bytes", d.shm_pool_bytes),
        device_to_device=config.flag("transport", c, "device-to-device", d.device_to_device),
        spin_s=_duration("transport", c, "spin", d.spin_s),
    )

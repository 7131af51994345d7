"""Delivery in memory: a message for a consumer on the producer's own worker goes straight into its buffer.

No stream, no credits and no replay log copy of its own: the consumer's buffer
bounds it (a ``Queue`` blocks the producer while full), and the consumer gets
arrays it owns, as it would from a stream.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from coupler.runtime.dataplane.buffers import ConsumerBuffer
from coupler.runtime.dataplane.cancel import Cancel
from coupler.runtime.dataplane.fence import Fence, epoch_of
from coupler.runtime.dataplane.payloads import owned_leaves
from coupler.runtime.control.routing_table import ConsumerRef
from coupler.runtime.errors import ChannelTimeout, ConsumerGone, Interrupted
from coupler.runtime.message import DeviceLeaves, Message, Spec, to_host, unflatten


def deliver_here(
    buf: ConsumerBuffer | None, channel: str, c: ConsumerRef, spec: Spec, header: dict[str, Any], leaves: list[np.ndarray],
    timeout: float | None, cancel: Cancel | None, *, fence: Fence | None, device_to_device: bool,
) -> None:
    """Put one message into the buffer of consumer ``c``, which lives on this worker.

    Args:
        buf: the consumer's buffer (``None``: it detached).
        channel: channel name.
        c: the consumer.
        spec: the channel's spec.
        header: the message's header fields.
        leaves: its payload (host arrays, or a ``DeviceLeaves``).
        timeout: seconds to wait for room (``None``: as long as it takes).
        cancel: gives up the wait when set.
        fence: this worker's producer epochs: a successor's message delivered here raises its
            source's mark, so its predecessor's streams are refused from then on (``fence.py``).
        device_to_device: share JAX arrays on the device instead of copying them to the host.

    Raises:
        ConsumerGone: the consumer detached.
        ChannelTimeout: no room within ``timeout`` (back-pressure).
        Interrupted: ``cancel`` was set.
    """
    if buf is None or not buf.accepting:
        raise ConsumerGone(f"channel {channel!r}: consumer {c.cid!r} on {c.worker} has detached")
    if fence is not None:
        fence.saw(channel, header["source"], epoch_of(header["meta"]))
    # Same process: the consumer owns its host arrays (a copy, writable as
    # anywhere else); with device-to-device, JAX arrays on the device are shared.
    if not isinstance(leaves, DeviceLeaves):
        mine = owned_leaves(leaves)
    elif device_to_device:
        mine = owned_leaves(leaves.device)
    else:
        mine = owned_leaves(to_host(leaves), leaves.device)
    data = unflatten(spec.treedef, mine)
    if buf.put([Message.from_header(header, data, spec.nbytes)], timeout, cancel):
        return
    if not buf.accepting:
        raise ConsumerGone(f"channel {channel!r}: consumer {c.cid!r} on {c.worker} has detached")
    if cancel is not None and cancel.is_set():
        raise Interrupted("send interrupted: the actor is stopping")
    raise ChannelTimeout(
        f"channel {channel!r}: consumer {c.cid!r} did not accept the message within the timeout (its queue is full: back-pressure)"
    )


__all__ = ["deliver_here"]

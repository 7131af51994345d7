"""Who owns a message's payload: the copies the data plane makes, and when it may skip them.

One place decides when a payload is copied, and into what:

- a stream's item (:class:`Item`) holds the link's own copy of a small message,
  a large message's shared-memory segment, or (over TCP) the producer's arrays
  until they are on the wire;
- a consumer always gets arrays it owns and may write (:func:`owned_leaves`);
- what is kept to send again (a replay log, a late consumer's owed messages)
  is read-only: read-only arrays as they are (JAX's host buffers), read-only
  copies of the others (:func:`frozen_leaves`, :func:`detach_leaves`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from coupler.runtime.dataplane import shm, wire
from coupler.runtime.message import Spec


@dataclass(slots=True)
class Item:
    """One message queued on a link (slots: a replay log keeps tens of thousands)."""

    header: dict[str, Any]
    leaves: list[np.ndarray] | None  # None once the payload lives in a segment
    nbytes: int
    large: bool
    segment: shm.Segment | None = None
    offsets: list[int] | None = None
    written: threading.Event | None = None  # set once a zero-copy payload is on the wire
    recycled: bool = False  # every leaf is the link's own copy: reused once the consumer accepted it
    logged: bool = False  # a replay log keeps it: its copies and segment are not reused

    def payload_leaves(self, spec: Spec) -> list[np.ndarray]:
        """The payload as arrays (copied back out of its segment if it went there)."""
        if self.leaves is not None:
            return self.leaves
        assert self.segment is not None and self.offsets is not None
        whole = np.frombuffer(self.segment.mm, np.uint8, offset=shm.HEADER)
        out = []
        for f, off in zip(spec.fields, self.offsets):
            out.append(whole[off : off + f.nbytes].view(f.dtype).reshape(f.shape).copy())
        return out


def _copy(a: np.ndarray) -> np.ndarray:
    """A writable copy of ``a``: small ones under the GIL, larger ones into recycled memory.

    See :func:`wire.copy_small`; a fresh copy of megabytes costs a page fault and a
    zero-fill per page, and a replay log renews its copies at the stream's rate.
    """
    if a.dtype.hasobject:  # references, not bytes: neither a byte copy nor a recycled block can hold them
        return np.array(a, copy=True)
    if a.nbytes <= wire.GIL_COPY_MAX:
        return wire.copy_small(a)
    block = wire.PAYLOADS.take(a.nbytes).view(a.dtype).reshape(a.shape)
    np.copyto(block, a)
    return block


def frozen_leaves(leaves: list[np.ndarray]) -> list[np.ndarray]:
    """Leaves nobody can change: read-only arrays as they are, read-only copies of the others."""
    out = []
    for a in leaves:
        if a.flags.writeable:
            a = _copy(a)
            a.flags.writeable = False
        out.append(a)
    return out


def detach_leaves(leaves: list[Any]) -> list[Any]:
    """Leaves the producer cannot change any more: read-only arrays as they are, copies of the others.

    Read-only arrays are taken as immutable: that is what ``np.asarray`` of a JAX
    array on the host gives (its own buffer, no copy), and JAX never writes a
    buffer in place. For the same reason a JAX array on a device is kept as it
    is; another accelerator array (CuPy, say) is copied on its device.
    """
    return [_detach(a) for a in leaves]


def owned_leaves(leaves: list[Any], originals: list[Any] | None = None) -> list[Any]:
    """Leaves for a consumer in the producer's process: arrays it owns and may write.

    Host arrays the producer passed are always copied, read-only ones too, so
    that a consumer gets writable arrays wherever it runs (as from shared memory
    or a stream). The exception: a host copy that the data plane made of a
    device array (where ``originals`` has the device array) is handed over as
    it is, read-only: it belongs to this message alone, and copying it again
    cut the rate from a GPU to a consumer on its worker 3-6x (H200). Device
    arrays are kept or copied on their device as :func:`detach_leaves` does.

    Args:
        leaves: the message's leaves as this consumer is to get them.
        originals: the leaves as the producer sent them, where some were on a device.
    """
    if originals is None:
        return [_copy(a) if type(a) is np.ndarray else _detach(a) for a in leaves]
    return [
        _detach(a) if type(a) is not np.ndarray else a if type(o) is not np.ndarray else _copy(a)
        for a, o in zip(leaves, originals)
    ]


def _detach(a: Any) -> Any:
    if type(a) is not np.ndarray:  # an accelerator array (see message.on_device)
        return a if type(a).__module__.partition(".")[0] in ("jax", "jaxlib") else a.copy()
    return _copy(a) if a.flags.writeable else a


def release_segments(items: list[Item]) -> None:
    """These items were accepted (or given up): their segments may be reused once the consumer lets go of them."""
    for it in items:
        if it.segment is not None:
            it.segment.held = False


__all__ = ["Item", "detach_leaves", "frozen_leaves", "owned_leaves", "release_segments"]

"""Messages and channel specs: pytrees of arrays with simulation time and provenance.

The runtime may not import JAX, so it flattens payloads itself: nested ``dict``
(string keys), ``list`` and ``tuple`` containers, with array leaves (numpy
arrays, JAX arrays, or anything ``np.asarray`` accepts, such as Python
scalars). On CPU ``np.asarray`` of a JAX array is the array's own host buffer,
so flattening copies nothing. A leaf that lives on an accelerator (its
``__dlpack_device__`` is not the CPU, e.g. a JAX array on a GPU) is kept as it
is: the data plane decides where it goes, and :func:`to_host` brings it to host
memory once, whichever consumers it goes to.

A :class:`Spec` records the structure and every leaf's shape and dtype. It is
fixed by declaration or by a channel's first message; a message that does not
fit raises :class:`~coupler.runtime.errors.SpecMismatch` naming the field.
"""

from __future__ import annotations

import functools
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from coupler.runtime.errors import SpecMismatch

# The numpy dtype kinds a leaf may have: bool, signed and unsigned ints, floats, complex. Strings and
# objects have no fixed size per element, so no spec can describe them.
NUMERIC_KINDS = "biufc"
# A tree definition is a small hashable value: "*" for a leaf, or a tagged tuple.
TreeDef = Union[str, tuple]
LEAF: TreeDef = "*"
# The tree definitions of flat dicts of arrays, one object per key set: a spec
# check then compares by identity (see Spec.check), not element by element.
_FLAT_TREEDEFS: dict[tuple[str, ...], TreeDef] = {}


def flatten(tree: Any) -> tuple[list[np.ndarray], TreeDef]:
    """Split a pytree into its array leaves (depth first, sorted dict keys) and structure.

    Args:
        tree: nested dict/list/tuple with array-like leaves.

    Returns:
        ``(leaves, treedef)``; leaves are numpy arrays (views where possible), or a
        :class:`DeviceLeaves` list where some leaves are on an accelerator.

    Raises:
        SpecMismatch: for a dict key that is not a string, or a leaf that is not numeric.
    """
    if type(tree) is dict:  # the common message, a flat dict of arrays: no recursion (a hot path)
        try:
            keys: tuple[Any, ...] | None = tuple(sorted(tree))
        except TypeError:  # keys of mixed types: _flatten below says which key is wrong
            keys = None
        vals = [] if keys is None else [tree[k] for k in keys]
        for v in vals:  # a loop, not all(<generator>): this runs once per message
            if type(v) is not np.ndarray or v.dtype.kind not in NUMERIC_KINDS:  # _flatten says what is wrong
                break
        else:
            td = None if keys is None else _FLAT_TREEDEFS.get(keys)
            if td is not None:
                return vals, td
            if keys is not None and all(type(k) is str for k in keys):  # else _flatten says which key is wrong
                td = ("dict", keys, (LEAF,) * len(keys))
                if len(_FLAT_TREEDEFS) < 1024:  # a few shapes of message per process; bounded all the same
                    td = _FLAT_TREEDEFS.setdefault(keys, td)
                return vals, td
    leaves: list[np.ndarray] = []
    treedef = _flatten(tree, leaves)
    if not all(type(a) is np.ndarray for a in leaves):  # some leaves are on a device: mark the list
        leaves = DeviceLeaves(leaves)
    return leaves, treedef


def _flatten(node: Any, out: list[np.ndarray]) -> TreeDef:
    if isinstance(node, dict):
        for k in node:  # before sorting: keys of mixed types cannot be sorted (a TypeError)
            if not isinstance(k, str):
                raise SpecMismatch(f"message dict keys must be str, got {k!r} ({type(k).__name__})")
        keys = sorted(node)
        return ("dict", tuple(keys), tuple(_flatten(node[k], out) for k in keys))
    if isinstance(node, (list, tuple)) and not hasattr(node, "_fields"):
        kind = "list" if isinstance(node, list) else "tuple"
        return (kind, tuple(_flatten(v, out) for v in node))
    if isinstance(node, tuple):  # NamedTuple: keep it as its fields, in order
        return ("tuple", tuple(_flatten(v, out) for v in node))
    if on_device(node):
        out.append(node)
        return LEAF
    leaf = np.asarray(node)
    if leaf.dtype.kind not in NUMERIC_KINDS:
        raise SpecMismatch(
            f"a message leaf must be a number or a numeric array (bool, int, float, complex); "
            f"got {type(node).__name__} {node!r:.60} (numpy dtype {leaf.dtype})"
        )
    out.append(leaf)
    return LEAF


# DLPack's device type of host memory (DLDeviceType kDLCPU); kDLCUDAHost (3) is
# pinned host memory, which numpy can read directly too.
_HOST_DEVICE_TYPES = (1, 3)


def on_device(leaf: Any) -> bool:
    """Whether ``leaf`` is an array in accelerator memory (a JAX array on a GPU, say).

    Read through the DLPack protocol, so that the runtime need not import JAX.
    """
    dev = getattr(leaf, "__dlpack_device__", None)
    if dev is None or isinstance(leaf, np.ndarray):
        return False
    try:
        kind = int(dev()[0])
    except Exception:  # an object whose buffer is gone, or a protocol it does not follow
        return False
    return kind not in _HOST_DEVICE_TYPES


_pinned_ok = True  # cleared when this process's JAX offers no pinned host memory


def _pinned(a: Any) -> Any:
    """A JAX array copied to page-locked (pinned) host memory, else ``a`` itself.

    ``np.asarray`` of a GPU array copies into pageable memory, which the driver
    stages through a bounce buffer: 1.3-3.5 GB/s on an H200, against 31-40 GB/s
    by DMA into pinned memory, whose ``np.asarray`` is then a view, not a second
    copy (benchmarks/gpu_transport.py). JAX is already loaded wherever a JAX
    array exists, so the runtime takes it from ``sys.modules``, never imports it.
    """
    global _pinned_ok
    jax = sys.modules.get("jax")
    with_kind = getattr(getattr(a, "sharding", None), "with_memory_kind", None)
    if not _pinned_ok or jax is None or with_kind is None:
        return a
    try:
        return jax.device_put(a, with_kind("pinned_host"))
    except Exception:  # a backend or version without pinned host memory: copy the plain way
        _pinned_ok = False
        return a


def _host_copy(a: Any) -> np.ndarray:
    """``a`` in host memory: by ``np.asarray`` (JAX), else through DLPack (CuPy, PyTorch refuse the former).

    Raises:
        TypeError: if neither way works, naming the leaf's type and both reasons.
    """
    try:
        return np.asarray(_pinned(a))
    except TypeError as e:
        first = e
    try:
        return np.from_dlpack(a, device="cpu", copy=True)
    except Exception as e:
        raise TypeError(
            f"a message leaf of type {type(a).__name__} lives on a device and could not be copied to the host "
            f"(np.asarray: {first}; DLPack: {e}); expected a JAX array or an array that numpy can read"
        ) from e


class DeviceLeaves(list):
    """A message's leaves, some on an accelerator, that also remembers them as they were.

    :func:`to_host` replaces the items by host copies in place (one copy per
    message, whichever consumer needs it first); ``device`` keeps the originals:
    for consumers that take them on their device (``coupler.transport.device-to-device``),
    and to tell the host copies made here from the producer's own host arrays.
    """

    def __init__(self, leaves: list[Any], device: list[Any] | None = None) -> None:
        super().__init__(leaves)
        self.device = list(leaves) if device is None else device


def to_host(leaves: list[Any]) -> list[np.ndarray]:
    """Replace, in place, every accelerator leaf by a host copy; return the leaves as a plain list.

    In place, so that a message sent to several consumers is copied off its
    device once. The copy is made read-only: it belongs to this message alone,
    and the data plane then hands it on without copying it again. The list
    returned does not hold the device arrays (whatever keeps it, a replay log or
    a stream's unacknowledged messages, holds no GPU memory). A plain list (not
    :class:`DeviceLeaves`) has only host arrays: :func:`flatten` marks the others.
    """
    if not isinstance(leaves, DeviceLeaves):
        return leaves
    for i, a in enumerate(leaves):
        if type(a) is not np.ndarray:
            h = _host_copy(a)
            if h.flags.writeable and h.base is None:
                h.flags.writeable = False
            leaves[i] = h
    return list(leaves)


def flat_dict_keys(treedef: TreeDef) -> tuple[str, ...] | None:
    """The keys of a flat dict of arrays (then ``dict(zip(keys, leaves))`` rebuilds it), else ``None``."""
    if treedef != LEAF and treedef[0] == "dict" and all(c == LEAF for c in treedef[2]):
        return tuple(treedef[1])
    return None


def unflatten(treedef: TreeDef, leaves: list[Any]) -> Any:
    """Rebuild the pytree described by ``treedef`` from ``leaves`` (inverse of :func:`flatten`)."""
    it = iter(leaves)
    tree = _unflatten(treedef, it)
    return tree


def _unflatten(td: TreeDef, it: Any) -> Any:
    if td == LEAF:
        return next(it)
    if td[0] == "dict":
        return {k: _unflatten(c, it) for k, c in zip(td[1], td[2])}
    children = [_unflatten(c, it) for c in td[1]]
    return children if td[0] == "list" else tuple(children)


def leaf_paths(treedef: TreeDef, prefix: str = "") -> list[str]:
    """Names of the leaves of ``treedef`` in flatten order, e.g. ``["input", "params/0"]``."""
    if treedef == LEAF:
        return [prefix or "<root>"]
    if treedef[0] == "dict":
        names = [f"{prefix}/{k}" if prefix else k for k in treedef[1]]
        return [p for n, c in zip(names, treedef[2]) for p in leaf_paths(c, n)]
    return [p for i, c in enumerate(treedef[1]) for p in leaf_paths(c, f"{prefix}/{i}" if prefix else str(i))]


def treedef_to_wire(td: TreeDef) -> Any:
    """Encode a treedef with msgpack-friendly lists only."""
    if td == LEAF:
        return LEAF
    if td[0] == "dict":
        return ["dict", list(td[1]), [treedef_to_wire(c) for c in td[2]]]
    return [td[0], [treedef_to_wire(c) for c in td[1]]]


def treedef_from_wire(w: Any) -> TreeDef:
    """Decode :func:`treedef_to_wire`."""
    if w == LEAF:
        return LEAF
    if w[0] == "dict":
        return ("dict", tuple(w[1]), tuple(treedef_from_wire(c) for c in w[2]))
    return (w[0], tuple(treedef_from_wire(c) for c in w[1]))


@dataclass(frozen=True)
class FieldSpec:
    """Shape and dtype of one leaf, named by its path in the tree."""

    path: str
    shape: tuple[int, ...]
    dtype: str

    @functools.cached_property
    def nbytes(self) -> int:
        """Size of one such array in bytes."""
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class Spec:
    """The fixed structure of a channel's messages.

    Example:
        >>> spec = Spec.of({"u": np.zeros((4, 4), np.float32)})
        >>> spec.fields[0]
        FieldSpec(path='u', shape=(4, 4), dtype='float32')
    """

    treedef: TreeDef
    fields: tuple[FieldSpec, ...]

    @classmethod
    def of(cls, tree: Any) -> Spec:
        """The spec of an example message payload."""
        leaves, td = flatten(tree)
        return cls.from_leaves(td, leaves)

    @classmethod
    def from_leaves(cls, treedef: TreeDef, leaves: list[np.ndarray]) -> Spec:
        """The spec of already flattened leaves.

        Raises:
            SpecMismatch: a leaf is not an array of a native byte order.
        """
        paths = leaf_paths(treedef)
        for p, a in zip(paths, leaves):
            if not a.dtype.isnative:
                # dtype.name drops the byte order: such a spec would refuse the very array it came from.
                raise SpecMismatch(
                    f"field {p!r}: expected an array in this machine's byte order, got dtype {a.dtype.str!r}; "
                    f"convert it with a.astype(a.dtype.newbyteorder('='))"
                )
        return cls(treedef, tuple(FieldSpec(p, tuple(a.shape), a.dtype.name) for p, a in zip(paths, leaves)))

    @functools.cached_property
    def nbytes(self) -> int:
        """Payload size of one message in bytes."""
        return sum(f.nbytes for f in self.fields)

    def check(self, channel: str, treedef: TreeDef, leaves: list[np.ndarray]) -> None:
        """Raise if a flattened payload does not fit this spec.

        Args:
            channel: the channel's name, for the message.
            treedef: structure of the payload.
            leaves: its arrays.

        Raises:
            SpecMismatch: naming the channel, the field, and expected vs got.
        """
        if treedef is not self.__dict__.get("_treedef_seen"):
            if treedef != self.treedef:
                expected, got = [f.path for f in self.fields], leaf_paths(treedef)
                what = f"expected fields {expected}, got {got}"
                if expected == got:  # the same leaves in other containers (a tuple for a list, a list for a dict)
                    what = f"expected the structure {self.treedef}, got {treedef}"
                raise SpecMismatch(f"channel {channel!r}: message structure does not match the channel's spec: {what}")
            # flatten hands out one treedef object per flat key set: the next check is by identity
            self.__dict__["_treedef_seen"] = treedef
        for (shape, dtype), f, a in zip(self._signature, self.fields, leaves):
            if a.shape != shape or (a.dtype is not dtype and a.dtype != dtype):  # builtin dtypes are singletons
                got = a.dtype.name if a.dtype.isnative else f"{a.dtype.name} in the other byte order ({a.dtype.str!r})"
                raise SpecMismatch(
                    f"channel {channel!r}: field {f.path!r} expected shape {f.shape} dtype {f.dtype}, "
                    f"got shape {tuple(a.shape)} dtype {got}"
                )

    @functools.cached_property
    def _signature(self) -> tuple[tuple[tuple[int, ...], np.dtype], ...]:
        # Shapes and numpy dtypes, compared directly: dtype.name is slow on a hot path.
        return tuple((f.shape, np.dtype(f.dtype)) for f in self.fields)

    def to_wire(self) -> dict[str, Any]:
        """Encode for the broker and for handlers (msgpack-friendly)."""
        return {"treedef": treedef_to_wire(self.treedef), "fields": [[f.path, list(f.shape), f.dtype] for f in self.fields]}

    @classmethod
    def from_wire(cls, w: dict[str, Any]) -> Spec:
        """Decode :meth:`to_wire`."""
        return cls(treedef_from_wire(w["treedef"]), tuple(FieldSpec(p, tuple(s), d) for p, s, d in w["fields"]))


RESERVED_META_PREFIX = "coupler."
"""Metadata keys the runtime writes itself (an instance's epoch, a member's floor, an actor's takes)."""


def check_meta(meta: Any) -> None:
    """Check a sender's metadata: a map of string keys, none of the runtime's own.

    A key such as ``coupler.epoch`` in a user's metadata would be read as the
    runtime's (one send of it fenced the sender's own stream).

    Args:
        meta: the ``meta`` given to ``send``, or ``None``.

    Raises:
        TypeError: ``meta`` is not a map with string keys.
        ValueError: a key starts with :data:`RESERVED_META_PREFIX`.
    """
    if meta is None:
        return
    if not isinstance(meta, dict) or not all(type(k) is str for k in meta):
        raise TypeError(f"meta must be a dict with string keys, got {meta!r:.80}")
    reserved = sorted(k for k in meta if k.startswith(RESERVED_META_PREFIX))
    if reserved:
        raise ValueError(f"meta keys starting with {RESERVED_META_PREFIX!r} are the runtime's, got {reserved}: rename them")


@dataclass
class Message:
    """One message on a channel: a pytree of arrays plus time and provenance.

    Attributes:
        data: the payload pytree (numpy arrays on the consumer side).
        timestamp: simulation time the data refers to.
        step: the producer's step counter.
        source: name of the producing port's owner (an actor name).
        seq: per-(channel, source) sequence number, from 0, gap-free.
        meta: small JSON-like metadata.
        sent_at: producer wall-clock time (``time.time()``) at send, for lag.
        nbytes: payload size when the data plane knows it (-1: not known), for counters.
    """

    data: Any
    timestamp: float = 0.0
    step: int = 0
    source: str = ""
    seq: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    sent_at: float = field(default_factory=time.time)
    nbytes: int = field(default=-1, compare=False, repr=False)

    def header(self) -> dict[str, Any]:
        """Everything but the payload, msgpack-friendly."""
        return {
            "timestamp": float(self.timestamp),
            "step": int(self.step),
            "source": self.source,
            "seq": int(self.seq),
            "meta": self.meta,
            "sent_at": self.sent_at,
        }

    @classmethod
    def from_header(cls, header: dict[str, Any], data: Any, nbytes: int = -1) -> Message:
        """Rebuild a message from :meth:`header` and its payload (of ``nbytes`` bytes, if known)."""
        h = header  # positional: a keyword call costs more, once per message received
        return cls(data, h["timestamp"], h["step"], h["source"], h["seq"], h["meta"], h["sent_at"], nbytes)

"""Channel policies: how a consumer's buffer keeps, drops and hands out messages.

A policy is a small frozen declaration; the buffering it implies lives on the
consumer's worker (see :mod:`coupler.runtime.dataplane.buffers`). Every consumer of a
channel gets every message (broadcast), except a work-sharing
``Queue(shared=True)``, where each message goes to exactly one consumer (a task
pool); many producers may feed one channel (fan-in).

| policy | keeps | producer when full | consumer reads with |
|---|---|---|---|
| ``Queue(maxsize)`` | every message, in order per producer | blocks (back-pressure) | ``receive`` |
| ``Queue(maxsize, shared=True)`` | each message at one consumer only, one that waits for it | blocks until some consumer waits | ``receive`` |
| ``Latest()`` | the newest message only | never blocks | ``receive`` |
| ``Reservoir(capacity)`` | a uniform sample of the whole stream (Vitter's R) | never blocks | ``sample`` |
| ``Window(capacity)`` | the newest ``capacity`` messages | never blocks | ``sample`` |
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Union


@dataclass(frozen=True)
class Queue:
    """Ordered delivery of every message; a full queue blocks its producers.

    Args:
        maxsize: messages the consumer's buffer holds before producers wait.
        shared: work-sharing: each message goes to exactly one of the channel's
            consumers instead of to every consumer. Consumers pull: one has room
            (up to ``maxsize`` messages) only while it waits in ``receive``, and
            a message goes to one of those, round-robin. So no task waits at a
            busy member while another idles, and members on the producer's own
            worker are served no sooner than remote ones.
    """

    maxsize: int = 64
    shared: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.maxsize, int) or isinstance(self.maxsize, bool) or self.maxsize < 1:
            raise ValueError(f"Queue(maxsize) needs an int >= 1, got {self.maxsize!r}")
        if not isinstance(self.shared, bool):
            raise ValueError(f"Queue(shared) needs a bool, got {self.shared!r}")


@dataclass(frozen=True)
class Latest:
    """Keep only the newest message (weights, steering parameters)."""


@dataclass(frozen=True)
class Reservoir:
    """A uniform random sample of everything ever sent (Vitter's algorithm R).

    Args:
        capacity: messages kept.
        seed: seed of the consumer-side random generator (``None``: fresh entropy).
    """

    capacity: int
    seed: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.capacity, int) or isinstance(self.capacity, bool) or self.capacity < 1:
            raise ValueError(f"Reservoir(capacity) needs an int >= 1, got {self.capacity!r}")
        _check_seed("Reservoir", self.seed)


@dataclass(frozen=True)
class Window:
    """The newest ``capacity`` messages, oldest evicted first (FIFO replay).

    Args:
        capacity: messages kept.
        seed: seed of the consumer-side random generator used by ``sample``.
    """

    capacity: int
    seed: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.capacity, int) or isinstance(self.capacity, bool) or self.capacity < 1:
            raise ValueError(f"Window(capacity) needs an int >= 1, got {self.capacity!r}")
        _check_seed("Window", self.seed)


def _check_seed(policy: str, seed: object) -> None:
    # Checked here: the consumer's worker makes the generator when it attaches, where a bad seed fails late.
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"{policy}(seed) needs an int >= 0 or None, got {seed!r}")


Policy = Union[Queue, Latest, Reservoir, Window]
_KINDS: dict[str, type] = {"queue": Queue, "latest": Latest, "reservoir": Reservoir, "window": Window}


def policy_to_wire(policy: Policy) -> dict[str, Any]:
    """Encode a policy for the broker (msgpack-friendly).

    Raises:
        TypeError: ``policy`` is not one of the four policies.
    """
    for kind, cls in _KINDS.items():
        if type(policy) is cls:
            # Defaults that change nothing are left out: the wire form (shown by
            # ``coupler info``) then reads as the policy was written.
            args = {k: v for k, v in asdict(policy).items() if not (k == "shared" and v is False)}
            return {"kind": kind, **args}
    raise TypeError(f"expected a policy (Queue, Latest, Reservoir, Window), got {policy!r}")


def policy_from_wire(w: dict[str, Any]) -> Policy:
    """Decode :func:`policy_to_wire`.

    Raises:
        ValueError: for an unknown policy kind or bad arguments.
    """
    args = dict(w)
    kind = args.pop("kind", None)
    if kind not in _KINDS:
        raise ValueError(f"unknown policy kind {kind!r}; expected one of {sorted(_KINDS)}")
    return _KINDS[kind](**args)

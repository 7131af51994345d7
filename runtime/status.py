"""Typed views of what the broker and actors report."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

TERMINAL_STATES = frozenset({"finished", "stopped", "failed", "lost"})


@dataclass(frozen=True)
class ActorStatus:
    """State of one actor as its host reports it.

    Attributes:
        name: the actor's name in the coupling.
        cls: its class name.
        state: ``created``, ``running``, ``paused``, ``finished`` (its loop ended by
            itself), ``stopped`` (asked to), ``failed`` (its loop raised) or ``lost``.
        steps: run-loop iterations completed.
        worker: address of the hosting worker.
        error: the traceback of a failure, else ``""``.
        started_at: wall-clock start time (``time.time()``), 0 before start.
        stopped_at: wall-clock time the loop ended, 0 while it runs.
        info: actor-specific figures (e.g. samples seen, last loss).
    """

    name: str
    cls: str = ""
    state: str = "created"
    steps: int = 0
    worker: str = ""
    error: str = ""
    started_at: float = 0.0
    stopped_at: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        """Whether the run loop has ended (for any reason)."""
        return self.state in TERMINAL_STATES

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ActorStatus:
        """Build from a status dict, ignoring keys this version does not know."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class ChannelStats:
    """Counters of one channel, summed over workers (reported every ``report-interval``).

    Attributes:
        name: channel name.
        policy: the policy as a dict (``{"kind": "queue", "maxsize": 64}``).
        producers: names of the sources that attached.
        consumers: names of the attached consumers.
        sent: messages sent (each counted once, whatever the number of consumers).
        received: messages accepted by consumers (summed over consumers).
        dropped: messages overwritten, evicted or not kept by consumers' policies.
        depth: messages held in consumers' buffers now.
        sent_bytes: payload bytes sent.
        closed: whether the channel was closed.
    """

    name: str
    policy: dict[str, Any]
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    sent: int
    received: int
    dropped: int
    depth: int
    sent_bytes: int
    closed: bool

    @classmethod
    def from_snapshot(cls, name: str, s: dict[str, Any]) -> ChannelStats:
        """Build from one entry of the broker's snapshot."""
        t = s["totals"]
        return cls(
            name=name,
            policy=s["policy"],
            producers=tuple(s["producers"]),
            consumers=tuple(c[0] for c in s["consumers"]),
            sent=t["sent"],
            received=t["received"],
            dropped=t["dropped"],
            depth=t["depth"],
            sent_bytes=t["sent_bytes"],
            closed=s["closed"],
        )

"""Typed views of what the broker and actors report, and the small meters behind them.

Actors record metric points (a learner's loss per step) in a :class:`MetricLog`;
each status report carries its recent points, and the broker merges them into
a bounded :class:`MetricHistory` per actor. The broker turns growing counters
(messages sent, steps) into rates with a :class:`RateMeter`. The dashboard page
and the Prometheus collectors read these views.
"""

from __future__ import annotations

import os
import sys
import threading
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from coupler.runtime.dataplane.waits import Wait

TERMINAL_STATES = frozenset({"finished", "stopped", "failed", "lost"})


@dataclass(frozen=True)
class WeightsInUse:
    """The learned weights an actor computes with (a hybrid or a corrected simulator).

    Attributes:
        version: the training step of the learner that produced them.
        sent_at: wall-clock time the learner sent them (``time.time()`` on its worker).
        behind: how many training steps newer the newest weights that have arrived
            are (not installed yet: the actor installs them at its next block); ``None``: unknown.
    """

    version: int
    sent_at: float
    behind: int | None = None

    def age(self, now: float) -> float:
        """Seconds since the learner sent them (0 if the clocks disagree)."""
        return max(0.0, now - self.sent_at)

    def describe(self, now: float) -> str:
        """``"step 120, 3.4 s old"``, and ``", 20 steps behind"`` when newer ones wait."""
        text = f"step {self.version}, {self.age(now):.1f} s old"
        return text + (f", {self.behind} steps behind" if self.behind else "")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WeightsInUse:
        """Build from :meth:`to_dict` (``dataclasses.asdict``).

        Raises:
            ValueError: if ``d`` lacks ``version`` or ``sent_at``, or they are not numbers.
        """
        try:
            behind = d.get("behind")
            return cls(int(d["version"]), float(d["sent_at"]), None if behind is None else int(behind))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"weights in use need a version and a sent_at, got {d!r:.120}") from e


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
        device: where its computations run (``"cpu:0"``, ``"cuda:0"``), known once the loop started.
        step_rate: run-loop iterations per second over the last seconds (as the broker measured
            it; 0 in a status asked of the actor directly).
        waiting: what its run loop is blocked on in the data plane (a consumer to attach,
            room at a full consumer, input...), and since when; ``None`` when it is not.
        weights: the learned weights it computes with, for actors that use a learner's
            (their version and age: the staleness the dashboard shows); else ``None``.
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
    device: str = ""
    step_rate: float = 0.0
    waiting: Wait | None = None
    weights: WeightsInUse | None = None

    @property
    def last_error(self) -> str:
        """The last line of the failure's traceback (the exception), else ``""``."""
        lines = [line for line in self.error.strip().splitlines() if line.strip()]
        return lines[-1].strip() if lines else ""

    @property
    def done(self) -> bool:
        """Whether the run loop has ended (for any reason)."""
        return self.state in TERMINAL_STATES

    @property
    def explanation(self) -> str:
        """What it is doing, in words: ``"waits 12 s for room at consumer ..."``, or ``""``."""
        return "" if self.waiting is None or self.done else self.waiting.describe()

    def to_dict(self) -> dict[str, Any]:
        """Plain data (what actors report and the broker keeps)."""
        d = dict(self.__dict__)
        d["waiting"] = None if self.waiting is None else self.waiting.to_dict()
        d["weights"] = None if self.weights is None else asdict(self.weights)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ActorStatus:
        """Build from a status dict, ignoring keys this version does not know."""
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if isinstance(kw.get("waiting"), dict):
            kw["waiting"] = Wait.from_dict(kw["waiting"])
        if isinstance(kw.get("weights"), dict):
            kw["weights"] = WeightsInUse.from_dict(kw["weights"])
        return cls(**kw)


@dataclass(frozen=True)
class ConsumerStats:
    """Counters of one consumer of a channel (its buffer on its worker).

    Attributes:
        ident: the consumer's id (``actor/port``).
        worker: address of the worker holding its buffer.
        received: messages accepted into its buffer.
        taken: messages handed to the consumer (for replay buffers: samples drawn).
        dropped: messages overwritten, evicted or not kept by its policy.
        depth: messages held now.
        nbytes: payload bytes accepted.
        lag: seconds between send and acceptance of its last message.
    """

    ident: str
    worker: str
    received: int
    taken: int
    dropped: int
    depth: int
    nbytes: int
    lag: float

    @classmethod
    def from_report(cls, ident: str, c: dict[str, Any]) -> ConsumerStats:
        """Build from a consumer's entry in a worker report."""
        return cls(
            ident=ident,
            worker=str(c.get("worker", "")),
            received=int(c["received"]),
            taken=int(c["taken"]),
            dropped=int(c["dropped"]),
            depth=int(c["depth"]),
            nbytes=int(c["nbytes"]),
            lag=float(c.get("lag", 0.0)),
        )


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
        received_bytes: payload bytes accepted by consumers (summed over consumers).
        message_rate: messages sent per second over the broker's rate window (0 outside the broker's view).
        byte_rate: payload bytes sent per second over the same window.
        consumer_stats: each consumer's counters, by consumer id.
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
    received_bytes: int = 0
    message_rate: float = 0.0
    byte_rate: float = 0.0
    consumer_stats: tuple[ConsumerStats, ...] = ()

    @classmethod
    def from_snapshot(cls, name: str, s: dict[str, Any]) -> ChannelStats:
        """Build from one entry of the broker's snapshot."""
        t = s["totals"]
        rates = s.get("rates", {})
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
            received_bytes=t.get("received_bytes", 0),
            message_rate=float(rates.get("messages", 0.0)),
            byte_rate=float(rates.get("bytes", 0.0)),
            consumer_stats=tuple(
                ConsumerStats.from_report(c, stats) for c, stats in sorted(s.get("consumer_stats", {}).items())
            ),
        )


class RateMeter:
    """The rate of a growing counter over a sliding time window.

    Args:
        window: seconds of samples the rate is taken over.

    Example::

        m = RateMeter(window=5.0)
        m.add(0.0, 0); m.add(2.0, 10)
        m.rate  # 5.0 per second
    """

    def __init__(self, window: float = 5.0) -> None:
        if not window > 0:
            raise ValueError(f"window must be > 0 seconds, got {window}")
        self.window = window
        self._samples: deque[tuple[float, float]] = deque()

    def add(self, t: float, value: float) -> None:
        """Record the counter's ``value`` at time ``t`` (seconds, non-decreasing).

        A value below the last one means the counter restarted (its worker was
        replaced): the window starts again from it.
        """
        if self._samples and value < self._samples[-1][1]:
            self._samples.clear()
        self._samples.append((t, value))
        # Keep one sample at or before the window's start, so the rate spans the whole window.
        while len(self._samples) > 2 and self._samples[1][0] <= t - self.window:
            self._samples.popleft()

    @property
    def rate(self) -> float:
        """Increase per second between the oldest and newest samples kept (0 with fewer than two)."""
        if len(self._samples) < 2:
            return 0.0
        (t0, v0), (t1, v1) = self._samples[0], self._samples[-1]
        return (v1 - v0) / (t1 - t0) if t1 > t0 else 0.0


class MetricLog:
    """Metric points an actor records (e.g. its loss per step), kept for its status reports.

    Thread-safe: the run loop records while the worker's reporter reads. Each
    point gets a sequence number; the reports carry the last ``keep`` points and
    the broker keeps those it has not seen (a :class:`MetricHistory`).

    Args:
        keep: points kept for the reports; points recorded faster than reports
            collect them (``keep`` per ``report-interval``) are lost to the broker.
    """

    def __init__(self, keep: int = 256) -> None:
        # Tells the broker a new log began (a restarted actor numbers its points from 0 again).
        self.origin = uuid.uuid4().hex[:12]
        self._points: deque[tuple[int, str, int, float]] = deque(maxlen=keep)
        self._seq = 0
        self._lock = threading.Lock()

    def record(self, name: str, step: int, value: float) -> None:
        """Record ``value`` of metric ``name`` at ``step``.

        Raises:
            TypeError: if ``value`` is not a real number.
        """
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"metric {name!r}: expected a real number, got {value!r}") from None
        with self._lock:
            self._points.append((self._seq, str(name), int(step), v))
            self._seq += 1

    def recent(self) -> dict[str, Any]:
        """``{"origin", "points": [[seq, name, step, value], ...]}`` of the points kept."""
        with self._lock:
            return {"origin": self.origin, "points": [list(p) for p in self._points]}


class MetricHistory:
    """An actor's metric series merged from repeated reports, each bounded in length.

    Args:
        max_points: points kept per series; beyond it every other point is
            dropped, so the whole curve stays, at half the resolution.
    """

    def __init__(self, max_points: int = 2000) -> None:
        if max_points < 2:
            raise ValueError(f"max_points must be >= 2, got {max_points}")
        self.max_points = max_points
        self._origin = ""
        self._last_seq = -1
        self._series: dict[str, tuple[list[int], list[float]]] = {}

    def merge(self, report: dict[str, Any]) -> None:
        """Add the points of ``MetricLog.recent()`` not merged before."""
        if report.get("origin") != self._origin:
            self._origin, self._last_seq = str(report.get("origin")), -1
        for seq, name, step, value in report.get("points", ()):
            if seq <= self._last_seq:
                continue
            self._last_seq = seq
            steps, values = self._series.setdefault(name, ([], []))
            steps.append(int(step))
            values.append(float(value))
            if len(steps) > self.max_points:
                del steps[1::2], values[1::2]

    def series(self) -> dict[str, tuple[list[int], list[float]]]:
        """Metric name -> (steps, values), copies."""
        return {name: (list(s), list(v)) for name, (s, v) in self._series.items()}

    def last(self) -> dict[str, float]:
        """Metric name -> its latest value."""
        return {name: values[-1] for name, (_, values) in self._series.items()}


def _jax_started() -> bool:
    """Whether this process has started a JAX backend (imported is not enough: modules import JAX freely).

    It imports nothing: a status call runs on the worker's event loop while an
    actor's thread may be importing JAX, and a second thread importing JAX's
    modules meanwhile made that import fail ("partially initialized module
    'jax._src.xla_bridge'", seen when an actor's ``setup`` imported JAX).
    """
    xb = sys.modules.get("jax._src.xla_bridge")
    if xb is None or getattr(getattr(xb, "__spec__", None), "_initializing", False):
        return False
    started = getattr(xb, "backends_are_initialized", None)  # no public way to ask without starting a backend
    try:
        return bool(started()) if callable(started) else False
    except Exception:  # a broken backend must not break a status report
        return False


def describe_device() -> str:
    """Where this process computes: JAX's first device (``"cpu:0"``, ``"cuda:0"``) when JAX is in use.

    It never starts JAX itself (that would take GPU memory from the actors that
    use it): without a started backend it says ``"gpu:<CUDA_VISIBLE_DEVICES>"``
    when GPUs are visible, else ``"cpu"``.
    """
    if _jax_started():
        jax = sys.modules["jax"]
        try:
            d = jax.devices()[0]
            return f"{d.platform}:{d.id}"
        except Exception as e:  # a broken backend must not break a status report
            return f"unknown ({type(e).__name__})"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return f"gpu:{visible}" if visible and not visible.startswith("-") else "cpu"

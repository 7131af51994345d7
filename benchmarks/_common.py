"""Shared pieces of the transport benchmark: result rows, run sizes, statistics.

Every system module returns :class:`Row` objects; ``transport.py`` prints them
side by side and derives the issue's ratios from them. Nothing here depends on
a system, so every system module can import it (the worker-side actor modules
do not: they are shipped to workers by value and stay self-contained).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

KiB = 1024
MiB = 1024 * KiB

STREAM = "stream-1:1"
PINGPONG = "pingpong"
FAN_IN = "fan-in-8:1"
BROADCAST = "broadcast-1:4"
HEAT = "heat2d-1024"
COPY = "memcpy"

WORKLOADS = (STREAM, PINGPONG, FAN_IN, BROADCAST, HEAT)
PAYLOADS = {"4KiB": 4 * KiB, "1MiB": MiB, "16MiB": 16 * MiB, "128MiB": 128 * MiB}
PINGPONG_PAYLOAD = "4KiB"
FAN_IN_PRODUCERS = 8
BROADCAST_CONSUMERS = 4


def payload_label(nbytes: int) -> str:
    """``4096 -> "4KiB"``, ``1 -> "1B"`` (labels used in rows and ratios)."""
    for label, size in PAYLOADS.items():
        if size == nbytes:
            return label
    return f"{nbytes}B"


@dataclass
class Row:
    """One measured (system, workload, payload) cell.

    Attributes:
        system: e.g. ``"coupler"``, ``"ray"``, ``"tcp-raw"``.
        workload: one of the workload names above (or ``"memcpy"``).
        payload: size label, e.g. ``"16MiB"``.
        payload_bytes: bytes per message.
        msgs_per_s: messages delivered per second (deliveries, summed over consumers).
        gb_per_s: payload bytes delivered per second / 1e9; ``None`` where not meaningful.
        p50_us: median round trip (ping-pong) in microseconds, else ``None``.
        p99_us: 99th percentile round trip in microseconds, else ``None``.
        n_msgs: messages counted (deliveries).
        seconds: the measured window.
        extra: workload-specific figures (e.g. ``steps_per_s`` for the heat run).
        note: how it was measured where that is not obvious.
    """

    system: str
    workload: str
    payload: str
    payload_bytes: int
    msgs_per_s: float | None
    gb_per_s: float | None
    p50_us: float | None = None
    p99_us: float | None = None
    n_msgs: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """A few words for progress lines."""
        if self.p50_us is not None:
            return f"p50 {self.p50_us:.0f} us, p99 {self.p99_us:.0f} us"
        if "steps_per_s" in self.extra:
            return f"{self.payload}: {self.extra['steps_per_s']:.1f} steps/s"
        mps = self.msgs_per_s or 0.0
        return f"{mps:,.0f} msg/s, {self.gb_per_s:.3g} GB/s" if mps >= 100 else f"{mps:.3g} msg/s, {self.gb_per_s:.3g} GB/s"


@dataclass(frozen=True)
class Budget:
    """How long and how much each measurement may run.

    Producers stream for ``seconds`` (or ``max_msgs``, whichever comes first),
    so fast systems get enough messages for a stable rate and slow ones do not
    stall the run.

    Attributes:
        seconds: streaming time per (system, workload, payload).
        pingpong_rounds: round trips per ping-pong (after warm-up).
        pingpong_warmup: round trips before the clock starts, for every system alike. A new
            pair's first few hundred round trips are slower (coupler's: 270-300 against
            210 us p50 at 4 KiB on the 2-core VM, in windows of 100): with 20, a quick
            row measured mostly that start.
        heat_seconds: measured seconds per phase of the heat run.
        heat_rounds: rounds of (publish every 10, publish every step), each phase flanked by non-publishing phases.
        max_bytes: cap on payload bytes per streaming run (large payloads stop early).
        repeats: measurements of each stream, fan-in and ping-pong cell of payloads up to
            ``repeat_max_bytes``, in interleaved rounds; the median is kept (see :func:`run_cells`).
        repeat_max_bytes: the largest payload of a repeated cell.
    """

    seconds: float
    pingpong_rounds: int
    pingpong_warmup: int
    heat_seconds: float
    heat_rounds: int
    max_bytes: int
    repeats: int = 1
    repeat_max_bytes: int = 1 << 20

    def max_msgs(self, nbytes: int) -> int:
        """Most messages a stream of ``nbytes`` messages may send (at least 4)."""
        return max(4, min(1_000_000, self.max_bytes // nbytes))

    def warmup(self, nbytes: int) -> int:
        """Messages sent before the clock starts (connections, spec, allocations).

        Large messages: a few more than a stream keeps in flight, so that the
        buffers a system reuses for them (coupler's shared-memory segments) were
        all used once before the clock starts. On the 2-core VM a 16 MiB buffer
        touched for the first time costs about 15 ms against 1.5 ms for a
        message in a reused one; with one warm-up message, a short 16 MiB row
        spent up to a third of its time making its first few buffers.
        """
        if nbytes >= 64 * MiB:
            return 3
        return 6 if nbytes >= 16 * MiB else (3 if nbytes >= MiB else 50)


FULL = Budget(
    seconds=3.0, pingpong_rounds=2000, pingpong_warmup=500, heat_seconds=2.0, heat_rounds=5, max_bytes=8 * 1024 * MiB,
    repeats=3, repeat_max_bytes=1 << 40,  # every payload: full mode has the time, and 16 MiB cells vary 30 % too
)
QUICK = Budget(
    seconds=0.8, pingpong_rounds=600, pingpong_warmup=500, heat_seconds=1.0, heat_rounds=2, max_bytes=1536 * MiB, repeats=3,
    repeat_max_bytes=16 * MiB,  # 16 MiB cells (a few hundred ms each) move 30 % between runs too
)
SMOKE = Budget(seconds=0.3, pingpong_rounds=50, pingpong_warmup=20, heat_seconds=0.3, heat_rounds=1, max_bytes=64 * MiB)


def rate_row(
    system: str, workload: str, nbytes: int, count: int, start: float, last: float, *, note: str = "", **extra: Any
) -> Row:
    """A throughput row: ``count`` deliveries, from the first counted send to the last receipt.

    The window starts when the producer (the earliest one) sends its first
    counted message, after the warm-up, and ends when the consumer (the latest
    one) has the last message in hand. Timing from the first *receipt* instead
    would flatter systems that transfer several large messages in parallel:
    they all land at once, at the end, and the window collapses.

    Raises:
        RuntimeError: if nothing arrived or the window is empty.
    """
    if count < 1 or last <= start:
        raise RuntimeError(f"{system} {workload} {payload_label(nbytes)}: {count} message(s) in a window of {last - start:.3g} s; cannot time a rate")
    seconds = last - start
    mps = count / seconds
    return Row(
        system, workload, payload_label(nbytes), nbytes, mps, mps * nbytes / 1e9, n_msgs=count, seconds=seconds, extra=extra, note=note
    )


def latency_row(system: str, nbytes: int, rtts_s: list[float], *, workload: str = PINGPONG, note: str = "") -> Row:
    """A ping-pong row: p50/p99 of the round trips, and round trips per second."""
    if not rtts_s:
        raise RuntimeError(f"{system} {workload}: no round trip was timed")
    us = sorted(t * 1e6 for t in rtts_s)
    total = sum(rtts_s)
    return Row(
        system,
        workload,
        payload_label(nbytes),
        nbytes,
        len(us) / total,
        None,
        p50_us=statistics.median(us),
        p99_us=percentile(us, 99.0),
        n_msgs=len(us),
        seconds=total,
        note=note,
    )


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100.0 * len(sorted_values)) - 1))
    return sorted_values[k]


def merge_windows(starts: list[float], results: list[dict[str, Any]]) -> tuple[int, float, float]:
    """Combine producers' start times and consumers' ``{count, last}`` into one window.

    All clocks are ``time.time()`` on one host, so times of different
    processes are comparable.

    Returns:
        ``(deliveries, earliest start, latest last receipt)``.
    """
    count = sum(int(r["count"]) for r in results)
    return count, min(starts), max(float(r["last"]) for r in results)


class SystemSkipped(Exception):
    """A system cannot run here (not installed, no server binary); the message says why."""


Cell = tuple[str, Callable[[], "Row | list[Row]"]]


# Cells of these workloads feed the targets: they are measured `repeats` times up to a
# budget's `repeat_max_bytes` (broadcast and memcpy once, to keep --quick under 3 minutes).
REPEATED_WORKLOADS = (STREAM, FAN_IN, PINGPONG)


def run_cells(cells: list[Cell], report: Callable[[str], None], budget: Budget | None = None) -> list[Row]:
    """Run measurements one after another, reporting each; a failing one is reported and left out.

    A cell that gives one row of a ``REPEATED_WORKLOADS`` workload with at most
    ``budget.repeat_max_bytes`` per message is measured ``budget.repeats``
    times, in rounds over all such cells (``A B C, A B C, ...``), so that a
    slow stretch of a shared machine hits every cell alike instead of one
    cell's every run; its row is the median run (:func:`median_run`).

    Args:
        cells: ``(label, measure)`` pairs; ``measure()`` returns a row or rows.
        report: prints one progress line per run.
        budget: how often and up to which payload cells are repeated (``None``: each once).

    Returns:
        The rows of the cells that succeeded, in the order of ``cells``.
    """
    repeats = 1 if budget is None else budget.repeats
    max_bytes = 0 if budget is None else budget.repeat_max_bytes
    results: list[list[Row]] = [[] for _ in cells]
    again: list[int] = []
    for rnd in range(max(1, repeats)):
        for i in range(len(cells)) if rnd == 0 else again:
            label, measure = cells[i]
            suffix = f" (run {rnd + 1}/{repeats})" if rnd else ""
            t0 = time.monotonic()
            try:
                out = measure()
            except Exception as e:  # one failing cell must not lose the others
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                report(f"  {label}{suffix}: FAILED after {time.monotonic() - t0:.1f} s: {type(e).__name__}: {first}")
                continue
            got = out if isinstance(out, list) else [out]
            results[i] += got
            report(f"  {label}{suffix}: {'; '.join(r.summary() for r in got)} ({time.monotonic() - t0:.1f} s)")
            if rnd == 0 and repeats > 1 and len(got) == 1:
                row = got[0]
                if row.workload in REPEATED_WORKLOADS and 0 < row.payload_bytes <= max_bytes:
                    again.append(i)
    rows: list[Row] = []
    for i, got in enumerate(results):
        rows += [median_run(got)] if i in again else got
    return rows


def median_run(runs: list[Row]) -> Row:
    """The median of repeated runs of one cell, by p50 for round trips and by messages per second otherwise.

    Of an even count (a repeat failed) the worse of the two middle runs is kept.
    Every run's figure goes into ``extra["runs"]`` and their spread, relative to
    the median, into ``extra["run_spread"]``.
    """
    if len(runs) == 1:
        return runs[0]
    latency = runs[0].p50_us is not None
    figure = [(r.p50_us if latency else r.msgs_per_s) or 0.0 for r in runs]
    order = sorted(range(len(runs)), key=figure.__getitem__)
    k = order[len(runs) // 2 if latency else (len(runs) - 1) // 2]  # a higher p50, a lower rate
    mid, med = runs[k], figure[k]
    extra = {
        **mid.extra,
        "runs": [round(v, 1) for v in figure],
        "run_figure": "p50_us" if latency else "msgs_per_s",
        "run_spread": (max(figure) - min(figure)) / med if med else 0.0,
    }
    return Row(**{**mid.as_dict(), "extra": extra})

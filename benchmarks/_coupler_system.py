"""The coupler side of the benchmark: producer and consumer actors on a 2-worker ``Coupling``.

Producers run on the first worker, consumers on the second, so every message
crosses a process boundary: shared memory where the data plane negotiates it,
else its network transport (``coupler-tcp`` switches shared memory off through
the ``coupler.transport.shared-memory`` setting in the workers' environment).
"""

from __future__ import annotations

import itertools
import math
import os
import statistics
import time
from typing import Callable

import cloudpickle
import dask.config

import _actors
from _common import (
    BROADCAST,
    BROADCAST_CONSUMERS,
    FAN_IN,
    FAN_IN_PRODUCERS,
    HEAT,
    PAYLOADS,
    PINGPONG,
    PINGPONG_PAYLOAD,
    STREAM,
    Budget,
    Cell,
    MiB,
    Row,
    latency_row,
    merge_windows,
    rate_row,
    run_cells,
)
from coupler.runtime import Coupling, Queue
from coupler.runtime.dataplane.settings import delivery_config

# The workers cannot import the benchmarks folder: ship the actor classes by value.
cloudpickle.register_pickle_by_value(_actors)

_ids = itertools.count()
ALO_FILL = "coupler-alo-fill"  # retention while the replay log fills for the first time (fresh memory)
HEAT_N = 1024
HEAT_PERIODS = (10, 1)  # publish every 10th step (the target) and every step (reported)


def _worker_shared_memory_setting() -> object:
    """``coupler.transport.shared-memory`` as a worker sees it (``None`` if the runtime has no such key)."""
    import dask.config

    return dask.config.get("coupler.transport.shared-memory", None)


def queue_size(nbytes: int) -> int:
    """``Queue`` depth: 1024 small messages, fewer large ones (at most ~64 MiB buffered, at least 2).

    Credits let a producer run ahead by up to half the queue, so a deep queue of
    small messages is what lets batches grow; large ones need only a couple in flight.
    """
    return max(2, min(1024, (64 * MiB) // nbytes))


class CouplerBench:
    """Run the workloads on one ``Coupling``.

    Args:
        cp: a coupling with at least two workers.
        system: the row label (``"coupler"`` or ``"coupler-tcp"``).
        budget: run sizes.
        timeout: seconds any one measurement may take before it is abandoned.
    """

    def __init__(self, cp: Coupling, system: str, budget: Budget, timeout: float = 120.0) -> None:
        self.cp, self.system, self.budget, self.timeout = cp, system, budget, timeout
        workers = cp.workers()
        if len(workers) < 2:
            raise RuntimeError(f"the coupler benchmark needs 2 workers, the coupling has {len(workers)}")
        self.producer_worker, self.consumer_worker = workers[0], workers[1]
        # What the workers really run with (the setting is read there), recorded in every row.
        self.shared_memory = sorted({str(v) for v in cp.client.run(_worker_shared_memory_setting).values()})

    def _name(self, what: str) -> str:
        return f"{what}-{os.getpid()}-{next(_ids)}"

    def _stream(self, nbytes: int, producers: int, consumers: int, workload: str, system: str | None = None,
                steady: bool = False) -> Row:
        """Stream on a new channel; with ``steady``, once the replay log filled and a checkpoint let it go.

        ``steady`` warms up with ``retain-bytes`` of messages (the consumer's
        replay log fills: every kept message needs memory the process has not
        used) and then checkpoints the consumers, whose commit lets the log go:
        the timed stream is one checkpoint interval of a long run, whose log
        refills from reused memory. Without it, the timed stream is the start of
        a run (of a channel: each link has its own pool of segments).
        """
        ch = self.cp.channel(self._name("ch"), Queue(queue_size(nbytes)))
        warmup = self.budget.warmup(nbytes)
        if steady:
            # retain-bytes as the workers have it: the coupling ships this process's config to them.
            warmup = max(warmup, -(-delivery_config().retain_bytes // nbytes) + queue_size(nbytes))
        sinks = [
            self.cp.spawn(
                _actors.StreamConsumer, producers, name=self._name("sink"), workers=self.consumer_worker, inputs={"in": ch}
            )
            for _ in range(consumers)
        ]
        sources = [
            self.cp.spawn(
                _actors.StreamProducer,
                nbytes,
                self.budget.seconds,
                max(2, self.budget.max_msgs(nbytes) // producers),
                warmup,
                name=self._name("source"),
                workers=self.producer_worker,
                outputs={"out": ch},
            )
            for _ in range(producers)
        ]
        for ref in sinks + sources:
            ref.start()
        for ref in sources:
            if not ref.call("warmed_up", self.timeout):
                raise TimeoutError(f"{ref.name}: warm-up not sent within {self.timeout} s")
        committed = None
        if steady:  # the consumers' commit lets the filled log go (what a periodic checkpoint does)
            held = self.cp.supervisor.checkpoint_now([ref.name for ref in sinks], timeout=self.timeout)
            # The fewest warm-up messages a consumer's stored checkpoint covers (its "delivered" marks).
            committed = min(
                (seq + 1 for ck in held.values() for marks in ck.get("delivered", {}).values() for seq in marks.values()), default=0
            )
            # The commit reaches the producers' worker asynchronously, and letting go of a full log
            # (65,536 small copies at 4 KiB) takes a while: wait for it, so that it is not timed.
            until = time.monotonic() + self.timeout
            while any(ref.call("kept") > warmup - committed for ref in sources):
                if time.monotonic() > until:
                    raise TimeoutError(f"the replay logs were not let go within {self.timeout} s of the commit")
                time.sleep(0.05)
        for ref in sources:
            ref.call("go")
        for ref in sources + sinks:
            ref.wait(self.timeout)
        results = [ref.call("result") for ref in sinks]
        starts = [ref.call("result")["start"] for ref in sources]
        for ref in sinks + sources:
            ref.stop(5)
        count, start, last = merge_windows(starts, results)
        return rate_row(
            system or self.system,
            workload,
            nbytes,
            count,
            start,
            last,
            producers=producers,
            consumers=consumers,
            queue=queue_size(nbytes),
            shared_memory_setting=",".join(self.shared_memory),
            warmup_messages=warmup,
            steady=steady,
            **({} if committed is None else {"committed_before_clock": committed}),
        )

    def stream(self, nbytes: int) -> Row:
        """1:1 streaming."""
        return self._stream(nbytes, 1, 1, STREAM)

    def stream_filling(self, nbytes: int) -> Row:
        """1:1 streaming at the start of a run, while the replay log fills (with retention: ``coupler-alo-fill``)."""
        return self._stream(nbytes, 1, 1, STREAM, system=ALO_FILL)

    def stream_steady(self, nbytes: int) -> Row:
        """1:1 streaming in a checkpoint interval of a long run (with retention: ``coupler-alo``)."""
        return self._stream(nbytes, 1, 1, STREAM, steady=True)

    def fan_in(self, nbytes: int) -> Row:
        """8 producers into one consumer; aggregate rate."""
        return self._stream(nbytes, FAN_IN_PRODUCERS, 1, FAN_IN)

    def broadcast(self, nbytes: int) -> Row:
        """1 producer, 4 consumers that each get every message; deliveries summed."""
        return self._stream(nbytes, 1, BROADCAST_CONSUMERS, BROADCAST)

    def pingpong(self, nbytes: int) -> Row:
        """Round trips over a ``ping`` and a ``pong`` channel, one message in flight."""
        ping = self.cp.channel(self._name("ping"), Queue(4))
        pong = self.cp.channel(self._name("pong"), Queue(4))
        b = self.cp.spawn(_actors.Ponger, name=self._name("ponger"), workers=self.consumer_worker, inputs={"ping": ping}, outputs={"pong": pong})
        a = self.cp.spawn(
            _actors.Pinger,
            nbytes,
            self.budget.pingpong_rounds,
            self.budget.pingpong_warmup,
            name=self._name("pinger"),
            workers=self.producer_worker,
            inputs={"pong": pong},
            outputs={"ping": ping},
        )
        b.start()
        a.start()
        a.wait(self.timeout)
        rtts = a.call("result")
        a.stop(5)
        b.stop(5)
        return latency_row(self.system, nbytes, rtts)

    def heat(self) -> list[Row]:
        """Heat2D step rate not publishing, publishing every 10th step and every step.

        One simulator runs interleaved phases ``0, 10, 0, 1, 0, 10, 0, 1, 0 ...``
        (``budget.heat_rounds`` rounds); each publishing phase is compared with
        the mean of the non-publishing phases on either side of it, and the
        median of those ratios is reported, so slow drifts of a shared machine
        cancel. The consumer is present throughout, so the memory-bandwidth
        contention of two busy processes is the same in the reference as in the
        publishing phases.
        """
        schedule = [0]
        for _ in range(self.budget.heat_rounds):
            for every in HEAT_PERIODS:
                schedule += [every, 0]
        ch = self.cp.channel(self._name("heat"), Queue(8))
        sink = self.cp.spawn(_actors.Discard, name=self._name("discard"), workers=self.consumer_worker, inputs={"in": ch})
        sink.start()
        sim = self.cp.spawn(
            _actors.HeatSim,
            HEAT_N,
            schedule,
            self.budget.heat_seconds,
            name=self._name("heat-sim"),
            workers=self.producer_worker,
            outputs={"field": ch},
        )
        sim.start()
        sim.wait(self.timeout + len(schedule) * self.budget.heat_seconds)
        phases = sim.call("result")
        sim.stop(5)
        sink.stop(5)
        base_rates = [p["steps_per_s"] for p in phases if p["every"] == 0]  # in the order they ran
        noise = phase_noise(base_rates)
        rows = [
            Row(
                self.system,
                HEAT,
                "none",
                0,
                None,
                None,
                seconds=sum(p["seconds"] for p in phases if p["every"] == 0),
                extra={
                    "steps_per_s": statistics.median(base_rates),
                    "phases_steps_per_s": base_rates,
                    # How much the reference itself moved: a loss smaller than this is within noise.
                    "spread": (max(base_rates) - min(base_rates)) / statistics.median(base_rates),
                    "phase_noise": noise,
                },
                note="reference: consumer present, nothing published (median of the non-publishing phases)",
            )
        ]
        nbytes = HEAT_N * HEAT_N * 4
        for every in HEAT_PERIODS:
            idx = [i for i, p in enumerate(phases) if p["every"] == every]
            ratios = [phases[i]["steps_per_s"] / ((phases[i - 1]["steps_per_s"] + phases[i + 1]["steps_per_s"]) / 2) for i in idx]
            ratio = statistics.median(ratios)
            # A phase against the mean of its two neighbours: variance (1 + 1/2) noise^2 in log
            # terms; the median of k of them has about sqrt(pi/2) times the standard error of a mean.
            se = None if noise is None else math.sqrt(math.pi / 2) * math.sqrt(1.5) * noise / math.sqrt(len(ratios))
            seconds = sum(phases[i]["seconds"] for i in idx)
            published = sum(int(phases[i]["published"]) for i in idx)
            mps = published / seconds
            rows.append(
                Row(
                    self.system,
                    HEAT,
                    f"every-{every}",
                    nbytes,
                    mps,
                    mps * nbytes / 1e9,
                    n_msgs=published,
                    seconds=seconds,
                    extra={
                        "steps_per_s": statistics.median(phases[i]["steps_per_s"] for i in idx),
                        "slowdown": 1.0 - ratio,
                        "slowdown_se": se,
                        "phase_ratios": ratios,
                        "every": every,
                    },
                    note=f"publishes the 1024x1024 float32 field every {every} step(s); slowdown: median over phases vs neighbours",
                )
            )
        return rows


def phase_noise(rates: list[float]) -> float | None:
    """The relative noise of one timed phase, from reference phases in the order they ran.

    Two adjacent reference phases (one publishing phase apart) differ by the
    noise of both, so the standard deviation of the logs of their ratios is
    ``sqrt(2)`` times one phase's; the mean of those logs (a slow drift) does
    not count, as the comparison with both neighbours cancels it.

    Returns:
        The noise as a fraction, or ``None`` with fewer than 3 reference phases.
    """
    logs = [math.log(b / a) for a, b in zip(rates, rates[1:]) if a > 0 and b > 0]
    if len(logs) < 2:
        return None
    return statistics.stdev(logs) / math.sqrt(2)


def run(
    system: str,
    budget: Budget,
    workloads: list[str],
    payloads: dict[str, list[str]],
    shared_memory: bool,
    report: Callable[[str], None],
    retain: bool = False,
) -> list[Row]:
    """Start a 2-worker coupling and measure the asked workloads on it.

    Args:
        system: row label.
        budget: run sizes.
        workloads: workload names to run.
        payloads: workload -> payload labels.
        shared_memory: ``False`` sets ``coupler.transport.shared-memory: false`` in the workers.
        report: prints progress and per-cell failures.
        retain: ``coupler.delivery.retain`` (at-least-once retention on Queue channels).
            Off for the rows compared with peers, none of which keeps messages for a
            consumer's restart; on for the ``coupler-alo`` rows, which show its cost.

    Returns:
        One row per measured cell (cells that fail are reported and left out).
    """
    env = {"DASK_COUPLER__DELIVERY__RETAIN": str(retain)}
    settings: dict[str, object] = {"coupler.delivery.retain": retain}
    if not shared_memory:
        env["DASK_COUPLER__TRANSPORT__SHARED_MEMORY"] = "False"
        # The Nanny sets `env` in a worker after dask.config was read there, but it
        # ships the parent's config to the worker at start: set the key here too.
        settings["coupler.transport.shared-memory"] = False
    with dask.config.set(settings), Coupling(n_workers=2, threads_per_worker=1, dashboard_address=":0", env=env) as cp:
        bench = CouplerBench(cp, system, budget)
        cells: list[Cell] = []
        methods = [(STREAM, system, bench.stream), (FAN_IN, system, bench.fan_in), (BROADCAST, system, bench.broadcast)]
        if retain:
            methods[:1] = [(STREAM, ALO_FILL, bench.stream_filling), (STREAM, system, bench.stream_steady)]
        for wl, label, method in methods:
            if wl in workloads:
                cells += [(f"{label} {wl} {p}", lambda m=method, n=PAYLOADS[p]: m(n)) for p in payloads.get(wl, [])]
        if PINGPONG in workloads:
            cells.append((f"{system} {PINGPONG} {PINGPONG_PAYLOAD}", lambda: bench.pingpong(PAYLOADS[PINGPONG_PAYLOAD])))
        if HEAT in workloads:
            cells.append((f"{system} {HEAT}", bench.heat))
        return run_cells(cells, report, budget)

"""coupler actor hosts that the transport benchmark spawns on workers.

This module is shipped to the workers by value (``cloudpickle``), so it imports
only numpy, the standard library and coupler itself, never the other benchmark
modules. Producers stream for a fixed time (or a fixed count), mark their
warm-up messages and their last message in ``meta``; consumers start their clock
record when they send their first counted message; consumers touch every
payload (a checksum of a slice and its last element) so the data really is
usable, note when the last one arrived, and stop after every producer's last
message.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from coupler.actors import ActorHost

_TOUCH = 1024  # elements summed per message: proves the data is readable without timing a full pass


def touch(x: np.ndarray) -> float:
    """Read a payload as a consumer would start to use it."""
    flat = x.reshape(-1)
    return float(flat[:_TOUCH].sum()) + float(flat[-1])


class StreamProducer(ActorHost):
    """Send float32 messages of ``nbytes`` for ``seconds`` (at most ``max_msgs``).

    It sends its warm-up messages, then waits for :meth:`go`, so that several
    producers (fan-in) start streaming together, each warmed up.

    Args:
        nbytes: payload bytes (a multiple of 4).
        seconds: how long to stream after the warm-up.
        max_msgs: most counted messages to send.
        warmup: messages sent first and marked ``{"warm": True}`` (not counted).
    """

    def __init__(self, nbytes: int, seconds: float, max_msgs: int, warmup: int, **kw: Any) -> None:
        super().__init__(**kw)
        self.nbytes, self.seconds, self.max_msgs, self.warmup = nbytes, seconds, max_msgs, warmup
        self.sent = 0
        self.first_send = 0.0
        self._warm = threading.Event()
        self._go = threading.Event()

    def setup(self) -> None:
        self.x = np.ones(self.nbytes // 4, np.float32)

    def step(self) -> bool:
        out = self.outputs["out"]
        for i in range(self.warmup):
            out.send({"x": self.x}, step=-1 - i, meta={"warm": True})
        self._warm.set()
        while not self._go.wait(0.05):
            if self.stopping:
                return False
        t0 = time.monotonic()
        self.first_send = time.time()
        i = 0
        while True:
            last = i + 1 >= self.max_msgs or time.monotonic() - t0 >= self.seconds
            self.x[0] = i  # each message differs, as a simulation's would
            out.send({"x": self.x}, step=i, meta={"last": True} if last else None)
            i += 1
            if last:
                break
        self.sent = i
        return False

    def info(self) -> dict[str, Any]:
        return {"sent": self.sent}

    def warmed_up(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the warm-up to be sent."""
        return self._warm.wait(timeout)

    def go(self) -> None:
        """Start streaming (after the warm-up)."""
        self._go.set()

    def result(self) -> dict[str, Any]:
        """Counted messages sent and the wall-clock time of the first one."""
        return {"sent": self.sent, "start": self.first_send}

    def kept(self) -> int:
        """Messages this worker's replay logs keep for the consumers of ``out`` (a commit empties them)."""
        boxes = self.endpoint.dispatch.outboxes.of(self.outputs["out"].channel)
        return sum(len(box.log.items) for box in boxes if box.log is not None)


class StreamConsumer(ActorHost):
    """Receive until ``n_producers`` last messages arrived; time and touch every counted one.

    Args:
        n_producers: producers feeding the input channel.
    """

    def __init__(self, n_producers: int = 1, **kw: Any) -> None:
        super().__init__(**kw)
        self.n_producers = n_producers
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.ended = 0
        self.checksum = 0.0

    def step(self) -> bool:
        msg = self.inputs["in"].receive()
        if msg.meta.get("warm"):
            return True
        now = time.time()
        self.checksum += touch(msg.data["x"])
        if self.count == 0:
            self.first = now
        self.count += 1
        self.last = now
        if msg.meta.get("last"):
            self.ended += 1
        return self.ended < self.n_producers

    def result(self) -> dict[str, Any]:
        """Counted messages and the wall-clock window in which they arrived."""
        return {"count": self.count, "first": self.first, "last": self.last, "checksum": self.checksum}


class Pinger(ActorHost):
    """Send a payload on ``ping``, wait for the reply on ``pong``; time each round trip.

    Args:
        nbytes: payload bytes.
        rounds: timed round trips.
        warmup: untimed round trips first.
    """

    def __init__(self, nbytes: int, rounds: int, warmup: int = 20, **kw: Any) -> None:
        super().__init__(**kw)
        self.nbytes, self.rounds, self.warmup = nbytes, rounds, warmup
        self.rtts: list[float] = []

    def step(self) -> bool:
        x = np.ones(self.nbytes // 4, np.float32)
        ping, pong = self.outputs["ping"], self.inputs["pong"]
        for i in range(self.warmup + self.rounds):
            x[0] = i
            t0 = time.perf_counter()
            ping.send({"x": x}, step=i)
            reply = pong.receive()
            dt = time.perf_counter() - t0
            if float(reply.data["x"][0]) != i:
                raise RuntimeError(f"ping-pong reply out of order: sent {i}, got {float(reply.data['x'][0])}")
            if i >= self.warmup:
                self.rtts.append(dt)
        return False

    def result(self) -> list[float]:
        """Round trips in seconds."""
        return list(self.rtts)


class Ponger(ActorHost):
    """Reply to every ``ping`` message with its payload on ``pong``."""

    def step(self) -> bool:
        msg = self.inputs["ping"].receive()
        self.outputs["pong"].send(msg.data, step=msg.step)
        return True


class HeatSim(ActorHost):
    """A ``Heat2D`` simulator that runs a schedule of timed phases, each publishing its
    field every ``every`` steps (``0``: not publishing).

    One actor runs every phase back to back (one compilation, same process and
    caches), so phases differ only in what they publish.

    Args:
        n: grid points per side.
        schedule: publish period of each phase, e.g. ``[0, 10, 0, 1, 0]``.
        seconds: measured time of each phase.
        warmup_steps: steps run before the first phase (compilation, caches).
        pause: untimed seconds between phases, for the consumer to drain what it holds.
    """

    def __init__(
        self, n: int, schedule: list[int], seconds: float, warmup_steps: int = 20, pause: float = 0.2, **kw: Any
    ) -> None:
        super().__init__(**kw)
        self.n, self.schedule, self.seconds, self.warmup_steps, self.pause = n, list(schedule), seconds, warmup_steps, pause
        self.phases: list[dict[str, float]] = []

    def setup(self) -> None:
        import jax

        from coupler.physics import Heat2D

        self.sim = Heat2D(n=self.n)
        self.params = self.sim.random_params(jax.random.key(0))
        self.state = self.sim.init(jax.random.key(1), self.params)
        self.jstep = jax.jit(self.sim.step)

    def step(self) -> bool:
        out = self.outputs.get("field")
        state = self.state
        for _ in range(self.warmup_steps):
            state = self.jstep(state, self.params)
        state.u.block_until_ready()
        for every in self.schedule:
            time.sleep(self.pause)
            steps = published = 0
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < self.seconds:
                state = self.jstep(state, self.params)
                # Wait for every step in every phase: a publishing simulator must
                # have the field ready, so the baseline pays the same wait.
                state.u.block_until_ready()
                steps += 1
                if every and out is not None and steps % every == 0:
                    out.send({"u": np.asarray(state.u)}, step=steps)  # a host view, no copy, on CPU
                    published += 1
            elapsed = time.perf_counter() - t0
            self.phases.append({"every": every, "steps": steps, "seconds": elapsed, "steps_per_s": steps / elapsed, "published": published})
            if self.stopping:
                break
        return False

    def result(self) -> list[dict[str, float]]:
        """Per phase: publish period, steps, seconds, steps per second, messages published."""
        return [dict(p) for p in self.phases]


class Discard(ActorHost):
    """Receive a field and drop it after touching it (the heat run's consumer)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.received = 0

    def step(self) -> bool:
        msg = self.inputs["in"].receive(timeout=0.2, default=None)
        if msg is not None:
            touch(msg.data["u"])
            self.received += 1
        return True

    def result(self) -> int:
        """Fields received so far."""
        return self.received

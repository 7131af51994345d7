"""Small actor hosts used by the integration tests (shipped to workers by value)."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from coupler.actors import ActorHost


class Producer(ActorHost):
    """Sends ``n`` messages ``{"x": float32[size] filled with ident*1e6 + i}``."""

    def __init__(self, n: int, ident: int = 0, size: int = 16, **kw: Any) -> None:
        super().__init__(**kw)
        self.n, self.ident, self.size, self.i = n, ident, size, 0

    def step(self) -> bool:
        if self.i >= self.n:
            return False
        self.outputs["out"].send({"x": np.full(self.size, self.ident * 1e6 + self.i, np.float32)}, step=self.i, timestamp=0.5 * self.i)
        self.i += 1
        return True

    def info(self) -> dict[str, Any]:
        return {"sent": self.i}

    def teardown(self) -> None:
        # Its worker's links on the channel close after its end: keep their figures now.
        ep, channel = self.endpoint, self.outputs["out"].channel
        stats = [link.stats() for key, link in ep.dispatch.links.items(channel)]
        self.links_at_end = (sum(s["messages"] for s in stats), sum(s["shm_messages"] for s in stats))

    def link_figures(self) -> tuple[int, int]:
        """(messages, of which through shared memory) of its worker's links on its channel, as of its end."""
        return getattr(self, "links_at_end", (0, 0))

    def send_now(self, data: Any, timeout: float | None = None) -> int:
        """Send from the remote call itself (for error tests); returns the seq."""
        return self.outputs["out"].send(data, timeout=timeout)


class FailingProducer(Producer):
    """A :class:`Producer` whose step raises once it has sent ``fail_at`` messages (a bug in a user's step)."""

    def __init__(self, n: int, fail_at: int, **kw: Any) -> None:
        super().__init__(n, **kw)
        self.fail_at = fail_at

    def step(self) -> bool:
        if self.i == self.fail_at:
            raise ValueError(f"boom at step {self.i}")
        return super().step()


class Collector(ActorHost):
    """Receives from its ``inp`` port and records (source, seq, step, first value)."""

    def __init__(self, delay: float = 0.0, **kw: Any) -> None:
        super().__init__(**kw)
        self.delay = delay  # seconds of "work" per message
        self.got: list[tuple[str, int, int, float, float]] = []
        self.checksum = 0.0

    def step(self) -> bool:
        m = self.inputs["inp"].receive()
        if self.delay:
            time.sleep(self.delay)
        x = m.data["x"]
        self.got.append((m.source, m.seq, m.step, float(x[0]), m.timestamp))
        self.checksum += float(x.sum())
        return True

    def received(self) -> list[tuple[str, int, int, float, float]]:
        return list(self.got)

    def receive_now(self, timeout: float | None = None) -> Any:
        """Receive from the remote call itself (actor not started); returns (seq, value) or None."""
        m = self.inputs["inp"].receive(timeout=timeout, default=None)
        return None if m is None else (m.source, m.seq, float(m.data["x"][0]))

    def meta_now(self, timeout: float | None = None) -> list[str]:
        """Receive one message from the remote call itself (actor not started); returns its meta's keys."""
        return sorted(self.inputs["inp"].receive(timeout=timeout).meta)

    def sample_now(self, n: int) -> Any:
        return self.inputs["inp"].sample(n, timeout=10)

    def contents(self) -> Any:
        return self.inputs["inp"].buffer.contents()

    def buffer_stats(self) -> dict[str, Any]:
        return self.inputs["inp"].stats.as_dict()

    def detach(self) -> None:
        self.inputs["inp"].close()


class Forwarder(ActorHost):
    """Sends every message of its ``inp`` port on, unchanged, on its ``out`` port."""

    def step(self) -> bool:
        m = self.inputs["inp"].receive()
        self.outputs["out"].send(m.data, step=m.step)
        return True


class Blocker(ActorHost):
    """A run loop whose step blocks its thread until the actor is stopped."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.entered = threading.Event()

    def step(self) -> bool:
        self.entered.set()
        while not self.stopping:
            time.sleep(0.01)  # stands for a long simulation step
        return True

    def in_step(self) -> bool:
        return self.entered.wait(10)


class TakeOneThenStall(ActorHost):
    """Receives one message from ``inp``, then stalls its run loop until stopped (its queue fills up)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.took = 0

    def step(self) -> bool:
        if self.took == 0:
            self.inputs["inp"].receive()
            self.took = 1
        while not self.stopping:
            time.sleep(0.01)  # stands for a long step that does not read its input
        return True


class FailOnFirst(ActorHost):
    """Takes one message from ``inp``, then its step raises (a consumer with a bug)."""

    def step(self) -> bool:
        m = self.inputs["inp"].receive()
        raise RuntimeError(f"cannot use message {m.seq}")

"""Actors for the reliability tests: a deterministic simulator and a learner on a Queue (shipped by value)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from coupler.actors.base import ActorHost

FEATURES = 4
TRUE_W = np.array([0.5, -1.0, 2.0, 0.25])
LEARNING_RATE = 0.05


def sample(seed: int, i: int, field: int = 0) -> dict[str, np.ndarray]:
    """The ``i``-th sample of simulator ``seed``: the same on every run (a restarted simulator repeats it).

    Args:
        field: if not 0, the sample also carries ``field`` float32 values all equal
            to ``y`` (large enough, it goes through shared memory between workers).
    """
    rng = np.random.default_rng([seed, i])
    x = rng.standard_normal(FEATURES).astype(np.float32)
    y = np.float32(x @ TRUE_W + 0.1 * rng.standard_normal())
    out = {"x": x, "y": np.array(y, np.float32)}
    if field:
        out["field"] = np.full(field, y, np.float32)
    return out


def sgd_step(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """One least-squares SGD step (the learner's update, also replayed by the tests)."""
    x64 = x.astype(np.float64)
    return w - LEARNING_RATE * (float(w @ x64) - float(y)) * x64


def checksum(data: dict[str, np.ndarray]) -> float:
    """What the learner adds up per message (compared with the sum over every sample sent)."""
    return float(data["x"].astype(np.float64).sum() + float(data["y"]))


class Simulator(ActorHost):
    """Sends ``n`` samples on ``out``, one per step; its state is its step counter.

    Args:
        n: samples to send.
        seed: which stream of samples.
        period: seconds per step (stands for computing a field).
        field: values of a large ``field`` array in each sample (0: none).
        hold: seconds to stay in the step of the last sample before finishing (or until
            stopped): a producer that waits, e.g. for an answer, with no step boundary,
            so no checkpoint and no final flush.
    """

    def __init__(self, n: int, seed: int, period: float = 0.0, field: int = 0, hold: float = 0.0, **kw: Any) -> None:
        super().__init__(**kw)
        self.n, self.seed, self.period, self.field, self.hold, self.i = n, seed, period, field, hold, 0
        self.shm_messages = 0  # what its worker's links carried in shared memory, as of its end

    def teardown(self) -> None:
        # Its links close after its end (nothing else on its worker sends on them): count them now.
        ep, channel = self.endpoint, self.outputs["out"].channel
        self.shm_messages = sum(link.stats()["shm_messages"] for key, link in ep.dispatch.links.items(channel))

    def step(self) -> bool:
        if self.i >= self.n:
            return False
        if self.period:
            time.sleep(self.period)
        self.outputs["out"].send(sample(self.seed, self.i, self.field), step=self.i)
        self.i += 1
        if self.i == self.n and self.hold:
            end = time.monotonic() + self.hold
            while time.monotonic() < end and not self.stopping:
                time.sleep(0.02)
        return True

    def info(self) -> dict[str, Any]:
        return {"i": self.i, "shm_messages": self.shm_messages}

    def state_dict(self) -> dict[str, Any]:
        return {"i": self.i}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.i = int(state["i"])


class QueueLearner(ActorHost):
    """Fits a linear model by SGD on every message of its ``Queue`` input ``data``, once each.

    Its state (model weights, the (source, seq) of every message it trained on,
    a checksum, how many messages carried a ``field`` that was not all ``y``) is
    what a checkpoint holds; ``restored_at`` says how many
    messages the checkpoint it was restored from covered (-1: never restored).

    Args:
        period: seconds to sleep per message (stands for a training step).
    """

    def __init__(self, period: float = 0.0, **kw: Any) -> None:
        super().__init__(**kw)
        self.period = period
        self.w = np.zeros(FEATURES)
        self.trained: list[tuple[str, int]] = []
        self.total = 0.0
        self.bad_fields = 0
        self.restored_at = -1

    def step(self) -> bool:
        m = self.inputs["data"].receive()
        if self.period:
            time.sleep(self.period)
        self.w = sgd_step(self.w, m.data["x"], m.data["y"])
        self.trained.append((m.source, m.seq))
        self.total += checksum(m.data)
        if "field" in m.data:
            self.bad_fields += int(not np.all(m.data["field"] == m.data["y"]))
        return True

    def info(self) -> dict[str, Any]:
        return {"count": len(self.trained)}

    def record(self) -> dict[str, Any]:
        return {
            "w": self.w.copy(), "trained": list(self.trained), "total": self.total, "bad_fields": self.bad_fields,
            "restored_at": self.restored_at,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"w": self.w.copy(), "trained": [list(t) for t in self.trained], "total": self.total, "bad_fields": self.bad_fields}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.w = np.asarray(state["w"], np.float64).copy()
        self.trained = [(str(s), int(q)) for s, q in state["trained"]]
        self.total = float(state["total"])
        self.bad_fields = int(state["bad_fields"])
        self.restored_at = len(self.trained)


class Leaver(ActorHost):
    """Takes ``n`` messages from ``data``, then closes that input (it leaves for good) and finishes."""

    def __init__(self, n: int, **kw: Any) -> None:
        super().__init__(**kw)
        self.n, self.count = n, 0

    def step(self) -> bool:
        self.inputs["data"].receive()
        self.count += 1
        if self.count < self.n:
            return True
        self.inputs["data"].close()
        return False


def break_stream_at(step: int) -> None:
    """On this worker, make the receiving end of a producer's stream fail once, at the batch holding ``step``.

    It stands for a stream cut while both ends live on (a connection reset between
    hosts): the receiver refuses the whole batch and closes the stream, and the
    producer's link sees the end with those messages not acknowledged.
    """
    from coupler.runtime.dataplane.buffers import QueueBuffer

    original = QueueBuffer.put_credited

    def put_credited(self: QueueBuffer, link: int, messages: list) -> int:
        if any(m.step == step for m in messages) and QueueBuffer.put_credited is put_credited:
            QueueBuffer.put_credited = original  # once
            raise ConnectionResetError(f"stream cut at step {step} (injected)")
        return original(self, link, messages)

    QueueBuffer.put_credited = put_credited


def stream_breaks_left() -> bool:
    """Whether a :func:`break_stream_at` on this worker has not fired yet."""
    from coupler.runtime.dataplane.buffers import QueueBuffer

    return QueueBuffer.put_credited.__qualname__.startswith("break_stream_at")

"""Actors for the data-plane tests (shipped to workers by value)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from coupler.actors import ActorHost


class Streamer(ActorHost):
    """Sends ``n`` messages ``{"x": float32[size] filled with i}`` (read-only arrays if asked) as fast as it can, then flushes."""

    def __init__(self, n: int, size: int, read_only: bool = False, **kw: Any) -> None:
        super().__init__(**kw)
        self.n, self.size, self.read_only, self.i = n, size, read_only, 0
        self._final_links: list[dict[str, Any]] | None = None

    def step(self) -> bool:
        if self.i >= self.n:
            self.outputs["out"].flush(timeout=60)
            return False
        x = np.full(self.size, float(self.i), np.float32)
        x.flags.writeable = not self.read_only  # read-only, as np.asarray of a JAX array is
        self.outputs["out"].send({"x": x}, step=self.i, timestamp=0.25 * self.i)
        self.i += 1
        return True

    def teardown(self) -> None:
        # An ended producer's links close (nothing else here sends on them): keep their last figures.
        self._final_links = self._live_link_stats()

    def link_stats(self) -> list[dict[str, Any]]:
        """This worker's producer links (what the endpoint reports); once the loop ended, as they were then."""
        return self._final_links if self._final_links is not None else self._live_link_stats()

    def _live_link_stats(self) -> list[dict[str, Any]]:
        return [link.stats() for link in self.endpoint.dispatch.links.values()]

    def pid(self) -> int:
        return os.getpid()


class Keeper(ActorHost):
    """Receives everything and keeps it, to check what a consumer owns."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.msgs: list[Any] = []

    def step(self) -> bool:
        self.msgs.append(self.inputs["inp"].receive())
        return True

    def count(self) -> int:
        return len(self.msgs)

    def steps(self) -> list[int]:
        return [m.step for m in self.msgs]

    def summary(self) -> dict[str, Any]:
        """Order, timestamps, content and ownership of what arrived."""
        xs = [m.data["x"] for m in self.msgs]
        ok = all(bool(np.all(x == x[0])) for x in xs)
        writable = all(x.flags.writeable for x in xs)
        for x in xs:  # the consumer may use its data as its own: scribble on it
            x[0] = -1.0
        return {
            "seq": [m.seq for m in self.msgs],
            "step": [m.step for m in self.msgs],
            "timestamp": [m.timestamp for m in self.msgs],
            "first": [float(x[1]) for x in xs],
            "uniform": ok,
            "writable": writable,
            "lag_ok": all(m.sent_at > 0 for m in self.msgs),
        }

    def drop(self) -> None:
        self.msgs.clear()

    def pid(self) -> int:
        return os.getpid()


class FakeDeviceArray:
    """Stands in for an array in GPU memory where there is no GPU.

    DLPack reports it on a CUDA device, so the runtime treats it as one; reading
    it on the host (``np.asarray``) is the device-to-host copy, counted in
    ``host_reads``; ``copy`` is a device-to-device copy. Unlike a JAX array it is
    mutable (as a CuPy array is), so the runtime must copy it to share it.
    """

    host_reads = 0  # per process: what the producing actor reports

    def __init__(self, a: np.ndarray) -> None:
        self._a = a
        self.shape, self.dtype = a.shape, a.dtype

    def __dlpack_device__(self) -> tuple[int, int]:
        return (2, 0)  # kDLCUDA, device 0

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        FakeDeviceArray.host_reads += 1
        return self._a.copy()

    def copy(self) -> FakeDeviceArray:
        return FakeDeviceArray(self._a.copy())


def _device_array(kind: str, a: np.ndarray) -> Any:
    if kind == "fake":
        return FakeDeviceArray(a)
    import jax

    return jax.device_put(a, jax.devices()[0])  # the worker's accelerator where it has one


class DeviceStreamer(ActorHost):
    """Sends ``n`` messages ``{"x": [size] device array filled with i}`` (``kind``: "fake" or "jax")."""

    def __init__(self, n: int, size: int, kind: str = "fake", **kw: Any) -> None:
        super().__init__(**kw)
        self.n, self.size, self.kind, self.i = n, size, kind, 0
        self.pointers: list[int] = []
        self.reads_before = FakeDeviceArray.host_reads

    def step(self) -> bool:
        if self.i >= self.n:
            self.outputs["out"].flush(timeout=60)
            return False
        x = _device_array(self.kind, np.full(self.size, float(self.i), np.float32))
        if self.kind == "jax":
            self.pointers.append(int(x.unsafe_buffer_pointer()))
        self.outputs["out"].send({"x": x}, step=self.i)
        self.i += 1
        return True

    def report(self) -> dict[str, Any]:
        """Host reads of the fake arrays, where the JAX arrays sent lived, and what replay logs keep."""
        kept = [type(a).__name__ for box in self.endpoint.dispatch.outboxes.values() if box.log for it in box.log.replay() for a in it.leaves or []]
        # A stream's item may live in a shared-memory segment (the log keeps the segment, no arrays).
        logs = [
            "segment" if it.segment is not None else type(it.leaves).__name__
            for box in self.endpoint.dispatch.outboxes.values() if box.log for it in box.log.replay()
        ]
        return {"host_reads": FakeDeviceArray.host_reads - self.reads_before, "pointers": self.pointers,
                "kept": sorted(set(kept)), "logs": sorted(set(logs))}


class Inspector(ActorHost):
    """Receives everything and says what each payload leaf is and where it lives."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.msgs: list[Any] = []

    def step(self) -> bool:
        self.msgs.append(self.inputs["inp"].receive())
        return True

    def count(self) -> int:
        return len(self.msgs)

    def report(self) -> list[dict[str, Any]]:
        out = []
        for m in self.msgs:
            x = m.data["x"]
            row = {"seq": m.seq, "type": type(x).__name__, "host": isinstance(x, np.ndarray)}
            row["writable"] = isinstance(x, np.ndarray) and bool(x.flags.writeable)
            if type(x).__module__.partition(".")[0] in ("jax", "jaxlib"):
                row["pointer"] = int(x.unsafe_buffer_pointer())
                row["platform"] = next(iter(x.devices())).platform
            values = x._a if isinstance(x, FakeDeviceArray) else np.asarray(x)  # no host read counted
            row["uniform"] = bool(np.all(values == float(m.seq)))
            out.append(row)
        return out


class Blank(ActorHost):
    """Sends ``n`` messages without arrays (``{}``): only their step and metadata travel."""

    def __init__(self, n: int, **kw: Any) -> None:
        super().__init__(**kw)
        self.n, self.i = n, 0

    def step(self) -> bool:
        if self.i >= self.n:
            self.outputs["out"].flush(timeout=60)
            return False
        self.outputs["out"].send({}, step=self.i, meta={"i": self.i})
        self.i += 1
        return True

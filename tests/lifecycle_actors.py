"""Actor hosts of the lifecycle tests (shipped to workers by value)."""

from __future__ import annotations

from typing import Any

import numpy as np

from coupler.actors import ActorHost


class TakeN(ActorHost):
    """Take ``n`` messages from ``inp``, recording ``(source, seq, first value)``, then finish."""

    def __init__(self, n: int, **kw: Any) -> None:
        super().__init__(**kw)
        self.n = n
        self.got: list[tuple[str, int, float]] = []

    def step(self) -> bool:
        if len(self.got) >= self.n:
            return False
        m = self.inputs["inp"].receive()
        self.got.append((m.source, m.seq, float(m.data["x"][0])))
        return True

    def received(self) -> list[tuple[str, int, float]]:
        return list(self.got)


class SendN(ActorHost):
    """Send ``n`` messages ``{"x": float32[size] filled with i}`` on ``out``, then finish."""

    def __init__(self, n: int, size: int = 16, **kw: Any) -> None:
        super().__init__(**kw)
        self.n, self.size, self.i = n, size, 0

    def step(self) -> bool:
        if self.i >= self.n:
            return False
        self.outputs["out"].send({"x": np.full(self.size, self.i, np.float32)}, step=self.i)
        self.i += 1
        return True

    def send_now(self, value: float, timeout: float | None = None) -> int:
        """Send one message from the remote call itself (the loop not started); returns its seq."""
        return self.outputs["out"].send({"x": np.full(self.size, value, np.float32)}, timeout=timeout)


class BadInit(TakeN):
    """A :class:`TakeN` whose own constructor raises after the base made its ports (a bug in a user's
    ``__init__``, e.g. a model that fails to build)."""

    def __init__(self, n: int, **kw: Any) -> None:
        super().__init__(n, **kw)
        raise RuntimeError("the model failed to build")


class LateBadInit(TakeN):
    """Raises in the most derived constructor, after two levels of ``super().__init__``."""

    def __init__(self, n: int, **kw: Any) -> None:
        super().__init__(n, **kw)
        raise ValueError("a bad argument, found late")

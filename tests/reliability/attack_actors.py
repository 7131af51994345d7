"""Actors for the attack tests (shipped to the workers by value)."""

from __future__ import annotations

from typing import Any

from coupler.actors.base import ActorHost


class SeqSink(ActorHost):
    """Records ``(source, seq, v)`` of every message of its ``Queue`` input; checkpointed."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.got: list[tuple[str, int, float]] = []

    def step(self) -> bool:
        m = self.inputs["data"].receive()
        self.got.append((m.source, m.seq, float(m.data["v"])))
        return True

    def info(self) -> dict[str, Any]:
        return {"count": len(self.got)}

    def record(self) -> list[tuple[str, int, float]]:
        return list(self.got)

    def state_dict(self) -> dict[str, Any]:
        return {"got": [list(g) for g in self.got]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.got = [(str(s), int(q), float(v)) for s, q, v in state["got"]]

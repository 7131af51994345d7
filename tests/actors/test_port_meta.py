"""What a sender may put in a message's metadata: its own keys, never the runtime's (``coupler.``)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from coupler.actors.ports import HostOutPort
from coupler.actors.take_order import TakeOrder
from coupler.runtime import Message, OutPort


class _Sender:
    """The endpoint's sender as a port calls it: records what it was given."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, channel: str, source: str, data: Any, **kw: Any) -> int:
        self.sent.append(kw)
        return len(self.sent) - 1


@pytest.mark.parametrize("key", ["coupler.epoch", "coupler.floor", "coupler.takes", "coupler.anything"])
def test_a_send_whose_meta_names_a_key_of_the_runtimes_own_is_refused_before_anything_is_sent(key: str) -> None:
    """One ``send(meta={"coupler.epoch": 1})`` fenced the sender's own stream: only 6 of 40 messages arrived."""
    sender = _Sender()
    endpoint: Any = SimpleNamespace(sender=sender)
    takes = TakeOrder()
    takes.record("in", Message({}, source="sim", seq=0))
    loop: Any = SimpleNamespace(name="relay", cancel=None)
    for port in (OutPort(endpoint, "c", "relay"), HostOutPort(endpoint, "c", loop, takes)):
        with pytest.raises(ValueError, match="runtime's"):
            port.send({}, meta={key: 1, "step_of_mine": 2})
        with pytest.raises(TypeError, match="string keys"):
            port.send({}, meta={1: "x"})
        assert sender.sent == []
    # The same keys without the prefix are the user's; the host adds its own takes note.
    OutPort(endpoint, "c", "relay").send({}, meta={"epoch": 1})
    HostOutPort(endpoint, "c", loop, takes).send({}, meta={"epoch": 1})
    assert sender.sent[0]["meta"] == {"epoch": 1}
    assert sender.sent[1]["meta"]["epoch"] == 1 and "coupler.takes" in sender.sent[1]["meta"]

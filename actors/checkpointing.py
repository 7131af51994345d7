"""An actor host's checkpoints: its state as plain data at a step boundary, and a fresh instance brought to it.

A checkpoint holds the loop's record (state, steps, error, times), the
subclass's ``state_dict()``, the next sequence number of each output port
(taken after what the outputs sent was accepted), for each ``Queue`` input
the highest sequence number per source it took (``"delivered"``), the number
of its next take (``"takes"``, see :mod:`coupler.actors.take_order`) and --
when the actor hands over to a new instance -- the messages still waiting in
its ``Queue`` inputs (``"inputs"``). When to take one, and who serves the
request, is the run loop's (:mod:`coupler.actors.run_loop`).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Mapping

from coupler.runtime import InPort, Message, OutPort
from coupler.runtime.dataplane.buffers import QueueBuffer
from coupler.runtime.dataplane.endpoint import Endpoint
from coupler.actors.run_loop import ENDED_STATES, LoopRecord
from coupler.actors.take_order import TakeOrder

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
# How long a hand-over waits for the actor's sent messages to be accepted.
HANDOVER_FLUSH_TIMEOUT = 30.0
# How long a hand-over waits for a lossy output's last messages (a cut-off consumer may never take them).
LOSSY_HANDOVER_FLUSH_TIMEOUT = 1.0
# How long a periodic checkpoint waits for the actor's sent messages to be accepted.
CHECKPOINT_FLUSH_TIMEOUT = 5.0


def encode_message(m: Message) -> dict[str, Any]:
    """A message as plain data for a checkpoint: ``{"header": {...}, "data": pytree}``."""
    return {"header": m.header(), "data": m.data}


def decode_message(d: dict[str, Any]) -> Message:
    """The inverse of :func:`encode_message`."""
    return Message.from_header(d["header"], d["data"])


class Checkpointer:
    """Takes one actor host's checkpoints, and restores a checkpoint into it before it starts.

    Args:
        name: the actor's name.
        cls: its class's ``__qualname__`` (a checkpoint restores only into the same class).
        endpoint: its worker's endpoint (output sequence numbers live there).
        inputs: its input ports.
        outputs: its output ports.
        record: its loop's record.
        takes: its take order.
        state_dict: the subclass's ``state_dict``.
        load_state_dict: the subclass's ``load_state_dict``.
    """

    def __init__(
        self,
        name: str,
        cls: str,
        endpoint: Endpoint,
        inputs: Mapping[str, InPort],
        outputs: Mapping[str, OutPort],
        record: LoopRecord,
        takes: TakeOrder,
        state_dict: Callable[[], dict[str, Any]],
        load_state_dict: Callable[[dict[str, Any]], None],
    ) -> None:
        self.name, self.cls, self.endpoint = name, cls, endpoint
        self.inputs, self.outputs, self.record, self.takes = inputs, outputs, record, takes
        self._state_dict, self._load_state_dict = state_dict, load_state_dict
        # The outputs' sequence numbers once the ports were given back (the endpoint forgets them).
        self._ended_seq: dict[tuple[str, str], int] | None = None

    def take(self, state: str | None = None) -> dict[str, Any]:
        """The checkpoint now (call at a step boundary, or with the loop not running).

        Args:
            state: the state to record (default: the loop's).
        """
        rec = self.record
        return {
            "format": CHECKPOINT_FORMAT,
            "name": self.name,
            "cls": self.cls,
            "time": time.time(),
            "status": {
                "state": state or rec.state,
                "steps": rec.steps,
                "error": rec.error,
                "started_at": rec.started_at,
                "stopped_at": rec.stopped_at,
            },
            "state": self._state_dict(),
            "outputs": {p: {"next_seq": self._next_seq(port)} for p, port in self.outputs.items()},
            "inputs": {},
            "delivered": {p: port.buffer.taken_marks() for p, port in self.inputs.items() if isinstance(port.buffer, QueueBuffer)},
            "takes": self.takes.count,
        }

    def take_after_flush(self) -> dict[str, Any]:
        """:meth:`take`, once what the ``Queue`` outputs sent was accepted (lossy ones are not waited for).

        A successor resumes at the recorded ``next_seq`` and would not send the
        unaccepted ones again.

        Raises:
            ChannelTimeout: if they were not accepted within ``CHECKPOINT_FLUSH_TIMEOUT``.
        """
        for port in self.outputs.values():
            # A lossy channel's messages need no replay (a successor's are as good): waiting for a
            # cut-off consumer to accept them held a Latest producer up 5 s per checkpoint.
            if not port.lossy:
                port.flush(timeout=CHECKPOINT_FLUSH_TIMEOUT)
        return self.take()

    def hand_over(self, before: str, abandoned: bool = False) -> dict[str, Any]:
        """The final checkpoint for a successor: outputs flushed, inputs detached, their held messages carried.

        Args:
            before: the state the actor was in when asked; the successor resumes in
                it, unless the loop has ended by itself since.
            abandoned: a step was abandoned to get here (a forced retire): its input
                was taken, its output maybe not sent.

        Returns:
            The checkpoint; its ``"incomplete"`` says why a successor must not resume
            from it (``""``: it may): a step was abandoned, or what an output sent was
            not accepted (a consumer cut off). Its counters and state would run past
            messages no consumer holds, which leave with this worker.
        """
        # An actor that was stopped (asked to, not by this hand-over's abort) or failed never sends
        # again, nor does its successor: its final checkpoint is its result (a restart from an older
        # one would roll it back).
        ended = self.record.state == "failed" or (self.record.state == "stopped" and not abandoned)
        why = ["a step was abandoned"] if abandoned and not ended else []
        for port in self.outputs.values():
            if port.lossy:
                self._flush(port, LOSSY_HANDOVER_FLUSH_TIMEOUT)  # its last value, if it can; a loss is allowed
            elif not self._flush(port) and not ended:
                why.append(f"what was sent on {port.channel!r} was not accepted")
        pending = {p: [encode_message(m) for m in port.close(handover=True)] for p, port in self.inputs.items()}
        ended_by_itself = self.record.state in ("finished", "failed")
        ck = self.take(None if ended_by_itself or before not in ("running", "paused", "created") else before)
        # "delivered" stays what was taken: producers keep the carried messages for a replay
        # until the successor commits past them, so a crash of the successor before it takes
        # them loses nothing (and covered by the marks, the successor would drop them).
        ck["inputs"] = {p: ms for p, ms in pending.items() if ms}
        ck["incomplete"] = "; ".join(why)
        return ck

    def _flush(self, port: OutPort, timeout: float = HANDOVER_FLUSH_TIMEOUT) -> bool:
        """Wait until what this port sent was accepted (sends are pipelined), before the worker goes; whether it was."""
        try:
            port.flush(timeout=timeout)
            return True
        except Exception as e:  # a forced hand-over interrupts it, a consumer cut off times it out
            logger.warning("actor %r: what was sent on %r was not accepted before the hand-over: %s", self.name, port.channel, e)
            return False

    def check(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another format or class.

        Raises:
            ValueError: if it is of another format or class.
        """
        fmt, cls = checkpoint.get("format"), checkpoint.get("cls")
        if fmt != CHECKPOINT_FORMAT or cls != self.cls:
            raise ValueError(
                f"actor {self.name!r} expects a checkpoint of format {CHECKPOINT_FORMAT} for class "
                f"{self.cls}, got format {fmt!r} for class {cls!r}"
            )

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Bring the actor, not started yet, to ``checkpoint`` (see ``ActorHost.restore``).

        Raises:
            ValueError: if the checkpoint names ports the actor does not have, or its
                state does not fit (``load_state_dict``).
        """
        outputs, inputs = checkpoint.get("outputs", {}), checkpoint.get("inputs", {})
        unknown = sorted(set(outputs) - set(self.outputs)) + sorted(set(inputs) - set(self.inputs))
        if unknown:
            raise ValueError(
                f"actor {self.name!r} has inputs {sorted(self.inputs)} and outputs {sorted(self.outputs)}; "
                f"the checkpoint names ports {unknown} it does not have"
            )
        self._load_state_dict(checkpoint["state"])
        st = checkpoint["status"]
        self.record.steps = int(st["steps"])
        for port, seq in outputs.items():
            out, next_seq = self.outputs[port], int(seq["next_seq"])
            # On a work-sharing queue, what is sent again goes where the members say (receipts.py).
            plan = self.endpoint.gather_receipts(out.channel, out.source, next_seq)
            self.endpoint.sender.resume_seq(out.channel, out.source, next_seq, plan)
        delivered = checkpoint.get("delivered", {})
        for port, inp in self.inputs.items():
            messages = [decode_message(m) for m in inputs.get(port, [])]
            if isinstance(inp.buffer, QueueBuffer):
                # Keeps the carried messages first; drops what producers replayed and the checkpoint covers.
                inp.buffer.resume(delivered.get(port, {}), messages)
            elif messages:
                inp.buffer.preload(messages)
        self.takes.follow_predecessor(self.name, self.endpoint, self.inputs, self.outputs, int(checkpoint.get("takes", 0)))
        if st["state"] in ENDED_STATES:
            self.record.state, self.record.error = st["state"], st["error"]
            self.record.started_at, self.record.stopped_at = st["started_at"], st["stopped_at"]

    # Sequence numbers live in the endpoint, per (channel, source). A successor on
    # another worker must continue them, or its consumers would see the sequence restart.
    def keep_sequences(self) -> None:
        """Read the outputs' next sequence numbers before the ports are given back (the endpoint forgets them)."""
        self._ended_seq = {(p.channel, p.source): self.endpoint.sender.next_seq(p.channel, p.source) for p in self.outputs.values()}

    def _next_seq(self, port: OutPort) -> int:
        if self._ended_seq is not None:  # the endpoint has forgotten this producer
            return self._ended_seq[(port.channel, port.source)]
        return self.endpoint.sender.next_seq(port.channel, port.source)

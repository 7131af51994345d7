"""Typed errors of the coupling runtime.

Every error says what was expected and what came, and names the channel (and
field or peer) involved, so that a user reading a traceback from a remote actor
knows where to look. All derive from :class:`CouplerError`; where a builtin
exception has the same meaning it is a second base class, so ``except
TimeoutError`` keeps working.
"""

from __future__ import annotations

from typing import Any


class CouplerError(Exception):
    """Base class of every error raised by coupler."""


class UnknownChannel(CouplerError, KeyError):
    """A channel name that was never declared."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else "unknown channel"


class UnknownPort(CouplerError, KeyError):
    """An actor's step asked for a port name its spawn did not give it (``self.inputs["x"]``)."""

    def __str__(self) -> str:  # KeyError's own str() quotes the message as a repr
        return str(self.args[0]) if self.args else ""


class ChannelExists(CouplerError, ValueError):
    """A channel declared twice with different policies or specs."""


class SpecMismatch(CouplerError, ValueError):
    """A message whose structure, shapes or dtypes do not fit the channel's spec."""


class ChannelClosed(CouplerError):
    """A send on a closed channel, or a receive on a closed and drained one."""


class ConsumerGone(CouplerError):
    """A consumer of the channel disappeared (detached, or its worker was lost)."""


class Fenced(CouplerError):
    """This instance of an actor was replaced: a successor runs elsewhere, and its consumers refuse this one's streams.

    What a worker that the scheduler declared dead, and that came back, gets
    when its old actors send: they must stop (their successors carry on).
    """


class ChannelTimeout(CouplerError, TimeoutError):
    """A send or receive that did not complete in time (full queue, no consumer, no data)."""


class PartiallyDelivered(ChannelTimeout):
    """A broadcast ``Queue`` send that timed out after some consumers had taken the message.

    The message is sent, under sequence number ``seq``: the consumers in
    ``pending`` get it before anything newer, once they have room. Do not send
    the same payload again (it would reach the others twice, under a new number).

    Attributes:
        seq: the message's sequence number.
        delivered_to: the consumers that took it within the timeout.
        pending: the consumers it is kept for.
    """

    def __init__(self, message: str, seq: int, delivered_to: tuple[str, ...], pending: tuple[str, ...]) -> None:
        super().__init__(message)
        self.seq, self.delivered_to, self.pending = seq, tuple(delivered_to), tuple(pending)

    def __reduce__(self) -> tuple[Any, ...]:  # keeps the attributes through pickling (Dask re-raises remote errors)
        return (type(self), (str(self), self.seq, self.delivered_to, self.pending))


class SequenceBehind(CouplerError):
    """A driver's relay, restarted from a checkpoint, resumes before the next message its script numbers.

    Raised by the relay to the driver (``runtime/driver.py``), which sends what it
    kept from ``next_seq`` on again, in order, before its next message; scripts
    do not see it.

    Attributes:
        next_seq: the sequence number the restarted relay's next message gets.
    """

    def __init__(self, message: str, next_seq: int) -> None:
        super().__init__(message)
        self.next_seq = int(next_seq)

    def __reduce__(self) -> tuple[Any, ...]:  # keeps the attribute through pickling (Dask re-raises remote errors)
        return (type(self), (str(self), self.next_seq))


class WrongPolicy(CouplerError, TypeError):
    """An operation the channel's policy does not support (e.g. ``receive`` on a Reservoir)."""


class NoCoupling(CouplerError, RuntimeError):
    """Runtime code used outside a worker or client that has a coupling installed, or a call on a closed ``Coupling``."""


class Interrupted(CouplerError):
    """A blocking receive or send given up because its actor was asked to stop."""


class ActorFailed(CouplerError, RuntimeError):
    """An actor's run loop raised (the message carries the actor's name and traceback), or the
    supervisor gave up on it after its restarts ran out (the message says why)."""


class ActorEnded(CouplerError, RuntimeError):
    """``start()`` or ``resume()`` of an actor whose run loop has ended; a run loop runs once."""


class InvalidRequest(CouplerError, ValueError):
    """The broker refused a request's arguments (a bad name, channel declaration or policy);
    the message says what it expected and what came."""


class SchedulerUnreachable(CouplerError, OSError):
    """No Dask scheduler answered at the given address in time."""


class NoSuitableWorker(CouplerError, RuntimeError):
    """No worker of the cluster has the resources an actor asks for, or is one it is pinned to."""


class WorkersNotReady(CouplerError, TimeoutError):
    """The cluster's workers did not all join in time (e.g. jobs still queued)."""


class CheckpointError(CouplerError, OSError):
    """A checkpoint that could not be written or read back (what, where, why)."""


ERRORS: dict[str, type[CouplerError]] = {
    cls.__name__: cls
    for cls in (
        UnknownChannel,
        ChannelExists,
        SpecMismatch,
        ChannelClosed,
        ConsumerGone,
        Fenced,
        ChannelTimeout,
        WrongPolicy,
        NoCoupling,
        Interrupted,
        ActorFailed,
        InvalidRequest,
    )
}


def error_reply(exc: CouplerError) -> dict[str, str]:
    """Encode a typed error as a handler reply (typed errors do not survive Dask's rpc)."""
    return {"status": "error", "error": type(exc).__name__, "message": str(exc)}


def raise_for_reply(reply: dict) -> dict:
    """Re-raise a typed error encoded by :func:`error_reply`, else return ``reply``.

    Raises:
        CouplerError: the subclass named in the reply.
    """
    if isinstance(reply, dict) and reply.get("status") == "error":
        raise ERRORS.get(reply.get("error", ""), CouplerError)(reply.get("message", "remote error"))
    return reply


class ActorReleased(CouplerError, RuntimeError):
    """A call on an actor whose instance was given back (``ActorRef.release``); only its status answers."""


ERRORS[ActorReleased.__name__] = ActorReleased

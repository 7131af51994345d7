"""What a subscription's relay handed the coupling script, kept until the script acknowledges it.

The script's subscription (``runtime/driver.py``) takes messages through a relay
actor on a worker (``actors/relay.py``). A take moves the relay's input marks,
which its checkpoints record; if the relay's worker is lost after a take, after
a checkpoint covering it, and before the reply reached the script, the
restarted relay would never hand that message again. So the relay numbers its
hand-outs and keeps each until the script's next call acknowledges it
(:class:`HandOutLog`); its checkpoint holds the unacknowledged ones and covers
no take beyond what it handed (:meth:`HandOutLog.covered`). A restored relay
hands those again first; the script drops what it had by ``(source, seq)``.

Sans-IO: the relay calls it with the messages; ``tests/actors/test_hand_outs.py``
drives it through takes, lost replies, checkpoints and restarts.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from coupler.actors.checkpointing import decode_message, encode_message
from coupler.runtime import Message


@dataclass(frozen=True)
class HandOut:
    """One message handed to the script, numbered for its acknowledgement.

    Attributes:
        number: the hand-out's number (increasing, also across the relay's restarts).
        message: the message.
    """

    number: int
    message: Message


class HandOutLog:
    """A relay's hand-outs not yet acknowledged, and per source the highest seq it handed.

    Thread-safe: the relay's take runs in a thread of its own, its checkpoint on
    the worker's event loop.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: deque[HandOut] = deque()
        self._again: deque[HandOut] = deque()  # a restored log's hand-outs to give again first
        self._next = 0
        self._covered: dict[str, int] = {}

    def acknowledge(self, ack: int) -> HandOut | None:
        """The script got hand-outs up to ``ack``; forget them. Returns one to hand again, if any.

        Args:
            ack: the number of the last hand-out the script got (``-1``: none).

        Returns:
            The oldest hand-out a predecessor made that the script has not
            acknowledged (to be handed before any new take), or ``None``.
        """
        with self._lock:
            while self._kept and self._kept[0].number <= ack:
                self._kept.popleft()
            while self._again and self._again[0].number <= ack:
                self._again.popleft()
            # New numbers stay above what the script acknowledged, also after a restore
            # from an older checkpoint: an old acknowledgement never covers a new hand-out.
            self._next = max(self._next, ack + 1)
            return self._again.popleft() if self._again else None

    def record(self, m: Message) -> HandOut:
        """``m`` was just taken for the script: number it and keep it until acknowledged."""
        with self._lock:
            h = HandOut(self._next, m)
            self._next += 1
            self._kept.append(h)
            if m.seq > self._covered.get(m.source, -1):
                self._covered[m.source] = m.seq
        return h

    def covered(self) -> dict[str, int]:
        """Per source, the highest seq handed out: what a checkpoint may record as taken."""
        with self._lock:
            return dict(self._covered)

    def state(self) -> dict[str, Any]:
        """Plain data for a checkpoint: the unacknowledged hand-outs, the next number, what they cover."""
        with self._lock:
            return {
                "handed": [[h.number, encode_message(h.message)] for h in self._kept],
                "next": self._next,
                "covered": dict(self._covered),
            }

    def load(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state` of a predecessor: its unacknowledged hand-outs come again first.

        Raises:
            ValueError: if ``state`` is not a :meth:`state`.
        """
        try:
            kept = [HandOut(int(k), decode_message(m)) for k, m in state["handed"]]
            nxt = int(state["next"])
            covered = {str(s): int(q) for s, q in state["covered"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"a hand-out log's state needs handed, next and covered, got {state!r:.200} ({e})") from None
        with self._lock:
            self._kept, self._again, self._next, self._covered = deque(kept), deque(kept), nxt, covered


__all__ = ["HandOut", "HandOutLog"]

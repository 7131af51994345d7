"""The ``Queue`` buffer's credit and delivery protocol, driven through every interleaving by hypothesis.

``QueueBuffer`` is the consumer side of a ``Queue`` channel, without sockets or
threads: producer links ask for credits (``want``), are granted slots through a
callback, send against them (``put_credited``); producers on the same worker
``put``; the consumer ``get``s; a restored consumer ``resume``s from its
checkpoint's marks with producers replaying. The model checks, after every step:

- messages held plus slots granted never exceed ``maxsize``;
- no link is granted more than it asked for, and a link holding unused credits
  can always send them (a batch within its grant is never refused);
- what the consumer takes is, per source, strictly increasing and gap-free from
  its checkpoint on: nothing lost, nothing twice, in order, however producers
  replay and interleave;
- a consumer that waits and a link that wants are never both stuck while slots are free.
"""

from __future__ import annotations

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from coupler.runtime import ChannelTimeout, Message, Queue
from coupler.runtime.dataplane.buffers import QueueBuffer

MAXSIZE = 4
LINKS = (1, 2)  # link ids; link k carries source f"p{k}"


def _msg(source: str, seq: int) -> Message:
    return Message(data={"x": np.array([seq], np.int64)}, seq=seq, source=source)


class QueueProtocol(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.buf = QueueBuffer("q", Queue(MAXSIZE))
        self.credits = {k: 0 for k in LINKS}  # what each link was told it may send
        self.asked = {k: 0 for k in LINKS}
        self.next = {k: 0 for k in LINKS}  # next seq each link's producer sends
        self.local_next = 0  # next seq of the local producer "local"
        self.taken: dict[str, list[int]] = {}
        self.start: dict[str, int] = {}  # first seq expected per source (after a resume)
        for k in LINKS:
            self.buf.add_link(k, lambda n, reserved, k=k: self._granted(k, n))

    def _granted(self, k: int, n: int) -> None:
        self.credits[k] += n
        assert self.credits[k] <= self.asked[k], f"link {k} got {self.credits[k]} credits, asked {self.asked[k]}"

    @rule(k=st.sampled_from(LINKS), n=st.integers(1, 2 * MAXSIZE))
    def want(self, k: int, n: int) -> None:
        self.asked[k] = self.credits[k] + n
        self.buf.want(k, n)

    @precondition(lambda self: any(self.credits.values()))
    @rule(k=st.sampled_from(LINKS), data=st.data())
    def send_on_credit(self, k: int, data: st.DataObject) -> None:
        if not self.credits[k]:
            return
        n = data.draw(st.integers(1, self.credits[k]))
        batch = [_msg(f"p{k}", self.next[k] + i) for i in range(n)]
        assert self.buf.put_credited(k, batch) == n  # within its grant: always accepted
        self.credits[k] -= n
        self.asked[k] -= n
        self.next[k] += n

    @rule(k=st.sampled_from(LINKS), back=st.integers(1, 3))
    def replay(self, k: int, back: int) -> None:
        """The producer of link ``k`` sends again its last few messages (a resend): duplicates, on credit."""
        if not self.credits[k] or not self.next[k]:
            return
        first = max(0, self.next[k] - back)
        n = min(self.credits[k], self.next[k] - first)
        assert self.buf.put_credited(k, [_msg(f"p{k}", first + i) for i in range(n)]) == n
        self.credits[k] -= n
        self.asked[k] -= n

    @rule()
    def local_put(self) -> None:
        if self.buf.put([_msg("local", self.local_next)], timeout=0):
            self.local_next += 1

    @rule()
    def get(self) -> None:
        try:
            m = self.buf.get(timeout=0)
        except ChannelTimeout:
            return
        self.taken.setdefault(m.source, []).append(m.seq)

    @rule()
    def restart_from_checkpoint(self) -> None:
        """The consumer restarts from a checkpoint taken now: its successor's buffer resumes from the marks."""
        marks = self.buf.taken_marks()
        new = QueueBuffer("q", Queue(MAXSIZE))
        new.resume(marks)
        self.buf = new
        self.credits = {k: 0 for k in LINKS}
        self.asked = {k: 0 for k in LINKS}
        for k in LINKS:  # producers reconnect and replay from the checkpoint's marks
            self.buf.add_link(k, lambda n, reserved, k=k: self._granted(k, n))
            self.next[k] = marks.get(f"p{k}", -1) + 1
        self.local_next = marks.get("local", -1) + 1
        self.start = {s: q + 1 for s, q in marks.items()}
        self.taken = {}

    @invariant()
    def bounded(self) -> None:
        with self.buf._cond:
            held, granted = len(self.buf._items), sum(self.buf.credits.granted.values())
        assert held + granted <= MAXSIZE, f"{held} held and {granted} granted in a queue of {MAXSIZE}"
        assert granted == sum(self.credits.values()), "every reserved slot is a credit a link knows of"

    @invariant()
    def taken_in_order_once(self) -> None:
        for src, seqs in self.taken.items():
            first = self.start.get(src, 0)
            assert seqs == list(range(first, first + len(seqs))), f"{src}: took {seqs}"

    @invariant()
    def no_idle_deadlock(self) -> None:
        """Free slots and a link still wanting: the buffer has granted what it could."""
        with self.buf._cond:
            free = self.buf._free()
            wanting = [k for k, d in self.buf.credits.demand.items() if d > 0]
        assert not (free > 0 and wanting), f"{free} free slots while links {wanting} want some"


TestQueueProtocol = QueueProtocol.TestCase
TestQueueProtocol.settings = settings(max_examples=80, stateful_step_count=40, deadline=None)

"""Consumer-side buffers, one per policy, shared by threads.

Messages arrive from the threads of the data plane (a stream receiver, or a
producer on the same worker) through ``put``; the consuming actor's own thread
takes them with ``get`` / ``sample``. A ``threading.Condition`` guards the
contents; nothing here touches the worker's event loop.

A ``Queue`` is bounded. Producers on other workers hold *credits*: slots of
the queue reserved for them (see ``runtime/dataplane/credits.py``), so a batch that
arrives over the network always fits and a receiver never blocks; a producer
on the same worker waits in ``put`` for a free slot. Either way the queue never
holds more than ``maxsize`` messages and a full queue makes producers wait
(back-pressure).

Replay buffers (``Reservoir``, ``Window``) copy each message into storage
preallocated on the first message, one array per field with a leading
``capacity`` axis, so that a mini-batch is a single fancy-indexing gather.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from coupler.runtime.dataplane import waits
from coupler.runtime.dataplane.cancel import Cancel, waking
from coupler.runtime.dataplane.waits import WaitKind
from coupler.runtime.errors import ChannelClosed, ChannelTimeout, Interrupted, WrongPolicy
from coupler.runtime.dataplane.credits import CreditLedger
from coupler.runtime.dataplane.lineage import META_KEY, LineageStore, ReplayOrder, Take, TakesNote
from coupler.runtime.dataplane.marks import DeliveryMarks, dedupe, raise_marks
from coupler.runtime.dataplane.order_cursor import OrderCursor
from coupler.runtime.dataplane.queue_links import CreditedLinks
from coupler.runtime.dataplane.read_role import Outcome, ReadRole, RoleCondition
from coupler.runtime.dataplane.receipts import ReceiptLog, floor_of
from coupler.runtime.message import Message, Spec, flatten, unflatten
from coupler.runtime.policies import Latest, Policy, Queue, Reservoir, Window

logger = logging.getLogger(__name__)


@dataclass
class BufferStats:
    """Counters of one consumer buffer.

    Attributes:
        received: messages accepted into the buffer.
        taken: messages handed to the consumer by ``get`` (for replay: samples drawn).
        dropped: messages overwritten or evicted (Latest, Window) or not kept (Reservoir).
        depth: messages held now.
        nbytes: payload bytes accepted.
        lag: seconds between send and acceptance of the last message.
        duplicates: ``Queue`` messages dropped because the same (source, seq) had come before
            (a producer replaying after a restart of either end).
        bad_notes: malformed takes notes ignored (see ``runtime/dataplane/lineage.py``).
    """

    received: int = 0
    taken: int = 0
    dropped: int = 0
    depth: int = 0
    nbytes: int = 0
    lag: float = 0.0
    duplicates: int = 0
    bad_notes: int = 0

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for reports."""
        return dict(self.__dict__)


class ConsumerBuffer:
    """Base class: the thread-safe part common to every policy.

    Args:
        channel: channel name, for error messages.
    """

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.consumer = ""  # its consumer (``actor/port``), set when it attaches: named in waits
        self.stats = BufferStats()
        self.last_seq: dict[str, int] = {}
        # Hot paths hold `_lock` with `with` (C-level); `_cond` waits and notifies on the same lock.
        self._lock = threading.RLock()
        self._cond = RoleCondition(self._lock)
        self._closed = False
        self._detached = False
        self._interrupted = False

    # -- producer side (data-plane threads) -------------------------------------------
    def put(self, messages: list[Message], timeout: float | None = None, cancel: Cancel | None = None) -> int:
        """Accept messages; return how many were accepted (all, unless the consumer detached).

        Messages already on their way when the channel closes are still taken in:
        the close stops new sends, not deliveries.
        """
        with self._cond:
            if self._detached:
                return 0
            for m in messages:
                self._accept(m)
            self._cond.notify_all()
        return len(messages)

    def _account(self, m: Message, leaves: list[np.ndarray] | None = None) -> None:
        if m.nbytes >= 0:
            nbytes = m.nbytes
        else:
            nbytes = sum(int(a.nbytes) for a in (leaves if leaves is not None else flatten(m.data)[0]))
        self.stats.received += 1
        self.stats.nbytes += nbytes
        self.stats.lag = max(0.0, time.time() - m.sent_at)
        prev = self.last_seq.get(m.source, -1)
        self.last_seq[m.source] = max(prev, m.seq)

    def _accept(self, m: Message) -> None:
        raise NotImplementedError

    @property
    def accepting(self) -> bool:
        """Whether new messages are taken in (the consumer has not detached)."""
        return not self._detached

    # -- consumer side (actor thread) -----------------------------------------------
    def has_message(self) -> bool:
        """Whether ``get`` would return at once now (a hint, read without the lock; False where unknown)."""
        return False

    def get(self, timeout: float | None = None) -> Message:
        """Take the next message (policies that deliver messages one by one).

        Raises:
            WrongPolicy: the policy delivers mini-batches (use ``sample``).
        """
        raise WrongPolicy(
            f"channel {self.channel!r} is a replay buffer ({type(self).__name__}): use sample(n), not receive()"
        )

    def sample(self, n: int, rng: np.random.Generator | None = None, timeout: float | None = None) -> Any:
        """Draw a mini-batch (replay policies).

        Raises:
            WrongPolicy: the policy delivers messages in order (use ``get``).
        """
        raise WrongPolicy(f"channel {self.channel!r} delivers messages in order: use receive(), not sample()")

    def drain(self) -> list[Message]:
        """Remove and return the messages held for one-by-one delivery (none for replay buffers)."""
        return []

    def preload(self, messages: list[Message]) -> None:
        """Put ``messages`` before anything held (a restarted consumer's leftovers), beyond ``maxsize`` if need be.

        Raises:
            WrongPolicy: the policy keeps no leftovers to preload.
        """
        raise WrongPolicy(f"channel {self.channel!r}: {type(self).__name__} cannot be preloaded")

    def close(self) -> None:
        """Mark the channel closed: waiting consumers wake up and see :class:`ChannelClosed`."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def detach(self) -> None:
        """The consumer left: refuse new messages (senders see the consumer gone)."""
        with self._cond:
            self._detached = True
            self._cond.notify_all()

    def interrupt(self) -> None:
        """Make waiting and future ``get``/``sample`` calls raise :class:`Interrupted` (actor stopping)."""
        with self._cond:
            self._interrupted = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        with self._cond:
            return self.stats.depth

    def _wait(self, ready: Any, timeout: float | None, what: str, kind: WaitKind = WaitKind.INPUT) -> None:
        """Block the calling (consumer) thread until ``ready()``; call with the lock held."""
        if ready():
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        with waits.waiting(kind, self.channel, self.consumer):
            while not ready():
                if self._interrupted:
                    raise Interrupted(f"channel {self.channel!r}: receive interrupted, the actor is stopping")
                if self._closed:
                    raise ChannelClosed(f"channel {self.channel!r} is closed and has no more messages")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise ChannelTimeout(f"channel {self.channel!r}: no {what} within {timeout} s")
                role = self._reader_role()
                # Refused (the receiving thread is reading a frame): it may have put what we wait for
                # while the lock was ours no more, so look before waiting for its notification.
                if role is not None and (self._read_as_consumer(role, deadline) is not Outcome.REFUSED or ready()):
                    continue
                self._cond.wait(remaining if remaining is None else min(remaining, 1.0))

    def _reader_role(self) -> ReadRole | None:
        """The stream whose reader role the waiting consumer may take (see read_role.py), if any."""
        return None

    def _read_as_consumer(self, role: ReadRole, deadline: float | None) -> Outcome:
        """Wait for a frame on ``role``'s stream in this (the consumer's) thread; call with the lock held once."""
        cond = self._cond
        cond.reading, seen = role, cond.changes
        saved = cond._release_save()  # type: ignore[attr-defined]  # the frame's handling takes the lock
        try:
            return role.consumer_turn(deadline, lambda: cond.changes != seen)
        finally:
            cond._acquire_restore(saved)  # type: ignore[attr-defined]
            cond.reading = None


def _weak(method: Callable[[], int]) -> Callable[[], int]:
    """``method``, held weakly: 0 once its object is gone."""
    ref = weakref.WeakMethod(method)

    def call() -> int:
        bound = ref()
        return 0 if bound is None else bound()

    return call


class QueueBuffer(CreditedLinks, ConsumerBuffer):
    """Ordered FIFO of at most ``maxsize`` messages, shared by local producers and credited links.

    Slots are either held (messages), granted (reserved for a link's future
    messages: a link asks with :meth:`want`, see ``runtime/dataplane/credits.py``) or free.

    Delivery is at-least-once and processed-once (``runtime/dataplane/marks.py``):
    a (source, seq) not above what came from that source before is a duplicate
    (a producer replaying after a restart), dropped, its slot freed.
    ``taken_marks`` is what a checkpoint records; ``resume`` applies a
    checkpoint's marks to a restored consumer; ``commit`` tells the producers'
    links which messages they no longer need to keep for a replay.

    Input-order logging (``runtime/dataplane/lineage.py``): the takes notes messages carry
    are kept in ``lineage`` for their producer's restart; a restored merging actor's
    :meth:`follow` makes ``get`` hand out replays in its predecessor's order
    (``runtime/dataplane/order_cursor.py``), and while it lasts the queue may hold as many
    more messages as it has left, so that a producer's message that is due always gets a slot.
    """

    def __init__(self, channel: str, policy: Queue) -> None:
        super().__init__(channel)
        self.maxsize = policy.maxsize
        self._items: deque[Message] = deque()
        # Slots reserved for links on other workers. The ledger asks for the free slots through a weak
        # reference: a bound method made a cycle (buffer -> ledger -> buffer), so a buffer dropped with
        # messages in it kept their shared-memory mappings and descriptors until a full collection.
        self.credits = CreditLedger(channel, self.maxsize, _weak(self._free))
        self.marks = DeliveryMarks()  # per source: the highest seq taken, and committed
        # Work-sharing queues are pulled: a member has room only while its consumer
        # waits for a message, so no task waits at a busy member while another idles,
        # and members on the producer's own worker get no head start over remote ones.
        self._pull = policy.shared
        # A work-sharing member keeps what it received for a producer's restart (receipts.py).
        self.receipts = ReceiptLog() if policy.shared else None
        self._getters = 0  # consumer threads waiting in get()
        self.lineage = LineageStore()  # takes notes of the producers (see runtime/dataplane/lineage.py)
        self._cursor = OrderCursor(channel)  # where a restored merging actor stands in its recorded takes
        self._roles: dict[int, ReadRole | None] = {}  # per link from another worker: its reader role, if it offers one

    def _free(self) -> int:
        if self._pull and not self._getters:
            return 0
        return self.maxsize + self._cursor.extra() - len(self._items) - self.credits.total()

    def _note(self, m: Message) -> None:
        """Keep the takes note ``m`` carries, if any (call with the lock; a malformed one is ignored)."""
        wire = m.meta.get(META_KEY)
        if wire is None:
            return
        try:
            self.lineage.add(m.source, TakesNote.from_wire(wire))
        except ValueError as e:
            self.stats.bad_notes += 1
            if self.stats.bad_notes == 1:
                logger.warning("channel %r: ignored a takes note from %r: %s", self.channel, m.source, e)

    def takes_since(self, source: str, start: int) -> dict[int, Take]:
        """The takes of producer ``source`` numbered ``start`` and above that its messages here carried."""
        with self._cond:
            return self.lineage.since(source, start)

    def follow(self, order: ReplayOrder, wait: float = 60.0) -> None:
        """Hand out messages in ``order`` first (a restored actor repeating its predecessor's takes).

        ``order`` is shared with the actor's other ``Queue`` inputs: this buffer
        hands out a message only when it is the head of the whole order. A
        consumer waiting here for a head that is another input's wakes up at
        its next wait slice (the order is short: one checkpoint interval).

        Args:
            order: the recorded takes.
            wait: seconds the order may go without its head arriving; then it is
                abandoned with a warning (a producer's replay log overflowed, or the
                actor's code no longer takes its inputs as it did) and the inputs
                run freely: liveness over exactness, said in the log.
        """
        with self._cond:
            self._cursor.follow(order, wait)
            grants = self.credits.hand_out()
            self._cond.notify_all()
        self.credits.notify(grants)

    def put_credited(self, link: int, messages: list[Message]) -> int:
        """Accept messages sent against ``link``'s credits (never waits).

        Returns:
            How many were accepted: all, or 0 when the consumer detached.

        Raises:
            RuntimeError: if the link sent more than it was granted (a protocol bug).
        """
        with self._cond:
            if self._detached:
                return 0
            self.credits.spend(link, len(messages))
            # _is_new and _accept, inlined: this runs for every message that arrives from another worker.
            items, last_seq, stats, receipts = self._items, self.last_seq, self.stats, self.receipts
            for m in messages:
                if m.meta:
                    self._note(m)
                if m.seq <= last_seq.get(m.source, -1):
                    stats.duplicates += 1
                    continue
                items.append(m)
                last_seq[m.source] = m.seq
                if receipts is not None:
                    receipts.add(m.source, m.seq, floor_of(m.meta))
                stats.received += 1
                stats.nbytes += m.nbytes if m.nbytes >= 0 else sum(int(a.nbytes) for a in flatten(m.data)[0])
            stats.lag = max(0.0, time.time() - messages[-1].sent_at) if messages else stats.lag
            stats.depth = len(items)
            grants = self.credits.hand_out()  # slots of dropped duplicates are free again
            self._cond.notify_all()
        self.credits.notify(grants)
        return len(messages)

    # -- producers on this worker -----------------------------------------------------------
    def put(self, messages: list[Message], timeout: float | None = None, cancel: Cancel | None = None) -> int:
        """Accept messages one by one, waiting for free slots; return how many fit before ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        accepted = 0
        with self._cond:
            for m in messages:
                if m.meta:
                    self._note(m)
                if not self._is_new(m):  # a duplicate needs no slot
                    accepted += 1
                    continue
                while self._free() <= 0:
                    if self._detached or (cancel is not None and cancel.is_set()):
                        return accepted
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return accepted
                    self.credits.local_waiting += 1  # the next free slot is kept for us, not granted away
                    try:
                        with waking(cancel, self._cond), waits.waiting(WaitKind.ROOM, self.channel, self.consumer):
                            if cancel is None or not cancel.is_set():  # again, now that a cancel would notify
                                self._cond.wait(remaining)  # a take, a detach and the cancel notify
                    finally:
                        self.credits.local_waiting -= 1
                if self._detached:
                    return accepted
                if self._is_new(m):  # again: a resume() may have covered it while we waited
                    self._accept(m)
                accepted += 1
                self._cond.notify_all()
        return accepted

    def _is_new(self, m: Message) -> bool:
        """Whether ``m`` was not received before (call with the lock); counts a duplicate."""
        if m.seq <= self.last_seq.get(m.source, -1):
            self.stats.duplicates += 1
            return False
        return True

    def _accept(self, m: Message) -> None:
        self._items.append(m)
        self._account(m)
        self.stats.depth = len(self._items)
        if self.receipts is not None:
            self.receipts.add(m.source, m.seq, floor_of(m.meta))

    def receipts_since(self, source: str, start: int) -> tuple[int, list[int]]:
        """What this work-sharing member had of ``source``: its highest number, and those from ``start`` on.

        Raises:
            WrongPolicy: if the queue is not work-sharing (its consumer is the only one: marks suffice).
        """
        with self._cond:
            if self.receipts is None:
                raise WrongPolicy(f"channel {self.channel!r}: receipts are kept by work-sharing queues only")
            return self.last_seq.get(source, -1), self.receipts.since(source, start)

    def has_message(self) -> bool:
        return bool(self._items) if self._cursor.order is None else self._cursor.pick(self._items) is not None

    def get(self, timeout: float | None = None) -> Message:
        pulling = False
        if self._pull:
            with self._cond:
                pulling = not self._items
                if pulling:  # ready for work: offer room to the producers (see _free)
                    self._getters += 1
                    grants = self.credits.hand_out()
                    self._cond.notify_all()  # a local producer may wait for that room
            if pulling:
                self.credits.notify(grants)
        cursor, credits = self._cursor, self.credits
        with self._lock:
            try:
                i = cursor.pick(self._items)
                if i is None:
                    kind = WaitKind.INPUT if cursor.order is None else WaitKind.ORDER
                    self._wait(lambda: cursor.pick(self._items) is not None, timeout, "message", kind)
                    i = cursor.pick(self._items)
            finally:
                if pulling:
                    self._getters -= 1
            if cursor.order is None or i == 0:
                m = self._items.popleft()
            else:
                m = self._items[i]
                del self._items[i]
            if cursor.order is not None:
                cursor.took()
            self.marks.took(m)
            self.stats.taken += 1
            self.stats.depth = len(self._items)
            grants = credits.hand_out() if credits.demand and credits.due(self._pull) else []
            if credits.local_waiting:  # a local producer waits for the slot (nobody else waits for a get)
                self._cond.notify_all()
        if grants:
            credits.notify(grants)
        return m

    def drain(self) -> list[Message]:
        with self._cond:
            out = list(self._items)
            self._items.clear()
            self.stats.depth = 0
            grants = self.credits.hand_out()
            self._cond.notify_all()
        self.credits.notify(grants)
        return out

    def preload(self, messages: list[Message]) -> None:
        self.resume({}, messages)

    def taken_marks(self) -> dict[str, int]:
        """Source -> highest seq handed to the consumer (what a checkpoint at a step boundary covers)."""
        with self._cond:
            return dict(self.marks.taken)

    def resume(self, taken: dict[str, int], preload: list[Message] = ()) -> None:  # type: ignore[assignment]
        """Continue a consumer from its checkpoint: ``taken`` was processed, ``preload`` was held.

        What the buffer holds already (replays that arrived before the restore) is
        kept after ``preload``, less every message of a source at or below what
        came before it: each (source, seq) stays at most once, in order.

        Args:
            taken: source -> highest seq the checkpointed consumer had taken.
            preload: messages its predecessor held and had not taken (may exceed ``maxsize``).
        """
        with self._cond:
            held = [*preload, *self._items]
            for m in held:
                if m.meta:
                    self._note(m)
            # The preloaded messages are not counted as received: the predecessor's buffer
            # counted them (the broker's channel totals keep its counters after it left).
            marks = {s: int(q) for s, q in taken.items()}
            self._items, dropped = dedupe(held, marks)
            if self.receipts is not None and preload:
                kept = {id(m) for m in self._items}
                for m in preload:  # its predecessor received them (under this member's id)
                    if id(m) in kept:
                        self.receipts.add(m.source, m.seq, floor_of(m.meta))
            self.stats.duplicates += dropped
            raise_marks(self.marks.taken, taken)
            raise_marks(self.last_seq, marks)
            self.stats.depth = len(self._items)
            grants = self.credits.hand_out()
            self._cond.notify_all()
        self.credits.notify(grants)

    def commit(self, marks: dict[str, int]) -> None:
        """A checkpoint covering ``marks`` (source -> seq) is stored: producers may forget those messages."""
        with self._cond:
            fns, committed = self.marks.commit(marks)
        for fn in fns:
            fn(committed)

    def committed_marks(self) -> dict[str, int]:
        """Source -> highest seq committed so far."""
        with self._cond:
            return dict(self.marks.committed)


class LatestBuffer(ConsumerBuffer):
    """A single slot holding the newest message; ``get`` waits for one not yet taken."""

    def __init__(self, channel: str, policy: Latest) -> None:
        super().__init__(channel)
        self._item: Message | None = None
        self._fresh = False

    def _accept(self, m: Message) -> None:
        if self._fresh:
            self.stats.dropped += 1
        self._item, self._fresh = m, True
        self._account(m)
        self.stats.depth = 1

    def has_message(self) -> bool:
        return self._fresh

    def get(self, timeout: float | None = None) -> Message:
        with self._cond:
            self._wait(lambda: self._fresh, timeout, "new message")
            self._fresh = False
            self.stats.taken += 1
            self.stats.depth = 0
            assert self._item is not None
            return self._item

    def peek(self) -> Message | None:
        """The newest message, taken before or not, without waiting (``None`` if none yet)."""
        with self._cond:
            return self._item


class _ReplayBuffer(ConsumerBuffer):
    """Shared storage of Reservoir and Window: preallocated per-field arrays."""

    def __init__(self, channel: str, capacity: int, seed: int | None) -> None:
        super().__init__(channel)
        self.capacity = capacity
        self.seen = 0  # messages ever offered (the stream length n of algorithm R)
        self.rng = np.random.default_rng(seed)
        self._spec: Spec | None = None
        self._storage: list[np.ndarray] = []
        self._headers: list[dict[str, Any] | None] = [None] * capacity

    def _store(self, slot: int, m: Message, leaves: list[np.ndarray], td: Any) -> None:
        if self._spec is None:
            self._spec = Spec.from_leaves(td, leaves)
            self._storage = [np.empty((self.capacity, *a.shape), a.dtype) for a in leaves]
        for dst, a in zip(self._storage, leaves):
            dst[slot] = a
        self._headers[slot] = m.header()

    @property
    def size(self) -> int:
        return min(self.seen, self.capacity)

    def sample(self, n: int, rng: np.random.Generator | None = None, timeout: float | None = None) -> Any:
        """Draw ``n`` messages uniformly with replacement, stacked along a new first axis.

        Args:
            n: batch size (>= 1).
            rng: generator to use instead of the buffer's own.
            timeout: seconds to wait for the first message.

        Returns:
            The payload pytree with a leading batch axis of size ``n`` (fresh arrays).

        Raises:
            ValueError: for ``n < 1``.
            ChannelTimeout: if the buffer stays empty for ``timeout`` seconds.
        """
        if n < 1:
            raise ValueError(f"sample(n) needs n >= 1, got {n}")
        g = rng or self.rng
        with self._cond:
            self._wait(lambda: self.size > 0, timeout, "message to sample")
            idx = g.integers(0, self.size, size=n)
            leaves = [s[idx] for s in self._storage]
            self.stats.taken += n
            assert self._spec is not None
            return unflatten(self._spec.treedef, leaves)

    def contents(self) -> Any:
        """Every message held now, stacked (a copy), in slot order.

        Raises:
            ChannelTimeout: the buffer is empty.
        """
        with self._cond:
            if self._spec is None:
                raise ChannelTimeout(f"channel {self.channel!r}: the buffer is empty")
            return unflatten(self._spec.treedef, [s[: self.size].copy() for s in self._storage])


class ReservoirBuffer(_ReplayBuffer):
    """Vitter's algorithm R: after ``n`` offers each one is held with probability ``capacity / n``."""

    def __init__(self, channel: str, policy: Reservoir) -> None:
        super().__init__(channel, policy.capacity, policy.seed)

    def _accept(self, m: Message) -> None:
        leaves, td = flatten(m.data)  # once, for the counters and the copy into storage
        self._account(m, leaves)
        if self.seen < self.capacity:
            self._store(self.seen, m, leaves, td)
        else:
            j = int(self.rng.integers(0, self.seen + 1))
            if j < self.capacity:
                self._store(j, m, leaves, td)
            self.stats.dropped += 1  # one message leaves the sample either way
        self.seen += 1
        self.stats.depth = self.size


class WindowBuffer(_ReplayBuffer):
    """A ring of the newest ``capacity`` messages."""

    def __init__(self, channel: str, policy: Window) -> None:
        super().__init__(channel, policy.capacity, policy.seed)

    def _accept(self, m: Message) -> None:
        leaves, td = flatten(m.data)
        self._account(m, leaves)
        if self.seen >= self.capacity:
            self.stats.dropped += 1
        self._store(self.seen % self.capacity, m, leaves, td)
        self.seen += 1
        self.stats.depth = self.size


def make_buffer(channel: str, policy: Policy) -> ConsumerBuffer:
    """The buffer that implements ``policy``.

    Raises:
        TypeError: for something that is not a policy.
    """
    if isinstance(policy, Queue):
        return QueueBuffer(channel, policy)
    if isinstance(policy, Latest):
        return LatestBuffer(channel, policy)
    if isinstance(policy, Reservoir):
        return ReservoirBuffer(channel, policy)
    if isinstance(policy, Window):
        return WindowBuffer(channel, policy)
    raise TypeError(f"expected a policy (Queue, Latest, Reservoir, Window), got {policy!r}")

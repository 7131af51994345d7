"""Consumer-side buffers, one per policy, shared by two threads.

Messages arrive on the worker's event loop (``put``, a coroutine, so that a full
``Queue`` can make the producer wait without blocking the loop) and are taken by
the consuming actor's own thread (``get`` / ``sample``, which block that thread
only). A ``threading.Condition`` guards the contents; an ``asyncio.Event`` on
the loop wakes producers waiting for space.

Replay buffers (``Reservoir``, ``Window``) copy each message into storage
preallocated on the first message, one array per field with a leading
``capacity`` axis, so that a mini-batch is a single fancy-indexing gather.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from coupler.runtime.errors import ChannelClosed, ChannelTimeout, Interrupted, WrongPolicy
from coupler.runtime.message import Message, Spec, flatten, unflatten
from coupler.runtime.policies import Latest, Policy, Queue, Reservoir, Window


@dataclass
class BufferStats:
    """Counters of one consumer buffer.

    Attributes:
        received: messages accepted into the buffer.
        taken: messages handed to the consumer by ``get`` (for replay: samples drawn).
        dropped: messages overwritten or evicted (Latest, Window) or not kept (Reservoir).
        depth: messages held now.
        nbytes: payload bytes accepted.
        last_seq: per source, the highest sequence number accepted.
        lag: seconds between send and acceptance of the last message.
    """

    received: int = 0
    taken: int = 0
    dropped: int = 0
    depth: int = 0
    nbytes: int = 0
    lag: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for reports."""
        return dict(self.__dict__)


class ConsumerBuffer:
    """Base class: the thread-safe part common to every policy.

    Args:
        channel: channel name, for error messages.
        loop: the worker's asyncio loop on which ``put`` runs.
    """

    def __init__(self, channel: str, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.channel = channel
        self.loop = loop
        self.stats = BufferStats()
        self.last_seq: dict[str, int] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._interrupted = False

    # -- producer side (event loop) -------------------------------------------------
    async def put(self, messages: list[Message], timeout: float | None) -> int:
        """Accept messages; return how many were accepted before ``timeout`` ran out."""
        with self._cond:
            for m in messages:
                self._accept(m)
            self._cond.notify_all()
        return len(messages)

    def _account(self, m: Message, leaves: list[np.ndarray] | None = None) -> None:
        if leaves is None:
            leaves = flatten(m.data)[0]
        self.stats.received += 1
        self.stats.nbytes += sum(int(a.nbytes) for a in leaves)
        self.stats.lag = max(0.0, time.time() - m.sent_at)
        prev = self.last_seq.get(m.source, -1)
        self.last_seq[m.source] = max(prev, m.seq)

    def _accept(self, m: Message) -> None:
        raise NotImplementedError

    # -- consumer side (actor thread) -----------------------------------------------
    def get(self, timeout: float | None = None) -> Message:
        """Take the next message (policies that deliver messages one by one)."""
        raise WrongPolicy(
            f"channel {self.channel!r} is a replay buffer ({type(self).__name__}): use sample(n), not receive()"
        )

    def sample(self, n: int, rng: np.random.Generator | None = None, timeout: float | None = None) -> Any:
        """Draw a mini-batch (replay policies)."""
        raise WrongPolicy(f"channel {self.channel!r} delivers messages in order: use receive(), not sample()")

    def close(self) -> None:
        """Mark the channel closed: waiting consumers wake up and see :class:`ChannelClosed`."""
        with self._cond:
            self._closed = True
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

    def _wait(self, ready: Any, timeout: float | None, what: str) -> None:
        """Block the calling (consumer) thread until ``ready()``; call with the lock held."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not ready():
            if self._interrupted:
                raise Interrupted(f"channel {self.channel!r}: receive interrupted, the actor is stopping")
            if self._closed:
                raise ChannelClosed(f"channel {self.channel!r} is closed and has no more messages")
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise ChannelTimeout(f"channel {self.channel!r}: no {what} within {timeout} s")
            self._cond.wait(remaining if remaining is None else min(remaining, 1.0))


class QueueBuffer(ConsumerBuffer):
    """Ordered FIFO with a bounded size; ``put`` waits for space (back-pressure)."""

    def __init__(self, channel: str, policy: Queue, loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(channel, loop)
        self.maxsize = policy.maxsize
        self._items: deque[Message] = deque()
        self._space: asyncio.Event | None = None

    async def put(self, messages: list[Message], timeout: float | None) -> int:
        if self._space is None:
            self._space = asyncio.Event()
        deadline = None if timeout is None else time.monotonic() + timeout
        accepted = 0
        for m in messages:
            while True:
                with self._cond:
                    if self._closed:
                        return accepted
                    if len(self._items) < self.maxsize:
                        self._accept(m)
                        self._cond.notify_all()
                        accepted += 1
                        break
                    # Cleared under the lock: a get() that frees space afterwards sets it
                    # again through call_soon_threadsafe, so no wake-up is lost.
                    self._space.clear()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return accepted
                try:
                    await asyncio.wait_for(self._space.wait(), remaining)
                except (asyncio.TimeoutError, TimeoutError):
                    return accepted
        return accepted

    def _accept(self, m: Message) -> None:
        self._items.append(m)
        self._account(m)
        self.stats.depth = len(self._items)

    def get(self, timeout: float | None = None) -> Message:
        with self._cond:
            self._wait(lambda: bool(self._items), timeout, "message")
            m = self._items.popleft()
            self.stats.taken += 1
            self.stats.depth = len(self._items)
        if self._space is not None and self.loop is not None:
            self.loop.call_soon_threadsafe(self._space.set)
        return m

    def close(self) -> None:
        super().close()
        if self._space is not None and self.loop is not None:
            self.loop.call_soon_threadsafe(self._space.set)


class LatestBuffer(ConsumerBuffer):
    """A single slot holding the newest message; ``get`` waits for one not yet taken."""

    def __init__(self, channel: str, policy: Latest, loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(channel, loop)
        self._item: Message | None = None
        self._fresh = False

    def _accept(self, m: Message) -> None:
        if self._fresh:
            self.stats.dropped += 1
        self._item, self._fresh = m, True
        self._account(m)
        self.stats.depth = 1

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

    def __init__(self, channel: str, capacity: int, seed: int | None, loop: asyncio.AbstractEventLoop | None) -> None:
        super().__init__(channel, loop)
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
        """Every message held now, stacked (a copy), in slot order."""
        with self._cond:
            if self._spec is None:
                raise ChannelTimeout(f"channel {self.channel!r}: the buffer is empty")
            return unflatten(self._spec.treedef, [s[: self.size].copy() for s in self._storage])


class ReservoirBuffer(_ReplayBuffer):
    """Vitter's algorithm R: after ``n`` offers each one is held with probability ``capacity / n``."""

    def __init__(self, channel: str, policy: Reservoir, loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(channel, policy.capacity, policy.seed, loop)

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

    def __init__(self, channel: str, policy: Window, loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(channel, policy.capacity, policy.seed, loop)

    def _accept(self, m: Message) -> None:
        leaves, td = flatten(m.data)
        self._account(m, leaves)
        if self.seen >= self.capacity:
            self.stats.dropped += 1
        self._store(self.seen % self.capacity, m, leaves, td)
        self.seen += 1
        self.stats.depth = self.size


def make_buffer(channel: str, policy: Policy, loop: asyncio.AbstractEventLoop | None = None) -> ConsumerBuffer:
    """The buffer that implements ``policy``.

    Raises:
        TypeError: for something that is not a policy.
    """
    if isinstance(policy, Queue):
        return QueueBuffer(channel, policy, loop)
    if isinstance(policy, Latest):
        return LatestBuffer(channel, policy, loop)
    if isinstance(policy, Reservoir):
        return ReservoirBuffer(channel, policy, loop)
    if isinstance(policy, Window):
        return WindowBuffer(channel, policy, loop)
    raise TypeError(f"expected a policy (Queue, Latest, Reservoir, Window), got {policy!r}")

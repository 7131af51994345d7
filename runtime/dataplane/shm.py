"""Shared-memory segments for messages between worker processes on one host.

A producer's link keeps a small pool (:class:`Arena`) of POSIX shared-memory
segments (files in ``/dev/shm``). To send a large message it copies the
payload into a free segment (the one copy of the same-host path) and sends
only the segment's name and layout over the link's socket. The consumer maps
the segment once, *unlinks its name at once*, and hands the actor arrays that
are views into it. From then on the memory has no name: the kernel frees it
when both processes have unmapped it, so a crash or ``kill -9`` cannot leak it.

Reuse without messages back: byte 0 of every segment is its state. The
producer sets it to ``BUSY`` before filling it; the consumer sets it back to
``FREE`` when the last view of that message's arrays is garbage collected
(``weakref.finalize``). So a consumer owns (writable) the data it receives for
as long as it keeps it, and the producer reuses the pages, already faulted in,
for a later message once the consumer has also acknowledged it (``held``: until
then the producer may have to hand the bytes to another consumer).

The only window in which a name can be left behind is between a segment's
creation and the consumer's first mapping of it. Names embed the creator's
PID, and :func:`sweep_orphans` (run by every endpoint on start, periodically,
and by ``Coupling.close``) unlinks segments whose creator no longer exists.

Names come from a peer, so a consumer opens only names of its producer's PID
(:func:`check_name`: no path can pass), with ``O_NOFOLLOW`` and regular files
only, and never unlinks a probe (the producer that made it does).
"""

from __future__ import annotations

import errno
import mmap
import os
import re
import socket
import stat
import threading
import uuid
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

SHM_DIR = "/dev/shm"
PREFIX = "coupler-"
_NAME = re.compile(r"^coupler-(\d+)-[0-9a-f]{16}$")
HEADER = 64  # bytes before the payload; byte 0 is the state, the rest keeps payloads 64-byte aligned
FREE, BUSY = 0, 1
# The consumer maps a filled segment prefaulted: one call instead of a fault per 64 KiB it
# reads (0.3 ms for 16 MiB). The producer maps a new one without: prefaulting a *writable*
# mapping costs more than the faults it saves, which the first fill's parallel copy takes
# on several threads. Measured here (16 MiB, under chrt): a new segment and its first fill
# 6.7-7.8 ms prefaulted, 4.9-5.9 ms not, later fills 0.9-1.3 ms either way; a quick
# `transport.py` row of 96 messages while a replay log first fills (16 new segments; that
# row is now coupler-alo-fill): 0.40-0.42 of coupler prefaulted, 0.53-0.57 not, alternating.
_MAP_FLAGS = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
_PRODUCER_MAP_FLAGS = mmap.MAP_SHARED
_PARALLEL_COPY = 8 << 20  # copy leaves larger than this with several threads
COPY_THREADS = 4


def available() -> bool:
    """Whether this host has a writable ``/dev/shm`` (Linux)."""
    return os.path.isdir(SHM_DIR) and os.access(SHM_DIR, os.W_OK)


def host_key() -> str:
    """Identifies this host (and boot): producer and consumer try shared memory only when theirs match."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = ""
    return f"{socket.gethostname()}/{boot}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def sweep_orphans(directory: str = SHM_DIR) -> list[str]:
    """Unlink coupler segments whose creating process is gone.

    Only this user's regular files are touched; whatever cannot be removed (a
    directory named like a segment, a file of another user, a name that went
    away meanwhile) is skipped: a sweep runs at every endpoint's start, and one
    stray name must not stop a worker.

    Returns:
        The names removed.
    """
    removed: list[str] = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    uid = os.getuid()
    for name in names:
        m = _NAME.match(name)
        if not m or _pid_alive(int(m.group(1))):
            continue
        path = os.path.join(directory, name)
        try:
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != uid:
                continue
            os.unlink(path)
        except OSError:
            continue  # gone meanwhile, or not ours to remove
        removed.append(name)
    return removed


def own_segments(directory: str = SHM_DIR) -> list[str]:
    """Names in ``directory`` that coupler created (for tests and diagnostics)."""
    try:
        return sorted(n for n in os.listdir(directory) if _NAME.match(n))
    except OSError:
        return []


class ShmUnavailable(OSError):
    """A segment could not be created (no /dev/shm, or it is full); the caller sends over TCP instead."""


@dataclass
class Segment:
    """A producer-side segment: its name, size and mapping."""

    name: str
    size: int
    mm: mmap.mmap
    unlinked: bool = False
    # Its message is not acknowledged yet: the producer may still need its bytes
    # (to hand on if the consumer leaves or refuses it), so it is not reused even
    # when the consumer has set it FREE.
    held: bool = False
    # A replay log keeps its message (until the consumer's checkpoint covers it):
    # the producer may send these bytes again, so the segment is neither reused
    # nor unmapped. The consumer maps such a segment copy-on-write (see Mappings).
    kept: bool = False

    @property
    def free(self) -> bool:
        return self.mm[0] == FREE

    @property
    def reusable(self) -> bool:
        """Neither the consumer, nor an unacknowledged send, nor a replay log needs its bytes."""
        return not self.held and not self.kept and self.mm[0] == FREE

    def unlink(self) -> None:
        if not self.unlinked:
            self.unlinked = True
            try:
                os.unlink(os.path.join(SHM_DIR, self.name))
            except FileNotFoundError:
                pass  # the consumer unlinked it, as it should


_copy_pool: ThreadPoolExecutor | None = None
_copy_pool_lock = threading.Lock()


def _parallel_copy(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst[:] = src`` for flat uint8 arrays, split over threads when large (numpy releases the GIL)."""
    global _copy_pool
    n = src.nbytes
    if n < _PARALLEL_COPY:
        np.copyto(dst, src)
        return
    with _copy_pool_lock:
        if _copy_pool is None:
            # Four threads even on two cores: a large copy is bound by memory latency,
            # and more streams in flight get closer to the bandwidth (measured here:
            # 128 MiB into a mapped segment, 4.1 GB/s with 1 thread, 5.9 GB/s with 4).
            _copy_pool = ThreadPoolExecutor(COPY_THREADS, thread_name_prefix="coupler-copy")
    parts = COPY_THREADS
    bounds = np.linspace(0, n, parts + 1).astype(np.int64)
    bounds[1:-1] -= bounds[1:-1] % 4096
    futures = [_copy_pool.submit(np.copyto, dst[a:b], src[a:b]) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    for f in futures:
        f.result()


def layout(nbytes: list[int]) -> tuple[list[int], int]:
    """Offsets of fields laid out one after another, each 64-byte aligned; and the total size."""
    offsets, pos = [], 0
    for n in nbytes:
        offsets.append(pos)
        pos += (n + 63) // 64 * 64
    return offsets, pos


class Arena:
    """A producer link's pool of segments.

    Args:
        max_bytes: total size of segments kept; beyond it :meth:`reserve` raises
            :class:`ShmUnavailable` (and the message goes over TCP).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.segments: list[Segment] = []
        self.closed = False

    @property
    def nbytes(self) -> int:
        return sum(s.size for s in self.segments)

    def _create(self, size: int) -> Segment:
        size = HEADER + (size + (1 << 20) - 1) // (1 << 20) * (1 << 20)  # whole MiB: reusable for similar sizes
        if self.nbytes + size > self.max_bytes:
            raise ShmUnavailable(errno.ENOSPC, f"shared-memory pool of this link is at its limit ({self.max_bytes} bytes)")
        name = f"{PREFIX}{os.getpid()}-{uuid.uuid4().hex[:16]}"
        path = os.path.join(SHM_DIR, name)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        except OSError as e:
            raise ShmUnavailable(e.errno, f"cannot create {path}: {e}") from e
        try:
            # Reserve the pages now: a full tmpfs then fails here with ENOSPC
            # instead of killing the process with SIGBUS on first write.
            os.posix_fallocate(fd, 0, size)
            mm = mmap.mmap(fd, size, flags=_PRODUCER_MAP_FLAGS)
        except OSError as e:
            os.close(fd)
            os.unlink(path)
            raise ShmUnavailable(e.errno, f"cannot allocate {size} bytes in {SHM_DIR}: {e}") from e
        os.close(fd)
        seg = Segment(name, size, mm)
        self.segments.append(seg)
        return seg

    def reserve(self, nbytes: list[int]) -> tuple[Segment, list[int], int]:
        """A free segment (created if none fits) for fields of ``nbytes``, marked busy and held.

        Only this needs the caller's lock; :func:`fill` then copies outside it, so
        that producers sharing a link copy at the same time (numpy releases the
        GIL). The caller clears ``held`` once the consumer acknowledged the message.

        Returns:
            ``(segment, offsets, total)``: where each field starts after the header.

        Raises:
            ShmUnavailable: when no segment can be had.
        """
        if self.closed:  # its link is gone: a new segment would have nobody to unlink it
            raise ShmUnavailable(errno.EPIPE, "the link's shared-memory pool is closed")
        offsets, total = layout(nbytes)
        # Segments are kept in the order of their last use, the oldest first: a
        # consumer takes messages in order, so the oldest is the first one freed,
        # and a scan in order of creation checked every segment still queued
        # (at 1 MiB with 43 segments: 15 us per message; in this order, 11).
        segs = self.segments
        for i, seg in enumerate(segs):
            if seg.reusable and total <= seg.size - HEADER <= 2 * total + (1 << 20):
                del segs[i]
                segs.append(seg)
                break
        else:
            self._trim()
            seg = self._create(total)
        seg.mm[0] = BUSY
        seg.held = True
        return seg, offsets, total

    def _trim(self) -> None:
        """Drop free segments while the pool is above half its limit (sizes change over a run)."""
        for s in list(self.segments):
            if self.nbytes <= self.max_bytes // 2:
                break
            if s.reusable:
                self.segments.remove(s)
                s.unlink()
                try:
                    s.mm.close()
                except BufferError:
                    pass

    def close(self) -> None:
        """Unlink every name still present and drop the mappings (consumers keep theirs).

        A ``kept`` segment keeps its mapping: a replay log holds its message (see
        :class:`~coupler.runtime.dataplane.link.ReplayLog`), and the mapping goes
        when the log lets go of it (the ``Segment`` is then garbage).
        """
        self.closed = True
        for s in self.segments:
            s.unlink()
            if s.kept:
                continue
            try:
                s.mm.close()
            except BufferError:
                pass  # a frombuffer view is still alive; the mapping goes with it
        self.segments.clear()


def fill(seg: Segment, offsets: list[int], leaves: list[np.ndarray]) -> None:
    """Copy ``leaves`` into a segment from :meth:`Arena.reserve` at ``offsets`` (the one copy of the path)."""
    buf = np.frombuffer(seg.mm, np.uint8)
    for a, off in zip(leaves, offsets):
        src = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
        _parallel_copy(buf[HEADER + off : HEADER + off + src.nbytes], src)


def _nbytes(shape: tuple[int, ...], dtype: str) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def _release(mm: mmap.mmap) -> None:
    try:
        mm[0] = FREE
    except ValueError:
        pass  # mapping closed


def check_name(name: object, pid: int) -> str:
    """A segment name a peer sent, checked before anything opens it.

    Args:
        name: the name.
        pid: the process the peer said it is (its hello): its segments carry that PID.

    Raises:
        ValueError: unless ``name`` is ``coupler-<pid>-<16 hex digits>`` (no path separator can pass).
    """
    m = _NAME.match(name) if isinstance(name, str) else None
    if m is None or int(m.group(1)) != pid:
        raise ValueError(f"expected a segment name 'coupler-{pid}-<16 hex digits>', got {name!r:.80}")
    return name  # type: ignore[return-value]


def _open(name: str, flags: int) -> int:
    """Open a segment by name, refusing symlinks (``O_NOFOLLOW``) and anything but a regular file.

    Raises:
        OSError: if it cannot be opened or is not a regular file.
    """
    fd = os.open(os.path.join(SHM_DIR, name), flags | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, f"{name} in {SHM_DIR} is not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def probe(name: str, pid: int) -> bool:
    """Whether this process can open a producer's probe segment (then both share ``/dev/shm``).

    The name stays: the producer made it, the producer unlinks it.

    Raises:
        ValueError: if ``name`` is not one of ``pid``'s segment names.
    """
    check_name(name, pid)
    try:
        os.close(_open(name, os.O_RDONLY))
    except OSError:
        return False  # another host or container: TCP only
    return True


class Mappings:
    """A consumer link's segments, mapped by name on first sight and unlinked at once.

    Two ways to hand a message over. By default the actor's arrays are views of
    the segment's shared mapping (cached per segment): no copy and no page fault
    per message. With ``private`` (the producer keeps the message in a replay
    log, see :class:`~coupler.runtime.dataplane.link.ReplayLog`) they are views
    of a fresh copy-on-write mapping (``MAP_PRIVATE``): the actor may still
    write them, but its writes stay its own, so the segment keeps the bytes the
    producer may have to send again. That costs a mapping per message and a
    page fault per 64 KiB read (about 0.5 ms for 16 MiB read whole, measured on
    the 2-core VM), and a 4 KiB copy per page the actor writes. The file
    descriptor of each segment is kept for those mappings, until :meth:`close`.

    Args:
        pid: the producer's process (from its hello); only its segments are opened.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.maps: dict[str, mmap.mmap] = {}
        self.fds: dict[str, int] = {}

    def open(self, name: str, need: int = 0) -> mmap.mmap:
        """Map segment ``name`` (cached).

        Args:
            name: segment name.
            need: bytes it must hold; a smaller one is refused before its name is unlinked.

        Raises:
            OSError: if it cannot be opened or is not a regular file.
            ValueError: for a name that is not one of the producer's segments, or a segment
                smaller than ``need``.
        """
        mm = self.maps.get(name)
        if mm is None:
            check_name(name, self.pid)
            fd = _open(name, os.O_RDWR)
            try:
                size = os.fstat(fd).st_size
                if size < need:  # not the segment its frame says: leave the name to whoever made it
                    raise ValueError(f"segment {name} holds {size} bytes, its message needs {need}")
                mm = mmap.mmap(fd, size, flags=_MAP_FLAGS)
            except BaseException:
                os.close(fd)
                raise
            os.unlink(os.path.join(SHM_DIR, name))  # nameless from now on: the kernel frees it with the last mapping
            self.maps[name] = mm
            self.fds[name] = fd
        return mm

    def views(
        self, name: str, offsets: list[int], fields: list[tuple[tuple[int, ...], str]], private: bool = False
    ) -> list[np.ndarray]:
        """Arrays over a segment's payload; the segment is released when all of them are gone.

        Args:
            name: segment name.
            offsets: byte offset of each field after the header.
            fields: (shape, dtype) of each field.
            private: views of a copy-on-write mapping (the producer keeps the bytes for a replay).

        Raises:
            ValueError: the segment is smaller than its message's fields need.
        """
        need = HEADER + (offsets[-1] + _nbytes(*fields[-1]) if fields else 0)
        shared = self.open(name, need)
        if len(shared) < need:  # a segment mapped before, for a smaller message
            raise ValueError(f"segment {name} holds {len(shared)} bytes, its message needs {need}")
        # Not populated: MAP_POPULATE on a writable private mapping copies every page.
        mm = mmap.mmap(self.fds[name], len(shared), flags=mmap.MAP_PRIVATE) if private else shared
        # Every view below has ``whole`` as its .base (numpy collapses view chains
        # down to the array over the mmap), so ``whole`` dies with the last view.
        whole = np.frombuffer(mm, np.uint8, count=len(mm) - HEADER, offset=HEADER)
        weakref.finalize(whole, _release, shared)
        out = []
        for off, (shape, dtype) in zip(offsets, fields):
            dt = np.dtype(dtype)
            n = int(np.prod(shape, dtype=np.int64))
            out.append(whole[off : off + n * dt.itemsize].view(dt).reshape(shape))
        return out

    def close(self) -> None:
        """Forget the mappings and close the descriptors; a mapping is unmapped when its last view is gone."""
        self.maps.clear()
        fds, self.fds = self.fds, {}
        for fd in fds.values():
            os.close(fd)


__all__ = [
    "Arena", "Mappings", "ShmUnavailable", "available", "check_name", "fill", "host_key", "layout", "own_segments", "probe",
    "sweep_orphans",
]

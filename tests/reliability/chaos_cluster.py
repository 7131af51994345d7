"""What the chaos tests share: a 3-worker coupling with fast supervision, waiting, and SIGKILL of a worker."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Callable

import dask

from coupler.runtime.coupling import Coupling


def until(what: str, ready: Callable[[], bool], timeout: float = 90.0) -> None:
    """Wait until ``ready()``.

    Raises:
        TimeoutError: naming ``what`` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout} s for {what}")
        time.sleep(0.05)


@contextmanager
def chaos_coupling(checkpoint_interval: float, poll: float = 0.3, backoff: float = 0.2, restarts: int = 2) -> Iterator[Coupling]:
    """Three worker processes whose nannies replace a killed one (with a new address), supervised fast."""
    settings = {
        "coupler.supervision.poll-interval": poll,
        "coupler.supervision.checkpoint-interval": checkpoint_interval,
        "coupler.supervision.restart-backoff": backoff,
        "coupler.supervision.max-restarts": restarts,
    }
    with dask.config.set(settings), Coupling(n_workers=3, threads_per_worker=1, dashboard_address=":0") as cp:
        yield cp


# Addresses of the workers kill_worker killed that the scheduler may still list. An address leaves the set
# once the scheduler no longer lists it: the kernel hands ports out again, and a later worker (of this
# cluster or of another test module's) that gets a killed worker's address is alive. Kept for the whole
# session, the set once made a fresh cluster's worker count as killed for good (both tests of a module
# failed waiting for three workers).
_KILLED: set[str] = set()


def _alive(cp: Coupling) -> list[str]:
    """The scheduler's workers, once none of them is one that was killed and is still listed; else ``[]``."""
    workers = cp.workers()
    listed = _KILLED.intersection(workers)
    _KILLED.intersection_update(listed)  # the others are gone from this scheduler
    return [] if listed else workers


def three_workers(cp: Coupling, wait: float = 60.0) -> list[str]:
    """The three workers, once a nanny has replaced the one an earlier test killed.

    The scheduler may still list a killed worker next to its replacement for a
    moment (it removes it when its connection drops): a test that pinned an actor
    to it failed with "every worker it was placed on left", so the list counts
    only once no killed worker is in it. (A nanny whose worker was killed twice,
    15 s apart, used to be closed by Dask in the middle of its second restart;
    coupler's clusters keep it: runtime/launch/lost_workers.py.)
    """
    until("three workers, none of them killed", lambda: len(_alive(cp)) >= 3, timeout=wait)
    return _alive(cp)


def kill_worker(cp: Coupling, address: str) -> None:
    """SIGKILL the worker process at ``address``."""
    pid = cp.client.run(os.getpid, workers=[address])[address]
    _KILLED.add(address)
    os.kill(pid, signal.SIGKILL)


def fresh_tag(kind: str) -> str:
    """A fresh suffix for channel and actor names on a module's shared cluster."""
    return f"{kind}-{time.monotonic_ns() % 10**7}"


def stop_all(*refs: object) -> None:
    """Stop every actor in ``refs``, going on past one that fails to stop (cleanup after a test)."""
    for r in refs:
        try:
            r.stop()  # type: ignore[attr-defined]
        except Exception:
            pass


def fresh_checkpoint(cp: Coupling, victim: object, timeout: float = 10.0) -> None:
    """Wait until the supervisor holds a checkpoint of ``victim`` newer than the one it holds now."""
    before = cp.supervisor.last_checkpoint(victim.name) or {}  # type: ignore[attr-defined]
    until(
        "a fresh checkpoint",
        lambda: (cp.supervisor.last_checkpoint(victim.name) or {}).get("time") != before.get("time"),  # type: ignore[attr-defined]
        timeout,
    )

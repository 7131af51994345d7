"""A typed handle on a spawned actor (instead of Dask's dynamic ``Actor`` proxy)."""

from __future__ import annotations

import time
from typing import Any

from distributed.actor import Actor

from coupler.runtime.errors import ActorFailed
from coupler.runtime.status import ActorStatus


class ActorRef:
    """Control an actor host from the coupling script.

    Every call goes straight to the actor's worker (the coupling's client uses
    ``direct_to_workers=True``) and returns quickly: the actor's run loop lives
    in its own thread.

    Args:
        name: the actor's name in the coupling.
        actor: the Dask actor proxy.
    """

    def __init__(self, name: str, actor: Actor) -> None:
        self.name = name
        self._actor = actor

    def __repr__(self) -> str:
        return f"ActorRef({self.name!r})"

    def _control(self, method: str, *args: Any) -> ActorStatus:
        return ActorStatus.from_dict(getattr(self._actor, method)(*args).result())

    def start(self) -> ActorStatus:
        """Start the run loop (idempotent while it runs)."""
        return self._control("start")

    def pause(self) -> ActorStatus:
        """Pause the run loop between two steps."""
        return self._control("pause")

    def resume(self) -> ActorStatus:
        """Resume a paused run loop."""
        return self._control("resume")

    def stop(self, timeout: float = 30.0) -> ActorStatus:
        """Ask the run loop to end after its current step and wait up to ``timeout`` s."""
        return self._control("stop", timeout)

    def status(self) -> ActorStatus:
        """The actor's current status."""
        return self._control("status")

    def wait(self, timeout: float | None = None, poll: float = 0.1) -> ActorStatus:
        """Wait for the run loop to end.

        Args:
            timeout: seconds to wait (``None``: forever).
            poll: seconds between status calls.

        Returns:
            The final status.

        Raises:
            ActorFailed: if the run loop raised (the message holds its traceback).
            TimeoutError: if it is still running after ``timeout``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            st = self.status()
            if st.state == "failed":
                raise ActorFailed(f"actor {self.name!r} on {st.worker} failed:\n{st.error}")
            if st.done:
                return st
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"actor {self.name!r} still {st.state} after {timeout} s ({st.steps} steps)")
            time.sleep(poll)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call one of the actor's own remote methods (e.g. ``"weights"``) and return its result."""
        return getattr(self._actor, method)(*args, **kwargs).result()

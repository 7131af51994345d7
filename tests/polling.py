"""Waiting in a test for something another process does: look every 50 ms, fail with what was awaited."""

from __future__ import annotations

import time
from typing import Any, Callable


def until(what: str, ready: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Wait until ``ready()`` is true; return its value.

    Args:
        what: what is awaited, for the error.
        ready: the condition (called every 50 ms).
        timeout: seconds.

    Raises:
        TimeoutError: ``ready()`` stayed false for ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while not (value := ready()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout} s for {what}")
        time.sleep(0.05)
    return value

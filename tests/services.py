"""What a test does when a service it needs (Slurm, Chromium, emulated hosts) is missing.

One rule for every such test: outside CI it skips and says why, so that ``make test``
passes on a fresh machine without root, Slurm or Chromium; with ``CI=true`` it fails,
because ``.ci/run`` starts every service and a broken start must not pass unseen.
"""

from __future__ import annotations

import os
import shutil

import pytest


def in_ci() -> bool:
    """Whether this run is CI's (``CI=true``, as GitHub Actions and ``.ci/run`` set it)."""
    return os.environ.get("CI", "").strip().lower() == "true"


def require(service: str, problem: str | None) -> None:
    """Go on when ``problem`` is ``None``; else skip the test (outside CI) or fail it (``CI=true``).

    Args:
        service: what the test needs, named for the message (e.g. "Slurm").
        problem: why the service is not usable here, or ``None`` when it is.

    Raises:
        pytest.skip.Exception: outside CI, when the service is missing.
        pytest.fail.Exception: under ``CI=true``, when the service is missing.
    """
    if problem is None:
        return
    if in_ci():
        pytest.fail(f"CI=true but {service} unavailable: {problem}")
    pytest.skip(f"{service} unavailable: {problem}")


def require_executable(name: str, how_to_get: str) -> str:
    """The path of executable ``name``, or a skip / failure (see :func:`require`) saying how to get it.

    Args:
        name: the command, looked up on ``PATH``.
        how_to_get: what to run to install it (for the message).

    Returns:
        Its absolute path.
    """
    path = shutil.which(name)
    require(name, None if path is not None else f"{name!r} is not on PATH; {how_to_get}")
    assert path is not None  # require() did not return otherwise
    return path

"""The reliability tests' shared chaos clusters end when the run leaves this folder (chaos_cluster.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

import chaos_cluster

HERE = Path(__file__).resolve().parent


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """After the last test of this folder, close the chaos clusters its modules shared."""
    if nextitem is None or Path(nextitem.path).resolve().parent != HERE:
        chaos_cluster.close_shared()

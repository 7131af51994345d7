"""Tests that need a real GPU: every test here is marked ``gpu``.

``make test`` deselects them (CI has no GPU); ``make test-gpu`` runs them on a
GPU machine, where they fail, not skip, if JAX finds no GPU in the workers.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/gpu/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.gpu)

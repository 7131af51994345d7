"""Shared fixtures: one real LocalCluster coupling for the integration tests."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import cloudpickle
import pytest

import helper_actors
from coupler.runtime import Coupling

# Test actors live in a test module the workers cannot import: ship them by value.
cloudpickle.register_pickle_by_value(helper_actors)

_names = itertools.count()


@pytest.fixture(scope="session")
def coupling() -> Iterator[Coupling]:
    """A coupling on a real 2-worker LocalCluster (processes), shared by the session."""
    with Coupling(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cp:
        yield cp


@pytest.fixture
def unique() -> str:
    """A fresh suffix for channel and actor names (the cluster is shared)."""
    return f"t{next(_names)}"


def pytest_configure(config: pytest.Config) -> None:
    """Markers of tests that need a service (their skip-or-fail rule: tests/services.py)."""
    config.addinivalue_line(
        "markers", "multihost: workers on emulated hosts (network namespaces, as root; tests/multihost/emulated_hosts.py)"
    )

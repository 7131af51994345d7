"""Fixtures of the emulated-host tests: a coupling with one worker per emulated host (host_cluster.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from host_cluster import HostCluster, host_cluster


@pytest.fixture(scope="module")
def three_hosts() -> Iterator[HostCluster]:
    """Three emulated hosts, one worker each, with Dask's default timeouts."""
    yield from host_cluster(3, {}, {})

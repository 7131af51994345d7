"""Shared fixtures: one real LocalCluster coupling for the integration tests."""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator

# One JAX compilation cache for the whole session, before anything imports JAX: the
# suite compiles the same solvers and models again in many processes (every test's
# workers), and a hit loads the executable instead (tests/benchmarks/test_augmentation_
# speedup_bench.py: 92 s without, 39 s with a cache that starts empty). Fresh per session,
# so no run depends on an earlier one; inherited by worker processes through the
# environment. A cache a user set up is left as it is.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _jax_cache = tempfile.mkdtemp(prefix="coupler-test-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _jax_cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    atexit.register(shutil.rmtree, _jax_cache, True)

import cloudpickle  # noqa: E402
import pytest  # noqa: E402

import helper_actors  # noqa: E402
from coupler.runtime import Coupling  # noqa: E402

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


def _refuse_clusters() -> None:
    """Make every Dask cluster start in this process fail, naming the rule (``make test``'s parallel part)."""
    from distributed.deploy.spec import SpecCluster

    def refuse(self: SpecCluster, *args: object, **kwargs: object) -> None:
        raise RuntimeError(
            "this test starts a Dask cluster, but it runs in `make test`'s parallel part, whose tests "
            "must start none (COUPLER_TEST_NO_CLUSTER); take its file out of PURE_TESTS in the Makefile"
        )

    SpecCluster.__init__ = refuse  # type: ignore[method-assign]


def pytest_configure(config: pytest.Config) -> None:
    """Markers of tests that need a service (their skip-or-fail rule: tests/services.py); with
    ``COUPLER_TEST_NO_CLUSTER=1`` (the parallel part of ``make test``) no Dask cluster may start."""
    if os.environ.get("COUPLER_TEST_NO_CLUSTER") == "1":
        _refuse_clusters()
    config.addinivalue_line(
        "markers", "multihost: workers on emulated hosts (network namespaces, as root; tests/multihost/emulated_hosts.py)"
    )

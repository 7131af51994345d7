"""Fixtures of the system tests: a real Slurm (started by .ci/slurm-up.sh) and its configuration.

Outside CI a missing Slurm skips these tests with the reason; with ``CI=true`` it
fails them, because CI starts Slurm and must not pass without running them (the
rule of ``tests/services.py``, shared with the browser and emulated-host tests).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import dask.config
import pytest

from coupler.runtime import config
from services import require
from slurm_support import JOBQUEUE_YAML, slurm_problem


@pytest.fixture(scope="session")
def slurm() -> None:
    """A Slurm that accepts jobs; skip (outside CI) or fail (CI=true) otherwise."""
    require("Slurm", slurm_problem())


@pytest.fixture
def jobqueue_config() -> Iterator[None]:
    """examples/jobqueue.yaml merged into dask.config for one test, then the previous settings back.

    dask-jobqueue reads its configuration whenever it renders a job, so it stays
    set for the whole test.
    """
    import dask_jobqueue  # noqa: F401  its defaults enter dask.config on import: keep them in what is restored

    saved = copy.deepcopy(dask.config.config)
    config.load_file(str(JOBQUEUE_YAML))
    try:
        yield
    finally:
        dask.config.config.clear()
        dask.config.config.update(saved)

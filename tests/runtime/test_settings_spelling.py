"""Settings reach the code whichever way they are spelled: environment variables and underscores.

Dask turns ``DASK_COUPLER__SUPERVISION__MAX_RESTARTS=5`` into the key ``max_restarts``
and keeps that spelling; code that read the section as a plain dict looked up
``max-restarts``, missed it and used the default (every hyphenated key of the
supervision, delivery, transport and TLS sections, and dask-jobqueue's prologue).
Each case here sets a value through a real environment variable in a fresh
interpreter and reads it back through the object the runtime builds from it.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import dask.config
import pytest
from distributed.worker_memory import parse_memory_limit

from coupler.runtime import config

READ_BACK = r"""
import json
from coupler.runtime.control.supervisor import SupervisionPolicy
from coupler.runtime.dataplane.settings import delivery_config, transport_config
from coupler.runtime.launch.cluster import JobOptions, jobqueue_kwargs, tls_files_from_config

policy = SupervisionPolicy.from_config()
delivery, transport = delivery_config(), transport_config()
tls = tls_files_from_config()
slurm = jobqueue_kwargs("slurm", JobOptions(jobs=1))
print(json.dumps({
    "max_restarts": policy.max_restarts,
    "checkpoint_dir": policy.checkpoint_dir,
    "retry": policy.restart_backoff,
    "retain_bytes": delivery.retain_bytes,
    "lost_consumer_wait": delivery.lost_consumer_wait,
    "inline_max": transport.inline_max,
    "shm_pool_bytes": transport.shm_pool_bytes,
    "shared_memory": transport.shared_memory,
    "retain": delivery.retain,
    "tls_ca": tls.ca_file if tls else None,
    "prologue": slurm["job_script_prologue"],
}))
"""

ENV = {
    "DASK_COUPLER__SUPERVISION__MAX_RESTARTS": "5",
    "DASK_COUPLER__SUPERVISION__CHECKPOINT_DIR": "/tmp/coupler-env-ckpt",
    "DASK_COUPLER__SUPERVISION__RESTART_BACKOFF": "7s",
    "DASK_COUPLER__DELIVERY__RETAIN_BYTES": "1MiB",
    "DASK_COUPLER__DELIVERY__LOST_CONSUMER_WAIT": "42",
    "DASK_COUPLER__TRANSPORT__INLINE_MAX": "2kB",
    "DASK_COUPLER__TRANSPORT__SHM_POOL_BYTES": "3MiB",
    "DASK_COUPLER__TRANSPORT__SHARED_MEMORY": "false",  # Dask keeps it the string "false": bool() read it as on
    "DASK_COUPLER__DELIVERY__RETAIN": "no",
    "DASK_COUPLER__TLS__ENABLED": "true",
    "DASK_COUPLER__TLS__CA_FILE": "/etc/ca.pem",
    "DASK_COUPLER__TLS__CERT": "/etc/cert.pem",
    "DASK_COUPLER__TLS__KEY": "/etc/key.pem",
    "DASK_JOBQUEUE__SLURM__JOB_SCRIPT_PROLOGUE": '["module load cuda"]',
}


def test_environment_variables_reach_every_hyphenated_setting() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    done = subprocess.run([sys.executable, "-c", READ_BACK], env={**env, **ENV}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["max_restarts"] == 5 and got["checkpoint_dir"] == "/tmp/coupler-env-ckpt" and got["retry"] == 7.0
    assert got["retain_bytes"] == 2**20 and got["lost_consumer_wait"] == 42.0
    assert got["inline_max"] == 2000 and got["shm_pool_bytes"] == 3 * 2**20
    assert got["shared_memory"] is False and got["retain"] is False
    assert got["tls_ca"] == "/etc/ca.pem"
    assert got["prologue"][0] == "module load cuda"  # the user's line, then coupler's own


@pytest.mark.parametrize("spelled", [{"max_restarts": 4, "poll-interval": 1}, {"max-restarts": 4, "poll_interval": 1}])
def test_a_section_reads_with_hyphens_however_its_keys_were_spelled(spelled: dict[str, int]) -> None:
    assert config.hyphenated(spelled) == {"max-restarts": 4, "poll-interval": 1}


def test_a_section_that_is_not_set_is_empty() -> None:
    with dask.config.set({"coupler.nothing-here": None}):
        assert config.section("nothing-here") == {}


@pytest.mark.parametrize(("value", "on"), [(True, True), (False, False), ("true", True), ("False", False), ("yes", True),
                                          ("off", False), ("1", True), (0, False)])
def test_a_switch_reads_what_yaml_and_environment_variables_bring(value: object, on: bool) -> None:
    assert config.flag("transport", {"shared-memory": value}, "shared-memory", not on) is on


@pytest.mark.parametrize("value", ["fast", "", None, 2, 0.5, [True]])
def test_a_switch_that_is_not_one_is_refused_naming_it(value: object) -> None:
    with pytest.raises(ValueError, match=r"coupler.transport.shared-memory must be true or false, got "):
        config.flag("transport", {"shared-memory": value}, "shared-memory", True)


@pytest.mark.parametrize(("value", "minimum"), [(0, 0), (3, 1), (2**40, 0)])
def test_a_count_is_a_whole_number_from_its_minimum(value: int, minimum: int) -> None:
    assert config.count("coupler.jobqueue.jobs", value, minimum=minimum) == value


@pytest.mark.parametrize(("value", "minimum"), [(-1, 0), (0, 1), (True, 0), (2.5, 0), (2.0, 0), ("2", 0), (None, 0)])
def test_anything_else_is_refused_as_a_count_naming_the_setting(value: object, minimum: int) -> None:
    with pytest.raises(ValueError, match=rf"coupler.jobqueue.jobs must be an integer >= {minimum}, got "):
        config.count("coupler.jobqueue.jobs", value, minimum=minimum)


@pytest.mark.parametrize("value", ["auto", None, 0, 0.5, 2**33, "4 GiB", "512MB"])
def test_a_memory_limit_taken_here_is_one_dask_takes(value: object) -> None:
    assert config.memory_limit("coupler.local.memory-limit", value) == value
    limit = parse_memory_limit(value, 1, 2, logger=logging.getLogger("test"))
    assert limit is None or limit > 0


@pytest.mark.parametrize("value", ["big", "10%", -1, True, float("nan"), [1]])
def test_a_memory_limit_dask_would_refuse_or_misread_is_refused_naming_the_setting(value: object) -> None:
    with pytest.raises(ValueError, match=r"coupler.local.memory-limit must be 'auto', a size"):
        config.memory_limit("coupler.local.memory-limit", value)

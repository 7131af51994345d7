"""Cluster launch: GPU detection and worker specs, jobqueue options, placement, addresses."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import dask.config
import pytest

from helper_actors import Collector
from coupler.runtime import Coupling, config
from coupler.runtime.launch.cluster import (
    JobOptions,
    NoSuitableWorker,
    SchedulerUnreachable,
    format_walltime,
    jobqueue_kwargs,
    lifetime_args,
    local_worker_spec,
    start_cluster,
    start_local,
    walltime_seconds,
)
from coupler.runtime.launch.devices import (
    detect_gpus,
    parse_nvidia_smi,
    parse_visible_devices,
    resolve_gpus,
    worker_device,
)

SMI = """GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-5d4c6a4e-0000-0000-0000-000000000000)
GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-5d4c6a4e-1111-1111-1111-111111111111)
  MIG 3g.40gb     Device  0: (UUID: MIG-aaaa)
"""
SLURM = {"cores": 4, "memory": "16GB", "walltime": "00:30:00", "worker-extra-args": ["--no-dashboard"], "job-extra-directives": ["--constraint=a100"]}


# -- GPU detection ------------------------------------------------------------------------------
def test_visible_devices_parsing_stops_where_cuda_does() -> None:
    assert parse_visible_devices("0,2") == ["0", "2"]
    assert parse_visible_devices(" 1 , GPU-abc ") == ["1", "GPU-abc"]
    assert parse_visible_devices("") == []
    assert parse_visible_devices("-1") == []
    assert parse_visible_devices("NoDevFiles") == []
    assert parse_visible_devices("0,-1,1") == ["0"]  # CUDA ignores everything after an invalid id


def test_nvidia_smi_listing_counts_gpus_not_mig_lines() -> None:
    assert parse_nvidia_smi(SMI) == ["0", "1"]
    assert parse_nvidia_smi("") == []


def test_detect_prefers_cuda_visible_devices_over_nvidia_smi() -> None:
    assert detect_gpus({"CUDA_VISIBLE_DEVICES": "3"}, nvidia_smi=lambda: SMI) == ["3"]
    assert detect_gpus({"CUDA_VISIBLE_DEVICES": ""}, nvidia_smi=lambda: SMI) == []
    assert detect_gpus({}, nvidia_smi=lambda: SMI) == ["0", "1"]
    assert detect_gpus({}, nvidia_smi=lambda: "") == []


def test_this_machine_detection_without_jax() -> None:
    # No GPU here; whatever the answer, detection must not have started JAX in the driver's stead.
    devices = detect_gpus()
    assert all(isinstance(d, str) for d in devices)


def test_gpus_setting_forms() -> None:
    assert resolve_gpus("auto", detect=lambda: ["0"]) == ["0"]
    assert resolve_gpus(["0", 1]) == ["0", "1"]
    assert resolve_gpus("2,3") == ["2", "3"]
    assert resolve_gpus([]) == [] and resolve_gpus(None) == [] and resolve_gpus("none") == []
    uuid = "GPU-3f1c9a2e-55b0-4a7e-9c1d-0a1b2c3d4e5f"
    assert resolve_gpus([uuid, "MIG-GPU-3f1c9a2e/1/0"]) == [uuid, "MIG-GPU-3f1c9a2e/1/0"]
    # Not device ids: a worker with a GPU resource and CUDA_VISIBLE_DEVICES=yes would run GPU actors on its CPU.
    for bad in (3, True, "yes", "true", "gpu0", ["0", "cuda:1"], [True], ["0\n"]):
        with pytest.raises(ValueError, match="coupler.local.gpus expects 'auto', device ids"):
            resolve_gpus(bad)


def test_worker_of_a_multi_gpu_job_keeps_its_own_device() -> None:
    assert worker_device("SLURMCluster-4-0", 2, ["5", "7"]) == "5"
    assert worker_device("SLURMCluster-4-1", 2, ["5", "7"]) == "7"
    assert worker_device("SLURMCluster-4-1", 2, []) == "1"  # no CUDA_VISIBLE_DEVICES: devices 0..G-1
    assert worker_device("SLURMCluster-4", 1, ["5"]) is None  # one GPU per job: nothing to narrow
    with pytest.raises(ValueError, match="no '-<index>' suffix"):
        worker_device("worker", 2, ["0", "1"])
    with pytest.raises(ValueError, match="process 2 of its job"):
        worker_device("job-2", 2, ["0", "1"])


def test_local_worker_spec_binds_one_device_or_none() -> None:
    base = {"cls": object, "options": {"env": {"A": "1"}, "nthreads": 1}}
    gpu = local_worker_spec(base, "1")
    assert gpu["options"]["env"] == {"A": "1", "XLA_PYTHON_CLIENT_PREALLOCATE": "false", "CUDA_VISIBLE_DEVICES": "1"}
    assert gpu["options"]["resources"] == {"GPU": 1}
    cpu = local_worker_spec(base, None)
    assert cpu["options"]["env"]["CUDA_VISIBLE_DEVICES"] == "" and cpu["options"]["resources"] is None
    assert base["options"]["env"] == {"A": "1"}  # the template is not changed


# -- walltime and lifetime ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "kind", "seconds"),
    [
        ("01:30:00", "slurm", 5400),
        ("1-00:00:10", "slurm", 86410),
        ("30", "slurm", 1800),
        ("30", "pbs", 30),
        ("02:30", "slurm", 150),
        ("02:30", "lsf", 9000),
    ],
)
def test_walltime_forms_per_batch_system(text: str, kind: str, seconds: int) -> None:
    assert walltime_seconds(text, kind) == seconds


@pytest.mark.parametrize("bad", ["", "1:2:3:4", "ab:cd:ef", "01:-5:00", "soon"])
def test_bad_walltime_says_what_is_expected(bad: str) -> None:
    with pytest.raises(ValueError, match=r"\[D-\]HH:MM:SS"):
        walltime_seconds(bad)


def test_walltime_formats() -> None:
    assert format_walltime(5400, "slurm") == "01:30:00"
    assert format_walltime(150, "lsf") == "00:03"  # LSF has minutes only: round up, never cut short


def test_lifetime_leaves_margin_and_stagger_before_walltime() -> None:
    assert lifetime_args(3600) == ["--lifetime", "3180s", "--lifetime-stagger", "120s"]  # margin 5 min (cap), stagger 2 min
    assert lifetime_args(180) == ["--lifetime", "141s", "--lifetime-stagger", "9s"]  # margin 30 s (floor), stagger 5 %
    assert lifetime_args(600, margin="1 minute", stagger=0) == ["--lifetime", "540s", "--lifetime-stagger", "0s"]
    with pytest.raises(ValueError, match="leaves no worker lifetime"):
        lifetime_args(40)


# -- dask-jobqueue keyword arguments -------------------------------------------------------------
def test_slurm_gpu_job_options() -> None:
    kw = jobqueue_kwargs("slurm", JobOptions(jobs=2, gpus_per_job=2, walltime="01:00:00", queue="gpu", account="proj"), SLURM)
    assert kw["processes"] == 2
    assert kw["job_extra_directives"] == ["--constraint=a100", "--gres=gpu:2"]  # configured directives kept
    assert kw["worker_extra_args"] == [
        "--no-dashboard",
        "--resources", "GPU=1",
        "--preload", "coupler.runtime.launch.devices",
        "--lifetime", "3180s", "--lifetime-stagger", "120s",
    ]
    assert kw["job_script_prologue"] == [
        "export XLA_PYTHON_CLIENT_PREALLOCATE=false",
        'export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0,1}"',
        "export COUPLER_GPUS_PER_JOB=2",
    ]
    assert (kw["walltime"], kw["queue"], kw["account"]) == ("01:00:00", "gpu", "proj")


def test_cpu_job_gets_lifetime_from_configured_walltime_and_keeps_its_directives() -> None:
    kw = jobqueue_kwargs("slurm", JobOptions(), SLURM)
    assert "processes" not in kw and "job_extra_directives" not in kw and "walltime" not in kw
    assert kw["worker_extra_args"] == ["--no-dashboard", "--lifetime", "1530s", "--lifetime-stagger", "90s"]
    assert kw["job_script_prologue"] == ["export XLA_PYTHON_CLIENT_PREALLOCATE=false"]


def test_deprecated_list_keys_are_merged_not_dropped() -> None:
    kw = jobqueue_kwargs("slurm", JobOptions(gpus_per_job=1), {"cores": 1, "env-extra": ["module load cuda"], "extra": ["--foo"], "job-extra": ["-C x"]})
    assert kw["job_script_prologue"][0] == "module load cuda"
    assert kw["worker_extra_args"][0] == "--foo"
    assert kw["job_extra_directives"] == ["-C x", "--gres=gpu:1"]


def test_pbs_asks_for_gpus_in_the_select_chunk() -> None:
    kw = jobqueue_kwargs("pbs", JobOptions(gpus_per_job=1, account="a"), {"cores": 8, "memory": "32GB"})
    assert kw["resource_spec"].startswith("select=1:ncpus=8:ngpus=1:mem=")
    assert kw["account"] == "a"
    kw = jobqueue_kwargs("pbs", JobOptions(gpus_per_job=2), {"cores": 8, "memory": "32GB", "resource-spec": "select=1:ncpus=8:model=a100"})
    assert kw["resource_spec"] == "select=1:ncpus=8:model=a100:ngpus=2"


def test_lsf_sge_htcondor_specifics() -> None:
    lsf = jobqueue_kwargs("lsf", JobOptions(gpus_per_job=1, walltime="00:02:30", account="p"), {"cores": 2})
    assert lsf["walltime"] == "00:03" and lsf["project"] == "p" and lsf["job_extra_directives"] == ['-gpu "num=1"']
    sge = jobqueue_kwargs("sge", JobOptions(gpus_per_job=1), {"cores": 2})
    assert sge["job_extra_directives"] == ["-l gpu=1"]
    condor = jobqueue_kwargs("htcondor", JobOptions(gpus_per_job=2), {"cores": 2, "job-extra-directives": {"+Group": "x"}})
    assert condor["job_extra_directives"] == {"+Group": "x", "request_gpus": "2"}
    with pytest.raises(ValueError, match="HTCondor jobs have no walltime"):
        jobqueue_kwargs("htcondor", JobOptions(walltime="01:00:00"), {"cores": 2})


def test_bad_job_options_are_refused_with_what_was_expected() -> None:
    with pytest.raises(ValueError, match="must be one of slurm, pbs"):
        jobqueue_kwargs("torque", JobOptions(), {})
    with pytest.raises(ValueError, match="cores must be at least gpus-per-job"):
        jobqueue_kwargs("slurm", JobOptions(gpus_per_job=4), {"cores": 2})
    with pytest.raises(ValueError, match="jobs must be an integer >= 0"):
        JobOptions(jobs=-1)
    with pytest.raises(ValueError, match="walltime expects"):
        JobOptions(walltime="tomorrow")


def test_job_options_from_config_with_overrides() -> None:
    with dask.config.set({"coupler.jobqueue.jobs": 3, "coupler.jobqueue.gpus-per-job": 1}):
        assert JobOptions.from_config() == JobOptions(jobs=3, gpus_per_job=1)
        assert JobOptions.from_config(jobs=5, walltime=None) == JobOptions(jobs=5, gpus_per_job=1)


def test_environment_variables_reach_coupler_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DASK_COUPLER__JOBQUEUE__GPUS_PER_JOB", "2")
    dask.config.refresh()
    try:
        assert config.get("jobqueue.gpus-per-job") == 2
    finally:
        monkeypatch.delenv("DASK_COUPLER__JOBQUEUE__GPUS_PER_JOB")
        dask.config.refresh()


def test_slurm_job_script_from_options() -> None:
    # Building the class needs no Slurm; only submitting does (tests/system).
    from coupler.runtime.launch.cluster import close_cluster, start_cluster

    # dask-jobqueue reads its configuration whenever it renders a job, so keep it set throughout.
    with dask.config.set({"jobqueue.slurm.cores": 2, "jobqueue.slurm.memory": "2GiB", "jobqueue.slurm.scheduler-options": {"dashboard_address": ":0"}}):
        cluster = start_cluster("slurm", JobOptions(jobs=0, gpus_per_job=1, walltime="00:10:00"))
        try:
            script = cluster.job_script()
        finally:
            close_cluster(cluster)
    assert "#SBATCH --gres=gpu:1" in script and "#SBATCH -t 00:10:00" in script
    assert "--resources GPU=1" in script and "--lifetime 510s" in script


# -- the local cluster, placement and addresses --------------------------------------------------
@pytest.fixture(scope="module")
def gpu_local_cluster() -> Iterator[Any]:
    """A local cluster of 3 workers given two injected GPU ids on this GPU-less machine."""
    cluster = start_local(3, gpus=["0", "1"], dashboard_address=":0", memory_limit="1GiB")
    yield cluster
    cluster.close()


def test_local_cluster_gives_each_worker_its_own_gpu(gpu_local_cluster: Any) -> None:
    """The specs and environments are real; only the devices are injected."""
    from distributed import Client

    with Client(gpu_local_cluster) as client:
        env = client.run(lambda: (os.environ["CUDA_VISIBLE_DEVICES"], os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"]))
        workers = client.scheduler_info(n_workers=-1)["workers"]
    resources = {a: w.get("resources") or {} for a, w in workers.items()}
    devices = sorted(d for d, _ in env.values())
    assert devices == ["", "0", "1"]  # two GPU workers, and one more that sees no GPU
    assert all(pre == "false" for _, pre in env.values())
    for addr, (device, _) in env.items():
        assert resources[addr] == ({"GPU": 1} if device else {})


def test_a_gpu_listed_twice_is_shared_by_two_workers() -> None:
    from distributed import Client

    cluster = start_local(gpus=["0", "0"], dashboard_address=":0", memory_limit="1GiB")
    try:
        with Client(cluster) as client:
            env = client.run(lambda: os.environ["CUDA_VISIBLE_DEVICES"])
            workers = client.scheduler_info(n_workers=-1)["workers"]
    finally:
        cluster.close()
    assert sorted(env.values()) == ["0", "0"]
    assert all((w.get("resources") or {}) == {"GPU": 1} for w in workers.values())


def test_gpu_actors_land_only_on_gpu_workers(gpu_local_cluster: Any) -> None:
    with Coupling(gpu_local_cluster) as cp:
        gpu_workers = {a for a, w in cp.client.scheduler_info(n_workers=-1)["workers"].items() if w.get("resources")}
        assert len(gpu_workers) == 2
        hosts = {cp.spawn(Collector, name=f"gpu-actor-{i}", resources={"GPU": 1}).status().worker for i in range(4)}
    assert hosts <= gpu_workers


def test_spawn_without_a_worker_with_the_resources_fails_clearly(coupling: Coupling, unique: str) -> None:
    t0 = time.monotonic()
    with dask.config.set({"coupler.placement-timeout": "0.5s"}):
        with pytest.raises(NoSuitableWorker, match=r"no worker has resources \{'GPU': 1\}.*--gpus-per-job"):
            coupling.spawn(Collector, name=f"nogpu-{unique}", resources={"GPU": 1})
    assert time.monotonic() - t0 < 5


def test_unreachable_address_fails_fast() -> None:
    t0 = time.monotonic()
    with dask.config.set({"coupler.connect-timeout": "1s"}):
        with pytest.raises(SchedulerUnreachable, match="no Dask scheduler answered at 'tcp://127.0.0.1:9'"):
            Coupling("tcp://127.0.0.1:9")
    assert time.monotonic() - t0 < 10


def test_coupling_joins_the_configured_scheduler_and_leaves_it_running(coupling: Coupling) -> None:
    address = coupling.client.scheduler.address
    with dask.config.set({"coupler.scheduler-address": address}):
        with Coupling(n_workers=5) as cp:  # local options do not apply when joining
            assert cp.client.scheduler.address == address
            assert cp.workers() == coupling.workers()
    assert coupling.workers()  # the shared cluster is still up


def test_the_coupling_s_own_local_cluster_refuses_missing_resources_at_once(coupling: Coupling, unique: str) -> None:
    # Its workers are all there and never change: waiting coupler.placement-timeout (30 s) would only delay the error.
    assert coupling._workers_fixed()
    t0 = time.monotonic()
    with dask.config.set({"coupler.placement-timeout": "30s"}):
        with pytest.raises(NoSuitableWorker, match=r"no worker has resources \{'GPU': 1\} \(waited 0 s\)"):
            coupling.spawn(Collector, name=f"nogpu-now-{unique}", resources={"GPU": 1})
    assert time.monotonic() - t0 < 10  # a bound on a hang, not a timing target


@pytest.mark.parametrize("kind", ["slurm", "pbs"])
def test_a_batch_system_without_cores_and_memory_names_the_settings_to_set(kind: str) -> None:
    """dask-jobqueue's own message suggests Python code (``SLURMCluster(cores=8, memory='24GB')``)."""
    import dask_jobqueue  # noqa: F401  (its defaults first: a set() before the import would drop them on exit)

    with dask.config.set({f"jobqueue.{kind}.cores": None, f"jobqueue.{kind}.memory": None}):
        with pytest.raises(ValueError, match=f"set jobqueue.{kind}.cores and jobqueue.{kind}.memory in a configuration"):
            start_cluster(kind, JobOptions.from_config(jobs=1))


def test_a_script_without_a_main_guard_is_told_to_add_one(tmp_path: Any) -> None:
    """Each worker process imports the script: one that starts a coupling at module level failed with only
    "Nanny failed to start." at the bottom, multiprocessing's own hint buried in the workers' tracebacks."""
    import subprocess
    import sys

    script = tmp_path / "no_guard.py"
    script.write_text("from coupler.runtime import Coupling\ncp = Coupling(n_workers=1)\ncp.close()\n")
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert 'put that code under `if __name__ == "__main__":`' in last and str(script) in last, last

"""GPU devices of a machine and of a worker, found without importing JAX.

The driver must not start JAX (or CUDA) just to count GPUs: a JAX client in the
driver would hold GPU memory that the workers need. So devices are read from
``CUDA_VISIBLE_DEVICES`` when it is set (batch systems set it for the GPUs
they allocated), else from ``nvidia-smi -L``.

This module is also a Dask worker preload (``--preload coupler.runtime.launch.devices``):
in a batch job with several GPUs and one worker process per GPU, it narrows
each worker's ``CUDA_VISIBLE_DEVICES`` to its own device before any actor
imports JAX.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from typing import Any

# Set in every worker before JAX starts: actors that share a GPU must not each
# grab most of its memory.
WORKER_ENV: dict[str, str] = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}

# Exported by the job script of a multi-GPU job; the preload reads it.
GPUS_PER_JOB_VAR = "COUPLER_GPUS_PER_JOB"

_SMI_LINE = re.compile(r"^GPU (\d+):")


def parse_visible_devices(value: str) -> list[str]:
    """Device ids in a ``CUDA_VISIBLE_DEVICES`` value (indices or UUIDs).

    CUDA stops at the first invalid entry; ``""``, ``"-1"`` and Slurm's
    ``"NoDevFiles"`` all mean no device.

    Returns:
        The ids in order, e.g. ``["0", "2"]`` for ``"0,2"``.
    """
    ids: list[str] = []
    for item in value.split(","):
        item = item.strip()
        if not item or item == "NoDevFiles" or item.startswith("-"):
            break
        ids.append(item)
    return ids


def parse_nvidia_smi(listing: str) -> list[str]:
    """Device indices in the output of ``nvidia-smi -L``.

    Returns:
        ``["0", "1"]`` for lines ``GPU 0: ...`` and ``GPU 1: ...`` (MIG lines are not GPUs).
    """
    return [m.group(1) for line in listing.splitlines() if (m := _SMI_LINE.match(line.strip()))]


def _run_nvidia_smi() -> str:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return ""
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    # A driver problem makes nvidia-smi fail: treat as no GPU rather than crash the launch.
    return out.stdout if out.returncode == 0 else ""


def detect_gpus(
    environ: Mapping[str, str] | None = None,
    nvidia_smi: Callable[[], str] = _run_nvidia_smi,
) -> list[str]:
    """The GPUs this process may use, without importing JAX.

    Args:
        environ: the environment to read (default ``os.environ``).
        nvidia_smi: returns the output of ``nvidia-smi -L`` (``""`` when absent);
            injectable so that tests need no GPU.

    Returns:
        Device ids for ``CUDA_VISIBLE_DEVICES``, one per GPU; empty without GPUs.
    """
    env = os.environ if environ is None else environ
    if "CUDA_VISIBLE_DEVICES" in env:
        return parse_visible_devices(env["CUDA_VISIBLE_DEVICES"])
    return parse_nvidia_smi(nvidia_smi())


# What CUDA_VISIBLE_DEVICES takes: an index, or a GPU or MIG device's UUID (as nvidia-smi -L prints it).
_DEVICE_ID = re.compile(r"\d+|(GPU|MIG)-[0-9A-Za-z/-]+")  # with fullmatch: "$" would let "0\n" through


def resolve_gpus(setting: Any, detect: Callable[[], list[str]] = detect_gpus) -> list[str]:
    """The devices named by the ``coupler.local.gpus`` setting.

    Args:
        setting: ``"auto"`` (detect), a list of device ids, a comma-separated
            string of them, or ``None``/``[]``/``"none"`` for no GPU.
        detect: the detection to use for ``"auto"``.

    Returns:
        Device ids as strings.

    Raises:
        ValueError: for a setting of another kind.
    """
    if setting == "auto":
        return detect()
    if setting is None or setting == "none" or setting == "":
        return []
    devices: list[str] | None = None
    if isinstance(setting, str):
        devices = parse_visible_devices(setting)
    elif isinstance(setting, (list, tuple)) and all(isinstance(d, (str, int)) and not isinstance(d, bool) for d in setting):
        devices = [str(d) for d in setting]
    # "yes" or "true" would become a worker with a GPU resource and CUDA_VISIBLE_DEVICES=yes, whose
    # GPU actors then run on its CPU: only what CUDA_VISIBLE_DEVICES takes is a device id.
    if devices is None or not all(_DEVICE_ID.fullmatch(d) for d in devices):
        raise ValueError(
            "coupler.local.gpus expects 'auto', device ids (0, 1, ... or GPU-/MIG- UUIDs, a list or "
            f"'0,1'), or none/[] for no GPU; got {setting!r}"
        )
    return devices


def worker_device(name: str, gpus_per_job: int, visible: list[str]) -> str | None:
    """The one device a worker of a multi-GPU job should keep.

    ``dask worker --nworkers G --name JOB`` names its processes ``JOB-0`` ...
    ``JOB-{G-1}``; worker ``i`` takes the ``i``-th device the job was given.

    Args:
        name: the worker's name.
        gpus_per_job: GPUs (and worker processes) in its job.
        visible: the job's devices (its ``CUDA_VISIBLE_DEVICES``), or ``[]`` if
            the batch system did not set it (then devices ``0..G-1`` are assumed).

    Returns:
        The device id, or ``None`` when there is nothing to narrow (one GPU per job).

    Raises:
        ValueError: if the name has no process index or the index is out of range.
    """
    if gpus_per_job <= 1:
        return None
    devices = visible or [str(i) for i in range(gpus_per_job)]
    head, _, index = str(name).rpartition("-")
    if not head or not index.isdigit():
        raise ValueError(f"worker name {name!r} has no '-<index>' suffix; expected one per GPU of a {gpus_per_job}-GPU job")
    i = int(index)
    if i >= len(devices):
        raise ValueError(f"worker {name!r} is process {i} of its job but the job has devices {devices}")
    return devices[i]


def dask_setup(worker: Any) -> None:
    """Preload hook: give this worker its own GPU of a multi-GPU job.

    Runs in the worker process before any task or actor, hence before JAX reads
    ``CUDA_VISIBLE_DEVICES``.
    """
    for key, value in WORKER_ENV.items():
        os.environ.setdefault(key, value)
    gpus = int(os.environ.get(GPUS_PER_JOB_VAR, "0") or 0)
    device = worker_device(worker.name, gpus, parse_visible_devices(os.environ.get("CUDA_VISIBLE_DEVICES", "")))
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device

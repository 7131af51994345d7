"""Building and connecting the clusters a coupling runs on.

Three kinds, one entry point (:func:`start_cluster`):

- ``"local"``: the embedded ``LocalCluster`` of worker processes. With GPUs
  (``coupler.local.gpus``, detected without importing JAX) it starts one worker
  per GPU, each with its own ``CUDA_VISIBLE_DEVICES`` and resource ``GPU=1``.
- ``"slurm"``, ``"pbs"``, ``"sge"``, ``"lsf"``, ``"htcondor"``: a dask-jobqueue
  cluster built from dask-jobqueue's own configuration (``jobqueue.<kind>`` in
  ``dask.config``, e.g. ``~/.config/dask/jobqueue.yaml``) plus coupler's
  options (``coupler.jobqueue``): GPUs per job (one worker process per GPU,
  the batch system's GPU request, ``--resources GPU=1``), and workers that retire
  (``--lifetime``) before the walltime kills them.
- a scheduler address: :func:`connect` with a short timeout and a clear error.

Example::

    cluster = start_cluster("slurm", JobOptions(jobs=2, gpus_per_job=1, walltime="01:00:00"))
    print(cluster.job_script())
"""

from __future__ import annotations

import atexit
import copy
import importlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.config
from dask.utils import parse_timedelta
from distributed import Client, LocalCluster
from distributed.security import Security
from distributed.system import MEMORY_LIMIT

from coupler.runtime import config
from coupler.runtime.launch.devices import GPUS_PER_JOB_VAR, WORKER_ENV, resolve_gpus
from coupler.runtime.launch.lost_workers import KeepsRestartedWorkers, keeping_restarted_workers
from coupler.runtime.errors import CouplerError, NoSuitableWorker, SchedulerUnreachable, WorkersNotReady

logger = logging.getLogger(__name__)

#: Batch systems, by the name of their section in dask-jobqueue's configuration.
JOBQUEUE_CLASSES: dict[str, str] = {
    "slurm": "SLURMCluster",
    "pbs": "PBSCluster",
    "sge": "SGECluster",
    "lsf": "LSFCluster",
    "htcondor": "HTCondorCluster",
}
KINDS: tuple[str, ...] = ("local", *JOBQUEUE_CLASSES)

# dask-jobqueue's keyword for a project/account to charge, per batch system.
_ACCOUNT_KEYWORD = {"slurm": "account", "pbs": "account", "sge": "project", "lsf": "project"}


@dataclass(frozen=True)
class JobOptions:
    """What coupler adds to a dask-jobqueue cluster's own configuration.

    Attributes:
        jobs: batch jobs to submit.
        gpus_per_job: GPUs per job; ``> 0`` gives one worker process per GPU.
        walltime: per job, ``[D-]HH:MM:SS`` whatever the batch system (converted
            to its format); ``None`` keeps ``jobqueue.<kind>.walltime``.
        queue: queue/partition; ``None`` keeps the configured one.
        account: account/project to charge; ``None`` keeps the configured one.
    """

    jobs: int = 1
    gpus_per_job: int = 0
    walltime: str | None = None
    queue: str | None = None
    account: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.jobs, int) or self.jobs < 0:
            raise ValueError(f"jobs must be an integer >= 0; got {self.jobs!r}")
        if not isinstance(self.gpus_per_job, int) or self.gpus_per_job < 0:
            raise ValueError(f"gpus_per_job must be an integer >= 0; got {self.gpus_per_job!r}")
        if self.walltime is not None:
            walltime_seconds(self.walltime)  # fail at once on a malformed value

    @classmethod
    def from_config(cls, **overrides: Any) -> JobOptions:
        """Options from ``coupler.jobqueue``, with ``overrides`` that are not ``None``."""
        values: dict[str, Any] = {
            "jobs": config.count("coupler.jobqueue.jobs", config.get("jobqueue.jobs")),
            "gpus_per_job": config.count("coupler.jobqueue.gpus-per-job", config.get("jobqueue.gpus-per-job")),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


# -- walltime and lifetime ------------------------------------------------------------------
def walltime_seconds(walltime: str, kind: str = "slurm") -> int:
    """Seconds in a walltime written the way ``kind`` writes it.

    Three fields are ``HH:MM:SS`` everywhere, with an optional ``D-`` prefix
    (Slurm). Fewer fields differ: a bare number is minutes for Slurm and LSF and
    seconds for PBS and SGE; two fields are ``HH:MM`` for LSF and ``MM:SS`` otherwise.

    Raises:
        ValueError: for anything else.
    """
    text = str(walltime).strip()
    days, _, clock = text.rpartition("-")
    try:
        fields = [int(f) for f in clock.split(":")]
        n_days = int(days) if days else 0
    except ValueError:
        fields, n_days = [], 0
    if not fields or len(fields) > 3 or any(f < 0 for f in fields) or n_days < 0:
        raise ValueError(f"walltime expects [D-]HH:MM:SS (e.g. '01:30:00'); got {walltime!r}")
    if len(fields) == 3:
        h, m, s = fields
    elif len(fields) == 2:
        h, m, s = (fields[0], fields[1], 0) if kind == "lsf" else (0, fields[0], fields[1])
    else:
        h, m, s = (0, fields[0], 0) if kind in ("slurm", "lsf") else (0, 0, fields[0])
    return ((n_days * 24 + h) * 60 + m) * 60 + s


def format_walltime(seconds: int, kind: str) -> str:
    """A walltime as ``kind`` expects it: ``HH:MM`` for LSF (rounded up), else ``HH:MM:SS``."""
    if kind == "lsf":
        minutes = -(-seconds // 60)
        return f"{minutes // 60:02d}:{minutes % 60:02d}"
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def lifetime_args(walltime_s: float, margin: str | float = "auto", stagger: str | float = "auto") -> list[str]:
    """``dask worker`` arguments that retire a worker before its job's walltime.

    A worker lives ``lifetime ± stagger``; ``lifetime = walltime - margin - stagger``
    so that even the last one retires ``margin`` before the batch system kills it,
    which leaves time to move its actors.

    Args:
        walltime_s: the job's walltime in seconds.
        margin: a duration (``"5 minutes"``, seconds) or ``"auto"``: 10 % of the
            walltime, within [30 s, 5 min].
        stagger: a duration or ``"auto"``: 5 % of the walltime, at most 2 min.

    Returns:
        ``["--lifetime", "<n>s", "--lifetime-stagger", "<m>s"]``.

    Raises:
        ValueError: if the walltime leaves no lifetime after margin and stagger.
    """
    margin_s = min(max(0.1 * walltime_s, 30.0), 300.0) if margin == "auto" else parse_timedelta(margin)
    stagger_s = min(0.05 * walltime_s, 120.0) if stagger == "auto" else parse_timedelta(stagger)
    lifetime = walltime_s - margin_s - stagger_s
    if lifetime < 10:
        raise ValueError(
            f"a walltime of {walltime_s:.0f} s leaves no worker lifetime after a margin of {margin_s:.0f} s and a "
            f"stagger of {stagger_s:.0f} s; lengthen the walltime or lower coupler.jobqueue.lifetime-margin/-stagger"
        )
    return ["--lifetime", f"{int(lifetime)}s", "--lifetime-stagger", f"{int(stagger_s)}s"]


# -- dask-jobqueue --------------------------------------------------------------------------
def _check_kind(kind: str) -> None:
    if kind not in JOBQUEUE_CLASSES:
        raise ValueError(f"batch system must be one of {', '.join(JOBQUEUE_CLASSES)}; got {kind!r}")


def _listed(section: Mapping[str, Any], key: str, deprecated: str) -> list[Any]:
    # dask-jobqueue ignores a deprecated key once the new one is passed; keep both.
    return list(section.get(key) or section.get(deprecated) or [])


def jobqueue_kwargs(kind: str, options: JobOptions, section: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Keyword arguments for the dask-jobqueue cluster class of ``kind``.

    Only what coupler adds or must merge is returned; dask-jobqueue reads the rest
    (cores, memory, interface, scheduler options...) from ``jobqueue.<kind>`` itself.
    List settings that coupler extends (worker arguments, job directives, the
    job-script prologue) start from the configured lists, so nothing configured is lost.

    Args:
        kind: ``slurm``, ``pbs``, ``sge``, ``lsf`` or ``htcondor``.
        options: jobs, GPUs, walltime, queue, account.
        section: ``jobqueue.<kind>`` (default: from ``dask.config``).

    Returns:
        The keyword arguments.

    Raises:
        ValueError: for an unknown kind, an option the batch system lacks, a GPU
            request with fewer cores than GPUs, or a walltime too short for a lifetime.
    """
    _check_kind(kind)
    if section is None:
        importlib.import_module("dask_jobqueue")  # its defaults (walltime...) enter dask.config on import
        section = dask.config.get(f"jobqueue.{kind}", {})
    sec = config.hyphenated(section)  # DASK_JOBQUEUE__SLURM__JOB_SCRIPT_PROLOGUE brings job_script_prologue
    gpus = options.gpus_per_job
    kw: dict[str, Any] = {}
    worker_args = _listed(sec, "worker-extra-args", "extra")
    prologue = _listed(sec, "job-script-prologue", "env-extra")
    prologue += [f"export {k}={v}" for k, v in WORKER_ENV.items()]

    if gpus:
        cores = sec.get("cores")
        if cores is not None and int(cores) < gpus:
            raise ValueError(f"jobqueue.{kind}.cores must be at least gpus-per-job ({gpus}) for one worker per GPU; got {cores}")
        kw["processes"] = gpus
        worker_args += ["--resources", "GPU=1", "--preload", "coupler.runtime.launch.devices"]
        all_devices = ",".join(str(i) for i in range(gpus))
        # Batch systems that bind GPUs set CUDA_VISIBLE_DEVICES; elsewhere assume the first G.
        prologue += [f'export CUDA_VISIBLE_DEVICES="${{CUDA_VISIBLE_DEVICES:-{all_devices}}}"', f"export {GPUS_PER_JOB_VAR}={gpus}"]
        template = config.get(f"jobqueue.gpu-directive.{kind}")
        if kind == "pbs":
            kw["resource_spec"] = _pbs_resource_spec(sec, (template or "ngpus={gpus}").format(gpus=gpus))
        elif kind == "htcondor":
            extra = dict(sec.get("job-extra-directives") or sec.get("job-extra") or {})
            if template:  # HTCondor's directives are a dict of submit-description keys
                key, _, value = template.format(gpus=gpus).partition("=")
                extra[key.strip()] = value.strip()
            kw["job_extra_directives"] = extra
        elif template:
            kw["job_extra_directives"] = _listed(sec, "job-extra-directives", "job-extra") + [template.format(gpus=gpus)]

    walltime = sec.get("walltime")
    if options.walltime is not None:
        if kind == "htcondor":
            raise ValueError("HTCondor jobs have no walltime in dask-jobqueue; drop the walltime option")
        walltime = format_walltime(walltime_seconds(options.walltime), kind)
        kw["walltime"] = walltime
    if walltime and kind != "htcondor":
        worker_args += lifetime_args(
            walltime_seconds(walltime, kind),
            config.get("jobqueue.lifetime-margin"),
            config.get("jobqueue.lifetime-stagger"),
        )
    if options.queue is not None:
        if kind == "htcondor":
            raise ValueError("HTCondor has no queue option in dask-jobqueue; drop the queue option")
        kw["queue"] = options.queue
    if options.account is not None:
        if kind == "htcondor":
            raise ValueError("HTCondor has no account option in dask-jobqueue; drop the account option")
        kw[_ACCOUNT_KEYWORD[kind]] = options.account
    kw["worker_extra_args"] = worker_args
    kw["job_script_prologue"] = prologue
    return kw


def _pbs_resource_spec(section: Mapping[str, Any], gpu_part: str) -> str:
    """PBS Pro wants GPUs in the select chunk; extend the configured spec or build dask-jobqueue's default."""
    spec = section.get("resource-spec")
    if spec:
        return f"{spec}:{gpu_part}"
    from dask.utils import parse_bytes
    from dask_jobqueue.pbs import pbs_format_bytes_ceil

    cores, memory = section.get("cores"), section.get("memory")
    if cores is None or memory is None:
        raise ValueError("jobqueue.pbs needs cores and memory (or a resource-spec) to request GPUs")
    return f"select=1:ncpus={int(cores)}:{gpu_part}:mem={pbs_format_bytes_ceil(parse_bytes(memory))}"


def jobqueue_class(kind: str) -> type:
    """The dask-jobqueue cluster class of a batch system (imported on demand).

    Returns:
        The class, made to keep the jobs whose worker died and was restarted
        (:mod:`~coupler.runtime.launch.lost_workers`).

    Raises:
        ValueError: for an unknown kind.
    """
    _check_kind(kind)
    return keeping_restarted_workers(getattr(importlib.import_module("dask_jobqueue"), JOBQUEUE_CLASSES[kind]))


def start_jobqueue(kind: str, options: JobOptions, **cluster_kwargs: Any) -> Any:
    """Start a dask-jobqueue cluster and submit ``options.jobs`` jobs.

    With a walltime the jobs are kept at that number adaptively, so that a job
    whose workers retired is replaced by a fresh one.

    Args:
        kind: ``slurm``, ``pbs``, ``sge``, ``lsf`` or ``htcondor``.
        options: coupler's job options.
        **cluster_kwargs: passed on to the class, over what coupler computed.

    Returns:
        The cluster (its workers join as the batch system starts the jobs).

    Raises:
        ValueError: for bad options or an incomplete ``jobqueue.<kind>`` section
            (dask-jobqueue requires at least cores and memory).
    """
    kwargs = {**jobqueue_kwargs(kind, options), **cluster_kwargs}
    try:
        cluster = jobqueue_class(kind)(**kwargs)
    except ValueError as e:
        given = [kwargs.get(k, dask.config.get(f"jobqueue.{kind}.{k}", None)) for k in ("cores", "memory")]
        if all(v is not None for v in given):
            raise
        # dask-jobqueue's own words suggest Python code; a coupler user sets them in the configuration.
        raise ValueError(
            f"a {kind} job needs its cores and memory: set jobqueue.{kind}.cores and jobqueue.{kind}.memory "
            f"in a configuration file (e.g. `coupler run --config examples/jobqueue.yaml ...`, see "
            f"docs/how-to/batch-systems.md) or in the environment (DASK_JOBQUEUE__{kind.upper()}__CORES=...); "
            f"dask-jobqueue said: {e}"
        ) from None
    if options.jobs:
        if "--lifetime" in kwargs["worker_extra_args"]:
            cluster.adapt(minimum_jobs=options.jobs, maximum_jobs=options.jobs)
        else:
            cluster.scale(jobs=options.jobs)
    return cluster


# -- the embedded local cluster -------------------------------------------------------------
def local_worker_spec(base: Mapping[str, Any], device: str | None) -> dict[str, Any]:
    """A copy of a ``LocalCluster`` worker spec bound to one GPU, or to none.

    Args:
        base: ``{"cls": ..., "options": {...}}`` as ``SpecCluster`` uses it.
        device: a ``CUDA_VISIBLE_DEVICES`` id, or ``None`` for a worker that
            must not see any GPU (so that only ``GPU``-resource workers use them).

    Returns:
        The new spec, with ``env`` and ``resources`` set.
    """
    spec = copy.deepcopy(dict(base))
    options = spec.setdefault("options", {})
    env = {**WORKER_ENV, **options.get("env", {})}
    resources = dict(options.get("resources") or {})
    if device is None:
        env["CUDA_VISIBLE_DEVICES"] = ""
        resources.pop("GPU", None)
    else:
        env["CUDA_VISIBLE_DEVICES"] = device
        resources["GPU"] = 1
    options["env"] = env
    options["resources"] = resources or None
    return spec


class EmbeddedCluster(KeepsRestartedWorkers, LocalCluster):
    """Dask's ``LocalCluster``, whose nannies stay when their workers die and are restarted.

    See :mod:`~coupler.runtime.launch.lost_workers`: Dask's own rule could close a
    nanny in the middle of its second restart, leaving the cluster a worker short.
    """


class GPULocalCluster(EmbeddedCluster):
    """A ``LocalCluster`` whose first workers each own one GPU.

    Every new worker takes a device no other worker holds (``CUDA_VISIBLE_DEVICES``
    set to it, resource ``GPU=1``); workers beyond the number of GPUs see none.
    A device listed twice goes to two workers, which share it.

    Args:
        devices: ``CUDA_VISIBLE_DEVICES`` ids, one per GPU.
        n_workers: workers to start (default: one per device).
        **kwargs: passed on to ``LocalCluster`` (processes are always used).
    """

    def __init__(self, devices: Sequence[str], n_workers: int | None = None, **kwargs: Any) -> None:
        self.devices = [str(d) for d in devices]
        super().__init__(n_workers=0, processes=True, **kwargs)
        self.scale(len(self.devices) if n_workers is None else n_workers)
        self.sync(self._correct_state)

    def new_worker_spec(self) -> dict[str, Any]:
        ((name, base),) = super().new_worker_spec().items()
        used = Counter(s.get("options", {}).get("env", {}).get("CUDA_VISIBLE_DEVICES") for s in self.worker_spec.values())
        free = []
        for d in self.devices:  # a device listed twice is shared by two workers
            if used[d]:
                used[d] -= 1
            else:
                free.append(d)
        return {name: local_worker_spec(base, free[0] if free else None)}


def start_local(
    n_workers: int | None = None,
    *,
    gpus: Sequence[str] | str | None = None,
    threads_per_worker: int | None = None,
    dashboard_address: str | None = None,
    **kwargs: Any,
) -> LocalCluster:
    """Start the embedded cluster of worker processes (GPU-aware).

    Args:
        n_workers: workers (default: one per GPU, else ``coupler.local.n-workers``).
        gpus: device ids, or ``"auto"`` (default: ``coupler.local.gpus``).
        threads_per_worker: default ``coupler.local.threads-per-worker``.
        dashboard_address: default ``coupler.local.dashboard-address``.
        **kwargs: passed on to ``LocalCluster`` (``env`` is merged with coupler's).

    Returns:
        The running cluster (an :class:`EmbeddedCluster`); with GPUs a :class:`GPULocalCluster`.

    Raises:
        ValueError: for ``n_workers`` that is not an int >= 1, or a ``gpus`` setting that names
            no devices (see :func:`~coupler.runtime.launch.devices.resolve_gpus`).
    """
    devices = resolve_gpus(config.get("local.gpus") if gpus is None else gpus)
    if n_workers is None:
        n_workers = len(devices) or config.count("coupler.local.n-workers", config.get("local.n-workers"), minimum=1)
    if not isinstance(n_workers, int) or isinstance(n_workers, bool) or n_workers < 1:
        raise ValueError(f"the local cluster needs n_workers, an int >= 1 (an actor needs a worker); got {n_workers!r}")
    if "memory_limit" in kwargs:  # None given here means no limit, as for Dask
        memory_limit = kwargs.pop("memory_limit")
    else:
        memory_limit = config.memory_limit("coupler.local.memory-limit", config.get("local.memory-limit"))
    if memory_limit == "auto":
        # LocalCluster shares memory only when it starts its workers itself; do it for both kinds.
        memory_limit = MEMORY_LIMIT // max(n_workers, 1)
    common = dict(
        threads_per_worker=threads_per_worker
        or config.count("coupler.local.threads-per-worker", config.get("local.threads-per-worker"), minimum=1),
        dashboard_address=dashboard_address or config.get("local.dashboard-address"),
        memory_limit=memory_limit,
        env={**WORKER_ENV, **kwargs.pop("env", {})},
        **kwargs,
    )
    try:
        if devices:
            logger.info("coupler: one local worker per GPU: %s", devices)
            return GPULocalCluster(devices, n_workers=n_workers, **common)
        return EmbeddedCluster(n_workers=n_workers, processes=True, **common)
    except RuntimeError as e:
        main = sys.modules.get("__main__")
        if getattr(main, "__file__", None) is None:
            raise
        # Worker processes start by importing the script (multiprocessing's spawn): one that starts a
        # coupling at import starts one in every worker, which fails there, and the error here says only
        # that a nanny failed; the hint of multiprocessing itself is buried in the workers' logs above.
        raise RuntimeError(
            f"{str(e).rstrip('.')}: the local cluster's workers did not start. If {main.__file__} starts the coupling at module level, "
            "put that code under `if __name__ == \"__main__\":` (each worker process imports the script)"
        ) from e


# -- TLS --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TLSFiles:
    """PEM files of a cluster's TLS: the CA every party trusts, and the certificate and key
    the scheduler, workers and clients present (mutual TLS: each side checks the other)."""

    ca_file: str
    cert: str
    key: str


def make_tls_files(directory: str | os.PathLike[str], days: int = 30) -> TLSFiles:
    """Create a throwaway CA and a certificate signed by it in ``directory`` (with the ``openssl`` command).

    For a run that needs TLS and has no site certificates: only holders of these
    files can join the cluster or talk to it. The key files are readable by their
    owner only; for batch jobs ``directory`` must be on a file system the jobs see.

    Args:
        directory: where to write ``ca.pem``, ``ca.key``, ``cert.pem`` and ``key.pem``.
        days: validity of the certificates.

    Returns:
        The files' paths.

    Raises:
        CouplerError: if ``openssl`` is missing or fails.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    subj = "/CN=coupler"
    steps = [
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", str(days), "-subj", f"{subj}-ca"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "key.pem", "-out", "cert.csr", "-subj", subj],
        ["x509", "-req", "-in", "cert.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "cert.pem", "-days", str(days)],
    ]
    for args in steps:
        try:
            subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, text=True)
        except FileNotFoundError:
            raise CouplerError("TLS without certificate files needs the `openssl` command to make throwaway ones; none found") from None
        except subprocess.CalledProcessError as e:
            raise CouplerError(f"openssl {' '.join(args[:2])} failed: {e.stderr.strip()}") from None
    for name in ("ca.key", "key.pem"):
        os.chmod(d / name, 0o600)
    return TLSFiles(str(d / "ca.pem"), str(d / "cert.pem"), str(d / "key.pem"))


def tls_security(files: TLSFiles) -> Security:
    """Dask's :class:`Security` for a cluster whose every party uses ``files`` (encryption required).

    Raises:
        FileNotFoundError: one of ``files`` does not exist.
    """
    for path in (files.ca_file, files.cert, files.key):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"TLS file {path!r} does not exist (expected a PEM file)")
    return Security(
        tls_ca_file=files.ca_file,
        tls_client_cert=files.cert, tls_client_key=files.key,
        tls_scheduler_cert=files.cert, tls_scheduler_key=files.key,
        tls_worker_cert=files.cert, tls_worker_key=files.key,
        require_encryption=True,
    )


def tls_files_from_config() -> TLSFiles | None:
    """The TLS files ``coupler.tls`` asks for: ``None`` when TLS is off; made in
    ``coupler.tls.directory`` when it is on and no files are named.

    Raises:
        ValueError: when only some of ``ca-file``, ``cert`` and ``key`` are set.
    """
    section = config.section("tls")
    if not config.flag("tls", section, "enabled", False):
        return None
    named = {k: section.get(k) for k in ("ca-file", "cert", "key")}
    if all(named.values()):
        return TLSFiles(*(str(Path(str(v)).expanduser()) for v in named.values()))
    if any(named.values()):
        raise ValueError(f"coupler.tls: set all of ca-file, cert and key, or none (to make throwaway ones); got {named}")
    base = Path(str(section.get("directory") or tempfile.gettempdir())).expanduser()
    base.mkdir(parents=True, exist_ok=True)
    directory = tempfile.mkdtemp(prefix="coupler-tls-", dir=base)
    _THROWAWAY_TLS.append(directory)
    return make_tls_files(directory)


# The throwaway TLS directories this process made: its clusters, workers and clients may read
# them until it ends (a connection reads its files when it opens), so they go when it exits.
# They hold a CA's private key: left behind, anyone who can read them could join a later run
# that reused them, and /tmp filled with one per run.
_THROWAWAY_TLS: list[str] = []


@atexit.register
def _remove_throwaway_tls() -> None:
    while _THROWAWAY_TLS:
        shutil.rmtree(_THROWAWAY_TLS.pop(), ignore_errors=True)


def _with_tls(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` plus ``security`` and the ``tls://`` protocol when ``coupler.tls`` is on (and none was given)."""
    if "security" in kwargs:
        return kwargs
    files = tls_files_from_config()
    if files is None:
        return kwargs
    return {**kwargs, "security": tls_security(files), "protocol": "tls://"}


# -- connecting -----------------------------------------------------------------------------
def connect(address: str, timeout: str | float | None = None, **client_kwargs: Any) -> Client:
    """A client of the scheduler at ``address``.

    Args:
        address: e.g. ``tcp://10.0.0.5:8786``.
        timeout: give up after this long (default ``coupler.connect-timeout``).
        **client_kwargs: passed on to ``Client``.

    Raises:
        ValueError: for something that is not an address, or a ``tls://`` address
            with neither ``security=`` nor ``coupler.tls`` set (a configuration
            error: no scheduler was asked).
        SchedulerUnreachable: if no scheduler answers in time.
    """
    seconds = parse_timedelta(timeout if timeout is not None else config.get("connect-timeout"))
    if address.startswith("tls://") and "security" not in client_kwargs:
        files = tls_files_from_config()
        if files is None:
            raise ValueError(
                f"{address!r} uses TLS: set coupler.tls.enabled with ca-file, cert and key (or pass security=)"
            )
        client_kwargs["security"] = tls_security(files)
    try:
        return Client(address, timeout=seconds, **client_kwargs)
    except ValueError as e:  # Dask's parse of the address ("missing port number in address 'x'")
        raise ValueError(
            f"expected the address of a scheduler, like tcp://host:8786, or a cluster kind ({', '.join(KINDS)}); "
            f"got {address!r} ({e})"
        ) from None
    except (OSError, TimeoutError) as e:
        raise SchedulerUnreachable(
            f"no Dask scheduler answered at {address!r} within {seconds:g} s "
            f"(expected an address like tcp://host:8786 of a running scheduler): {e}"
        ) from None


def start_cluster(kind: str, options: JobOptions | None = None, **kwargs: Any) -> Any:
    """Start a cluster of the given kind.

    Args:
        kind: ``local`` or a batch system in :data:`JOBQUEUE_CLASSES`.
        options: job options (batch systems only; default from ``coupler.jobqueue``).
        **kwargs: passed on to :func:`start_local` or the jobqueue class. With
            ``coupler.tls.enabled`` (and no ``security`` here), the cluster uses TLS
            through Dask's ``Security`` (see :func:`tls_files_from_config`).

    Returns:
        The cluster object (``scheduler_address``, ``close()``).

    Raises:
        ValueError: for an unknown kind or bad options.
    """
    if kind not in KINDS:
        raise ValueError(f"a cluster kind must be one of {', '.join(KINDS)}; got {kind!r}")
    kwargs = _with_tls(kwargs)
    if kind == "local":
        return start_local(**kwargs)
    return start_jobqueue(kind, options or JobOptions.from_config(), **kwargs)


def expected_workers(cluster: Any, jobs: int) -> int:
    """Workers a started cluster will have once its ``jobs`` batch jobs run (local: its workers)."""
    # dask-jobqueue itself converts jobs to workers through this template job.
    job = getattr(cluster, "_dummy_job", None)
    if job is None:
        return max(len(getattr(cluster, "worker_spec", {})), 1)
    return jobs * int(job.worker_processes)


def wait_for_workers(client: Client, n: int, timeout: str | float | None = None) -> None:
    """Wait until ``n`` workers have joined.

    Raises:
        WorkersNotReady: after ``timeout`` (default ``coupler.jobqueue.start-timeout``).
    """
    seconds = parse_timedelta(timeout if timeout is not None else config.get("jobqueue.start-timeout"))
    try:
        client.wait_for_workers(n_workers=n, timeout=seconds)
    except TimeoutError:
        have = len(client.scheduler_info(n_workers=-1)["workers"])
        raise WorkersNotReady(
            f"expected {n} workers within {seconds:g} s, {have} joined; are the jobs still queued "
            "(check squeue/qstat) or failing (see the job logs)?"
        ) from None


# -- placement ------------------------------------------------------------------------------
def workers_with(client: Client, resources: Mapping[str, float] | None = None, pinned: Sequence[str] | None = None) -> list[str]:
    """Addresses of the live workers that have at least ``resources`` and match ``pinned``.

    Args:
        client: a client of the cluster.
        resources: e.g. ``{"GPU": 1}`` (``None``: any).
        pinned: addresses, names or hosts, as Dask's ``workers=`` takes them (``None``: any).
    """
    wanted = None if pinned is None else {str(w) for w in pinned}
    return sorted(
        addr
        for addr, w in client.scheduler_info(n_workers=-1)["workers"].items()
        if all((w.get("resources") or {}).get(r, 0) >= need for r, need in (resources or {}).items())
        and (wanted is None or addr in wanted or str(w.get("name")) in wanted or w.get("host") in wanted)
    )


def check_placement(
    client: Client,
    resources: Mapping[str, float] | None,
    pinned: Sequence[str] | None = None,
    timeout: str | float | None = None,
) -> list[str]:
    """Wait until some worker can host an actor that asks for ``resources`` or ``pinned`` workers,
    so that it is never queued forever.

    A worker can host it when it is alive, has ``resources`` and is one of ``pinned``.
    A cluster still starting (batch jobs in the queue) gets ``timeout`` to bring one.
    An actor that asks for neither is not checked: any worker, one that joins later too, will do.

    Args:
        client: the coupling's client.
        resources: e.g. ``{"GPU": 1}``; ``None`` or empty needs nothing.
        pinned: the workers it may run on (addresses, names or hosts; ``None``: any).
        timeout: how long jobs may take to bring such a worker (default
            ``coupler.placement-timeout``).

    Returns:
        The workers that can host it now (``[]`` for an actor that asks for nothing).

    Raises:
        NoSuitableWorker: if none can after ``timeout``; the message lists the workers and what they have.
    """
    if not resources and pinned is None:
        # Any worker will do, one that joins later too (batch jobs still queued): the spawn waits for
        # it, and says so if none comes (Spawner.actor).
        return []
    seconds = parse_timedelta(timeout if timeout is not None else config.get("placement-timeout"))
    deadline = time.monotonic() + seconds
    while True:
        found = workers_with(client, resources, pinned)
        if found or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    if found:
        return found
    have = {a: dict(w.get("resources") or {}) for a, w in client.scheduler_info(n_workers=-1)["workers"].items()}
    if pinned is not None and not workers_with(client, None, pinned):
        raise NoSuitableWorker(
            f"no worker of the cluster matches workers={sorted(map(str, pinned))} (waited {seconds:g} s); "
            f"the workers are {sorted(have)}"
        )
    raise NoSuitableWorker(
        f"no worker{' of workers=' + str(sorted(map(str, pinned))) if pinned else ''} has resources {dict(resources or {})} "
        f"(waited {seconds:g} s); workers have {have}. Start GPU workers (coupler.local.gpus, --gpus-per-job) or drop resources="
    )


def close_cluster(cluster: Any, timeout: float = 20.0) -> None:
    """Close a cluster this process started; batch jobs end before the scheduler does.

    dask-jobqueue's ``close()`` cancels the jobs and stops the scheduler at once,
    so the scheduler is torn down while it is still removing the workers (and
    its plugins, the broker included, are still reacting to that). Scaling to
    zero first lets the workers leave while the scheduler is whole.

    Args:
        cluster: a cluster object from :func:`start_cluster` (or any with ``close()``).
        timeout: seconds to wait for the workers to leave before closing anyway.
    """
    if hasattr(cluster, "job_script") and getattr(cluster, "status", None) is not None:
        try:
            cluster.adapt(minimum=0, maximum=0)  # also stops an adaptive policy re-submitting jobs
            cluster.scale(0)
            deadline = time.monotonic() + timeout
            while cluster.scheduler_info.get("workers") and time.monotonic() < deadline:
                time.sleep(0.2)
        except Exception as e:  # closing must go on whatever state the cluster is in
            logger.info("coupler: could not scale %s down before closing: %s", type(cluster).__name__, e)
    cluster.close()

"""The ``coupler`` command: run coupling scripts on a cluster, run demos, inspect a cluster.

``coupler run SCRIPT`` starts a cluster (or joins one at an address), makes it
the default of the script by setting ``coupler.scheduler-address`` in
``dask.config`` (so the script's ``Coupling()`` joins it instead of starting
its own), runs the script with ``runpy`` as ``__main__``, and closes the cluster
it started (its batch jobs are cancelled) however the script ends.

Examples::

    coupler run examples/augmentation.py --cluster slurm --jobs 2 -- --train-seconds 20
    coupler --config examples/jobqueue.yaml run my_coupling.py --cluster slurm --gpus-per-job 1
    coupler demo augmentation -- --quick
    coupler info --cluster tcp://10.0.0.5:8786
    coupler --version

``coupler demo NAME`` runs a demo that ships inside the package
(``coupler.demos``), so an installed wheel runs it from any directory.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import importlib
import runpy
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import dask.config
from dask.utils import format_bytes
from distributed import Client
from tqdm import tqdm

from coupler.runtime import config
from coupler.runtime.launch.cluster import (
    KINDS,
    JobOptions,
    close_cluster,
    connect,
    expected_workers,
    start_cluster,
    tls_files_from_config,
    wait_for_workers,
    walltime_seconds,
)
from coupler.runtime.errors import CouplerError
from coupler.runtime.settings_check import check_settings
from coupler.runtime.control.status import ChannelStats
from coupler.runtime.version import __version__


_ADDRESS = re.compile(r"^([a-z][a-z0-9+]*://)?[^\s:/]+:\d+$")

# Environment variables through which batch systems name a worker's job.
_JOB_ID_VARS = ("SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID", "JOB_ID", "_CONDOR_JOB_AD")


class UsageError(Exception):
    """A bad command line: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (the full usage is one ``--help`` away)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


# -- options ----------------------------------------------------------------------------------
def cluster_choice(value: str) -> str:
    """An argparse type: a cluster kind or a scheduler address.

    Raises:
        argparse.ArgumentTypeError: neither a cluster kind nor a scheduler address.
    """
    if value in KINDS or _ADDRESS.match(value):
        return value
    raise argparse.ArgumentTypeError(
        f"expected one of {', '.join(KINDS)} or a scheduler address like tcp://host:8786; got {value!r}"
    )


def walltime_choice(value: str) -> str:
    """An argparse type: a walltime ``[D-]HH:MM:SS``.

    Raises:
        argparse.ArgumentTypeError: not ``[D-]HH:MM:SS``.
    """
    if value.count(":") != 2:
        raise argparse.ArgumentTypeError(f"expected [D-]HH:MM:SS, e.g. 01:30:00; got {value!r}")
    try:
        walltime_seconds(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def positive_int(value: str) -> int:
    """An argparse type: an integer >= 1.

    Raises:
        argparse.ArgumentTypeError: not an integer >= 1.
    """
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1; got {value!r}")
    return n


def nonnegative_int(value: str) -> int:
    """An argparse type: an integer >= 0.

    Raises:
        argparse.ArgumentTypeError: not an integer >= 0.
    """
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0; got {value!r}")
    return n


def duration_choice(value: str) -> str:
    """An argparse type: a positive duration Dask reads, such as ``5s``, ``2 minutes`` or ``10`` (seconds).

    Raises:
        argparse.ArgumentTypeError: not a positive duration.
    """
    try:
        config.duration("--timeout", value, positive=True)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive duration such as 5s, 2min or 10 (seconds); got {value!r}") from None
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``coupler`` argument parser (exposed for tests and documentation)."""
    config_help = "YAML file of Dask settings (jobqueue:, coupler:) merged over the usual ones; repeatable"
    # Accepted before and after the command; SUPPRESS keeps a sub-command from resetting
    # what was given before it.
    common = _Parser(add_help=False)
    common.add_argument("--config", action="append", default=argparse.SUPPRESS, metavar="FILE", help=config_help)
    launch = _Parser(add_help=False)
    g = launch.add_argument_group("cluster")
    g.add_argument(
        "--cluster", type=cluster_choice, default=None, metavar="KIND|ADDRESS",
        help=f"{', '.join(KINDS)}, or the address of a running scheduler (default: coupler.cluster, i.e. local)",
    )
    g.add_argument("--jobs", type=nonnegative_int, default=None, help="batch jobs to submit (default coupler.jobqueue.jobs)")
    g.add_argument("--gpus-per-job", type=nonnegative_int, default=None, metavar="G",
                   help="GPUs per job: one worker per GPU with resource GPU=1 (default coupler.jobqueue.gpus-per-job)")
    g.add_argument("--walltime", type=walltime_choice, default=None, metavar="HH:MM:SS",
                   help="walltime of each job; workers retire a margin before it (default jobqueue.<kind>.walltime)")
    g.add_argument("--queue", default=None, help="queue or partition (default jobqueue.<kind>.queue)")
    g.add_argument("--account", default=None, help="account or project to charge (default jobqueue.<kind>.account/project)")
    g.add_argument("--workers", type=positive_int, default=None,
                   help="local cluster only: worker processes (default one per GPU, else coupler.local.n-workers)")
    g.add_argument("--tls", action="store_true", default=False,
                   help="encrypt and authenticate every connection with TLS (Dask's Security): the files in "
                   "coupler.tls (ca-file, cert, key), else a throwaway CA made for this run (default coupler.tls.enabled)")

    p = _Parser(
        prog="coupler",
        description="Run coupled simulation/learning scripts on a local or HPC Dask cluster.",
        epilog="Settings live in dask.config under coupler: and jobqueue: (see runtime/coupler.yaml, "
        "~/.config/dask/). Arguments after `--` go to the script.",
    )
    p.add_argument("--config", action="append", default=[], metavar="FILE", help=config_help)
    p.add_argument("--version", action="version", version=f"coupler {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    run = sub.add_parser(
        "run", parents=[common, launch], help="run a coupling script on a cluster",
        description="Start a cluster (or join one), make it the default of SCRIPT's Coupling(), run SCRIPT, "
        "then close the cluster (its jobs are cancelled).",
        epilog="Example: coupler run examples/augmentation.py --cluster slurm --jobs 2 -- --train-seconds 20",
    )
    run.add_argument("script", help="path of the Python coupling script")
    demo = sub.add_parser(
        "demo", parents=[common, launch], help="run one of the bundled demos",
        description="Run a demo bundled in the package (coupler.demos) on a cluster, like `coupler run`. "
        "The demo's own options go after `--`; every demo takes --quick (a small smoke run) and --help.",
        epilog="Example: coupler demo modulation -- --quick",
    )
    demos = ", ".join(available_demos())
    demo.add_argument("name", nargs="?", default="augmentation", help=f"the demo (default augmentation; have: {demos})")
    info = sub.add_parser(
        "info", parents=[common], help="show a running cluster: workers, devices, actors, channels",
        description="Show coupler's version and a running cluster's scheduler, workers (resources, devices, batch job), "
        "and the coupling's actors and channels.",
    )
    info.add_argument("--cluster", type=cluster_choice, default=None, metavar="ADDRESS",
                      help="scheduler address (default coupler.scheduler-address)")
    info.add_argument("--timeout", type=duration_choice, default=None, help="connect timeout, e.g. 5s (default coupler.connect-timeout)")
    return p


def available_demos() -> list[str]:
    """Names of the demos bundled in the package (``coupler.demos.DEMOS``)."""
    from coupler.demos.registry import DEMOS  # not at import: the CLI's other commands need no demo

    return sorted(DEMOS)


# -- run ------------------------------------------------------------------------------------------
def wait_showing_progress(client: Client, n: int, what: str, poll: float = 1.0) -> None:
    """Wait until ``n`` workers have joined, with a progress bar of those that have (on a terminal).

    Args:
        client: a client of the cluster.
        n: workers to wait for.
        what: the bar's label.
        poll: seconds between looks at the worker count.

    Raises:
        WorkersNotReady: if they do not join within ``coupler.jobqueue.start-timeout``.
    """
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(wait_for_workers, client, n)
        with tqdm(total=n, desc=what, unit="worker", file=sys.stderr, disable=None) as bar:
            # Not waiting.result(timeout): its TimeoutError is WorkersNotReady's base class too.
            while not concurrent.futures.wait([waiting], timeout=poll).done:
                have = len(client.scheduler_info(n_workers=-1)["workers"])
                bar.update(max(0, min(have, n) - bar.n))
            waiting.result()  # raises WorkersNotReady
            bar.update(n - bar.n)


@contextmanager
def launched(args: argparse.Namespace) -> Iterator[str]:
    """Start (or join) the cluster the options ask for; yield its scheduler address.

    A cluster started here is closed on exit, whatever happens inside.

    Raises:
        UsageError: for options that do not fit the cluster kind.
        SchedulerUnreachable: for an address where no scheduler answers.
        WorkersNotReady: if batch jobs' workers do not join in time.
    """
    with _tls_settings(args.tls):
        with _launched(args) as address:
            yield address


@contextmanager
def _tls_settings(asked: bool) -> Iterator[None]:
    """With ``--tls`` (or ``coupler.tls.enabled``): TLS on, with the same files for the cluster and the script.

    Throwaway files are made once here, so that the script's ``Coupling()`` holds
    the certificates of the cluster it joins.
    """
    if not (asked or config.flag("tls", config.section("tls"), "enabled", False)):
        yield
        return
    with dask.config.set({"coupler.tls.enabled": True}):
        files = tls_files_from_config()
        assert files is not None
        with dask.config.set({"coupler.tls.ca-file": files.ca_file, "coupler.tls.cert": files.cert, "coupler.tls.key": files.key}):
            yield


@contextmanager
def _launched(args: argparse.Namespace) -> Iterator[str]:
    target = args.cluster or config.get("cluster")
    job_flags = {k: getattr(args, k) for k in ("jobs", "gpus_per_job", "walltime", "queue", "account")}
    given = sorted(f"--{k.replace('_', '-')}" for k, v in job_flags.items() if v is not None)
    if target not in KINDS:  # an address: join it, start nothing
        if given or args.workers is not None:
            raise UsageError(f"coupler: error: {', '.join(given or ['--workers'])} cannot apply to a running scheduler ({target})")
        connect(target).close()  # fail fast and clearly if nobody answers
        yield target
        return
    if target == "local":
        if given:
            verb = "applies" if len(given) == 1 else "apply"
            raise UsageError(f"coupler: error: {', '.join(given)} {verb} to batch clusters, not to --cluster local")
        cluster = start_cluster("local", n_workers=args.workers)
        jobs = 0
    else:
        if args.workers is not None:
            raise UsageError("coupler: error: --workers is for --cluster local; batch clusters take --jobs and --gpus-per-job")
        options = JobOptions.from_config(**job_flags)
        jobs = options.jobs
        cluster = start_cluster(target, options)
    try:
        with Client(cluster) as client:
            if jobs:
                n = expected_workers(cluster, jobs)
                print(f"coupler: {target}: {jobs} job(s) submitted, waiting for {n} worker(s) ...", file=sys.stderr, flush=True)
                started = time.monotonic()
                wait_showing_progress(client, n, f"coupler: {target} workers")
                print(f"coupler: {n} worker(s) joined in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
            from coupler.runtime.observe.dashboard import page_link  # Bokeh: loaded by the dashboard anyway

            print(f"coupler: {target} cluster at {cluster.scheduler_address}; dashboard {client.dashboard_link}; "
                  f"the coupling's page {page_link(client.dashboard_link)} (once the script's coupling starts)",
                  file=sys.stderr, flush=True)
        yield cluster.scheduler_address
    finally:
        close_cluster(cluster)


def exit_status(run: Callable[[], object]) -> int:
    """Call ``run`` as ``python`` would run a program, and give its exit status.

    Args:
        run: the program (a script or a demo's ``main``), called with no argument.

    Returns:
        0 when it returns; its ``SystemExit`` code (``--help``, bad options:
        argparse exits); 1 with its full traceback on stderr for an error, as
        ``python SCRIPT`` shows it.
    """
    try:
        run()
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    except Exception:  # the program's own error
        traceback.print_exc()
        return 1
    return 0


def run_script(script: str, script_args: Sequence[str], address: str) -> int:
    """Run ``script`` as ``__main__`` with ``address`` as its default scheduler.

    Returns:
        The script's exit status (0 when it returns normally).
    """
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [script, *script_args]
    sys.path.insert(0, str(Path(script).resolve().parent))  # as `python SCRIPT` does
    try:
        with dask.config.set({"coupler.scheduler-address": address}):
            return exit_status(lambda: runpy.run_path(script, run_name="__main__"))
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path


def run_demo_module(name: str, script_args: Sequence[str], address: str) -> int:
    """Run bundled demo ``name`` (module ``coupler.demos.<name>``) with ``address`` as its default scheduler.

    The demo is imported as a module and its ``main(argv)`` called, so the
    classes it ships to workers are pickled by reference to an importable
    module (the installed package), not by value from a ``__main__``.

    Args:
        name: the demo (one of :func:`available_demos`).
        script_args: the demo's own arguments (after ``--``).
        address: the scheduler its ``Coupling()`` joins.

    Returns:
        The demo's exit status (see :func:`exit_status`).
    """
    saved_argv = sys.argv
    sys.argv = [f"coupler demo {name}", *script_args]  # what the demo's --help shows as its program
    try:
        with dask.config.set({"coupler.scheduler-address": address}):
            return exit_status(lambda: importlib.import_module(f"coupler.demos.{name}").main(list(script_args)))
    finally:
        sys.argv = saved_argv


def cmd_run(args: argparse.Namespace, script_args: Sequence[str]) -> int:
    script = args.script
    if not os.path.isfile(script):
        raise UsageError(f"coupler run: error: no script at {script!r} (expected a path to a Python file)")
    with launched(args) as address:
        return run_script(script, script_args, address)


def cmd_demo(args: argparse.Namespace, script_args: Sequence[str]) -> int:
    demos = available_demos()
    if args.name not in demos:
        raise UsageError(f"coupler demo: error: unknown demo {args.name!r}; bundled demos: {', '.join(demos)}")
    with launched(args) as address:
        return run_demo_module(args.name, script_args, address)


# -- info -----------------------------------------------------------------------------------------
def worker_facts() -> dict[str, str]:
    """Runs on each worker: its host, GPUs and batch job."""
    job = next((os.environ[v] for v in _JOB_ID_VARS if os.environ.get(v)), "")
    return {"host": socket.gethostname(), "devices": os.environ.get("CUDA_VISIBLE_DEVICES", "-"), "job": job or "-"}


def describe(client: Client) -> list[str]:
    """Lines describing the cluster behind ``client``: scheduler, workers, actors, channels."""
    info = client.scheduler_info(n_workers=-1)
    workers = info["workers"]
    lines = [f"coupler    {__version__}", f"scheduler  {info['address']}", f"dashboard  {client.dashboard_link}", f"workers    {len(workers)}"]
    facts = client.run(worker_facts, on_error="return") if workers else {}
    for addr in sorted(workers):
        w = workers[addr]
        f = facts.get(addr)
        f = f if isinstance(f, dict) else {"host": "?", "devices": "?", "job": "?"}
        res = ",".join(f"{k}={v:g}" for k, v in sorted((w.get("resources") or {}).items())) or "-"
        lines.append(
            f"  {addr}  name={w.get('name')}  threads={w.get('nthreads')}  memory={format_bytes(w.get('memory_limit') or 0)}"
            f"  resources={res}  devices={f['devices']}  job={f['job']}  host={f['host']}"
        )
    try:
        snap = client.sync(client.scheduler.coupler_snapshot)
    except Exception:  # the scheduler has no broker: no coupling ever ran on it
        lines.append("coupling   none (no coupler broker on this scheduler)")
        return lines
    actors = snap.get("actors", {})
    lines.append(f"actors     {len(actors)}")
    for name in sorted(actors):
        a = actors[name]
        lines.append(f"  {name}  {a.get('cls', '?')}  {a.get('state', '?')}  steps={a.get('steps', 0)}  worker={a.get('worker', '?')}")
    channels = snap.get("channels", {})
    lines.append(f"channels   {len(channels)}")
    for name in sorted(channels):
        c = ChannelStats.from_snapshot(name, channels[name])
        policy = ",".join(f"{k}={v}" for k, v in c.policy.items())
        lines.append(
            f"  {name}  {policy}  producers={len(c.producers)}  consumers={len(c.consumers)}  sent={c.sent}"
            f"  received={c.received}  dropped={c.dropped}  depth={c.depth}  bytes={format_bytes(c.sent_bytes)}"
            + ("  closed" if c.closed else "")
        )
    return lines


def cmd_info(args: argparse.Namespace) -> int:
    address = args.cluster or config.get("scheduler-address")
    if not address:
        raise UsageError("coupler info: error: no cluster to show; give --cluster ADDRESS or set coupler.scheduler-address")
    if address in KINDS:
        raise UsageError(f"coupler info: error: --cluster needs the address of a running scheduler, got the kind {address!r}")
    with connect(address, timeout=args.timeout) as client:
        print("\n".join(describe(client)))
    return 0


# -- entry point ----------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``coupler`` console script.

    Returns:
        The exit status: the script's for ``run``/``demo``, 2 for a bad command
        line, 1 for a cluster that cannot be started or reached.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    script_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, script_args = argv[:cut], argv[cut + 1 :]
    try:
        args, extra = build_parser().parse_known_args(argv)
        if extra:
            unknown = " ".join(extra)
            hint = ""
            if args.command in ("run", "demo"):  # the usual slip: the script's or demo's own options before --
                what, target = ("demo", args.name) if args.command == "demo" else ("script", args.script)
                hint = f"; the {what}'s own options go after --: coupler {args.command} {target} -- {unknown}"
            raise UsageError(f"coupler {args.command}: error: unrecognized arguments: {unknown}{hint}")
        if script_args and args.command == "info":
            raise UsageError("coupler info: error: takes no script arguments after --")
        for path in args.config:
            try:
                config.load_file(path)
            except (OSError, ValueError) as e:
                raise UsageError(f"coupler: error: cannot use --config {path}: {e}") from None
        try:
            check_settings()  # before a cluster starts: a bad setting would fail in every worker's log
        except ValueError as e:
            raise UsageError(f"coupler: error: {e}") from None
        if args.command == "run":
            return cmd_run(args, script_args)
        if args.command == "demo":
            return cmd_demo(args, script_args)
        return cmd_info(args)
    except UsageError as e:
        print(e, file=sys.stderr)
        return 2
    except (CouplerError, ValueError, OSError) as e:  # the launch's; the script's own errors keep their traceback
        print(f"coupler: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("coupler: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

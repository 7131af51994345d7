"""The ``coupler`` command: help, one-line errors, run/info against real clusters."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import dask.config
import pytest

from coupler.runtime import Coupling, Queue
from coupler.runtime.launch.cli import available_demos, main
from coupler.runtime.launch.cluster import SchedulerUnreachable, connect
from coupler.runtime.version import coupler_version


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["demo", "--help"], ["info", "--help"]])
def test_help_exits_zero_and_documents_options(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    out = capsys.readouterr().out
    assert e.value.code == 0
    assert "usage: coupler" in out
    if argv[0] == "run":
        for opt in ("--cluster", "--jobs", "--gpus-per-job", "--walltime", "--queue", "--account", "--config"):
            assert opt in out


def test_console_script_is_installed() -> None:
    exe = Path(sys.executable).parent / "coupler"
    done = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "run" in done.stdout and "info" in done.stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "x.py", "--cluster", "kubernetes"], "expected one of local, slurm, pbs, sge, lsf, htcondor or a scheduler address"),
        (["run", "x.py", "--walltime", "90"], "expected [D-]HH:MM:SS"),
        (["run", "x.py", "--jobs", "-1"], "expected an integer >= 0"),
        (["run", "x.py", "--workers", "0"], "expected an integer >= 1"),
        (["run", "no/such/script.py"], "no script at 'no/such/script.py'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        ([], "the following arguments are required: COMMAND"),
        (["info"], "no cluster to show"),
        (["info", "--cluster", "slurm"], "needs the address of a running scheduler"),
        (["info", "--cluster", "tcp://127.0.0.1:9", "--timeout", "abc"], "expected a positive duration such as 5s"),
        (["info", "--cluster", "tcp://127.0.0.1:9", "--timeout", "-"], "expected a positive duration such as 5s"),
        (["info", "--cluster", "tcp://127.0.0.1:9", "--timeout", "0s"], "expected a positive duration such as 5s"),
        (["demo", "nosuchdemo"], "unknown demo 'nosuchdemo'"),
        (["--config", "/no/such.yaml", "info"], "cannot use --config /no/such.yaml"),
    ],
)
def test_bad_command_lines_give_one_line_and_status_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(argv, capsys)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1, err
    assert out == ""


def test_options_that_do_not_fit_the_cluster_kind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = tmp_path / "s.py"
    script.write_text("pass\n")
    code, _, err = _run(["run", str(script), "--cluster", "local", "--jobs", "2"], capsys)
    assert code == 2 and "--jobs applies to batch clusters, not to --cluster local" in err
    code, _, err = _run(["run", str(script), "--cluster", "slurm", "--workers", "2"], capsys)
    assert code == 2 and "--workers is for --cluster local" in err
    code, _, err = _run(["run", str(script), "--cluster", "tcp://127.0.0.1:9", "--gpus-per-job", "1"], capsys)
    assert code == 2 and "--gpus-per-job cannot apply to a running scheduler" in err


def test_unreachable_scheduler_is_one_line_status_1_and_fast(capsys: pytest.CaptureFixture[str]) -> None:
    t0 = time.monotonic()
    code, _, err = _run(["info", "--cluster", "tcp://127.0.0.1:9", "--timeout", "1s"], capsys)
    assert code == 1
    assert err.startswith("coupler: error: no Dask scheduler answered at 'tcp://127.0.0.1:9' within 1 s")
    assert len(err.strip().splitlines()) == 1
    assert time.monotonic() - t0 < 10


def test_demo_lists_the_bundled_demos() -> None:
    from coupler.demos import DEMOS

    assert available_demos() == sorted(DEMOS)
    assert {"augmentation", "modulation", "transformation"} <= set(available_demos())


def test_version_is_the_installed_distributions(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"coupler {version('coupler')}"
    import coupler.runtime

    assert coupler.runtime.__version__ == version("coupler")  # the package says it too


def test_every_demo_is_a_module_with_main_and_a_quick_option(capsys: pytest.CaptureFixture[str]) -> None:
    """Found by module name, not by a path in a checkout: what an installed wheel needs."""
    from coupler.demos import demo_module

    for name in available_demos():
        module = demo_module(name)
        assert module.__name__ == f"coupler.demos.{name}" and callable(module.main)
        with pytest.raises(SystemExit) as e:
            module.parse_args(["--help"])
        assert e.value.code == 0
        assert "--quick" in capsys.readouterr().out, name
        quick = module.parse_args(["--quick"])
        assert all(getattr(quick, k) == v for k, v in module.QUICK.items()), name


def test_quick_defaults_give_way_to_explicit_options() -> None:
    from coupler.demos.augmentation import QUICK, parse_args

    args = parse_args(["--quick", "--grid", "12"])
    assert args.quick and args.grid == 12 and args.members == QUICK["members"]
    assert parse_args([]).grid == 64 and not parse_args([]).quick


def test_demo_options_after_the_separator_reach_the_demo(coupling: Coupling, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(["demo", "transformation", "--cluster", coupling.client.scheduler.address, "--", "--help"], capsys)
    assert code == 0  # the demo's own --help, then a clean exit, without starting anything
    assert "usage: coupler demo transformation" in out and "--cycles" in out


# -- against real clusters ----------------------------------------------------------------------
SCRIPT = textwrap.dedent(
    """
    import json, sys
    from coupler.runtime import Coupling
    with Coupling() as cp:  # no argument: joins the cluster `coupler run` made the default
        out = {"address": cp.client.scheduler.address, "workers": len(cp.workers()), "argv": sys.argv[1:],
               "name": __name__}
    with open(sys.argv[1], "w") as f:
        json.dump(out, f)
    sys.exit(int(sys.argv[2]))
    """
)


def test_run_joins_a_given_scheduler_and_passes_arguments_and_exit_status(
    coupling: Coupling, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script, result = tmp_path / "script.py", tmp_path / "out.json"
    script.write_text(SCRIPT)
    address = coupling.client.scheduler.address
    code, _, _ = _run(["run", str(script), "--cluster", address, "--", str(result), "3"], capsys)
    assert code == 3  # the script's own exit status
    got = json.loads(result.read_text())
    assert got == {"address": address, "workers": 2, "argv": [str(result), "3"], "name": "__main__"}
    assert coupling.workers()  # a cluster it did not start is left running


def test_run_starts_and_closes_a_local_cluster(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script, result = tmp_path / "script.py", tmp_path / "out.json"
    script.write_text(SCRIPT)
    code, _, err = _run(["run", str(script), "--cluster", "local", "--workers", "1", "--", str(result), "0"], capsys)
    assert code == 0, err
    got = json.loads(result.read_text())
    assert got["workers"] == 1
    assert f"local cluster at {got['address']}" in err
    with pytest.raises(SchedulerUnreachable):  # closed afterwards
        connect(got["address"], timeout="1s")


def test_script_errors_keep_their_traceback(tmp_path: Path, coupling: Coupling, capsys: pytest.CaptureFixture[str]) -> None:
    script = tmp_path / "bad.py"
    script.write_text("def f():\n    raise ValueError('bad value from the script')\nf()\n")
    code, _, err = _run(["run", str(script), "--cluster", coupling.client.scheduler.address], capsys)
    assert code == 1
    assert "Traceback" in err and "ValueError: bad value from the script" in err


def test_info_shows_workers_actors_and_channels(coupling: Coupling, unique: str, capsys: pytest.CaptureFixture[str]) -> None:
    from helper_actors import Collector

    ch = coupling.channel(f"info-{unique}", Queue(8))
    ref = coupling.spawn(Collector, name=f"info-col-{unique}", inputs={"inp": ch})
    try:
        deadline = time.monotonic() + 10  # workers report their actors to the broker periodically
        while True:
            code, out, err = _run(["info", "--cluster", coupling.client.scheduler.address], capsys)
            if f"info-col-{unique}" in out or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        ref.stop()
    assert code == 0, err
    assert f"scheduler  {coupling.client.scheduler.address}" in out
    assert out.startswith(f"coupler    {coupler_version()}\n")
    assert "workers    2" in out
    for w in coupling.workers():
        assert f"  {w}  name=" in out and "devices=" in out and "job=-" in out
    assert f"  info-col-{unique}  Collector" in out
    assert f"  info-{unique}  kind=queue,maxsize=8  producers=0  consumers=1" in out


@pytest.fixture
def restored_config() -> Iterator[None]:
    """``--config`` merges files into the process's dask.config: put it back after the test."""
    saved = copy.deepcopy(dask.config.config)
    try:
        yield
    finally:
        dask.config.config.clear()
        dask.config.config.update(saved)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ("coupler:\n  transport:\n    spin: fast\n", "coupler.transport.spin must be a duration"),
        ("coupler:\n  transport:\n    inline-max: big\n", "coupler.transport.inline-max must be a size"),
        ("coupler:\n  supervision:\n    max-restarts: many\n", "coupler.supervision.max-restarts must be an integer"),
        ("coupler:\n  placement-timeout: soon\n", "coupler.placement-timeout must be a duration"),
        ("coupler:\n  report-interval: 0\n", "coupler.report-interval must be a duration > 0"),
        ("coupler:\n  local:\n    n-workers: two\n", "coupler.local.n-workers must be an integer >= 1"),
        ("coupler:\n  local:\n    n-workers: null\n", "coupler.local.n-workers must be an integer >= 1"),
        ("coupler:\n  cluster: nope\n", "coupler.cluster must be one of local, slurm"),
        ("coupler:\n  jobqueue:\n    jobs: two\n", "coupler.jobqueue.jobs must be an integer >= 0"),
        ("coupler:\n  jobqueue:\n    gpus-per-job: 1.5\n", "coupler.jobqueue.gpus-per-job must be an integer >= 0"),
        ("coupler:\n  local:\n    gpus: yes\n", "coupler.local.gpus expects 'auto', device ids"),
        ("coupler:\n  local:\n    memory-limit: big\n", "coupler.local.memory-limit must be 'auto', a size"),
        ("coupler:\n  local:\n    memory-limit: -1\n", "coupler.local.memory-limit must be 'auto', a size"),
        ("coupler:\n  transport:\n    shared-memory: maybe\n", "coupler.transport.shared-memory must be true or false"),
    ],
)
def test_a_bad_setting_is_one_line_and_status_2_before_any_cluster_starts(
    tmp_path: Path, settings: str, message: str, capsys: pytest.CaptureFixture[str], restored_config: None
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(settings)
    script = tmp_path / "s.py"
    script.write_text("raise SystemExit('the script ran')\n")
    t0 = time.monotonic()
    code, out, err = _run(["--config", str(path), "run", str(script)], capsys)
    assert code == 2 and err.startswith(f"coupler: error: {message}"), err
    assert len(err.strip().splitlines()) == 1 and out == ""
    assert time.monotonic() - t0 < 5  # refused before a cluster started


def test_tls_files_that_do_not_exist_are_one_line_and_status_1(tmp_path: Path, capsys: pytest.CaptureFixture[str], restored_config: None) -> None:
    path = tmp_path / "tls.yaml"
    path.write_text("coupler:\n  tls:\n    enabled: true\n    ca-file: /nope/ca.pem\n    cert: /nope/cert.pem\n    key: /nope/key.pem\n")
    script = tmp_path / "s.py"
    script.write_text("pass\n")
    code, _, err = _run(["run", str(script), "--config", str(path)], capsys)
    assert code == 1 and err.startswith("coupler: error: ") and "/nope/" in err, err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv", [["demo", "modulation", "--quick"], ["run", "x.py", "--steps", "3"]])
def test_options_of_the_demo_or_script_before_the_dashes_are_refused_with_where_they_go(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """``coupler demo modulation --quick`` said only "unrecognized arguments: --quick"."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    extra = " ".join(argv[2:])
    assert f"unrecognized arguments: {extra}" in err and f"go after --: coupler {argv[0]} {argv[1]} -- {extra}" in err, err

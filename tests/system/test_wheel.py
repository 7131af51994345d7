"""The wheel stands alone: built, installed outside the checkout, it runs its own demo.

The test copies the package's folders and ``pyproject.toml`` to a temporary
directory, builds a wheel there (``pip wheel --no-deps``, with pip's usual build
isolation: setuptools comes from the package index or pip's cache), and
installs it with ``--no-deps`` into a fresh virtual environment, also outside the
checkout. The dependencies (Dask, JAX, Flax...) are not installed again: a
``.pth`` file makes this test environment's site-packages visible to the new
one. A ``.pth`` line only *adds* a directory to ``sys.path``; the ``.pth`` files
inside it (the editable install's import hook among them) are not run, so
``coupler`` can only come from the wheel. The test checks that it does, then
runs ``coupler --version`` and ``coupler demo augmentation -- --quick`` from an
empty directory. ``COUPLER_WHEEL_ALL_DEMOS=1`` runs every bundled demo.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]


def _run(argv: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, f"{' '.join(argv)} exited with {done.returncode}:\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the package folders (nothing else of the checkout)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for folder in PYPROJECT["tool"]["setuptools"]["package-dir"].values():
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(src)], src, 600)
    (built,) = out.glob("coupler-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh virtual environment with the wheel installed; its ``bin/`` directory."""
    where = tmp_path_factory.mktemp("venv")
    # No pip of its own (ensurepip took ~8 s of this on a loaded machine): this environment's
    # pip installs into it (``--python``), as it would with the venv's own pip.
    _run([sys.executable, "-m", "venv", "--without-pip", str(where)], where, 300)
    bin_dir = where / "bin"
    _run([sys.executable, "-m", "pip", "--python", str(bin_dir / "python"), "install", "--no-deps", "--no-index", "--quiet",
          str(wheel)], where, 300)  # fmt: skip
    site = Path(_run([str(bin_dir / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     where, 60).stdout.strip())
    # This environment's packages, after the venv's own: the dependencies, not coupler itself.
    (site / "zz_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    yield bin_dir


def test_wheel_holds_the_demos_the_defaults_and_the_command(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("demos/__init__.py", "demos/augmentation.py", "demos/live_stream.py", "demos/modulation.py", "demos/transformation.py",
                   "runtime/coupler.yaml", "runtime/py.typed", "runtime/launch/cli.py"):
        assert f"coupler/{module}" in names, f"{module} missing from {wheel.name}"
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "coupler = coupler.runtime.launch.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    assert wheel.name.startswith(f"coupler-{VERSION}-")


def test_installed_coupler_comes_from_the_wheel(venv: Path, tmp_path: Path) -> None:
    probe = "import coupler.demos, coupler.runtime.version as v; print(coupler.demos.__file__); print(v.__version__)"
    where, version = _run([str(venv / "python"), "-c", probe], tmp_path, 120).stdout.split()
    assert Path(where).is_relative_to(venv.parent), f"coupler.demos imported from {where}, not from the wheel"
    assert not Path(where).is_relative_to(ROOT)
    assert version == VERSION
    assert _run([str(venv / "coupler"), "--version"], tmp_path, 120).stdout.strip() == f"coupler {VERSION}"


DEMOS = ["augmentation"] + (["augmentation_turbulence", "live_stream", "modulation", "transformation", "transformation_2d"]
                            if os.environ.get("COUPLER_WHEEL_ALL_DEMOS") == "1" else [])


@pytest.mark.timeout(420)
@pytest.mark.parametrize("demo", DEMOS)
def test_installed_wheel_runs_its_demo(venv: Path, demo: str, tmp_path: Path) -> None:
    done = _run([str(venv / "coupler"), "demo", demo, "--", "--quick"], tmp_path, 360)
    assert "Traceback" not in done.stderr
    if demo == "augmentation":
        assert "Augmentation on Heat2D: results" in done.stdout
        assert (tmp_path / "artifacts" / "augmentation" / "training.png").is_file()  # written where it ran

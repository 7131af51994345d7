"""The documentation site builds in strict mode, and the pages show what the tests run.

``mkdocs build --strict`` fails on a broken link, a missing anchor, a page left
out of the nav, or an API reference that names nothing. Without mkdocs (the
``docs`` extra: ``make docs`` installs it) the build test skips with the reason,
except under ``CI=true``, where it fails (``tests/services.py``).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from services import require

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(400)
def test_site_builds_in_strict_mode(tmp_path: Path) -> None:
    missing = [m for m in ("mkdocs", "material", "mkdocstrings_handlers") if importlib.util.find_spec(m) is None]
    require("mkdocs", f"not installed ({', '.join(missing)}); run `make docs` to install the docs extra" if missing else None)
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=360, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    site = tmp_path / "site"
    api = (site / "reference" / "runtime" / "index.html").read_text()
    assert 'id="coupler.runtime.Coupling"' in api, "the API reference lost Coupling"
    assert (site / "changelog" / "index.html").read_text().count("0.1.0") >= 1


def test_batch_systems_page_shows_the_tested_slurm_configuration() -> None:
    """The page's "Running on a Slurm cluster" YAML is examples/jobqueue.yaml, which the system tests use."""
    page = (ROOT / "docs" / "how-to" / "batch-systems.md").read_text()
    section = page[page.index("## Running on a Slurm cluster") :]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block is not None, "no YAML block in the Slurm section"
    assert yaml.safe_load(block.group(1)) == yaml.safe_load((ROOT / "examples" / "jobqueue.yaml").read_text())


def test_readme_is_a_short_front_page() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    for command in ("make demo", "make test"):
        assert command in readme
    for link in re.findall(r"\]\(((?:docs/|CHANGELOG)[^)#]*)", readme):
        assert (ROOT / link).is_file(), f"README links to {link}, which does not exist"

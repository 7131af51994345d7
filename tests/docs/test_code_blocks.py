"""Every Python code block in the README and the docs runs, as written.

Each block is saved as a script and run in a fresh interpreter, from an empty
directory (so what it writes, e.g. ``artifacts/``, goes there), with a timeout.
A block the README and a page share runs once. Blocks marked as fragments
(``<!-- fragment: why -->`` on the line before the fence; see
``markdown_blocks.py``) are not run; they must say why, and there may be only a
few. Blocks that start a cluster are kept small (``Coupling(n_workers=1)``,
demos with ``--quick``). Most of a block's time is starting processes and
waiting on them (cluster start, polling loops), so the selected blocks run two
at a time (``COUPLER_DOCS_BLOCK_JOBS``): about two and a half minutes on 2 cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from markdown_blocks import ROOT, CodeBlock, all_blocks, python_blocks

BLOCKS = all_blocks()
SECONDS = 300  # per block: a cluster start and a --quick demo on a loaded 2-core machine fit well inside
# Deliberate fragments allowed in all of the docs: each one is a page explaining an excerpt
# (see the reasons in the pages). More than this means the docs drift from runnable code.
MAX_FRAGMENTS = 6


def _unique_runnable(blocks: list[CodeBlock]) -> dict[str, list[CodeBlock]]:
    """Code -> the blocks that show it (the README's script is also in Getting started)."""
    out: dict[str, list[CodeBlock]] = {}
    for b in blocks:
        if b.fragment is None:
            out.setdefault(b.code, []).append(b)
    return out


RUNNABLE = _unique_runnable(BLOCKS)
JOBS = max(1, int(os.environ.get("COUPLER_DOCS_BLOCK_JOBS", "2")))


def _run_block(code: str, cwd: Path) -> subprocess.CompletedProcess[str] | subprocess.TimeoutExpired:
    """Run ``code`` as a script in ``cwd``; the finished process, or the timeout with what it printed."""
    script = cwd / "block.py"
    script.write_text(code)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}
    try:
        return subprocess.run([sys.executable, str(script)], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=SECONDS)
    except subprocess.TimeoutExpired as e:
        return e


@pytest.fixture(scope="module")
def block_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Future]]:
    """Code -> its run, started for every block this session selected, ``JOBS`` at a time."""
    selected = [item.callspec.params["code"] for item in request.session.items
                if getattr(item, "originalname", "") == "test_block_runs_as_written"]
    with ThreadPoolExecutor(JOBS) as pool:
        yield {code: pool.submit(_run_block, code, tmp_path_factory.mktemp("block")) for code in selected}


@pytest.mark.timeout(len(RUNNABLE) * SECONDS)  # it may wait for the blocks ahead of it
@pytest.mark.parametrize("code", list(RUNNABLE), ids=[shown[0].where for shown in RUNNABLE.values()])
def test_block_runs_as_written(code: str, block_runs: dict[str, Future]) -> None:
    shown = ", ".join(b.where for b in RUNNABLE[code])
    done = block_runs[code].result()
    if isinstance(done, subprocess.TimeoutExpired):
        pytest.fail(f"the code block at {shown} did not end within {SECONDS} s; output:\n{done.stdout}\n{done.stderr}")
    assert done.returncode == 0, (
        f"the code block at {shown} exited with {done.returncode}:\n"
        f"--- stdout (end)\n{done.stdout[-4000:]}\n--- stderr (end)\n{done.stderr[-6000:]}"
    )


def test_the_docs_have_runnable_blocks_and_few_fragments() -> None:
    fragments = [b for b in BLOCKS if b.fragment is not None]
    assert {b.path for b in BLOCKS} >= {"README.md", "docs/getting-started.md", "docs/tutorials/augmentation.md"}
    assert len(RUNNABLE) >= 10, f"only {len(RUNNABLE)} runnable blocks found: is the extraction broken?"
    assert len(fragments) <= MAX_FRAGMENTS, "too many fragments: " + ", ".join(b.where for b in fragments)
    for b in fragments:
        assert len(b.fragment or "") >= 20, f"{b.where}: a fragment must say why it is one, and where the whole is"


def test_the_readme_script_guards_its_cluster() -> None:
    """The script the issue found crashing: its Coupling must start under ``if __name__ == "__main__":``."""
    (readme_script,) = [b for b in BLOCKS if b.path == "README.md"]
    head, _, guarded = readme_script.code.partition('if __name__ == "__main__":')
    assert guarded and "Coupling(" not in head and "Coupling(" in guarded
    assert len(readme_script.code.splitlines()) <= 40


def test_extraction_reads_fences_languages_and_fragment_markers(tmp_path: Path) -> None:
    page = tmp_path / "docs" / "page.md"
    page.parent.mkdir()
    page.write_text(textwrap.dedent(
        """\
        # A page

        ```bash
        make demo
        ```

        ```python
        print("runs")
        ```

        <!-- fragment: an excerpt of a longer script -->

        ```python
        cp.spawn(...)
        ```

        ````python
        s = '''
        ```
        '''
        ````
        """
    ))
    blocks = python_blocks(page, tmp_path)
    assert [(b.line, b.fragment) for b in blocks] == [(7, None), (13, "an excerpt of a longer script"), (17, None)]
    assert blocks[0].code == 'print("runs")\n' and blocks[0].where == "docs/page.md:7"
    assert blocks[2].code == "s = '''\n```\n'''\n"

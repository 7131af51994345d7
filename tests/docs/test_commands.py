"""Every command line the docs show parses with the parser of what it runs.

The docs quote hundreds of runs: `python benchmarks/X.py ...`, `python examples/X.py ...`,
`coupler demo X -- ...`, `coupler run ...`. A renamed option or choice breaks them
silently (a tutorial once said `--strategy maxstd` where the demo takes `max-std`).
Here each one is parsed, not run: ``argparse.ArgumentParser.parse_args`` is wrapped
to stop the program right after its options parsed, so a command passes when its
parser accepts it and fails with argparse's own message when it does not.
Placeholders the docs write in capitals (``--dims D``, ``--json PATH``) stand for
any value and are given ``1``.
"""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from coupler.demos.registry import demo_module
from coupler.runtime.launch import cli

REPO = Path(__file__).resolve().parents[2]
PAGES = sorted([*REPO.glob("docs/**/*.md"), REPO / "README.md", REPO / "benchmarks" / "README.md"])

_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
_INLINE = re.compile(r"`([^`]+)`")
_PYTHON = re.compile(r"(?:^|\s)(?:\S*/)?python3?\s+(benchmarks|examples)/(\w+)\.py\b(.*)")
_COUPLER = re.compile(r"(?:^|\s)coupler\s+(run|demo|info)\b(.*)")
# What ends a command inside a line: a comment, a pipe, a redirect, a second command.
_END = re.compile(r"\s(?:#|\||>|&&|;|2>)")
_PLACEHOLDER = re.compile(r"^[A-Z][A-Z_]*$")


@dataclass(frozen=True)
class Command:
    """One command line quoted in a page."""

    page: str
    line: int
    program: str  # "benchmarks/X", "examples/X" or "coupler"
    argv: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {self.program} {' '.join(self.argv)}"


def _snippets(text: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of each fenced line (backslash continuations joined) and each inline code span."""
    for block in _FENCE.finditer(text):
        first = text.count("\n", 0, block.start(1)) + 1
        lines = block.group(1).split("\n")
        i = 0
        while i < len(lines):
            start, joined = i, lines[i]
            while joined.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                joined = joined.rstrip()[:-1] + " " + lines[i]
            yield first + start, joined
            i += 1
    outside = _FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)  # keep line numbers
    for span in _INLINE.finditer(outside):
        yield outside.count("\n", 0, span.start()) + 1, " ".join(span.group(1).split())


def _argv(tail: str) -> tuple[str, ...] | None:
    """The words of a command's tail; ``None`` for a usage synopsis (``[--json PATH]``), not a command."""
    end = _END.search(tail)
    words = tuple(shlex.split(tail[: end.start()] if end else tail))
    return None if any(w.startswith("[") for w in words) else words


#: Values for the placeholders that stand for something other than a number.
_PLACEHOLDER_VALUES = {"ADDRESS": "tcp://host:8786", "PATH": "out.json", "FILE": "out.json", "SCRIPT": "script.py"}


def _values(words: list[str]) -> list[str]:
    """``words`` with each placeholder given a value (``D`` and the like: ``1``)."""
    return [_PLACEHOLDER_VALUES.get(w, "1") if _PLACEHOLDER.match(w) else w for w in words]


def commands() -> list[Command]:
    """Every benchmark, example and ``coupler`` command line quoted in :data:`PAGES`."""
    found = []
    for page in PAGES:
        name = str(page.relative_to(REPO))
        for line, snippet in _snippets(page.read_text()):
            m = _PYTHON.search(snippet)
            if m and (argv := _argv(m.group(3))) is not None:
                found.append(Command(name, line, f"{m.group(1)}/{m.group(2)}", argv))
                continue
            m = _COUPLER.search(snippet)
            # Prose that names `coupler run` or one of its options (`coupler run --tls`) gets a script.
            if m and (m.group(2).strip() or m.group(1) == "info") and (argv := _argv(m.group(2))) is not None:
                if m.group(1) == "run" and not any(w.endswith(".py") for w in argv):
                    argv = (*argv, "SCRIPT")
                found.append(Command(name, line, "coupler", (m.group(1), *argv)))
    return found


class _Parsed(Exception):
    """Raised in place of running the program once its options parsed."""


def _stop_after_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        parse(self, *args, **kwargs)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)


def _benchmark(name: str) -> ModuleType:
    """The module of ``benchmarks/<name>.py``, imported as the benchmark tests import it."""
    where = str(REPO / "benchmarks")
    if where not in sys.path:
        sys.path.insert(0, where)
    return importlib.import_module(name)


def _program(cmd: Command) -> Callable[[list[str]], Any]:
    """The function whose first act is to parse ``cmd.argv``."""
    kind, _, name = cmd.program.partition("/")
    if kind == "benchmarks":
        return _benchmark(name).main
    # Every example runs the bundled demo of its name (examples/X.py is `coupler demo X`).
    return demo_module(name).main


def _parses(cmd: Command, monkeypatch: pytest.MonkeyPatch) -> None:
    """Parse ``cmd`` with its program's parser; a demo's options after ``--`` with the demo's too."""
    _stop_after_parsing(monkeypatch)
    argv = list(cmd.argv)
    if cmd.program == "coupler":
        script: list[str] = []
        if "--" in argv:
            cut = argv.index("--")
            argv, script = argv[:cut], argv[cut + 1 :]
        try:
            cli.build_parser().parse_args(_values(argv))
        except _Parsed:
            pass
        except cli.UsageError as e:
            pytest.fail(f"{cmd}\n  {e}")
        if argv[0] != "demo":
            return
        name = next((w for w in argv[1:] if not w.startswith("-")), "augmentation")
        if _PLACEHOLDER.match(name):  # `coupler demo NAME`: no demo's options to check
            return
        program, argv = demo_module(name).main, script
    else:
        program = _program(cmd)
    try:
        program(_values(argv))
    except _Parsed:
        return
    except SystemExit as e:  # argparse's error (its message is on stderr); 0 is --help
        if e.code == 0:
            return
        pytest.fail(f"{cmd}\n  exits {e.code} while parsing")
    pytest.fail(f"{cmd}\n  ran without parsing its options with argparse")


COMMANDS = commands()


def test_the_pages_quote_the_commands_this_test_checks() -> None:
    programs = {c.program for c in COMMANDS}
    # Measured when this test was written: each of these is quoted at least once.
    assert {"benchmarks/modulation_vs_sweep", "benchmarks/augmentation_speedup", "examples/modulation", "coupler"} <= programs
    assert len(COMMANDS) >= 60


@pytest.mark.parametrize("cmd", COMMANDS, ids=str)
def test_a_quoted_command_parses(cmd: Command, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        _parses(cmd, monkeypatch)
    except pytest.fail.Exception as e:
        raise AssertionError(f"{e}\n{capsys.readouterr().err.strip()}") from None


def test_a_wrong_choice_fails_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check can fail: the tutorial's old spelling of max-std is refused."""
    bad = Command("docs/tutorials/modulation.md", 0, "examples/modulation", ("--strategy", "maxstd"))
    with pytest.raises(pytest.fail.Exception, match="exits 2 while parsing"):
        _parses(bad, monkeypatch)

"""The Python code blocks of the README and the docs pages, as the docs tests run them.

A block is a fenced ```` ```python ```` block. Every block must run as written,
alone, in a fresh interpreter. A block that is deliberately not a program (an
excerpt of a larger script, the signatures of a protocol) says so on the line
right before its fence, with the reason::

    <!-- fragment: continues the block above on a Coupling cp -->
    ```python
    cp.spawn(...)
    ```

The marker is an HTML comment, so the rendered page does not show it. Keep such
blocks few; a reason that names where the runnable whole lives is best.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>[^\n`]*)$")
FRAGMENT = re.compile(r"^\s*<!--\s*fragment:\s*(?P<why>.+?)\s*-->\s*$")


@dataclass(frozen=True)
class CodeBlock:
    """One fenced Python block of a Markdown file.

    Attributes:
        path: the file, relative to the checkout.
        line: the line of its opening fence (1-based).
        code: its text, without the fences.
        fragment: the reason it is marked as a fragment, or ``None`` for a block that must run.
    """

    path: str
    line: int
    code: str
    fragment: str | None

    @property
    def where(self) -> str:
        """``path:line``, for test ids and messages."""
        return f"{self.path}:{self.line}"


def markdown_files(root: Path = ROOT) -> list[Path]:
    """The README and every Markdown page under ``docs/``, sorted.

    Args:
        root: the checkout.

    Returns:
        Their paths.
    """
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def python_blocks(path: Path, root: Path = ROOT) -> list[CodeBlock]:
    """The fenced Python blocks of one Markdown file, in order.

    Args:
        path: the Markdown file.
        root: the checkout (paths in the result are relative to it).

    Returns:
        Its ``python`` blocks (info string ``python`` or ``py``, with or without attributes).

    Raises:
        ValueError: for a fence that is never closed.
    """
    lines = path.read_text().splitlines()
    out: list[CodeBlock] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info = m.group("fence"), m.group("info").strip()
        start = i
        i += 1
        body: list[str] = []
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise ValueError(f"{path.relative_to(root)}:{start + 1}: a {fence} fence is never closed")
        i += 1  # past the closing fence
        if info.split(" ")[0].strip("{}.") not in ("python", "py"):
            continue
        previous = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marked = FRAGMENT.match(previous)
        out.append(CodeBlock(str(path.relative_to(root)), start + 1, "\n".join(body) + "\n",
                             marked.group("why") if marked else None))
    return out


def all_blocks(root: Path = ROOT) -> list[CodeBlock]:
    """Every Python block of the README and the docs.

    Args:
        root: the checkout.

    Returns:
        The blocks, file by file.
    """
    return [b for f in markdown_files(root) for b in python_blocks(f, root)]

"""MkDocs hook: give mkdocstrings a ``coupler/`` folder to read the package from.

The checkout has no ``coupler/`` directory: ``pyproject.toml`` maps
``coupler.runtime`` to ``runtime/`` and so on (a PEP 420 namespace), and the
editable install resolves that with an import hook that griffe (mkdocstrings'
reader) cannot follow. So before the build this hook makes
``build/docs-src/coupler/<sub>`` links to the folders, read from
``[tool.setuptools] package-dir`` (one source for the mapping), and
``mkdocs.yml`` points the Python handler's ``paths`` there. ``build/`` is
ignored by git.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

SOURCE = Path("build") / "docs-src"  # relative to mkdocs.yml, as the handler's `paths`


def package_dirs(pyproject: Path) -> dict[str, str]:
    """The ``coupler.<sub>`` -> folder mapping of ``pyproject.toml``.

    Args:
        pyproject: the project's ``pyproject.toml``.

    Returns:
        Sub-package name (``runtime``) -> folder relative to the checkout (``runtime``).

    Raises:
        ValueError: if a mapped name is not a direct sub-package of ``coupler``.
    """
    mapping = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-dir"]
    out = {}
    for name, folder in mapping.items():
        parts = name.split(".")
        if len(parts) != 2 or parts[0] != "coupler":
            raise ValueError(f"expected package-dir keys like coupler.<sub>; got {name!r}")
        out[parts[1]] = folder
    return out


ROOT = Path(__file__).resolve().parents[2]  # docs/hooks/package_tree.py -> the checkout


def on_startup(command: str, dirty: bool) -> None:
    """Link the tree before any plugin starts: mkdocstrings reads its ``paths`` in its ``on_config``.

    Args:
        command: ``build``, ``serve`` or ``gh-deploy`` (unused).
        dirty: whether only changed files are rebuilt (unused).
    """
    link_tree(ROOT)


def link_tree(root: Path) -> None:
    """Make ``build/docs-src/coupler/<sub>`` under ``root`` point at each mapped folder (idempotent).

    Args:
        root: the checkout (where ``pyproject.toml`` and ``mkdocs.yml`` are).
    """
    tree = root / SOURCE / "coupler"
    tree.mkdir(parents=True, exist_ok=True)
    for sub, folder in package_dirs(root / "pyproject.toml").items():
        link, target = tree / sub, root / folder
        if link.is_symlink() and link.resolve() == target.resolve():
            continue
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target, target_is_directory=True)

"""The package's layering, read from the source: no import cycles, and physics/learners free of Dask.

Every ``import`` statement counts, those inside functions too (a lazy import
hides a cycle, it does not remove it).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"coupler.runtime": "runtime", "coupler.actors": "actors", "coupler.physics": "physics", "coupler.learners": "learners"}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg, folder in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([pkg, *parts])] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The coupler modules ``name`` imports (a ``from pkg import mod`` counts as ``pkg.mod`` when that is a module)."""
    found = set()
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for a in node.names:
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
    return {m for m in found if m in known and m != name}


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, set(mods)) for name, path in mods.items()}


def _cycle(graph: dict[str, set[str]], inits: frozenset[str] = frozenset()) -> list[str] | None:
    """One import cycle among modules, leaving out ``inits`` (packages' ``__init__`` re-exports), or None."""
    color: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        color[m] = 1
        stack.append(m)
        for n in sorted(graph[m] - inits):
            if color.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in color and (found := visit(n)):
                return found
        stack.pop()
        color[m] = 2
        return None

    for m in sorted(set(graph) - inits):
        if m not in color and (found := visit(m)):
            return found
    return None


def test_no_module_imports_itself_through_others() -> None:
    inits = frozenset(m for m, path in _modules().items() if path.name == "__init__.py")
    cycle = _cycle(_graph(), inits)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


@pytest.mark.parametrize("folder", ["physics", "learners"])
def test_physics_and_learners_never_import_dask(folder: str) -> None:
    for path in (ROOT / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] in ("dask", "distributed", "coupler") and not n.startswith(("coupler.physics", "coupler.learners")) for n in names), (
                f"{path.relative_to(ROOT)} imports {names}: physics/ and learners/ stay free of Dask and the runtime"
            )


def test_the_runtime_never_imports_the_layers_above_it() -> None:
    """DESIGN.md: runtime/ imports dask, distributed and numpy; the driver's relay actor reaches it through an entry point."""
    for path in (ROOT / "runtime").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.startswith(("coupler.actors", "coupler.physics", "coupler.learners")) for n in names), (
                f"{path.relative_to(ROOT)} imports {names}: the runtime sits below actors, physics and learners"
            )
            # The one exception, by design: `coupler demo NAME` (launch/cli.py) runs the bundled
            # demos, which like examples/ may import everything.
            if path.relative_to(ROOT).as_posix() != "runtime/launch/cli.py":
                assert not any(n.startswith("coupler.demos") for n in names), f"{path.relative_to(ROOT)} imports {names}"


def test_the_driver_relay_comes_from_the_actor_layer_through_its_entry_point() -> None:
    from coupler.actors.base import ActorHost
    from coupler.runtime.driver import relay_class

    cls = relay_class()
    assert issubclass(cls, ActorHost) and cls.__module__ == "coupler.actors.relay"


@pytest.mark.parametrize("folder", ["physics", "learners"])
def test_physics_and_learners_do_not_even_name_the_runtime_or_the_actors(folder: str) -> None:
    """Cross-references count too: a docstring pointing up the layers is how an import starts."""
    for path in (ROOT / folder).rglob("*.py"):
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            assert "coupler.actors" not in line and "coupler.runtime" not in line, f"{path.relative_to(ROOT)}:{lineno}: {line.strip()}"

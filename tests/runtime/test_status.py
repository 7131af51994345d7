"""What a status report says about the device: read from JAX only when JAX is fully imported and started."""

from __future__ import annotations

import builtins
import sys
import types
from typing import Any

import pytest

from coupler.runtime.control import status


def test_a_status_call_imports_nothing_of_jax_while_an_actor_s_thread_imports_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """An actor's ``setup`` importing JAX while the event loop builds a status: the status must not import too.

    A second thread importing ``jax._src.xla_bridge`` mid-import made the actor's own
    import fail with "partially initialized module" (the live-stream demo's simulator).
    """
    for name in [m for m in sys.modules if m == "jax" or m.startswith("jax.")]:
        monkeypatch.delitem(sys.modules, name)
    half = types.ModuleType("jax._src.xla_bridge")
    half.__spec__ = types.SimpleNamespace(_initializing=True)  # type: ignore[assignment]  (what an import in progress looks like)
    monkeypatch.setitem(sys.modules, "jax", types.ModuleType("jax"))
    monkeypatch.setitem(sys.modules, "jax._src.xla_bridge", half)
    imported: list[str] = []
    real_import = builtins.__import__

    def spy(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("jax"):
            imported.append(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", spy)
    assert status.describe_device() in ("cpu", f"gpu:{status.os.environ.get('CUDA_VISIBLE_DEVICES', '')}")
    assert imported == []


def test_a_started_backend_names_its_first_device() -> None:
    import jax  # a dependency of the project: no skip
    jax.numpy.zeros(1).block_until_ready()
    assert status.describe_device() == f"{jax.devices()[0].platform}:{jax.devices()[0].id}"

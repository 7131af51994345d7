"""What a status report says about the device: read from JAX only when JAX is fully imported and started."""

from __future__ import annotations

import builtins
import sys
import time
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


def test_weights_in_use_travel_with_the_status_and_say_their_age() -> None:
    weights = status.WeightsInUse(version=120, sent_at=1000.0, behind=20)
    st = status.ActorStatus(name="hybrid", state="running", weights=weights)
    again = status.ActorStatus.from_dict(st.to_dict())  # as a worker reports it and the broker keeps it
    assert again == st and again.weights == weights
    assert weights.age(1003.44) == pytest.approx(3.44) and weights.age(999.0) == 0.0  # clocks that disagree: 0
    assert weights.describe(1003.44) == "step 120, 3.4 s old, 20 steps behind"
    assert status.WeightsInUse(7, 1000.0, 0).describe(1000.0) == "step 7, 0.0 s old"
    assert status.ActorStatus.from_dict(status.ActorStatus(name="plain").to_dict()).weights is None
    with pytest.raises(ValueError, match="need a version and a sent_at, got"):
        status.WeightsInUse.from_dict({"version": 3})


def test_the_dashboard_shows_the_weights_each_actor_uses() -> None:
    from coupler.runtime.observe.dashboard import CouplerPage

    now = time.time()
    actors = {
        "hybrid": status.ActorStatus(name="hybrid", weights=status.WeightsInUse(5, now - 60.0, 2)),
        "learner": status.ActorStatus(name="learner"),
    }
    rows = CouplerPage(None).actor_rows(actors, {})
    assert rows["actor"] == ["hybrid", "learner"]
    assert rows["weights"][1] == "" and rows["weights"][0].startswith("step 5, 60.") and rows["weights"][0].endswith(" s old, 2 steps behind")
    assert ("weights", "weights in use", None) in CouplerPage.ACTOR_COLUMNS

"""The a priori subgrid analysis: exact zero where the coarse grid holds every mode, correlations, the CLI."""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))

import subgrid_apriori as bench  # noqa: E402

from coupler.physics.navier_stokes import NavierStokes2D, spectral_resample  # noqa: E402


def test_a_field_the_coarse_grid_holds_has_no_subgrid_tendency() -> None:
    # Modes below 4 on a 32^2 fine grid: their products reach mode 6, which the fine 2/3 rule keeps and the
    # padded 16^2 solver forms exactly, so the restricted fine advection is the coarse one (float32 round-off).
    fine, coarse = NavierStokes2D(n=32), NavierStokes2D(n=16, dealias="pad")
    w = spectral_resample(spectral_resample(fine.init(jax.random.key(0), None).w, 8), 32)
    s, feats = bench.subgrid_and_features(fine, coarse, w)
    assert float(jnp.max(jnp.abs(s))) < 1e-4 * float(jnp.max(jnp.abs(feats[0])))
    # A developed field with modes above the coarse cutoff has one.
    s2, _ = bench.subgrid_and_features(fine, coarse, _rough(fine))
    assert float(jnp.max(jnp.abs(s2))) > 1e-2


def _rough(sim: NavierStokes2D) -> jax.Array:
    x, y = sim.grid()
    return jnp.cos(3 * x) * jnp.sin(2 * y) + jnp.cos(9 * x + 2 * y)


def test_shell_correlations_are_one_for_a_feature_itself_and_bounded(tmp_path, capsys) -> None:
    coarse = NavierStokes2D(n=16, dealias="pad")
    rng = np.random.default_rng(0)
    feats = (rng.normal(size=(2, 3, 16, 9)) + 1j * rng.normal(size=(2, 3, 16, 9))).astype(np.complex64)
    rows = bench.shell_table(coarse, -2.0 * feats[:, 1], feats)
    assert all(r["similarity"] == pytest.approx(-1.0, abs=1e-5) for r in rows)
    assert all(abs(r["gradient"]) < 0.9 for r in rows)
    out = bench.main(["--coarse", "16", "--fine", "32", "--runs", "2", "--spinup", "0.5", "--json", str(tmp_path / "a.json")])
    assert json.loads((tmp_path / "a.json").read_text())["shells"] == out["shells"]
    assert all(-1 <= r[f] <= 1 for r in out["shells"] for f in bench.FEATURES) and out["subgrid_share"] > 0
    assert "subgrid rms" in capsys.readouterr().out

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


def test_explained_variance_matches_its_closed_forms() -> None:
    coarse = NavierStokes2D(n=16, dealias="pad")
    rng = np.random.default_rng(1)
    s = rng.normal(size=(5, 16, 16))
    s -= s.mean(axis=(-2, -1), keepdims=True)
    # A prediction c * s leaves (1 - c) s: R^2 = 1 - (1 - c)^2 in every shell and overall, up to round-off.
    for c in (0.0, 0.5, 1.0, 1.7):
        r = bench.explained_variance(coarse, s, c * s)
        assert r["overall"] == pytest.approx(1 - (1 - c) ** 2, abs=1e-9)
        assert all(sh["r2"] == pytest.approx(1 - (1 - c) ** 2, abs=1e-9) for sh in r["shells"])
    # The shells (four below n/2, then the corners) partition the modes: their shares of |s|^2 sum to 1.
    shells = bench.explained_variance(coarse, s, 0 * s)["shells"]
    assert len(shells) == 5 and shells[-1]["shell"] == [8, 16]
    assert sum(sh["share"] for sh in shells) == pytest.approx(1.0, abs=1e-9) and shells[-1]["share"] > 0.1
    # Overall it is the grid-space R^2 (Parseval, with the rfft's doubled columns counted twice).
    pred = s + 0.3 * rng.normal(size=s.shape)
    assert bench.explained_variance(coarse, s, pred)["overall"] == pytest.approx(
        1 - np.sum((s - pred) ** 2) / np.sum(s**2), abs=1e-9)
    with pytest.raises(ValueError):
        bench.explained_variance(coarse, s, s[:2])


def _pairs(rng: np.random.Generator, runs: int, target) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    w = rng.normal(size=(runs, 16, 16)).astype(np.float32)
    p = np.tile(np.float32([[0.03, 1.0, 0.1]]), (runs, 1))
    return w, p, target(w).astype(np.float32)


def test_the_cnn_learns_a_target_its_input_determines_and_not_noise() -> None:
    # The 5-point Laplacian of w commutes with the reflections the training draws (x -> -x or y -> -y with
    # w, s -> -w, -s) and is one 3x3 convolution: held out, R^2 > 0.9 after 300 steps (0.9 leaves room for the
    # optimiser's noise; it reaches 0.999). A target independent of the input has
    # nothing to learn: held out, R^2 stays below 0.1 (the fit can only add variance; -0.0005 measured).
    coarse, rng = NavierStokes2D(n=16, dealias="pad"), np.random.default_rng(2)

    def stencil(w: np.ndarray) -> np.ndarray:
        return sum(np.roll(w, d, axis=a) for d in (-1, 1) for a in (1, 2)) - 4 * w

    def noise(w: np.ndarray) -> np.ndarray:
        return rng.normal(size=w.shape)

    kw = dict(width=8, depth=2, kernel_size=3, checkpoints=(100, 300), learning_rate=3e-3)
    exact = bench.fit_cnn(coarse, _pairs(rng, 64, stencil), _pairs(rng, 16, stencil), **kw)
    assert exact[-1]["held_out"]["overall"] > 0.9 and exact[-1]["train_r2"] > 0.9
    assert [r["steps"] for r in exact] == [100, 300] and exact[0]["weights"] == 8 * 3 * 9 + 8 + 8 * 9 + 1
    random = bench.fit_cnn(coarse, _pairs(rng, 64, noise), _pairs(rng, 16, noise), **kw)
    assert random[-1]["held_out"]["overall"] < 0.1
    with pytest.raises(ValueError):
        bench.fit_cnn(coarse, _pairs(rng, 4, stencil), _pairs(rng, 4, stencil), **{**kw, "checkpoints": (300, 100)})


def test_the_cnn_measurement_runs_end_to_end(tmp_path, capsys) -> None:
    out = bench.main(["--coarse", "16", "--fine", "32", "--runs", "2", "--spinup", "0.5", "--cnn", "--cnn-runs", "3",
                      "--holdout", "1", "--samples", "2", "--train-runs", "1,2", "--widths", "4", "--depth", "2", "--steps", "3,6",
                      "--forcing-wavenumber", "2", "--json", str(tmp_path / "c.json")])
    saved = json.loads((tmp_path / "c.json").read_text())
    assert [f["train_runs"] for f in saved["cnn"]["fits"]] == [1, 2] and saved["forcing_wavenumber"] == 2
    curve = out["cnn"]["fits"][0]["curve"]
    assert [r["steps"] for r in curve] == [3, 6] and len(curve[0]["held_out"]["shells"]) == 5
    assert "held-out R2" in capsys.readouterr().out
    with pytest.raises(ValueError):
        bench.main(["--coarse", "16", "--fine", "32", "--runs", "2", "--spinup", "0.5", "--cnn", "--cnn-runs", "3", "--holdout", "3"])
    with pytest.raises(ValueError):
        bench.main(["--coarse", "16", "--fine", "32", "--runs", "2", "--spinup", "0.5", "--cnn", "--cnn-runs", "3", "--train-runs", "3"])

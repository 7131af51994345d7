"""The learned mixed closure of a coarse Navier-Stokes solver: exactness untrained, training, configs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coarse_runs import coarse_runs
from coupler.learners.mixed_closure import MixedClosureConfig, mixed_step
from coupler.learners.online import OptimizerConfig
from coupler.learners.solver_correction import SolverCorrectionConfig, corrected_rollout, trajectory_loss
from coupler.physics.navier_stokes import NavierStokes2D

COARSE = NavierStokes2D(n=16, dt=0.08, dealias="pad")
SMALL = MixedClosureConfig(hidden=8, depth=1, features=("similarity", "gradient"))


def _runs(seed: int, runs: int) -> tuple[jax.Array, jax.Array]:
    return coarse_runs(COARSE, seed, runs, (0.01, 0.03))


def test_an_untrained_mixed_closure_is_the_plain_solver() -> None:
    w0, p = _runs(0, 3)
    model = SMALL.build(0)
    plain = corrected_rollout(COARSE, None, w0, p, 4)
    np.testing.assert_allclose(np.asarray(corrected_rollout(COARSE, model, w0, p, 4)), np.asarray(plain), atol=1e-6)
    np.testing.assert_allclose(np.asarray(model.one_step(COARSE, w0, p)), np.asarray(plain[0]), atol=1e-6)
    nu_t, gain, c = model.coefficients(COARSE, p)
    assert nu_t.shape == gain.shape == (3, 16, 9) and c.shape == (3, 2, 16, 9)


def _known_closure_windows(seed: int, runs: int, k: int) -> dict[str, np.ndarray]:
    """Windows of the coarse solver with -0.3 x the similarity term and 20 x Clark's term added.

    State-dependent terms of the model's family (constant coefficients) for training to find.
    """
    w0, p = _runs(seed, runs)
    shape = (runs, 16, 9)
    c = jnp.stack([jnp.full(shape, -0.3), jnp.full(shape, 20.0)], axis=1)
    frames, w = [w0], w0
    for _ in range(k):
        w = mixed_step(COARSE, SMALL.features, w, p, jnp.zeros(shape), jnp.ones(shape), c)
        frames.append(w)
    return {"field": np.asarray(jnp.stack(frames, 1)), "params": np.asarray(p)}


@pytest.mark.parametrize("unroll", [1, 3])
def test_training_learns_known_subgrid_terms(unroll: int) -> None:
    train, test = _known_closure_windows(1, 16, 3), _known_closure_windows(2, 8, 3)
    trainer = SolverCorrectionConfig(
        COARSE, SMALL, OptimizerConfig(learning_rate=3e-2, warmup_steps=5, decay_steps=None), unroll=unroll
    )()
    held_out = (jnp.asarray(test["field"]), jnp.asarray(test["params"]))
    before = float(trajectory_loss(trainer.model, COARSE, *held_out, 3))
    rng = np.random.default_rng(0)
    for _ in range(80):
        rows = rng.integers(0, len(train["field"]), 8)
        trainer.step({k: v[rows] for k, v in train.items()})
    after = float(trajectory_loss(trainer.model, COARSE, *held_out, 3))
    # The terms are in the model's family: held-out squared error at least 10x smaller.
    assert before > 1e-6 and after < 0.1 * before


def test_the_similarity_term_is_the_top_bands_share_of_the_advection() -> None:
    # A field with modes only below half the cutoff has no top band: the similarity term is zero.
    sim = NavierStokes2D(n=32, dealias="pad")
    low = jnp.fft.rfft2(sim.taylor_green(2, 1.0, 0.0, 0.0, 0.0) + jnp.cos(sim.grid()[0] + 2 * sim.grid()[1]))
    assert float(jnp.max(jnp.abs(sim.similarity_tendency(low)))) < 1e-3
    # With the test filter at the full cutoff nothing is filtered out: zero again; below it, not zero.
    w = jnp.fft.rfft2(sim.init(jax.random.key(0), None).w)
    assert float(jnp.max(jnp.abs(sim.similarity_tendency(w, ratio=1.5)))) < 1e-3
    assert float(jnp.max(jnp.abs(sim.similarity_tendency(w, ratio=0.5)))) > 1e-2


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="depth"):
        MixedClosureConfig(depth=0).build(0)
    with pytest.raises(ValueError, match="scales"):
        MixedClosureConfig(feature_scale=0.0).build(0)
    with pytest.raises(ValueError, match="features"):
        MixedClosureConfig(features=("smagorinsky",)).build(0)

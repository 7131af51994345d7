"""The learned spectral closure of a coarse Navier-Stokes solver: exactness when untrained, training, configs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coarse_runs import coarse_runs
from coupler.learners.online import OptimizerConfig
from coupler.learners.solver_correction import SolverCorrectionConfig, corrected_rollout, trajectory_loss
from coupler.learners.spectral_closure import ClosureWithCorrectionConfig, SpectralClosureConfig
from coupler.physics.navier_stokes import NavierStokes2D

COARSE = NavierStokes2D(n=16, dt=0.08, dealias="pad")
SMALL = SpectralClosureConfig(hidden=8, depth=1)


def _runs(seed: int, runs: int) -> tuple[jax.Array, jax.Array]:
    return coarse_runs(COARSE, seed, runs, (0.01, 0.03))


def test_an_untrained_closure_is_the_plain_solver() -> None:
    w0, p = _runs(0, 3)
    plain = corrected_rollout(COARSE, None, w0, p, 4)
    closed = corrected_rollout(COARSE, SMALL.build(0), w0, p, 4)
    np.testing.assert_allclose(np.asarray(closed), np.asarray(plain), atol=1e-6)
    nu_t, gain = SMALL.build(0).coefficients(COARSE, p)
    assert nu_t.shape == gain.shape == (3, 16, 9)
    # With the additive CNN on top (its last layer zero too), and one step at a time.
    both = ClosureWithCorrectionConfig(SMALL).build(0)
    np.testing.assert_allclose(np.asarray(corrected_rollout(COARSE, both, w0, p, 4)), np.asarray(plain), atol=1e-6)
    np.testing.assert_allclose(np.asarray(both.one_step(COARSE, w0, p)), np.asarray(plain[0]), atol=1e-6)


def _missing_viscosity_windows(seed: int, runs: int, k: int) -> dict[str, np.ndarray]:
    """Windows of the coarse solver run with 0.01 more viscosity than its label: a known eddy viscosity."""
    w0, labelled = _runs(seed, runs)
    traj = corrected_rollout(COARSE, None, w0, labelled.at[:, 0].add(0.01), k)
    field = jnp.concatenate([w0[:, None], jnp.swapaxes(traj, 0, 1)], axis=1)
    return {"field": np.asarray(field), "params": np.asarray(labelled)}


@pytest.mark.parametrize("unroll", [1, 3])
def test_training_learns_a_known_eddy_viscosity_and_generalises(unroll: int) -> None:
    train, test = _missing_viscosity_windows(1, 16, 3), _missing_viscosity_windows(2, 8, 3)
    trainer = SolverCorrectionConfig(
        COARSE, SMALL, OptimizerConfig(learning_rate=1e-2, warmup_steps=5, decay_steps=None), unroll=unroll
    )()
    held_out = (jnp.asarray(test["field"]), jnp.asarray(test["params"]))
    before = float(trajectory_loss(trainer.model, COARSE, *held_out, 3))
    rng = np.random.default_rng(0)
    for _ in range(60):
        rows = rng.integers(0, len(train["field"]), 8)
        trainer.step({k: v[rows] for k, v in train.items()})
    after = float(trajectory_loss(trainer.model, COARSE, *held_out, 3))
    # The missing viscosity is a diagonal linear term the closure can represent exactly: held-out
    # squared error at least 10x smaller.
    assert before > 1e-5 and after < 0.1 * before


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="depth"):
        SpectralClosureConfig(depth=0).build(0)
    with pytest.raises(ValueError, match="viscosity_scale"):
        SpectralClosureConfig(viscosity_scale=0.0).build(0)

"""The learned correction of a coarse Navier-Stokes solver: numerics, training, weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coupler.learners.online import OptimizerConfig
from coupler.learners.solver_correction import (
    CoarseCorrectionConfig,
    SolverCorrectionConfig,
    corrected_rollout,
    trajectory_loss,
)
from coupler.physics.coarse_graining import CoarseGrainedNavierStokes
from coupler.physics.navier_stokes import NavierStokes2D

COARSE = NavierStokes2D(n=16, dt=0.04)
SMALL = CoarseCorrectionConfig(width=8, depth=2)


def _windows(seed: int, runs: int, windows: int, k: int) -> dict[str, np.ndarray]:
    """``runs x windows`` coarse-grained windows of K+1 frames from a 32x32 fine run (16x16 coarse)."""
    fine = NavierStokes2D(n=32, dt=0.02)
    cg = CoarseGrainedNavierStokes(fine, coarse_n=16, substeps=2, window=k + 1, spinup=50)
    keys = jax.random.split(jax.random.key(seed), runs)
    params = jax.vmap(lambda key: fine.random_params(key, viscosity_range=(0.01, 0.02)))(keys)
    state = jax.vmap(cg.init)(keys, params)
    advance = jax.jit(jax.vmap(lambda s, p: jax.lax.fori_loop(0, k, lambda _, x: cg.step(x, p), s)))
    out = []
    for _ in range(windows):
        state = advance(state, params)
        out.append(np.asarray(state.frames))
    p = np.stack([np.asarray(params.viscosity), np.asarray(params.forcing_amplitude), np.asarray(params.drag)], -1)
    return {"field": np.concatenate(out), "params": np.tile(p, (windows, 1)).astype(np.float32)}


def test_plain_coarse_rollout_follows_the_taylor_green_solution() -> None:
    # The solver the correction lives in, batched: Taylor & Green (1937) decay exp(-(2 nu k^2 + alpha) t),
    # exact up to float32 round-off with the integrating factor (tolerance 1e-4 relative L2, as in
    # tests/physics/test_navier_stokes.py).
    w0 = COARSE.taylor_green(2, 1.0, 0.02, 0.1, 0.0).astype(jnp.float32)
    params = jnp.float32([[0.02, 0.0, 0.1]])
    coarse = NavierStokes2D(n=16, dt=0.04, forcing_wavenumber=0)  # unforced
    traj = jax.jit(lambda w: corrected_rollout(coarse, None, w, params, 50))(w0[None])
    exact = coarse.taylor_green(2, 1.0, 0.02, 0.1, 2.0)
    assert float(jnp.linalg.norm(traj[-1, 0] - exact) / jnp.linalg.norm(exact)) < 1e-4


def test_an_untrained_correction_is_the_plain_solver() -> None:
    data = _windows(0, 2, 1, 3)
    model = SMALL.build(0)
    w0, p = jnp.asarray(data["field"][:, 0]), jnp.asarray(data["params"])
    plain = corrected_rollout(COARSE, None, w0, p, 3)
    corrected = corrected_rollout(COARSE, model, w0, p, 3)
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(corrected))
    # And the coarse solver alone is not already the target (there is an error to learn).
    assert float(trajectory_loss(model, COARSE, jnp.asarray(data["field"]), p, 3)) > 1e-4


def _missing_drag_windows(seed: int, runs: int, k: int) -> dict[str, np.ndarray]:
    """Windows of the coarse solver with 0.5 more drag than the params it is labelled with.

    The correction then has a known, learnable target: per step, the missing
    factor ``exp(-0.5 dt) - 1 = -2 %`` of the field (linear in the coarse state).
    """
    keys = jax.random.split(jax.random.key(seed), runs)
    params = jax.vmap(lambda key: COARSE.random_params(key, viscosity_range=(0.01, 0.02)))(keys)
    w0 = jax.vmap(COARSE.init)(keys, params).w
    labelled = jnp.stack([params.viscosity, params.forcing_amplitude, params.drag], -1)
    true = labelled.at[:, 2].add(0.5)
    traj = corrected_rollout(COARSE, None, w0, true, k)
    field = jnp.concatenate([w0[:, None], jnp.swapaxes(traj, 0, 1)], axis=1)
    return {"field": np.asarray(field), "params": np.asarray(labelled, np.float32)}


@pytest.mark.parametrize("unroll", [1, 3])
def test_training_learns_a_known_missing_term_and_generalises(unroll: int) -> None:
    train, test = _missing_drag_windows(1, 32, 3), _missing_drag_windows(2, 8, 3)
    cfg = SolverCorrectionConfig(
        COARSE, SMALL, OptimizerConfig(learning_rate=1e-2, warmup_steps=5, decay_steps=None), unroll=unroll
    )
    trainer = cfg()
    held_out = (jnp.asarray(test["field"]), jnp.asarray(test["params"]))
    before = float(trajectory_loss(trainer.model, COARSE, *held_out, 3))
    rng = np.random.default_rng(0)
    for _ in range(60):
        rows = rng.integers(0, len(train["field"]), 8)
        trainer.step({k: v[rows] for k, v in train.items()})
    after = float(trajectory_loss(trainer.model, COARSE, *held_out, 3))
    # The plain solver's 3-step error is the missing drag (~2-6 % relative); a correction that learned
    # the linear term must remove most of it on held-out runs: require a 4x smaller squared error.
    assert before > 1e-4 and after < 0.25 * before
    assert trainer.steps_taken == 60 and len(trainer.loss_history) == 60


def test_weights_and_checkpoints_round_trip() -> None:
    data = _windows(3, 2, 1, 2)
    cfg = SolverCorrectionConfig(COARSE, SMALL, unroll=2)
    a, b = cfg(), cfg()
    a.warmup(data)
    assert a.steps_taken == 0
    a.step(data)
    b.set_weights(a.get_weights())
    for (pa, va), (pb, vb) in zip(sorted(a.get_weights().items()), sorted(b.get_weights().items())):
        assert pa == pb
    np.testing.assert_array_equal(
        np.asarray(jax.tree.leaves(a.get_weights())[0]), np.asarray(jax.tree.leaves(b.get_weights())[0])
    )
    c = cfg()
    c.restore(a.checkpoint())
    assert c.step(data) == pytest.approx(a.step(data), rel=1e-6)


def test_bad_batches_and_configs_are_refused() -> None:
    trainer = SolverCorrectionConfig(COARSE, SMALL, unroll=3)()
    field = np.zeros((2, 4, 16, 16), np.float32)
    with pytest.raises(KeyError, match="params"):
        trainer.step({"field": field})
    with pytest.raises(ValueError, match="unroll=3"):
        trainer.step({"field": field[:, :3], "params": np.ones((2, 3), np.float32)})
    with pytest.raises(ValueError, match="viscosity"):
        trainer.step({"field": field, "params": np.ones((2, 2), np.float32)})
    with pytest.raises(ValueError, match="unroll"):
        SolverCorrectionConfig(COARSE, SMALL, unroll=0)()
    with pytest.raises(ValueError, match="depth"):
        CoarseCorrectionConfig(depth=1).build(0)


def test_a_curriculum_lengthens_the_unroll_and_keeps_model_and_optimiser() -> None:
    data = _windows(4, 2, 1, 4)
    trainer = SolverCorrectionConfig(COARSE, SMALL, unroll=1)()
    trainer.step(data)
    weights = jax.tree.leaves(trainer.get_weights())
    trainer.set_unroll(4)
    # The same weights: the loss of the next step is the 4-step loss of the model the 1-step stage left.
    expected = float(trajectory_loss(trainer.model, COARSE, jnp.asarray(data["field"]), jnp.asarray(data["params"]), 4))
    assert trainer.step(data) == pytest.approx(expected, rel=1e-5)
    assert trainer.steps_taken == 2 and [s for s, _ in trainer.loss_history] == [1, 2]
    assert any(not np.array_equal(a, b) for a, b in zip(weights, jax.tree.leaves(trainer.get_weights())))
    with pytest.raises(ValueError, match="unroll=4"):
        trainer.step({**data, "field": data["field"][:, :4]})
    with pytest.raises(ValueError, match="unroll"):
        trainer.set_unroll(0)

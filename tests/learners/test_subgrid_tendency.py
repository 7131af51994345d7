"""The learned subgrid tendency inside a coarse Navier-Stokes solver: exact untrained, its wiring, training."""

from __future__ import annotations

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coarse_runs import coarse_runs
from coupler.learners.online import OptimizerConfig
from coupler.learners.solver_correction import SolverCorrectionConfig, corrected_rollout, trajectory_loss
from coupler.learners.subgrid_tendency import SubgridFitConfig, SubgridTendencyConfig, tendency_error
from coupler.physics.navier_stokes import NavierStokes2D, NavierStokesParams, NavierStokesState

COARSE = NavierStokes2D(n=16, dt=0.08, dealias="pad")
SMALL = SubgridTendencyConfig(width=8, depth=2)


def _runs(seed: int, runs: int) -> tuple[jax.Array, jax.Array]:
    return coarse_runs(COARSE, seed, runs, (0.01, 0.03))


def _step_with(w: jax.Array, p: jax.Array, tendency: jax.Array) -> jax.Array:
    """The coarse step of a batch with a given grid-space tendency, straight from ``step_with_closure``."""

    def one(w1: jax.Array, p1: jax.Array, t1: jax.Array) -> jax.Array:
        state = NavierStokesState(w1, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
        params = NavierStokesParams(p1[0], p1[1], p1[2])
        return COARSE.step_with_closure(state, params, jnp.zeros(()), jnp.ones(()), jnp.fft.rfft2(t1)).w

    return jax.vmap(one)(w, p, tendency)


def test_an_untrained_model_is_the_plain_solver_and_a_trained_one_adds_its_tendency() -> None:
    w0, p = _runs(0, 3)
    model = SMALL.build(0)
    plain = corrected_rollout(COARSE, None, w0, p, 4)
    np.testing.assert_allclose(np.asarray(corrected_rollout(COARSE, model, w0, p, 4)), np.asarray(plain), atol=1e-6)
    # Non-zero last layer: the step is step_with_closure with the CNN's tendency of the step's start.
    last = model.net.layers[-1]
    last.kernel.set_value(0.1 * jax.random.normal(jax.random.key(1), last.kernel.get_value().shape))
    t = model.tendency(w0, p)
    assert t.shape == w0.shape and float(jnp.max(jnp.abs(t))) > 1e-3
    np.testing.assert_allclose(np.asarray(model.one_step(COARSE, w0, p)), np.asarray(_step_with(w0, p, t)), atol=1e-5)
    roll = model.rollout(COARSE, w0, p, 2)
    np.testing.assert_allclose(np.asarray(roll[1]), np.asarray(model.one_step(COARSE, roll[0], p)), atol=1e-5)
    with pytest.raises(ValueError):
        SubgridTendencyConfig(tendency_scale=0.0).build()


def _known_tendency_windows(seed: int, runs: int, k: int) -> dict[str, np.ndarray]:
    """Windows of the coarse solver with a state-dependent tendency a 3x3 CNN can represent (0.5 x a 5-point Laplacian)."""
    w, p = _runs(seed, runs)
    frames = [w]
    for _ in range(k):
        lap = sum(jnp.roll(w, d, axis=a) for d in (-1, 1) for a in (1, 2)) - 4 * w
        w = _step_with(w, p, 0.5 * lap)
        frames.append(w)
    return {"field": np.asarray(jnp.stack(frames, 1)), "params": np.asarray(p)}


def test_training_through_the_solver_learns_a_known_tendency() -> None:
    train, test = _known_tendency_windows(1, 16, 3), _known_tendency_windows(2, 8, 3)
    trainer = SolverCorrectionConfig(
        COARSE, SMALL, OptimizerConfig(learning_rate=1e-2, warmup_steps=5, decay_steps=None), unroll=1
    )()
    held_out = (jnp.asarray(test["field"]), jnp.asarray(test["params"]))
    before = float(trajectory_loss(trainer.model, COARSE, *held_out, 3))
    rng = np.random.default_rng(0)
    for _ in range(150):
        rows = rng.integers(0, 16, 8)
        trainer.step({"field": train["field"][rows], "params": train["params"][rows]})
    after = float(trajectory_loss(trainer.model, COARSE, *held_out, 3))
    # Measured: the held-out 3-step loss falls about 185x; 10x leaves room for other seeds and platforms.
    assert after < 0.1 * before


def _known_tendency_pairs(seed: int, runs: int) -> dict[str, np.ndarray]:
    """(vorticity, 0.5 x its 5-point Laplacian) pairs: a tendency a 3x3 CNN can represent, and mirror-symmetric."""
    w, p = _runs(seed, runs)
    lap = sum(jnp.roll(w, d, axis=a) for d in (-1, 1) for a in (1, 2)) - 4 * w
    return {"field": np.asarray(jnp.stack([w, 0.5 * lap], 1)), "params": np.asarray(p)}


def test_the_a_priori_fit_learns_a_known_tendency_from_none() -> None:
    train, test = _known_tendency_pairs(1, 16), _known_tendency_pairs(2, 8)
    scale = float(np.sqrt(np.mean(train["field"][:, 1] ** 2)))
    model = SubgridTendencyConfig(width=8, depth=2, tendency_scale=scale)
    trainer = SubgridFitConfig(16, model, OptimizerConfig(learning_rate=1e-2, warmup_steps=5, decay_steps=None))()
    # Untrained, the CNN's last layer is zero: it predicts no tendency, exactly the plain solver's error.
    assert tendency_error(trainer.model, test["field"], test["params"]) == 1.0 == tendency_error(None, test["field"], test["params"])
    rng = np.random.default_rng(0)
    losses = [trainer.step({k: v[rng.integers(0, 16, 8)] for k, v in train.items()}) for _ in range(150)]
    after = tendency_error(trainer.model, test["field"], test["params"])
    # Measured: the held-out relative error falls from 1 to 0.03-0.04 (seeds 0, 1); 0.2 leaves room for other seeds and platforms.
    assert after < 0.2 and losses[-1] < 0.1 * losses[0] and trainer.steps_taken == 150


def test_the_a_priori_fit_resumes_exactly_with_its_reflections() -> None:
    data = _known_tendency_pairs(3, 8)
    cfg = SubgridFitConfig(16, SMALL, OptimizerConfig(learning_rate=1e-2, warmup_steps=2, decay_steps=None))
    batches = [{k: v[i : i + 4] for k, v in data.items()} for i in (0, 4, 2, 1)]
    a = cfg()
    for b in batches[:2]:
        a.step(b)
    saved = a.checkpoint()
    for b in batches[2:]:
        a.step(b)
    resumed = cfg()
    resumed.restore(saved)
    for b in batches[2:]:
        resumed.step(b)
    for x, y in zip(jax.tree.leaves(a.get_weights()), jax.tree.leaves(resumed.get_weights())):
        np.testing.assert_array_equal(x, y)
    # The reflections matter: without them the same steps end elsewhere.
    plain = replace(cfg, reflect=False)()
    for b in batches:
        plain.step(b)
    assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a.get_weights()), jax.tree.leaves(plain.get_weights())))


@pytest.mark.parametrize(
    "field, params, match",
    [
        (np.zeros((2, 3, 16, 16)), np.zeros((2, 3)), r"field \(B, 2, 16, 16\)"),
        (np.zeros((2, 2, 8, 8)), np.zeros((2, 3)), r"field \(B, 2, 16, 16\)"),
        (np.zeros((2, 2, 16, 16)), np.zeros((2, 2)), r"params \(2, 3\)"),
    ],
)
def test_the_a_priori_fit_refuses_batches_that_do_not_fit(field: np.ndarray, params: np.ndarray, match: str) -> None:
    trainer = SubgridFitConfig(16, SMALL)()
    with pytest.raises(ValueError, match=match):
        trainer.step({"field": field, "params": params})
    with pytest.raises(KeyError, match="params"):
        trainer.step({"field": np.zeros((2, 2, 16, 16))})
    with pytest.raises(ValueError, match="expected pair"):
        tendency_error(trainer.model, np.zeros((0, 2, 16, 16)), np.zeros((0, 3)))
    assert trainer.steps_taken == 0

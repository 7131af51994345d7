"""Learned interpolation inside the coarse spectral solver: constrained stencils, exact face velocities, conservation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coarse_runs import coarse_runs
from coupler.learners.learned_interpolation import (
    LearnedInterpolationConfig,
    face_values,
    face_velocities,
    flux_divergence_hat,
    lagrange_face_stencil,
    null_space_basis,
    stencil_offsets,
)
from coupler.learners.online import OptimizerConfig
from coupler.learners.solver_correction import SolverCorrectionConfig, corrected_rollout, trajectory_loss
from coupler.physics.navier_stokes import NavierStokes2D

COARSE = NavierStokes2D(n=16, dt=0.08, dealias="pad")
SMALL = LearnedInterpolationConfig(width=4, depth=2)


def test_the_four_point_face_stencil_is_the_cubic_interpolant() -> None:
    # The centred four-point Lagrange interpolant at the midpoint: (-1, 9, 9, -1) / 16 (exact in float64).
    np.testing.assert_allclose(lagrange_face_stencil(4), np.array([-1, 9, 9, -1]) / 16, rtol=0, atol=1e-15)
    p = stencil_offsets(6) - 0.5
    for degree in range(6):  # the six-point one reproduces polynomials up to degree 5 at the face
        assert abs(lagrange_face_stencil(6) @ p**degree - (0.0 if degree else 1.0)) < 1e-12


@pytest.mark.parametrize(("width", "order"), [(4, 0), (4, 1), (6, 1), (6, 2)])
def test_any_learned_stencil_keeps_the_stated_order(width: int, order: int) -> None:
    basis = null_space_basis(width, order)
    assert basis.shape == (width, width - order - 1)
    np.testing.assert_allclose(basis.T @ basis, np.eye(width - order - 1), atol=1e-12)
    # Coefficients = the interpolant + any null-space vector: they still sum to 1 (Kochkov's first-order
    # constraint) and reproduce every polynomial of degree <= order at the face exactly.
    theta = np.random.default_rng(0).normal(size=(20, width - order - 1)) * 3.0
    coefficients = lagrange_face_stencil(width) + theta @ basis.T
    np.testing.assert_allclose(coefficients.sum(axis=1), 1.0, atol=1e-12)
    p = stencil_offsets(width) - 0.5
    for degree in range(order + 1):
        np.testing.assert_allclose(coefficients @ p**degree, 0.0 if degree else 1.0, atol=1e-12)
    assert np.abs(coefficients @ p ** (order + 1)).max() > 1e-3  # and no more than that


def test_face_values_of_a_linear_field_are_exact_inside_the_wrap() -> None:
    # w = 2 + 0.5 x along x; a stencil with random null-space corrections (order 1) gives 2 + 0.5 (i + 1/2) at
    # every face whose stencil does not wrap around the periodic boundary.
    n, width = 12, 4
    i = np.arange(n, dtype=np.float32)
    w = jnp.asarray(np.broadcast_to((2.0 + 0.5 * i)[:, None], (n, n)))
    theta = np.random.default_rng(1).normal(size=(n, n, 2)).astype(np.float32)
    c = jnp.asarray(lagrange_face_stencil(width) + theta @ null_space_basis(width, 1).T, jnp.float32)
    faces = np.asarray(face_values(w, c, axis=-2))
    inside = slice(1, n - 2)  # offsets -1 .. 2 stay in the array
    np.testing.assert_allclose(faces[inside], np.broadcast_to((2.25 + 0.5 * i)[inside, None], faces[inside].shape), atol=1e-5)


def test_face_velocities_are_the_analytic_velocity_half_a_cell_over() -> None:
    # Taylor-Green: w = 2 a k cos(kx) cos(ky), psi = (a / k) cos(kx) cos(ky), u = psi_y, v = -psi_x.
    a, k = 1.5, 2
    w = COARSE.taylor_green(k, a, 0.0, 0.0, 0.0)
    u, v = face_velocities(COARSE, w[None])
    x, y = COARSE.grid()
    h = COARSE.dx / 2
    np.testing.assert_allclose(np.asarray(u[0]), np.asarray(-a * jnp.cos(k * (x + h)) * jnp.sin(k * y)), atol=1e-5)
    np.testing.assert_allclose(np.asarray(v[0]), np.asarray(a * jnp.sin(k * x) * jnp.cos(k * (y + h))), atol=1e-5)


def test_the_flux_divergence_conserves_the_mean_and_matches_the_difference_quotient() -> None:
    x, y = COARSE.grid()
    fx, fy = jnp.sin(x + COARSE.dx / 2) * jnp.cos(y), 0.3 * jnp.cos(2 * (y + COARSE.dx / 2))
    tend = flux_divergence_hat(COARSE, fx[None], fy[None] * jnp.ones_like(x))[0]
    assert abs(complex(tend[0, 0])) < 1e-4  # the mean vorticity does not move
    # One resolved mode each: the finite-volume divergence of sin(x + h) is (sin(x + h) - sin(x - h)) / dx.
    h = COARSE.dx / 2
    expected = -((jnp.sin(x + h) - jnp.sin(x - h)) * jnp.cos(y) + 0.3 * (jnp.cos(2 * (y + h)) - jnp.cos(2 * (y - h)))) / COARSE.dx
    np.testing.assert_allclose(np.asarray(jnp.fft.irfft2(tend, s=(16, 16))), np.asarray(expected), atol=1e-4)


def _runs(seed: int, runs: int) -> tuple[jax.Array, jax.Array]:
    return coarse_runs(COARSE, seed, runs, (0.02, 0.04))


def test_an_untrained_model_is_the_plain_solver_and_keeps_the_mean() -> None:
    w0, p = _runs(0, 3)
    model = SMALL.build(0)
    np.testing.assert_allclose(
        np.asarray(corrected_rollout(COARSE, model, w0, p, 4)), np.asarray(corrected_rollout(COARSE, None, w0, p, 4)), atol=1e-6
    )
    # With non-zero weights the correction moves the field but never its mean (a flux divergence).
    last = model.layers[-1]
    last.kernel.set_value(0.1 * jax.random.normal(jax.random.key(3), last.kernel.get_value().shape))
    w1 = model.one_step(COARSE, w0, p)
    assert float(jnp.max(jnp.abs(w1 - corrected_rollout(COARSE, None, w0, p, 1)[0]))) > 1e-3
    np.testing.assert_allclose(np.asarray(jnp.mean(w1, axis=(-2, -1))), 0.0, atol=1e-5)


def test_unrolled_training_recovers_a_known_interpolation_correction() -> None:
    # Targets from a teacher: the same network with a non-zero last layer, i.e. a correction the student
    # (zero last layer, same hidden layers) can represent exactly. Held-out error at least 5x smaller.
    w0, p = _runs(1, 12)
    teacher = SMALL.build(0)
    last = teacher.layers[-1]
    last.kernel.set_value(0.2 * jax.random.normal(jax.random.key(4), last.kernel.get_value().shape))
    traj = corrected_rollout(COARSE, teacher, w0, p, 3)
    field = jnp.concatenate([w0[:, None], jnp.swapaxes(traj, 0, 1)], axis=1)
    train = {"field": np.asarray(field[:8]), "params": np.asarray(p[:8])}
    held_out = (field[8:], p[8:])
    trainer = SolverCorrectionConfig(COARSE, SMALL, OptimizerConfig(learning_rate=1e-2, warmup_steps=5, decay_steps=None), unroll=3)()
    before = float(trajectory_loss(trainer.model, COARSE, *held_out, 3))
    for _ in range(40):
        trainer.step(train)
    after = float(trajectory_loss(trainer.model, COARSE, *held_out, 3))
    assert before > 1e-5 and after < 0.2 * before


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="even width"):
        stencil_offsets(3)
    with pytest.raises(ValueError, match="free coefficient"):
        LearnedInterpolationConfig(stencil=4, order=3).build(0)
    with pytest.raises(ValueError, match="depth"):
        LearnedInterpolationConfig(depth=1).build(0)

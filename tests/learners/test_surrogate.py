"""Tests of ``coupler.learners.surrogate`` and ``coupler.learners.training``.

Tolerances: the surrogate computes in float32, so identities that hold exactly
in real arithmetic (linearity, scale equivariance) are checked to
``1e-5`` relative to the output scale, a few hundred ulps
(``EPS32 = 2**-23 ~ 1.2e-7``) for a handful of chained convolutions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from coupler.learners.surrogate import ConvSurrogate
from coupler.learners.training import eval_step, make_optimizer, predict, relative_l2, train_step
from coupler.physics import Heat2D, HeatParams

RTOL = 1e-5


# Test randomness comes from numpy, and the models share one small set of weight
# shapes: each new shape of a JAX random draw is a separate (slow) XLA compile.


def _tiny(**kwargs) -> ConvSurrogate:
    return ConvSurrogate(width=4, depth=1, rngs=nnx.Rngs(0), **kwargs)


def _with_random_projection(model: ConvSurrogate, seed: int = 1) -> ConvSurrogate:
    """The projection starts at zero (persistence); give it values so the body shows."""
    kernel = model.project.kernel
    kernel.set_value(jnp.asarray(0.1 * _fields(seed, kernel.get_value().shape)))
    return model


def _fields(seed: int, shape: tuple[int, ...]) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


@pytest.mark.parametrize(("shape", "patch"), [((3, 17, 20), 2), ((2, 9, 11), 1)])
def test_output_shape_and_untrained_model_is_persistence(shape, patch):
    model = _tiny(patch=patch)
    u = _fields(0, shape)
    out = predict(model, u, jnp.full((shape[0], 1), 0.5))
    assert out.shape == shape
    assert out.dtype == jnp.float32
    # The last convolution is zero-initialised: an untrained surrogate predicts "no change".
    np.testing.assert_array_equal(np.asarray(out), np.asarray(u))


def test_linear_surrogate_is_linear_in_u_and_depends_on_params():
    model = _with_random_projection(_tiny())
    u1, u2 = _fields(1, (2, 16, 16)), _fields(2, (2, 16, 16))
    p = jnp.array([[0.3], [0.9]])
    lhs = predict(model, 2.5 * u1 - u2, p)
    rhs = 2.5 * predict(model, u1, p) - predict(model, u2, p)
    np.testing.assert_allclose(lhs, rhs, rtol=0, atol=RTOL * float(jnp.abs(rhs).max()))
    np.testing.assert_array_equal(np.asarray(predict(model, jnp.zeros_like(u1), p)), 0.0)
    # FiLM: another diffusivity gives another operator.
    other = predict(model, u1, p[::-1])
    assert float(jnp.abs(other - predict(model, u1, p)).max()) > 1e-3


def test_nonlinear_surrogate_is_scale_equivariant():
    model = _with_random_projection(_tiny(activation="gelu"))
    u = _fields(3, (2, 16, 16))
    p = jnp.array([[0.3], [0.9]])
    base = predict(model, u, p)
    for c in (1e-3, 7.0):
        scaled = predict(model, c * u, p)
        np.testing.assert_allclose(scaled, c * base, rtol=0, atol=RTOL * c * float(jnp.abs(base).max()))


def test_surrogate_can_be_exactly_one_dirichlet_ftcs_step():
    """Zero padding is the Dirichlet boundary and FiLM gains carry the diffusivity.

    With hand-set weights (two live channels, one block, no patching) the surrogate is
    ``u + a (dt / dx^2) * 5-point stencil(u)`` with zeros outside the grid, i.e.
    exactly one ``Heat2D.step``; agreement to float32 round-off (``1e-6``,
    fields of order one) at every cell, the boundary cells included.
    """
    sim = Heat2D(n=12, modes=3)
    model = _tiny(patch=1)  # width 4: channels 2 and 3 stay zero
    stencil = np.zeros((3, 3), np.float32)
    stencil[1, :] = stencil[:, 1] = 1.0
    stencil[1, 1] = -4.0
    lift = np.zeros((3, 3, 1, 4), np.float32)
    lift[1, 1, 0, :2] = 1.0  # two copies of u
    block = np.zeros((3, 3, 4, 4), np.float32)
    block[:, :, 0, 1] = stencil * sim.dt / sim.dx**2  # channel 1 += gain * stencil(channel 0)
    project = np.zeros((3, 3, 4, 1), np.float32)
    project[1, 1, :2, 0] = [-1.0, 1.0]  # increment = channel 1 - channel 0
    model.lift.kernel.set_value(jnp.asarray(lift))
    model.blocks[0].kernel.set_value(jnp.asarray(block))
    model.project.kernel.set_value(jnp.asarray(project))
    model.film.affine.kernel.set_value(jnp.array([[0.0, 1.0, 0.0, 0.0]]))  # gains (0, a, 0, 0)
    model.film.affine.bias.set_value(jnp.zeros(4))

    # Params as Heat2D.random_params draws them (numpy here: see the note on compiles).
    rng = np.random.default_rng(7)
    params = HeatParams(
        diffusivity=jnp.asarray(rng.uniform(0.25, 1.0, 3), jnp.float32),
        amplitudes=jnp.asarray(rng.standard_normal((3, 3, 3)), jnp.float32),
    )
    state = jax.vmap(sim.init, in_axes=(None, 0))(jax.random.key(0), params)
    expected = jax.vmap(sim.step)(state, params).u
    u = state.u
    got = predict(model, u, params.diffusivity[:, None])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert float(jnp.abs(got - u).max()) > 1e-2  # and it is not the identity


def test_strict_dtype_promotion():
    model = _tiny()
    with jax.numpy_dtype_promotion("strict"):
        out = predict(model, jnp.ones((1, 8, 8), jnp.float32), jnp.ones((1, 1), jnp.float32))
    assert out.dtype == jnp.float32


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(width=0),
        dict(depth=0),
        dict(kernel_size=4),
        dict(patch=0),
        dict(activation="no_such_fn"),
        dict(params_scale=0.0),
    ],
)
def test_bad_hyperparameters_raise(kwargs):
    with pytest.raises(ValueError):
        ConvSurrogate(**kwargs, rngs=nnx.Rngs(0))


def test_bad_input_shapes_raise():
    model = _tiny()
    with pytest.raises(ValueError, match=r"params \(B, 1\)"):
        model(jnp.ones((2, 8, 8)), jnp.ones((2, 2)))
    with pytest.raises(ValueError, match=r"u \(8, 8\)"):
        model(jnp.ones((8, 8)), jnp.ones((1, 1)))


def test_relative_l2_hand_computed():
    target = jnp.array([[[1.0, 2.0], [2.0, 0.0]], [[3.0, 0.0], [0.0, 4.0]]])  # norms 3 and 5
    pred = jnp.array([[[1.0, 2.0], [2.0, 3.0]], [[3.0, 0.0], [0.0, 5.0]]])  # errors 3 and 1
    np.testing.assert_allclose(relative_l2(pred, target), [1.0, 0.2], rtol=1e-6)
    with pytest.raises(ValueError):
        relative_l2(pred, target[:, :1])


def test_make_optimizer_applies_warmup_and_decay():
    """With a constant unit gradient Adam moves every weight by exactly the learning rate.

    (``m_hat = v_hat = 1``, so the update is ``lr / (1 + eps)``, ``eps = 1e-8``.)
    """
    model = _tiny()
    opt = make_optimizer(model, 1e-2, warmup_steps=10, decay_steps=20, final_learning_rate_factor=0.1, clip_norm=None)
    grads = jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param))
    update = nnx.jit(lambda opt, model, grads: opt.update(model, grads))
    moves = []
    for _ in range(40):
        before = float(model.film.affine.bias.get_value()[0])
        update(opt, model, grads)
        moves.append(before - float(model.film.affine.bias.get_value()[0]))
    assert moves[0] == 0.0  # warm-up starts at zero
    assert moves[5] == pytest.approx(0.5e-2, rel=1e-4)
    assert moves[10] == pytest.approx(1e-2, rel=1e-4)  # peak after warm-up
    assert moves[39] == pytest.approx(1e-3, rel=1e-4)  # floor after the cosine decay
    with pytest.raises(ValueError):
        make_optimizer(model, 0.0)


def test_train_step_fits_a_fixed_batch():
    """Sixty steps on one batch of a known linear map cut the loss at least tenfold."""
    model = _tiny()
    opt = make_optimizer(model, 1e-2, warmup_steps=0, decay_steps=None)
    u = _fields(4, (8, 8, 8))
    # Target: a 5-point smoothing, zero outside the domain, scaled by the parameter.
    padded = jnp.pad(u, ((0, 0), (1, 1), (1, 1)))
    lap = padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2] + padded[:, 1:-1, 2:] - 4 * u
    a = jnp.linspace(0.2, 1.0, 8)[:, None]
    batch = {"input": u, "target": u + 0.1 * a[:, :, None] * lap, "params": a}
    first = float(train_step(model, opt, batch))
    for _ in range(59):
        last = float(train_step(model, opt, batch))
    assert last < first / 10
    err = eval_step(model, batch)
    assert err.shape == (8,)
    assert float(jnp.mean(err**2)) < first / 10

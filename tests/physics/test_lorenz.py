"""Lorenz-96 and Lorenz-63 against exact invariants and published statistics.

All runs are float32 (JAX's default); tolerances cover float32 round-off,
finite averaging time and the rounding of the published figures.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coupler.physics.assimilation_model import AssimilationModel, Lorenz63Model, Lorenz96Model, VorticityModel
from coupler.physics.lorenz import Lorenz63, Lorenz96, Lorenz96Params, rk4
from coupler.physics.navier_stokes import NavierStokes2D, NavierStokesParams

F8 = Lorenz96Params(forcing=jnp.asarray(8.0))


def leading_lyapunov(flow: Callable[[jax.Array], jax.Array], x: jax.Array, steps: int, dt: float, eps: float = 1e-3) -> float:
    """Benettin's two-trajectory estimate: renormalise the separation to ``eps`` every step."""
    d = jax.random.normal(jax.random.key(1), x.shape, x.dtype)
    d = eps * d / jnp.linalg.norm(d)

    def body(carry: tuple[jax.Array, jax.Array, jax.Array], _: None) -> tuple[tuple[jax.Array, jax.Array, jax.Array], None]:
        a, b, total = carry
        a, b = flow(a), flow(b)
        dist = jnp.linalg.norm(b - a)
        return (a, a + (b - a) * (eps / dist), total + jnp.log(dist / eps)), None

    (_, _, total), _ = jax.jit(lambda x0: jax.lax.scan(body, (x0, x0 + d, jnp.zeros((), x.dtype)), None, length=steps))(x)
    return float(total) / (steps * dt)


@pytest.fixture(scope="module")
def l96_attractor() -> jax.Array:
    """A Lorenz-96 (n=40, F=8) state on the attractor (10 time units after the rest state)."""
    sim = Lorenz96()
    return jax.jit(lambda s: sim.advance(s, F8, 200))(sim.init(jax.random.key(0), F8)).x


def test_advection_conserves_energy_exactly() -> None:
    # d/dt (|x|^2 / 2) = sum_i x_i (x_{i+1} - x_{i-2}) x_{i-1} telescopes to 0 on a ring:
    # exact for any state, so only float32 round-off of the sum remains.
    x = 4.0 * jax.random.normal(jax.random.key(3), (16, 40))
    terms = x * Lorenz96.advection(x)
    rate = jnp.sum(terms, axis=-1)
    scale = jnp.sum(jnp.abs(terms), axis=-1)
    assert float(jnp.max(jnp.abs(rate) / scale)) < 1e-5


def test_rk4_of_advection_keeps_energy_to_fourth_order() -> None:
    # Without forcing and damping the energy is invariant; RK4's error per unit time is O(dt^4).
    x0 = 3.0 * jax.random.normal(jax.random.key(4), (40,))
    dt, steps = 0.002, 500
    x = jax.jit(lambda x: jax.lax.fori_loop(0, steps, lambda _, z: rk4(Lorenz96.advection, z, dt), x))(x0)
    e0, e1 = float(jnp.sum(x0**2)), float(jnp.sum(x**2))
    assert abs(e1 - e0) / e0 < 1e-5


def test_l96_f8_climatology_matches_lorenz_emanuel(l96_attractor: jax.Array) -> None:
    # Lorenz & Emanuel (1998, J. Atmos. Sci. 55, 399-414): at F = 8 each X_j has
    # climatological mean 2.3 and standard deviation 3.6. 500 time units x 40
    # variables; tolerance 0.1 covers the two-digit rounding and sampling error.
    sim = Lorenz96()

    def body(x: jax.Array, _: None) -> tuple[jax.Array, jax.Array]:
        x = sim.flow(x, 8.0)
        return x, x

    _, xs = jax.jit(lambda x: jax.lax.scan(body, x, None, length=10000))(l96_attractor)
    assert abs(float(xs.mean()) - 2.3) < 0.1
    assert abs(float(xs.std()) - 3.6) < 0.1


def test_l96_f8_leading_lyapunov_exponent(l96_attractor: jax.Array) -> None:
    # Leading exponent of L96 n=40, F=8: about 1.7 per time unit (Lorenz & Emanuel
    # 1998 give an error-doubling time of about 2.1 days = 0.42 units, ln 2 / 0.42
    # = 1.65). 200 time units; tolerance 10 %.
    sim = Lorenz96()
    lam = leading_lyapunov(lambda z: sim.flow(z, 8.0), l96_attractor, steps=4000, dt=sim.dt)
    assert lam == pytest.approx(1.7, rel=0.1)


def test_l63_leading_lyapunov_exponent() -> None:
    # Sprott (2003), Chaos and Time-Series Analysis, table A.1: 0.9056 for
    # sigma=10, rho=28, beta=8/3. 500 time units; tolerance 5 %.
    sim, p = Lorenz63(), Lorenz63.classic()
    x = jax.jit(lambda s: sim.advance(s, p, 2000))(sim.init(jax.random.key(0), p)).x
    lam = leading_lyapunov(lambda z: sim.flow(z, p), x, steps=50000, dt=sim.dt)
    assert lam == pytest.approx(0.9056, rel=0.05)


def test_l63_fixed_point_is_stationary() -> None:
    # C+ = (sqrt(b(r-1)), sqrt(b(r-1)), r-1) is an exact equilibrium.
    p = Lorenz63.classic()
    c = float(np.sqrt(8.0 / 3.0 * 27.0))
    assert float(jnp.max(jnp.abs(Lorenz63.tendency(jnp.asarray([c, c, 27.0]), p)))) < 1e-4


def test_l96_is_vmappable_and_counts_time() -> None:
    sim = Lorenz96(n=8)
    params = Lorenz96Params(forcing=jnp.asarray([6.0, 8.0, 10.0]))
    states = jax.vmap(sim.init)(jax.random.split(jax.random.key(2), 3), params)
    batched = jax.vmap(lambda s, p: sim.advance(s, p, 7))(states, params)
    for i in range(3):
        one = sim.advance(jax.tree.map(lambda a: a[i], states), Lorenz96Params(params.forcing[i]), 7)
        np.testing.assert_allclose(np.asarray(batched.x[i]), np.asarray(one.x), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(batched.t), 7 * sim.dt, rtol=1e-6)
    assert sim.observe(batched)["x"].shape == (3, 8)


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="n >= 4"):
        Lorenz96(n=3)
    with pytest.raises(ValueError, match="dt > 0"):
        Lorenz63(dt=0.0)


def test_assimilation_models_forecast_one_observation_interval() -> None:
    # The model protocol's forecast is `steps` of the simulators' own steps.
    l96 = Lorenz96Model(forcing=8.0, steps=3)
    x = l96.initial_state(jax.random.key(0))
    expected = x
    for _ in range(3):
        expected = Lorenz96().flow(expected, 8.0)
    np.testing.assert_allclose(np.asarray(l96.forecast(x)), np.asarray(expected), rtol=1e-6)
    assert l96.grid == (40,) and abs(l96.interval - 0.15) < 1e-12

    l63 = Lorenz63Model()
    z = l63.initial_state(jax.random.key(1))
    ref = Lorenz63(0.01).advance(Lorenz63(0.01).init(jax.random.key(1), Lorenz63.classic()), Lorenz63.classic(), 25).x
    np.testing.assert_allclose(np.asarray(l63.forecast(z)), np.asarray(ref), rtol=1e-5)
    assert abs(l63.interval - 0.25) < 1e-12

    field = VorticityModel(n=16, steps=2)
    w = field.initial_state(jax.random.key(2))
    sim = NavierStokes2D(n=16, dt=field.dt)
    p = NavierStokesParams(jnp.asarray(0.01), jnp.asarray(1.0), jnp.asarray(0.1))
    ref_w = sim.advance(sim.init(jax.random.key(2), p), p, 2).w
    np.testing.assert_allclose(np.asarray(field.forecast(w)), np.asarray(ref_w).reshape(-1), atol=1e-5)
    assert field.grid == (16, 16) and w.shape == (256,)
    for model in (l96, l63, field):
        assert isinstance(model, AssimilationModel)
    with pytest.raises(ValueError, match="steps"):
        Lorenz96Model(steps=0)


def test_the_vorticity_model_forecasts_a_float64_state_in_float64() -> None:
    """Under x64 the forecast keeps the ensemble's precision: a perturbation of 1e-9 (far below float32's
    resolution of these O(1) values, where it would round away) moves the forecast, linearly (difference
    quotients at 1e-9 and 1e-7 agree to 1e-3: the rounding error of the smaller one is about 1e-16 / 1e-9)."""
    field = VorticityModel(n=16, steps=2)
    with jax.enable_x64(True):
        x = field.initial_state(jax.random.key(2)).astype(jnp.float64)
        d = jax.random.normal(jax.random.key(3), x.shape, jnp.float64)
        base = field.forecast(x)
        assert base.dtype == jnp.float64
        small = np.asarray(field.forecast(x + 1e-9 * d) - base) / 1e-9
        large = np.asarray(field.forecast(x + 1e-7 * d) - base) / 1e-7
    assert np.abs(small).max() > 0.1
    np.testing.assert_allclose(small, large, rtol=0, atol=1e-3 * np.abs(large).max())

"""GrayScott against closed-form solutions: steady states, exact diffusion of a Fourier mode, regimes."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coupler.physics.gray_scott import (
    GrayScott,
    GrayScottParams,
    GrayScottState,
    params_from_vector,
    pattern_amplitude,
    run_amplitude,
)


def _uniform(sim: GrayScott, u: float, v: float) -> GrayScottState:
    full = jnp.ones((sim.n, sim.n), jnp.float32)
    return GrayScottState(u=u * full, v=v * full, t=jnp.zeros((), jnp.float32), step=jnp.zeros((), jnp.int32))


def _params(f: float, k: float) -> GrayScottParams:
    return GrayScottParams(feed=jnp.float32(f), kill=jnp.float32(k))


@pytest.mark.parametrize(("feed", "kill"), [(0.04, 0.055), (0.03, 0.05), (0.08, 0.06)])
def test_closed_form_homogeneous_states_are_fixed_points(feed: float, kill: float) -> None:
    # Every state from homogeneous_states (u, v solving F(1-u) = uv^2 = (F+k)v) must not move:
    # the Laplacian of a constant is 0 and both reaction terms vanish. float32 rounding only.
    sim = GrayScott(n=8)
    states = sim.homogeneous_states(feed, kill)
    assert len(states) == 3  # left of the saddle-node line k = sqrt(F)/2 - F
    for u, v in states:
        s = sim.advance(_uniform(sim, u, v), _params(feed, kill), 200)
        np.testing.assert_allclose(np.asarray(s.u), u, atol=2e-5)
        np.testing.assert_allclose(np.asarray(s.v), v, atol=2e-5)


def test_only_the_trivial_state_right_of_the_saddle_node_line() -> None:
    feed = 0.04
    kill_sn = math.sqrt(feed) / 2 - feed  # 0.06 (Pearson 1993, Fig. 1's saddle-node curve)
    assert len(GrayScott.homogeneous_states(feed, kill_sn - 1e-4)) == 3
    assert GrayScott.homogeneous_states(feed, kill_sn + 1e-4) == [(1.0, 0.0)]
    with pytest.raises(ValueError, match="F > 0"):
        GrayScott.homogeneous_states(0.0, 0.05)


def test_pure_diffusion_of_a_fourier_mode_matches_the_exact_discrete_and_continuous_decay() -> None:
    # With F = k = 0 and v = 0 the u equation is du/dt = Du lap(u). A periodic mode cos(2 pi p x / n)
    # is an eigenvector of the 5-point Laplacian with eigenvalue -4 sin^2(pi p / n), so forward Euler
    # multiplies its amplitude by (1 - 4 Du dt sin^2(pi p / n)) per step, exactly.
    sim = GrayScott(n=32)
    p, steps, eps = 1, 300, 0.1
    x = jnp.arange(sim.n)
    mode = jnp.cos(2 * jnp.pi * p * x / sim.n)[:, None] * jnp.ones((1, sim.n))
    s0 = _uniform(sim, 1.0, 0.0)._replace(u=(1.0 + eps * mode).astype(jnp.float32))
    s = sim.advance(s0, _params(0.0, 0.0), steps)
    factor = (1 - 4 * sim.diffusion_u * sim.dt * math.sin(math.pi * p / sim.n) ** 2) ** steps
    np.testing.assert_allclose(np.asarray(s.u), np.asarray(1.0 + eps * factor * mode), atol=1e-5)
    # And the continuous decay rate Du (2 pi p / n)^2 of exp(-Du k^2 t), to the scheme's leading
    # relative error (k dx)^2 / 12 + Du k^2 dt / 2 = 0.33 % + 0.40 % for p = 1, n = 32: within 1 %.
    rate_scheme = -math.log(factor) / (steps * sim.dt)
    rate_exact = sim.diffusion_u * (2 * math.pi * p / sim.n) ** 2
    assert abs(rate_scheme - rate_exact) / rate_exact < 0.01
    assert float(s.t) == pytest.approx(steps * sim.dt)


def test_pattern_amplitude_separates_regimes() -> None:
    # Pearson's pattern region (F = 0.04, k = 0.06: labyrinthine stripes) keeps a pattern; far right of
    # the saddle-node line (k = 0.075 > sqrt(F)/2 - F) the seed decays to the uniform (1, 0) state.
    sim = GrayScott(n=32, seed_fraction=0.5)
    run = jax.jit(jax.vmap(lambda x: run_amplitude(sim, x, 4000)))
    amp = np.asarray(run(jnp.array([[0.04, 0.06], [0.04, 0.075]], jnp.float32)))
    assert amp[0] > 0.05, amp
    assert amp[1] < 1e-4, amp


def test_vmapped_runs_equal_single_runs_and_blow_ups_give_nan() -> None:
    sim = GrayScott(n=12)
    xs = jnp.array([[0.03, 0.055], [0.05, 0.063], [0.02, 0.05]], jnp.float32)
    batched = np.asarray(jax.jit(jax.vmap(lambda x: run_amplitude(sim, x, 300)))(xs))
    one = jax.jit(lambda x: run_amplitude(sim, x, 300))
    single = [float(one(x)) for x in xs]
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-7)
    # A feed rate far outside the model's range makes forward Euler diverge: the QoI says so (NaN/inf).
    assert not np.isfinite(float(one(jnp.array([50.0, 0.05], jnp.float32))))


def test_init_is_pearsons_seed_and_observe_publishes_both_fields() -> None:
    sim = GrayScott(n=16, noise=0.0)
    s = sim.init(jax.random.key(0), params_from_vector(jnp.array([0.04, 0.06])))
    u, v = np.asarray(s.u), np.asarray(s.v)
    assert u[8, 8] == 0.5 and v[8, 8] == 0.25 and u[0, 0] == 1.0 and v[0, 0] == 0.0
    assert set(sim.observe(s)) == {"u", "v"}
    # Zero up to float32 rounding of the mean of 256 values: |error| <= (n - 1) * u * sum|v| / n, about
    # 3e-6 here (u = 2**-24; recursive summation, Higham, Accuracy and Stability of Numerical Algorithms,
    # 2nd ed., section 4.2), and the deviations from it are of that size.
    # XLA's summation order varies with the machine: CI once got 4.8e-7 where this VM gets 0.
    assert float(pattern_amplitude(_uniform(sim, 0.3, 0.2))) == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"n": 3}, "n >= 4"), ({"diffusion_u": 0.0}, "> 0"), ({"dt": 3.0}, "stable"), ({"seed_fraction": 1.0}, "seed_fraction")],
)
def test_bad_configuration_is_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GrayScott(**kwargs)


def test_per_run_diffusivity_decays_a_fourier_mode_at_its_exact_rate() -> None:
    # As the fixed-Du test above, with Du = 0.05 given per run (the simulator's own is 0.21): forward
    # Euler multiplies mode p by (1 - 4 Du dt sin^2(pi p / n)) per step, exactly (float32 rounding only).
    sim = GrayScott(n=16)
    du, p, steps, eps = 0.05, 2, 200, 0.1
    x = jnp.arange(sim.n)
    mode = jnp.cos(2 * jnp.pi * p * x / sim.n)[:, None] * jnp.ones((1, sim.n))
    s0 = _uniform(sim, 1.0, 0.0)._replace(u=(1.0 + eps * mode).astype(jnp.float32))
    s = sim.advance(s0, params_from_vector(jnp.array([0.0, 0.0, du, 0.1])), steps)
    factor = (1 - 4 * du * sim.dt * math.sin(math.pi * p / sim.n) ** 2) ** steps
    np.testing.assert_allclose(np.asarray(s.u), np.asarray(1.0 + eps * factor * mode), atol=1e-5)


def test_a_vector_with_the_simulators_own_values_runs_the_same_as_the_short_one() -> None:
    sim = GrayScott(n=8, seed_fraction=0.5)
    full = jnp.array([0.04, 0.06, sim.diffusion_u, sim.diffusion_v, sim.seed_fraction, 0.25], jnp.float32)
    a = float(run_amplitude(sim, full[:2], 100))
    b = float(run_amplitude(sim, full, 100))
    assert a == pytest.approx(b, rel=1e-5, abs=1e-7)
    with pytest.raises(ValueError, match="2 to 6 entries"):
        params_from_vector(jnp.zeros(7))


def test_per_run_seed_sets_the_square_and_its_concentration() -> None:
    # seed_fraction 0.5 of n = 16: half-width round(0.5 * 16 / 2) = 4 cells, so |i - 8| < 4 is 7 cells a side.
    sim = GrayScott(n=16, noise=0.0)
    s = sim.init(jax.random.key(0), params_from_vector(jnp.array([0.04, 0.06, 0.2, 0.1, 0.5, 0.4])))
    v, u = np.asarray(s.v), np.asarray(s.u)
    assert int((v > 0).sum()) == 49 and v.max() == pytest.approx(0.4) and u.min() == pytest.approx(0.2)

"""Numerical tests of ``coupler.physics.heat.Heat2D`` (FTCS heat equation).

Every tolerance below is stated next to its source. The references are the
standard eigenmode (von Neumann) analysis of the forward-time centred-space
scheme, e.g. R. J. LeVeque, *Finite Difference Methods for Ordinary and Partial
Differential Equations* (SIAM, 2007), ch. 9 (the heat equation), sec. 9.6-9.7:

* ``sin(m pi x) sin(l pi y)`` sampled on the grid is an eigenvector of the
  5-point Laplacian with eigenvalue ``-lambda_h``,
  ``lambda_h = (4 / dx^2) (sin^2(m pi dx / 2) + sin^2(l pi dx / 2))``, so one
  FTCS step multiplies it by exactly ``g = 1 - dt a lambda_h``;
* expanding ``N log g`` against the continuous rate
  ``lambda = pi^2 (m^2 + l^2)`` gives the leading-order error of a mode at time
  ``T``::

      |u - u_exact| ~ exp(-a lambda T) T a pi^4 dx^2
                      |(m^4 + l^4) / 12 - (cfl a / a_max) (m^2 + l^2)^2 / 2|

  (first term: the Laplacian's truncation error; second: forward Euler's
  ``dt lambda^2 / 2`` with ``dt = cfl dx^2 / a_max``), i.e. second order in
  ``dx`` when ``dt`` is tied to ``dx^2``;
* ``|g| <= 1`` for every mode when ``a dt / dx^2 <= 1/4``, and the sine modes are
  orthogonal on the grid, so the discrete L2 norm cannot grow.

The simulator state is float32 (``init`` casts), so round-off allowances use
``EPS32 = 2**-23``: a forward-Euler step of a contraction adds at most a few ulps
of ``max|u|`` and does not amplify earlier errors, so after ``N`` steps the
accumulated round-off is bounded by ``N * EPS32 * max|u0|`` (the worst-case linear
bound of e.g. N. J. Higham, *Accuracy and Stability of Numerical Algorithms*,
2nd ed., 2002, ch. 3); in practice it grows like ``sqrt(N)``.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coupler.physics.heat import Heat2D, HeatParams, HeatState

EPS32 = float(np.finfo(np.float32).eps)  # 2**-23 ~ 1.19e-7

# Final time of the mode tests: long enough for a ~60% (slow mode) to ~99.8%
# (fast mode) decay, short enough that n = 63 needs only 1024 steps.
T_FINAL = 0.05

# All mode tests use modes=3 so that (1, 1) and (2, 3) are one-hot (3, 3)
# amplitude arrays of one shape: one compilation per (n, steps).
MODES = 3


@functools.cache
def _jit_advance(sim: Heat2D):
    # Heat2D is a frozen (hashable) dataclass: one jitted advance per simulator.
    return jax.jit(sim.advance, static_argnums=2)


def _mode_params(m: int, l: int, diffusivity: float) -> HeatParams:
    amplitudes = np.zeros((MODES, MODES), np.float32)
    amplitudes[m - 1, l - 1] = 1.0
    return HeatParams(diffusivity=jnp.float32(diffusivity), amplitudes=jnp.asarray(amplitudes))


def _discrete_factor(sim: Heat2D, m: int, l: int, diffusivity: float) -> float:
    """Exact per-step FTCS amplification of mode (m, l), in float64."""
    dx = sim.dx
    lam_h = (4.0 / dx**2) * (math.sin(m * math.pi * dx / 2) ** 2 + math.sin(l * math.pi * dx / 2) ** 2)
    return 1.0 - sim.dt * diffusivity * lam_h


def _predicted_error(sim: Heat2D, m: int, l: int, diffusivity: float, t: float) -> float:
    """Leading-order max-norm error of FTCS for one mode (module docstring)."""
    decay = math.exp(-diffusivity * math.pi**2 * (m**2 + l**2) * t)
    space = (m**4 + l**4) / 12.0
    time = (sim.cfl * diffusivity / sim.max_diffusivity) * (m**2 + l**2) ** 2 / 2.0
    return decay * t * diffusivity * math.pi**4 * sim.dx**2 * abs(space - time)


@functools.cache
def _run_mode(n: int, m: int, l: int, diffusivity: float) -> tuple[Heat2D, np.ndarray, np.ndarray, int, float]:
    """Advance mode (m, l) to ~T_FINAL on an n x n grid.

    Returns ``(sim, u0, u, steps, t_eff)`` with ``t_eff = steps * dt`` exactly, so
    the analytic comparison is made at the time actually simulated.
    """
    sim = Heat2D(n=n, modes=MODES, max_diffusivity=1.0, cfl=0.2)
    params = _mode_params(m, l, diffusivity)
    steps = round(T_FINAL / sim.dt)
    t_eff = steps * sim.dt
    state0 = sim.init(jax.random.key(0), params)
    state = _jit_advance(sim)(state0, params, steps)
    return sim, np.asarray(state0.u, np.float64), np.asarray(state.u, np.float64), steps, t_eff


# --- 1. single Fourier modes: continuous and discrete analytic decay --------

MODE_CASES = [(1, 1, 1.0), (1, 1, 0.3), (2, 3, 1.0), (2, 3, 0.3)]


@pytest.mark.parametrize(("m", "l", "diffusivity"), MODE_CASES)
def test_single_mode_matches_continuous_solution(m: int, l: int, diffusivity: float) -> None:
    """Max-norm error vs ``exact_mode`` equals the predicted truncation error.

    Tolerance: within 5% of the leading-order prediction (module docstring),
    plus the float32 round-off bound ``steps * EPS32`` (3e-5; ~1e-7 in
    practice). The neglected terms are O(dx^2) relative to the prediction:
    measured deviation at n = 31 is 0.02% to 0.95% for these four cases (3.9%
    for (2, 3) at n = 15). That pins the error to the scheme's own truncation
    error: a wrong dt, sign or diffusivity factor would miss by far more.
    Measured errors at n = 31, T = 0.05: 4.14e-4, 4.95e-5, 6.80e-5, 6.32e-4.
    """
    sim, _, u, steps, t_eff = _run_mode(31, m, l, diffusivity)
    exact = np.asarray(sim.exact_mode(m, l, diffusivity, t_eff), np.float64)
    error = np.abs(u - exact).max()
    predicted = _predicted_error(sim, m, l, diffusivity, t_eff)
    assert abs(error - predicted) <= 0.05 * predicted + steps * EPS32, (error, predicted)


@pytest.mark.parametrize(("m", "l", "diffusivity"), MODE_CASES)
@pytest.mark.parametrize("n", [15, 31])
def test_single_mode_matches_discrete_decay_factor(n: int, m: int, l: int, diffusivity: float) -> None:
    """After N steps the field is exactly ``g**N * u0`` up to float32 round-off.

    Tolerance: ``N * EPS32 * max|u0|`` (linear round-off bound, module
    docstring). Measured: <= 1.4e-7 for N <= 256 (the bound is 8e-6 to 3e-5), while
    the continuous error of the same runs is 5e-5 to 2.6e-3; the test also
    requires the discrete match to be at least 100x closer than the continuous
    one, so it cannot pass by being vacuous.
    """
    sim, u0, u, steps, t_eff = _run_mode(n, m, l, diffusivity)
    g = _discrete_factor(sim, m, l, diffusivity)
    assert 0 < g < 1
    discrete_error = np.abs(u - g**steps * u0).max()
    assert discrete_error <= steps * EPS32 * np.abs(u0).max(), discrete_error
    continuous_error = np.abs(u - np.asarray(sim.exact_mode(m, l, diffusivity, t_eff))).max()
    assert discrete_error * 100 < continuous_error, (discrete_error, continuous_error)


# --- 2. observed order of convergence in space ------------------------------


@pytest.mark.parametrize(("m", "l"), [(1, 1), (2, 3)])
def test_observed_order_of_convergence_is_two(m: int, l: int) -> None:
    """Observed order ``log2(e_coarse / e_fine) / log2(dx_coarse / dx_fine)`` is 2.

    n = 15, 31, 63 (dx = 1/16, 1/32, 1/64; dt = cfl dx^2, so 64, 256, 1024 steps
    land exactly on T_FINAL). Theory: order 2 + O(dx^2); the O(dx^2) correction
    to the error constant is <= ~4% at dx = 1/16, i.e. <= 0.06 in the order.
    Round-off: float32 errors at n = 63 are ~1e-7 against a truncation error of
    ~1e-4 (a = 1), so <= 0.01 in the order. Tolerance: [1.9, 2.1].
    Measured: 2.006, 2.006 for (1, 1) and 1.957, 1.989 for (2, 3).

    a = 1 is used because at a = 0.3 the (1, 1) mode's truncation error at
    n = 63 (1.4e-5) is only ~10x its float32 round-off and the order drops to
    ~1.85; float64 cannot be used, since ``Heat2D.init`` casts the state to float32.
    """
    diffusivity = 1.0
    sizes = (15, 31, 63)
    errors, spacings = [], []
    for n in sizes:
        sim, _, u, _, t_eff = _run_mode(n, m, l, diffusivity)
        exact = np.asarray(sim.exact_mode(m, l, diffusivity, t_eff), np.float64)
        errors.append(np.abs(u - exact).max())
        spacings.append(sim.dx)
    for k in range(len(sizes) - 1):
        order = math.log2(errors[k] / errors[k + 1]) / math.log2(spacings[k] / spacings[k + 1])
        assert 1.9 <= order <= 2.1, (sizes[k], sizes[k + 1], errors, order)


# --- 3. vmap over a batch of parameters -------------------------------------


def test_vmap_over_params_equals_python_loop() -> None:
    """``vmap`` of init + advance over params equals one run per params.

    Tolerance: rtol = atol/max|u| = 1e-6 (~8 float32 ulps). The per-element
    arithmetic is the same; only XLA's fusion and reassociation of the batched
    einsum and stencil may differ, by a few ulps. Measured: <= 2.4e-7 on max|u|
    = 2.9 (relative <= 1e-7), exact for one member.
    """
    sim = Heat2D(n=24, modes=4)
    # NumPy draws, not random_params: compiling the threefry PRNG costs ~1-2 s
    # on CPU, paid once in the random_params and jit tests.
    rng = np.random.default_rng(3)
    params = [
        HeatParams(
            diffusivity=jnp.float32(d),
            amplitudes=jnp.asarray(rng.normal(size=(sim.modes, sim.modes)), jnp.float32),
        )
        for d in (0.25, 0.4, 0.55, 0.8, 1.0)
    ]
    batch = jax.tree.map(lambda *xs: jnp.stack(xs), *params)
    steps = 200

    def run(p: HeatParams) -> HeatState:
        return sim.advance(sim.init(jax.random.key(0), p), p, steps)

    batched = jax.jit(jax.vmap(run))(batch)
    assert batched.u.shape == (len(params), sim.n, sim.n)
    run_one = jax.jit(run)
    for i, p in enumerate(params):
        single = run_one(p)
        scale = float(np.abs(single.u).max())
        np.testing.assert_allclose(batched.u[i], single.u, rtol=1e-6, atol=1e-6 * scale)
        assert int(batched.step[i]) == int(single.step) == steps
        assert float(batched.t[i]) == float(single.t)


# --- 4. stability: the L2 norm never grows; invalid configurations ----------


def _l2_norms(sim: Heat2D, u0: jax.Array, diffusivity: float, steps: int) -> np.ndarray:
    """Discrete L2 norm of the field after 0, 1, ..., steps steps."""
    params = HeatParams(diffusivity=jnp.float32(diffusivity), amplitudes=jnp.zeros((sim.modes, sim.modes)))
    state0 = HeatState(u=u0, t=jnp.zeros((), jnp.float32), step=jnp.zeros((), jnp.int32))

    def body(state: HeatState, _) -> tuple[HeatState, jax.Array]:
        state = sim.step(state, params)
        return state, jnp.linalg.norm(state.u)

    _, norms = jax.jit(lambda s: jax.lax.scan(body, s, None, length=steps))(state0)
    return np.concatenate([[float(jnp.linalg.norm(u0))], np.asarray(norms, np.float64)])


@pytest.mark.parametrize("diffusivity", [1.0, 0.5])
def test_l2_norm_never_increases_for_stable_cfl(diffusivity: float) -> None:
    """With ``cfl = 0.25`` (the stability limit) the L2 norm contracts every step.

    The IC is white noise on the grid, so every mode, including the
    checkerboard ``(n, n)`` mode that FTCS amplifies most, is present. By the
    eigenmode analysis ``|u^{k+1}|_2 <= rho |u^k|_2`` with
    ``rho = max_{m,l} |g_{m,l}| < 1``; the check is that bound with 1e-6 relative
    slack (~8 ulps of float32 round-off per step), which is stronger than "never
    increases".
    """
    sim = Heat2D(n=32, modes=1, max_diffusivity=1.0, cfl=0.25)
    u0 = jnp.asarray(np.random.default_rng(7).normal(size=(sim.n, sim.n)), jnp.float32)
    norms = _l2_norms(sim, u0, diffusivity, steps=300)
    k = np.arange(1, sim.n + 1)
    s = np.sin(k * np.pi * sim.dx / 2) ** 2
    g = 1.0 - sim.dt * diffusivity * (4.0 / sim.dx**2) * (s[:, None] + s[None, :])
    rho = np.abs(g).max()
    assert rho < 1.0
    assert np.all(norms[1:] <= rho * norms[:-1] * (1 + 1e-6)), np.max(norms[1:] / norms[:-1])
    assert norms[-1] < 0.5 * norms[0]


def test_l2_norm_grows_beyond_the_stability_limit() -> None:
    """Control for the test above: a diffusivity above ``max_diffusivity`` (here
    1.5x, so ``a dt / dx^2 = 0.375 > 1/4``) makes the checkerboard mode grow
    (``|g| ~ 2``), so the monotonicity check is not vacuous."""
    sim = Heat2D(n=32, modes=1, max_diffusivity=1.0, cfl=0.25)
    u0 = jnp.asarray(np.random.default_rng(7).normal(size=(sim.n, sim.n)), jnp.float32)
    norms = _l2_norms(sim, u0, 1.5, steps=50)
    assert norms[-1] > 1e3 * norms[0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 2}, "n >= 3"),
        ({"n": 0}, "n >= 3"),
        ({"modes": 0}, "modes >= 1"),
        ({"max_diffusivity": 0.0}, "max_diffusivity"),
        ({"max_diffusivity": -1.0}, "max_diffusivity"),
        ({"cfl": 0.26}, "cfl"),
        ({"cfl": 0.0}, "cfl"),
        ({"cfl": -0.1}, "cfl"),
    ],
)
def test_constructor_rejects_invalid_configuration(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Heat2D(**kwargs)


def test_constructor_accepts_the_limits() -> None:
    sim = Heat2D(n=3, modes=1, cfl=0.25)
    assert sim.dt == pytest.approx(0.25 * (1 / 4) ** 2)


@pytest.mark.parametrize("diffusivity_range", [(0.0, 1.0), (-0.1, 0.5), (0.8, 0.5), (0.5, 1.5)])
def test_random_params_rejects_bad_diffusivity_range(diffusivity_range: tuple[float, float]) -> None:
    sim = Heat2D(n=8, max_diffusivity=1.0)
    with pytest.raises(ValueError, match="diffusivity_range"):
        sim.random_params(jax.random.key(0), diffusivity_range=diffusivity_range)


def test_random_params_draws_within_range() -> None:
    # modes=4 as in the vmap and jit tests: eager random ops are compiled once per shape.
    sim = Heat2D(n=8, modes=4, max_diffusivity=2.0)
    for key in jax.random.split(jax.random.key(1), 8):
        p = sim.random_params(key, diffusivity_range=(0.5, 2.0))
        assert 0.5 <= float(p.diffusivity) <= 2.0
        assert p.amplitudes.shape == (4, 4)
    point = sim.random_params(jax.random.key(2), diffusivity_range=(1.0, 1.0))
    assert float(point.diffusivity) == 1.0


# --- 5. jit ------------------------------------------------------------------


def test_jit_advance_equals_unjitted_and_stepwise() -> None:
    """``jit(advance, static_argnums=2)`` equals the unjitted ``advance`` and an
    eager Python loop of ``step``.

    Tolerance: atol = 1e-6 * max|u| (~8 float32 ulps; XLA may fuse the stencil
    differently). Measured: jit vs unjitted bit-identical, vs the eager loop
    6e-8 on max|u| = 0.92. The bookkeeping must be
    exact for ``step``; ``t`` accumulates ``dt`` in float32, so it is checked
    against ``steps * dt`` with the linear round-off bound ``steps * EPS32``.
    """
    sim = Heat2D(n=24, modes=4)
    params = sim.random_params(jax.random.key(5))
    state0 = sim.init(jax.random.key(0), params)
    steps = 20

    jitted = jax.jit(sim.advance, static_argnums=2)(state0, params, steps)
    unjitted = sim.advance(state0, params, steps)
    looped = state0
    for _ in range(steps):
        looped = sim.step(looped, params)

    scale = float(np.abs(unjitted.u).max())
    for other in (unjitted, looped):
        np.testing.assert_allclose(jitted.u, other.u, rtol=0, atol=1e-6 * scale)
        assert int(other.step) == int(jitted.step) == steps
    assert jitted.u.dtype == jnp.float32
    assert float(jitted.t) == pytest.approx(steps * sim.dt, rel=steps * EPS32)

    observed = sim.observe(jitted)
    assert set(observed) == {"u"}
    assert observed["u"].shape == (sim.n, sim.n)
    assert observed["u"].dtype == jnp.float32


# --- known limitation ----------------------------------------------------------


def test_advance_under_x64() -> None:
    sim = Heat2D(n=8, modes=4)

    def run(key: jax.Array) -> HeatState:
        params = sim.random_params(key)
        return sim.advance(sim.init(key, params), params, 3)

    with jax.enable_x64(True):
        # Under x64 random_params draws a float64 diffusivity; the step must keep
        # the float32 carry of fori_loop. Tracing is enough to show it.
        state = jax.eval_shape(run, jax.random.key(0))
    assert state.u.dtype == jnp.float32

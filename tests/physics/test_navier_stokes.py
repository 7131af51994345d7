"""NavierStokes2D against the Taylor-Green vortex, spectral convergence and long-run stability."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coupler.physics.base import Simulator
from coupler.physics.navier_stokes import NavierStokes2D, NavierStokesParams, NavierStokesState, spectral_resample


def _params(nu: float, amp: float = 0.0, drag: float = 0.0) -> NavierStokesParams:
    return NavierStokesParams(jnp.float32(nu), jnp.float32(amp), jnp.float32(drag))


def _rel(a: jax.Array, b: jax.Array) -> float:
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


@pytest.mark.parametrize("k, nu, drag", [(1, 0.05, 0.0), (3, 0.01, 0.1)])
def test_taylor_green_vortex_decays_as_the_analytic_solution(k: int, nu: float, drag: float) -> None:
    # Taylor & Green (1937): w = 2 a k cos(kx) cos(ky) is an exact Navier-Stokes solution whose
    # advection term vanishes; it decays as exp(-(2 nu k^2 + alpha) t). With the linear terms
    # integrated exactly, the only error is float32 round-off of ~200 FFT round trips:
    # tolerance 1e-4 relative L2 (measured ~1e-5).
    sim = NavierStokes2D(n=32, dt=0.05)
    p = _params(nu, drag=drag)
    w0 = sim.taylor_green(k, 1.0, nu, drag, 0.0).astype(jnp.float32)
    state = NavierStokesState(w0, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
    out = jax.jit(lambda s: sim.advance(s, p, 200))(state)
    t = float(out.t)
    assert t == pytest.approx(10.0)
    exact = sim.taylor_green(k, 1.0, nu, drag, t)
    assert _rel(out.w, exact) < 1e-4
    # And the decay is real (not a frozen field): the amplitude fell by the analytic factor.
    factor = float(jnp.max(jnp.abs(out.w)) / jnp.max(jnp.abs(w0)))
    assert factor == pytest.approx(np.exp(-(2 * nu * k**2 + drag) * t), rel=1e-4)


def test_nonlinear_term_converges_spectrally_on_a_smooth_field() -> None:
    # w = exp(sin x + cos y) is smooth but not band-limited: its Fourier coefficients fall like
    # modified Bessel functions, I_k(1) ~ (1/2)^k / k!, so the pseudo-spectral advection term
    # u.grad(w) must converge faster than any power of n (Canuto et al. 2006, Sec. 2.3).
    # Reference: the same term at n=64, compared on the shared grid points, in float64.
    # Tolerances: doubling n from 8 to 16 cuts the error by more than 1e3 (a fixed order p
    # would give 2^p, i.e. p > 9), and n=32 is at round-off (< 1e-10).
    def term(n: int) -> jax.Array:
        sim = NavierStokes2D(n=n, forcing_wavenumber=1)
        x, y = sim.grid()
        w = jnp.exp(jnp.sin(x) + jnp.cos(y))
        w_hat = jnp.fft.rfft2(w - jnp.mean(w))
        # The term itself, without the 2/3 mask (which drops resolved modes on purpose).
        kx, ky = sim.wavenumbers()
        u, v = sim.velocity(w_hat)
        wx = jnp.fft.irfft2(1j * kx * w_hat, s=(n, n))
        wy = jnp.fft.irfft2(1j * ky * w_hat, s=(n, n))
        return u * wx + v * wy

    jax.config.update("jax_enable_x64", True)
    try:
        ref = term(64)
        errors = {}
        for n in (8, 16, 32):
            f_ref = ref[:: 64 // n, :: 64 // n]
            errors[n] = float(jnp.max(jnp.abs(term(n) - f_ref)) / jnp.max(jnp.abs(f_ref)))
    finally:
        jax.config.update("jax_enable_x64", False)
    assert errors[16] < 1e-3 * errors[8]
    assert errors[32] < 1e-10


def test_forced_turbulence_stays_stable_at_the_benchmark_reynolds_numbers() -> None:
    # The benchmark and the example draw nu in [0.005, 0.05] and A in [0.5, 2] with dt=0.03 on 32x32.
    # The most turbulent corner (nu=0.005, A=2) must stay finite, bounded and below CFL 1 for
    # 100 time units, and reach a statistically steady state set by forcing and drag.
    sim = NavierStokes2D(n=32, dt=0.03)
    p = _params(0.005, amp=2.0, drag=0.1)
    state = sim.init(jax.random.key(0), p)
    run = jax.jit(lambda s: sim.advance(s, p, 300))
    rms, cfl = [], []
    for _ in range(11):  # 11 x 300 steps x 0.03 = 99 time units
        state = run(state)
        rms.append(float(jnp.sqrt(jnp.mean(state.w**2))))
        cfl.append(float(sim.cfl(state)))
    assert np.all(np.isfinite(rms))
    assert max(cfl) < 1.0
    # Steady: the last half varies little around its mean and the field is far from zero.
    tail = np.asarray(rms[5:])
    assert tail.mean() > 1.0 and tail.std() < 0.3 * tail.mean()
    # Vorticity of a periodic flow has zero mean: conserved to round-off.
    assert abs(float(jnp.mean(state.w))) < 1e-4


def test_vmap_over_an_ensemble_matches_single_runs() -> None:
    sim = NavierStokes2D(n=16, dt=0.03)
    keys = jax.random.split(jax.random.key(3), 4)
    params = jax.vmap(sim.random_params)(keys)
    states = jax.vmap(sim.init)(keys, params)
    batched = jax.jit(jax.vmap(lambda s, p: sim.advance(s, p, 20)))(states, params)
    one = jax.tree.map(lambda a: a[2], params)
    single = jax.jit(lambda s: sim.advance(s, one, 20))(sim.init(keys[2], one))
    np.testing.assert_allclose(np.asarray(batched.w[2]), np.asarray(single.w), rtol=1e-5, atol=1e-5)
    assert isinstance(sim, Simulator)
    assert sim.observe(single)["w"].shape == (16, 16) and single.w.dtype == jnp.float32


def test_initial_field_has_the_requested_rms_and_zero_mean() -> None:
    sim = NavierStokes2D(n=32, init_rms=1.5)
    w = sim.init(jax.random.key(0), sim.random_params(jax.random.key(1))).w
    assert float(jnp.sqrt(jnp.mean(w**2))) == pytest.approx(1.5, rel=1e-4)
    assert abs(float(jnp.mean(w))) < 1e-5


@pytest.mark.parametrize(
    "kwargs, match",
    [({"n": 7}, "even n"), ({"dt": 0.0}, "dt"), ({"n": 12, "forcing_wavenumber": 5}, "forcing_wavenumber")],
)
def test_bad_configuration_is_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        NavierStokes2D(**kwargs)


def test_bad_parameter_ranges_are_refused() -> None:
    with pytest.raises(ValueError, match="viscosity"):
        NavierStokes2D().random_params(jax.random.key(0), viscosity_range=(0.0, 0.1))


def test_spectral_restriction_keeps_resolved_modes_and_drops_the_rest() -> None:
    # A Taylor-Green vortex of wavenumber 3 is resolved on 16x16 (|k| < 8): restriction from 64
    # must reproduce the 16-grid sampling of the same analytic field up to float32 FFT round-off
    # (tolerance 1e-5 relative L2). A wavenumber-10 vortex is not representable on 16x16: the sharp
    # spectral filter must remove it entirely (relative to its own amplitude, < 1e-6).
    fine, coarse = NavierStokes2D(n=64), NavierStokes2D(n=16)
    resolved = fine.taylor_green(3, 1.0, 0.0, 0.0, 0.0).astype(jnp.float32)
    assert _rel(spectral_resample(resolved, 16), coarse.taylor_green(3, 1.0, 0.0, 0.0, 0.0)) < 1e-5
    unresolved = fine.taylor_green(10, 1.0, 0.0, 0.0, 0.0).astype(jnp.float32)
    assert float(jnp.max(jnp.abs(spectral_resample(unresolved, 16)))) < 1e-6 * float(jnp.max(jnp.abs(unresolved)))
    # Prolongation is exact trigonometric interpolation: restricting it back gives the field again,
    # and a batch axis is carried through.
    w = jax.random.normal(jax.random.key(0), (2, 16, 16))
    w = spectral_resample(spectral_resample(w, 8), 16)  # band-limit to |k| < 4 first
    np.testing.assert_allclose(np.asarray(spectral_resample(spectral_resample(w, 48), 16)), np.asarray(w), atol=1e-5)


@pytest.mark.parametrize("shape, n, match", [((15, 15), 8, "m even"), ((16, 8), 8, "square"), ((16, 16), 7, "even n")])
def test_spectral_resample_refuses_bad_shapes(shape: tuple[int, int], n: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        spectral_resample(jnp.zeros(shape), n)


def test_padded_dealiasing_gives_the_exact_advection_term_of_every_resolved_mode() -> None:
    # The 3/2 rule (Orszag 1971; Canuto et al. 2006, Sec. 3.2.2): a quadratic product formed on a
    # 3n/2 grid has no alias in the modes below n/2. Reference: the same term on a 2n grid, where the
    # product's modes (below n) cannot alias either, restricted to the n grid. A field with modes
    # up to n/2 - 1 (beyond the 2/3 cutoff, where "truncate" drops the term). Tolerance 1e-4
    # relative (float32 round-off of a few FFTs).
    n = 16
    coarse, fine = NavierStokes2D(n=n, dealias="pad"), NavierStokes2D(n=2 * n, dealias="pad")
    key = jax.random.key(3)
    w_hat = jnp.fft.rfft2(jax.random.normal(key, (n, n)))
    w = spectral_resample(jnp.fft.irfft2(w_hat * coarse.dealias_mask(), s=(n, n)), n)
    zero_c, zero_f = jnp.zeros((n, n // 2 + 1), jnp.complex64), jnp.zeros((2 * n, n + 1), jnp.complex64)
    term = jnp.fft.irfft2(coarse.nonlinear(jnp.fft.rfft2(w), zero_c), s=(n, n))
    fine_term = jnp.fft.irfft2(fine.nonlinear(jnp.fft.rfft2(spectral_resample(w, 2 * n)), zero_f), s=(2 * n, 2 * n))
    exact = spectral_resample(fine_term, n)
    assert _rel(term, exact) < 1e-4
    # The 2/3 rule drops the modes between n/3 and n/2: its term is visibly different.
    truncated = jnp.fft.irfft2(NavierStokes2D(n=n).nonlinear(jnp.fft.rfft2(w), zero_c), s=(n, n))
    assert _rel(truncated, exact) > 0.05


@pytest.mark.parametrize("dealias", ["truncate", "pad"])
def test_a_constant_eddy_viscosity_closure_decays_taylor_green_as_a_larger_viscosity(dealias: str) -> None:
    # step_with_closure with nu_t = c is the equation with viscosity nu + c: the Taylor-Green vortex
    # decays as exp(-(2 (nu + c) k^2 + alpha) t) (Taylor & Green 1937); its advection term vanishes,
    # so the advection gain has no effect. Tolerance 1e-4 relative L2, as above.
    sim = NavierStokes2D(n=16, dt=0.05, forcing_wavenumber=0, dealias=dealias)
    nu, c, k = 0.01, 0.02, 2
    w0 = sim.taylor_green(k, 1.0, nu, 0.1, 0.0).astype(jnp.float32)
    state = NavierStokesState(w0, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
    gain = jnp.full((16, 9), 1.3, jnp.float32)
    step = jax.jit(lambda s: sim.step_with_closure(s, _params(nu, drag=0.1), jnp.float32(c), gain))
    for _ in range(40):
        state = step(state)
    assert _rel(state.w, sim.taylor_green(k, 1.0, nu + c, 0.1, float(state.t))) < 1e-4


def test_pad_needs_n_divisible_by_4() -> None:
    with pytest.raises(ValueError, match="dealias"):
        NavierStokes2D(n=18, dealias="pad")
    with pytest.raises(ValueError, match="dealias"):
        NavierStokes2D(n=16, dealias="3/2")


def test_gradient_model_tendency_matches_its_analytic_form() -> None:
    # psi = sin x sin 2y + cos 3x, w = -lap psi; u = d_y psi, v = -d_x psi. The gradient model
    # (Clark et al. 1979) tau_j = (dx^2/12) d_k u_j d_k w and the tendency -d_j tau_j written out by
    # the product rule with the exact derivatives below. Products of modes <= 3 fit the 32^2 grid
    # without aliasing, so only float32 round-off remains: tolerance 1e-4 relative L2.
    sim = NavierStokes2D(n=32)
    x, y = sim.grid()
    s, c = jnp.sin, jnp.cos
    w = 5 * s(x) * s(2 * y) + 9 * c(3 * x)
    ux, uy = 2 * c(x) * c(2 * y), -4 * s(x) * s(2 * y)
    vx, vy = s(x) * s(2 * y) + 9 * c(3 * x), -2 * c(x) * c(2 * y)
    wx, wy = 5 * c(x) * s(2 * y) - 27 * s(3 * x), 10 * s(x) * c(2 * y)
    uxx, uxy = -2 * s(x) * c(2 * y), -4 * c(x) * s(2 * y)
    vxy, vyy = 2 * s(x) * c(2 * y), 4 * c(x) * s(2 * y)
    wxx, wxy, wyy = -5 * s(x) * s(2 * y) - 81 * c(3 * x), 10 * c(x) * c(2 * y), -20 * s(x) * s(2 * y)
    div_tau = (uxx * wx + ux * wxx + uxy * wy + uy * wxy) + (vxy * wx + vx * wxy + vyy * wy + vy * wyy)
    exact = -(sim.dx**2 / 12) * div_tau
    got = jnp.fft.irfft2(sim.gradient_model_tendency(jnp.fft.rfft2(w)), s=(32, 32))
    assert _rel(got, exact) < 1e-4
    # The Taylor-Green vortex has no gradient-model flux divergence (worked out by hand: the two terms cancel).
    tg = jnp.fft.rfft2(sim.taylor_green(2, 1.0, 0.0, 0.0, 0.0))
    assert float(jnp.max(jnp.abs(jnp.fft.irfft2(sim.gradient_model_tendency(tg), s=(32, 32))))) < 1e-4


def test_a_fixed_tendency_in_the_step_acts_as_a_forcing() -> None:
    # The Kolmogorov forcing's curl passed as a tendency, with the forcing itself off, is the forced step.
    sim = NavierStokes2D(n=16, dt=0.05)
    forced, unforced = _params(0.02, amp=1.0, drag=0.1), _params(0.02, amp=0.0, drag=0.1)
    state = sim.init(jax.random.key(0), forced)
    want = sim.step(state, forced).w
    zero = jnp.zeros((), jnp.float32)
    got = sim.step_with_closure(state, unforced, zero, jnp.ones((), jnp.float32), jnp.fft.rfft2(sim.forcing(forced))).w
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
    assert _rel(sim.step(state, unforced).w, want) > 1e-3

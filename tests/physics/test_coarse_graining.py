"""CoarseGrainedNavierStokes: its frames are the fine run restricted to the coarse grid."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coupler.physics.base import Simulator
from coupler.physics.coarse_graining import CoarseGrainedNavierStokes, subgrid_tendency
from coupler.physics.navier_stokes import NavierStokes2D, spectral_resample


def test_frames_are_the_restricted_fine_run_at_the_coarse_time_step() -> None:
    fine = NavierStokes2D(n=32, dt=0.02)
    cg = CoarseGrainedNavierStokes(fine, coarse_n=16, substeps=2, window=3, spinup=5)
    p = fine.random_params(jax.random.key(0))
    s0 = cg.init(jax.random.key(1), p)
    s2 = jax.jit(lambda s: cg.step(cg.step(s, p), p))(s0)
    # The same fine run by hand: spin-up, then 2 x 2 fine steps.
    f = fine.advance(fine.init(jax.random.key(1), p), p, 5)
    f1 = fine.advance(f, p, 2)
    f2 = fine.advance(f1, p, 2)
    expected = jnp.stack([spectral_resample(x.w, 16) for x in (f, f1, f2)])
    np.testing.assert_allclose(np.asarray(s2.frames), np.asarray(expected), rtol=1e-5, atol=1e-5)
    assert float(s2.t) == pytest.approx(2 * cg.dt) and cg.dt == pytest.approx(0.04) and int(s2.step) == 2
    assert cg.observe(s2)["window"].shape == (3, 16, 16)
    np.testing.assert_array_equal(np.asarray(cg.observe(s2)["w"]), np.asarray(s2.frames[-1]))
    coarse = cg.coarse()
    assert (coarse.n, coarse.dt, coarse.forcing_wavenumber) == (16, pytest.approx(0.04), fine.forcing_wavenumber)
    assert isinstance(cg, Simulator)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"coarse_n": 64, "substeps": 1}, "coarse_n"),
        ({"coarse_n": 16, "substeps": 0}, "substeps"),
        ({"coarse_n": 16, "substeps": 1, "window": 1}, "window"),
        ({"coarse_n": 10, "substeps": 1}, "forcing_wavenumber"),
    ],
)
def test_bad_configuration_is_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CoarseGrainedNavierStokes(NavierStokes2D(n=32), **kwargs)


def _rough(sim: NavierStokes2D, a: float, b: float) -> jax.Array:
    """A resolved part and, with ``b != 0``, modes beyond a 16^2 grid's cutoff."""
    x, y = sim.grid()
    return a * jnp.cos(3 * x) * jnp.sin(2 * y) + b * jnp.cos(9 * x + 2 * y) + 0.5 * jnp.sin(x + 5 * y)


def test_the_subgrid_observation_is_the_newest_frame_and_its_subgrid_tendency() -> None:
    fine = NavierStokes2D(n=32, dt=0.02)
    cg = CoarseGrainedNavierStokes(fine, coarse_n=16, substeps=2, window=3, spinup=20, coarse_dealias="pad")
    p = fine.random_params(jax.random.key(2))
    state = cg.step(cg.init(jax.random.key(3), p), p)
    pair = jax.jit(lambda s: cg.observe(s)["subgrid"])(state)
    assert pair.shape == (2, 16, 16) and pair.dtype == state.frames.dtype
    np.testing.assert_array_equal(np.asarray(pair[0]), np.asarray(state.frames[-1]))
    s_hat, wc_hat = subgrid_tendency(fine, cg.coarse(), state.fine.w)
    np.testing.assert_allclose(np.asarray(pair[1]), np.asarray(jnp.fft.irfft2(s_hat, s=(16, 16))), atol=1e-5)  # jit vs eager
    np.testing.assert_allclose(np.asarray(jnp.fft.irfft2(wc_hat, s=(16, 16))), np.asarray(pair[0]), atol=1e-5)


def test_a_field_the_coarse_grid_holds_has_no_subgrid_tendency_and_one_beyond_it_has() -> None:
    # Modes below 6 on a 32^2 grid: their products stay below 12, which the fine 2/3 rule keeps and the padded
    # 16^2 solver forms exactly, so the restricted fine advection is the coarse one (float32 round-off).
    fine, coarse = NavierStokes2D(n=32), NavierStokes2D(n=16, dealias="pad")
    s, wc_hat = subgrid_tendency(fine, coarse, _rough(fine, 1.0, 0.0))
    assert float(jnp.max(jnp.abs(s))) < 1e-4 * float(jnp.max(jnp.abs(wc_hat)))
    s, _ = subgrid_tendency(fine, coarse, _rough(fine, 1.0, 1.0))
    assert float(jnp.max(jnp.abs(s))) > 1e-2
    # The 2/3-rule coarse solver drops part of the resolved field's own advection: that is subgrid to it too.
    s_trunc, _ = subgrid_tendency(fine, NavierStokes2D(n=16), _rough(fine, 1.0, 0.0))
    assert float(jnp.max(jnp.abs(s_trunc))) > 1e-2


@settings(max_examples=12, deadline=None)
@given(a=st.floats(-2, 2), b=st.floats(-2, 2), lam=st.floats(0.25, 3), axis=st.sampled_from([0, 1]))
def test_the_subgrid_tendency_is_quadratic_and_commutes_with_mirror_images(a: float, b: float, lam: float, axis: int) -> None:
    # Advection is quadratic in w, and commutes with a mirror image that negates the (pseudo-scalar) vorticity:
    # the a-priori trainer's reflections (learners.subgrid_tendency._reflect) rely on this being exact.
    fine, coarse = NavierStokes2D(n=32), NavierStokes2D(n=16, dealias="pad")
    w = _rough(fine, a, b)
    grid = lambda s_hat: np.asarray(jnp.fft.irfft2(s_hat, s=(16, 16)))  # noqa: E731
    s = grid(subgrid_tendency(fine, coarse, w)[0])
    # float32 round-off of advection terms of order |k|^2 |w|^2 ~ 100, whether or not s itself is small
    tol = 1e-5 * (1 + float(np.max(np.abs(s))))
    np.testing.assert_allclose(grid(subgrid_tendency(fine, coarse, lam * w)[0]), lam**2 * s, atol=tol * lam**2)
    # Mirror x -> -x on the periodic grid: index i -> (-i) mod n, i.e. a flip followed by a shift of one.
    mirror = lambda f: -jnp.roll(jnp.flip(f, axis), 1, axis)  # noqa: E731
    np.testing.assert_allclose(grid(subgrid_tendency(fine, coarse, mirror(w))[0]), np.asarray(mirror(jnp.asarray(s))),
                               atol=tol)

"""CoarseGrainedNavierStokes: its frames are the fine run restricted to the coarse grid."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coupler.physics.base import Simulator
from coupler.physics.coarse_graining import CoarseGrainedNavierStokes
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

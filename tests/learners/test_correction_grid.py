"""The correction network on a 2-D grid: local and translation equivariant, like the model it corrects."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from coupler.learners.correction import CorrectionConfig


def test_grid_correction_commutes_with_periodic_shifts_and_is_local() -> None:
    config = CorrectionConfig(radius=1, hidden=8, shift=0.0, scale=1.0, grid=(6, 8))
    net = config.build(0)
    # The output layer starts at zero (no correction); give it weights to test the map.
    net.out.kernel = nnx.Param(jax.random.normal(jax.random.key(1), net.out.kernel.shape))
    field = jax.random.normal(jax.random.key(2), (6, 8))
    out = net(field.reshape(1, -1)).reshape(6, 8)
    shifted = net(jnp.roll(field, (2, 3), axis=(0, 1)).reshape(1, -1)).reshape(6, 8)
    np.testing.assert_allclose(np.asarray(shifted), np.asarray(jnp.roll(out, (2, 3), axis=(0, 1))), atol=1e-5)
    # A change at one point moves only its 3 x 3 neighbourhood (radius 1).
    bumped = net(field.at[3, 4].add(1.0).reshape(1, -1)).reshape(6, 8)
    changed = np.argwhere(np.abs(np.asarray(bumped - out)) > 1e-7)
    assert changed.size and np.all(np.abs(changed - [3, 4]).max(axis=1) <= 1)

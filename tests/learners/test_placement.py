"""to_device: received host payloads onto a device (staged through pinned memory on a GPU; see tests/gpu)."""

from __future__ import annotations

import jax
import numpy as np

from coupler.learners import to_device


def test_a_received_payload_lands_on_the_device_unchanged() -> None:
    tree = {"u": np.arange(12, dtype=np.float32).reshape(3, 4), "p": [np.float64(2.5), np.ones(2, np.int32)]}
    out = to_device(tree)
    assert jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(tree)
    for got, want in zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(tree)):
        assert isinstance(got, jax.Array) and next(iter(got.devices())) == jax.devices()[0]
        np.testing.assert_array_equal(np.asarray(got), want)
        assert got.dtype == np.asarray(want).dtype or not jax.config.jax_enable_x64

"""FNO2D: spectral layer maths, the online trainer with it, and exact checkpoint restore."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from coupler.learners.checkpoints import load_checkpoint, save_checkpoint
from coupler.learners.fno import FNO2D, FNOConfig, SpectralConv2d
from coupler.learners.online import ModelFactory, OnlineTrainer, OptimizerConfig

TINY = FNOConfig(modes=3, width=6, depth=2, n_params=2, hidden=8, field_scale=2.0)


def _batch(seed: int, b: int = 4, n: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(b, n, n)).astype(np.float32)
    return {"input": x, "target": np.roll(x, 1, axis=1), "params": rng.normal(size=(b, 2)).astype(np.float32)}


def test_spectral_conv_multiplies_each_kept_mode_by_its_weight_matrix() -> None:
    # A single Fourier mode in, the same mode out times w[kx, ky] (Li et al. 2021, eq. 5);
    # modes above the cut-off are removed. Exact up to float32 FFT round-off (tolerance 1e-5).
    conv = SpectralConv2d(channels=1, modes=3, rngs=nnx.Rngs(0))
    n = 16
    x = np.arange(n) * 2 * np.pi / n
    X, Y = np.meshgrid(x, x, indexing="ij")
    for kx, ky in [(1, 2), (-2, 1), (0, 0)]:
        field = np.cos(kx * X + ky * Y).astype(np.float32)[None, :, :, None]
        out = np.asarray(conv(jnp.asarray(field)))[0, :, :, 0]
        row = kx % 3 if kx >= 0 else 3 + (3 + kx)  # row of the stored (2m, m) block
        w = complex(conv.w_re.get_value()[row, ky, 0, 0], conv.w_im.get_value()[row, ky, 0, 0])
        if ky == 0 and kx != 0:
            # A real cos has +-kx at ky=0: both rows are kept, each with its own weight.
            w_neg = complex(conv.w_re.get_value()[(-kx) % 6, 0, 0, 0], conv.w_im.get_value()[(-kx) % 6, 0, 0, 0])
            expected = 0.5 * (w * np.exp(1j * (kx * X)) + w_neg * np.exp(-1j * (kx * X))).real
        else:
            expected = (w * np.exp(1j * (kx * X + ky * Y))).real
        np.testing.assert_allclose(out, expected, atol=1e-5)
    high = np.cos(5 * X).astype(np.float32)[None, :, :, None]
    np.testing.assert_allclose(np.asarray(conv(jnp.asarray(high))), 0.0, atol=1e-5)


def test_fno_is_translation_equivariant_and_starts_as_persistence() -> None:
    model = TINY.build(seed=0)
    b = _batch(0)
    u, p = jnp.asarray(b["input"]), jnp.asarray(b["params"])
    # The projection's last layer starts at zero: an untrained FNO returns its input.
    np.testing.assert_allclose(np.asarray(model(u, p)), b["input"], atol=1e-6)
    # Perturb the weights, then: shifting the input periodically shifts the output (FFT + pointwise).
    state = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.map(lambda a: a + 0.1 * jnp.ones_like(a), state))
    out = np.asarray(model(u, p))
    shifted = np.asarray(model(jnp.roll(u, (2, 3), axis=(1, 2)), p))
    np.testing.assert_allclose(shifted, np.roll(out, (2, 3), axis=(1, 2)), atol=1e-4)
    assert not np.allclose(out, b["input"], atol=1e-3)


def test_fno_refuses_bad_shapes_and_sizes() -> None:
    model = TINY.build(seed=0)
    with pytest.raises(ValueError, match=r"params of shape \(4, 2\)"):
        model(jnp.zeros((4, 8, 8)), jnp.zeros((4, 3)))
    with pytest.raises(ValueError, match="modes=3 needs H >= 6"):
        model(jnp.zeros((1, 4, 4)), jnp.zeros((1, 2)))
    with pytest.raises(ValueError, match="field_scale"):
        FNO2D(field_scale=0.0, rngs=nnx.Rngs(0))


def test_online_trainer_fits_a_shift_operator_with_the_fno() -> None:
    # The target is the input shifted by one cell: a linear, translation-invariant operator
    # that an FNO represents exactly (a phase per mode). 150 steps bring the relative error
    # from 1 (persistence of a random field vs its shift: ~1.4) well below 0.5.
    assert isinstance(TINY, ModelFactory)
    trainer = OnlineTrainer(TINY, OptimizerConfig(learning_rate=1e-2, decay_steps=None), seed=0)
    rng = np.random.default_rng(1)

    def smooth(b: int) -> dict[str, np.ndarray]:
        # Band-limited fields (modes < 3) so that the kept modes carry everything.
        k = np.fft.fftfreq(8, 1 / 8)
        mask = (np.abs(k)[:, None] < 3) & (np.abs(k)[None, :] < 3)
        x = np.fft.ifft2(mask * (rng.normal(size=(b, 8, 8)) + 1j * rng.normal(size=(b, 8, 8)))).real
        x = (x / x.std(axis=(1, 2), keepdims=True)).astype(np.float32)
        return {"input": x, "target": np.roll(x, 1, axis=1), "params": np.zeros((b, 2), np.float32)}

    test = smooth(32)
    before = float(trainer.evaluate(test).mean())
    trainer.fit(smooth, steps=150, batch_size=8)
    after = float(trainer.evaluate(test).mean())
    assert before > 0.8 and after < 0.5 * before


def test_checkpoint_file_restores_model_and_optimizer_exactly(tmp_path: Path) -> None:
    opt = OptimizerConfig(learning_rate=1e-2, warmup_steps=2, decay_steps=10)
    a = OnlineTrainer(TINY, opt, seed=0)
    for i in range(3):
        a.step(_batch(i))
    path = save_checkpoint(tmp_path / "ckpt" / "trainer.msgpack", a.checkpoint())
    b = OnlineTrainer(TINY, opt, seed=99)  # other initial weights: everything must come from the file
    b.restore(load_checkpoint(path))
    assert b.steps_taken == a.steps_taken == 3 and b.loss_history == a.loss_history
    # Continuing both gives bit-identical losses and weights (Adam moments and step restored too).
    for i in range(3, 6):
        assert a.step(_batch(i)) == b.step(_batch(i))
    for x, y in zip(jax.tree.leaves(a.checkpoint()), jax.tree.leaves(b.checkpoint())):
        np.testing.assert_array_equal(x, y)


def test_checkpoint_file_errors_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lacks \\['optimizer'"):
        save_checkpoint(tmp_path / "x", {"model": {}, "loss_history": []})
    bad = tmp_path / "bad.msgpack"
    from flax import serialization

    bad.write_bytes(serialization.msgpack_serialize({"weights": np.zeros(2)}))
    with pytest.raises(ValueError, match="not a trainer checkpoint"):
        load_checkpoint(bad)
    other = OnlineTrainer(FNOConfig(modes=3, width=4, depth=2, hidden=8), seed=0)
    good = save_checkpoint(tmp_path / "good", OnlineTrainer(TINY, seed=0).checkpoint())
    with pytest.raises(ValueError, match="shape"):
        other.restore(load_checkpoint(good))

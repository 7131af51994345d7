"""Tests of ``coupler.learners.online.OnlineTrainer`` and its configs.

The learning test trains the default surrogate on real ``Heat2D`` pairs that
arrive progressively (as from running simulations) and checks the error on
pairs from simulations with fresh parameters.
"""

from __future__ import annotations

import functools
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coupler.learners.online import OnlineTrainer, OptimizerConfig, SurrogateConfig
from coupler.learners.surrogate import ConvSurrogate
from coupler.physics import Heat2D, HeatParams

# One small model for the mechanics tests: every distinct shape costs an XLA compile.
TINY = SurrogateConfig(width=4, depth=1)


def _random_batch(seed: int, rows: int = 8, n: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((rows, n, n)).astype(np.float32)
    return {
        "input": u,
        "target": (0.8 * u + 0.05 * rng.standard_normal(u.shape)).astype(np.float32),
        "params": rng.uniform(0.25, 1.0, (rows, 1)).astype(np.float32),
    }


def _leaves(tree) -> list:
    return jax.tree.leaves(tree)


def test_configs_pickle_and_rebuild_the_same_trainer():
    cfg = SurrogateConfig(width=4, depth=1, params_shift=0.5)
    opt = OptimizerConfig(learning_rate=1e-3, decay_steps=None)
    cfg2, opt2, factory = pickle.loads(pickle.dumps((cfg, opt, cfg.build)))
    assert (cfg2, opt2) == (cfg, opt)
    assert hash(cfg2) == hash(cfg)
    here = OnlineTrainer(cfg, opt, seed=3).get_weights()
    there = OnlineTrainer(cfg2, opt2, seed=3).get_weights()
    via_callable = OnlineTrainer(factory, opt2, seed=3).get_weights()
    for a, b, c in zip(_leaves(here), _leaves(there), _leaves(via_callable), strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    other_seed = OnlineTrainer(cfg, opt, seed=4).get_weights()
    assert any(not np.array_equal(a, b) for a, b in zip(_leaves(here), _leaves(other_seed), strict=True))


def test_trainer_accepts_a_module_and_rejects_junk():
    model = TINY.build(0)
    trainer = OnlineTrainer(model)
    assert trainer.model is model
    with pytest.raises(TypeError):
        OnlineTrainer(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected an nnx.Module"):
        OnlineTrainer(lambda seed: "not a module")  # type: ignore[arg-type, return-value]


def test_set_weights_restores_predictions_exactly():
    batch = _random_batch(0)
    source = OnlineTrainer(TINY, seed=0)
    for _ in range(3):
        source.step(batch)
    target = OnlineTrainer(TINY, seed=1)
    u, p = batch["input"], batch["params"]
    assert not np.array_equal(source.predict(u, p), target.predict(u, p))

    weights = pickle.loads(pickle.dumps(source.get_weights()))  # as sent over the network
    assert all(isinstance(leaf, np.ndarray) for leaf in _leaves(weights))
    target.set_weights(weights)
    np.testing.assert_array_equal(source.predict(u, p), target.predict(u, p))

    # The dict is a copy: changing it does not change the model.
    weights["lift"]["kernel"][...] = 0.0
    np.testing.assert_array_equal(source.predict(u, p), target.predict(u, p))

    # msgpack-style string keys for list entries are accepted.
    stringly = source.get_weights()
    stringly["blocks"] = {str(k): v for k, v in stringly["blocks"].items()}
    fresh = OnlineTrainer(TINY, seed=2)
    fresh.set_weights(stringly)
    np.testing.assert_array_equal(source.predict(u, p), fresh.predict(u, p))


def test_set_weights_refuses_mismatched_weights():
    trainer = OnlineTrainer(TINY, seed=0)
    weights = trainer.get_weights()
    before = trainer.get_weights()
    bad_shape = trainer.get_weights()
    bad_shape["lift"]["kernel"] = np.zeros((3, 3, 4, 5), np.float32)
    with pytest.raises(ValueError, match=r"lift/kernel has shape \(3, 3, 4, 5\), expected \(3, 3, 4, 4\)"):
        trainer.set_weights(bad_shape)
    del weights["project"]
    with pytest.raises(ValueError, match="missing"):
        trainer.set_weights(weights)
    for a, b in zip(_leaves(before), _leaves(trainer.get_weights()), strict=True):
        np.testing.assert_array_equal(a, b)


def test_checkpoint_restore_resumes_training_exactly():
    batches = [_random_batch(s) for s in range(6)]
    original = OnlineTrainer(TINY, seed=0)
    for b in batches[:3]:
        original.step(b)
    checkpoint = pickle.loads(pickle.dumps(original.checkpoint()))
    expected = [original.step(b) for b in batches[3:]]

    resumed = OnlineTrainer(TINY, seed=9)
    resumed.restore(checkpoint)
    assert resumed.steps_taken == 3
    assert [resumed.step(b) for b in batches[3:]] == expected
    assert resumed.loss_history == original.loss_history
    assert resumed.steps_taken == original.steps_taken == 6


def test_step_validates_the_batch():
    trainer = OnlineTrainer(TINY)
    batch = _random_batch(0)
    with pytest.raises(KeyError, match="params"):
        trainer.step({"input": batch["input"], "target": batch["target"]})
    with pytest.raises(ValueError, match="expected input"):
        trainer.step({**batch, "target": batch["target"][:, :4]})
    assert trainer.steps_taken == 0


def test_warmup_compiles_without_training():
    trainer = OnlineTrainer(TINY, seed=0)
    before = trainer.get_weights()
    trainer.warmup(_random_batch(0))
    assert trainer.steps_taken == 0
    assert trainer.loss_history == []
    for a, b in zip(_leaves(before), _leaves(trainer.get_weights()), strict=True):
        np.testing.assert_array_equal(a, b)


def test_predict_accepts_one_field_or_a_batch():
    trainer = OnlineTrainer(TINY, seed=0)
    trainer.step(_random_batch(0))
    batch = _random_batch(1)
    many = trainer.predict(batch["input"], batch["params"])
    one = trainer.predict(batch["input"][2], batch["params"][2])
    assert many.shape == batch["input"].shape and one.shape == batch["input"].shape[1:]
    np.testing.assert_allclose(one, many[2], rtol=1e-6, atol=1e-7)


def test_fit_draws_every_batch_from_a_changing_population():
    """The sampler's population grows between calls; short batches are padded."""
    populations = [_random_batch(s, rows=3 + 2 * s) for s in range(6)]
    calls: list[int] = []

    def sample(batch_size: int) -> dict[str, np.ndarray]:
        population = populations[min(len(calls), len(populations) - 1)]
        calls.append(batch_size)
        return {k: v[:batch_size] for k, v in population.items()}

    trainer = OnlineTrainer(TINY, seed=0)
    losses = trainer.fit(sample, steps=10, batch_size=8)
    assert calls == [8] * 10
    assert trainer.steps_taken == 10
    assert trainer.loss_history == list(zip(range(1, 11), losses, strict=True))
    assert all(np.isfinite(losses))
    # Rows 0..2 are all the first population has: the first loss is the loss of
    # those rows repeated to 8, i.e. of the 3 rows themselves.
    first = OnlineTrainer(TINY, seed=0)
    assert first.step({k: np.resize(v, (8, *v.shape[1:])) for k, v in populations[0].items()}) == losses[0]
    with pytest.raises(ValueError, match="empty"):
        trainer.fit(lambda n: {k: v[:0] for k, v in populations[0].items()}, steps=1, batch_size=8)


# --- learning on real Heat2D data ----------------------------------------------------

K = 50  # steps ahead; dt = 0.2 dx^2 ~ 1.84e-4 on n = 32
TRAJECTORY = 500  # steps per simulation: 10 pairs (u_s, u_{s+K}) each


def _heat_pairs(seed: int, n_sims: int) -> dict[str, np.ndarray]:
    """Pairs from ``n_sims`` runs with random params, ordered by arrival time.

    The params follow ``Heat2D.random_params`` (diffusivity ~ U(0.25, 1),
    amplitudes ~ N(0, 1) / (m + l)) but are drawn with numpy: a JAX random draw
    compiles for seconds per new shape on XLA:CPU, and the test budget is small.
    """
    sim = Heat2D(n=32, modes=4, max_diffusivity=1.0)
    rng = np.random.default_rng(seed)
    m = np.arange(1, sim.modes + 1)
    params = HeatParams(
        diffusivity=jnp.asarray(rng.uniform(0.25, 1.0, n_sims), jnp.float32),
        amplitudes=jnp.asarray(
            rng.standard_normal((n_sims, sim.modes, sim.modes)) / (m[:, None] + m[None, :]), jnp.float32
        ),
    )
    state = jax.vmap(sim.init, in_axes=(None, 0))(jax.random.key(seed), params)
    advance = jax.jit(jax.vmap(functools.partial(sim.advance, steps=K)))
    snaps = [np.asarray(state.u)]
    for _ in range(TRAJECTORY // K):
        state = advance(state, params)
        snaps.append(np.asarray(state.u))
    u = np.stack(snaps)  # (time, sims, n, n): pair j of every run arrives at time j
    a = np.broadcast_to(np.asarray(params.diffusivity)[None, :, None], (len(snaps) - 1, n_sims, 1))
    return {
        "input": u[:-1].reshape(-1, 32, 32),
        "target": u[1:].reshape(-1, 32, 32),
        "params": np.ascontiguousarray(a.reshape(-1, 1)),
    }


def test_online_training_on_heat2d_beats_persistence_fivefold():
    """200 steps (batch 32) on 16 runs arriving over time; held out: 8 fresh runs.

    Measured while tuning: persistence ~0.27 and the surrogate ~0.015-0.025
    after 200 steps over seeds, so the bound (5x below persistence, ~0.055)
    leaves a margin of at least 2x.
    """
    train, held_out = _heat_pairs(seed=1, n_sims=16), _heat_pairs(seed=2, n_sims=8)
    persistence = float(np.mean(np.sqrt(
        ((held_out["input"] - held_out["target"]) ** 2).sum((1, 2)) / (held_out["target"] ** 2).sum((1, 2))
    )))
    assert persistence > 0.15  # K is long enough for the task not to be trivial

    trainer = OnlineTrainer(SurrogateConfig(), seed=0)
    untrained = float(trainer.evaluate(held_out).mean())
    assert untrained == pytest.approx(persistence, rel=1e-4)  # residual form: starts as persistence

    rng = np.random.default_rng(0)
    n_pairs, arrival_steps, calls = len(train["input"]), 100, [0]

    def sample(batch_size: int) -> dict[str, np.ndarray]:
        calls[0] += 1
        available = max(16, n_pairs * min(calls[0], arrival_steps) // arrival_steps)
        rows = rng.integers(0, available, batch_size)
        return {k: v[rows] for k, v in train.items()}

    losses = trainer.fit(sample, steps=200, batch_size=32)
    error = float(trainer.evaluate(held_out).mean())
    assert error < persistence / 5, (error, persistence)
    assert np.mean(losses[-20:]) < np.mean(losses[:20]) / 10

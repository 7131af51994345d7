"""Loss, optimiser and jitted steps for field surrogates.

A batch is a mapping with ``"input"`` ``(B, H, W)``, ``"target"`` ``(B, H, W)``
and ``"params"`` ``(B, P)`` arrays -- the layout of the replay buffer.

The training loss is the mean over the batch of the *squared* per-sample
relative L2 error, ``||pred - target||^2 / ||target||^2``. It is the metric we
report (relative L2) made smooth at zero, and it weights every sample equally
whatever its amplitude: with a plain MSE, the early, large-amplitude fields of
a decaying trajectory would dominate and the late, small ones (which are most
of the stream) would be fitted poorly.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import optax
from flax import nnx

Batch = Mapping[str, jax.Array]

_TINY = 1e-12


def relative_l2(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Per-sample relative L2 error ``||pred - target|| / ||target||``.

    Args:
        pred: ``(B, ...)`` predictions.
        target: ``(B, ...)`` references, same shape.

    Returns:
        ``(B,)`` errors (the norms run over every axis but the first).

    Raises:
        ValueError: if the shapes differ.

    Example:
        >>> float(relative_l2(jnp.array([[3.0, 0.0]]), jnp.array([[4.0, 0.0]]))[0])
        0.25
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {pred.shape} and {target.shape}")
    axes = tuple(range(1, pred.ndim))
    err = jnp.sum((pred - target) ** 2, axis=axes)
    ref = jnp.sum(target**2, axis=axes)
    return jnp.sqrt(err / (ref + _TINY))


def relative_mse_loss(model: nnx.Module, batch: Batch) -> jax.Array:
    """Mean squared relative L2 error of ``model`` on ``batch`` (the training loss)."""
    pred = model(batch["input"], batch["params"])
    return jnp.mean(relative_l2(pred, batch["target"]) ** 2)


def make_optimizer(
    model: nnx.Module,
    learning_rate: float = 3e-3,
    *,
    warmup_steps: int = 20,
    decay_steps: int | None = 1500,
    final_learning_rate_factor: float = 0.1,
    clip_norm: float | None = 1.0,
    weight_decay: float = 0.0,
) -> nnx.Optimizer:
    """Adam(W) with linear warm-up, optional cosine decay and gradient clipping.

    Online training has no fixed end, so after ``warmup_steps + decay_steps``
    the rate stays at ``learning_rate * final_learning_rate_factor`` instead of
    going to zero (``decay_steps=None`` keeps it at ``learning_rate``).

    Equal arguments give the same optax transformation object: it is static
    in the optimiser's graph, so ``train_step`` is compiled once per model
    shape and optimiser setting, not once per optimiser built.

    Args:
        model: the module whose ``nnx.Param`` variables are optimised.
        learning_rate: peak learning rate.
        warmup_steps: steps of linear warm-up from zero.
        decay_steps: length of the cosine decay after warm-up, or ``None``.
        final_learning_rate_factor: rate after the decay, as a fraction of the peak.
        clip_norm: global gradient-norm clip, or ``None`` for none.
        weight_decay: decoupled weight decay (AdamW); ``0`` is plain Adam.

    Returns:
        An ``nnx.Optimizer`` over ``nnx.Param``.

    Raises:
        ValueError: for a non-positive learning rate or negative step counts.
    """
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
    if warmup_steps < 0 or (decay_steps is not None and decay_steps < 1):
        raise ValueError(f"need warmup_steps >= 0 and decay_steps >= 1 or None, got {warmup_steps}, {decay_steps}")
    tx = _transformation(learning_rate, warmup_steps, decay_steps, final_learning_rate_factor, clip_norm, weight_decay)
    return nnx.Optimizer(model, tx, wrt=nnx.Param)


@functools.lru_cache(maxsize=64)
def _transformation(
    learning_rate: float,
    warmup_steps: int,
    decay_steps: int | None,
    final_learning_rate_factor: float,
    clip_norm: float | None,
    weight_decay: float,
) -> optax.GradientTransformation:
    pieces = []
    boundaries = []
    if warmup_steps > 0:
        pieces.append(optax.linear_schedule(0.0, learning_rate, warmup_steps))
        boundaries.append(warmup_steps)
    if decay_steps is None:
        pieces.append(optax.constant_schedule(learning_rate))
    else:
        pieces.append(optax.cosine_decay_schedule(learning_rate, decay_steps, alpha=final_learning_rate_factor))
    schedule = optax.join_schedules(pieces, boundaries) if len(pieces) > 1 else pieces[0]
    adam = optax.adamw(schedule, weight_decay=weight_decay) if weight_decay else optax.adam(schedule)
    return optax.chain(optax.clip_by_global_norm(clip_norm), adam) if clip_norm is not None else adam


@nnx.jit
def train_step(model: nnx.Module, optimizer: nnx.Optimizer, batch: Batch) -> jax.Array:
    """One optimiser step on ``batch``; updates ``model`` and ``optimizer`` in place.

    Returns:
        The batch loss (mean squared relative L2) before the update, a scalar.
    """
    loss, grads = nnx.value_and_grad(relative_mse_loss)(model, batch)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def eval_step(model: nnx.Module, batch: Batch) -> jax.Array:
    """Per-sample relative L2 error ``(B,)`` of ``model`` on ``batch`` (no update)."""
    return relative_l2(model(batch["input"], batch["params"]), batch["target"])


@nnx.jit
def predict(model: nnx.Module, u: jax.Array, params: jax.Array) -> jax.Array:
    """Jitted forward pass: ``(B, H, W)``, ``(B, P)`` -> ``(B, H, W)``."""
    return model(u, params)

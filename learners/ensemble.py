"""A deep-ensemble regression surrogate: mean and uncertainty over a parameter space.

``M`` small MLPs (Lakshminarayanan et al. 2017, "Simple and scalable predictive
uncertainty estimation using deep ensembles") are Flax NNX modules split into a
graph definition and states that are stacked on a leading member axis; a forward
pass ``jax.vmap``s ``nnx.merge`` over that axis, so a loss and an optimiser step
run every member at once in a single jitted call. Training is functional (``nnx.split`` into a graph
definition and parameters; ``jax.lax.scan`` over optax steps), so a whole fit is
one dispatch, which matters when the steerer refits after every few results.

Members differ by initialisation, by their random Fourier input features and by
Poisson bootstrap weights on the data; the spread of their predictions is the
epistemic uncertainty that acquisition functions use.

Inputs are expected in the unit box (see ``acquisition.ParameterSpace.to_unit``);
targets are standardised inside ``fit``.

Example:
    >>> ens = DeepEnsemble(EnsembleConfig(members=4, steps_per_fit=50), dim=2, seed=0)
    >>> x = np.random.default_rng(0).uniform(size=(20, 2)).astype(np.float32)
    >>> loss = ens.fit(x, x.sum(1))
    >>> mean, std = ens.predict(x)
    >>> mean.shape, std.shape
    ((20,), (20,))
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx


@dataclass(frozen=True)
class EnsembleConfig:
    """Hyperparameters of a :class:`DeepEnsemble` (small, hashable, picklable).

    Attributes:
        members: ensemble size ``M``.
        hidden: width of each hidden layer.
        depth: hidden layers.
        fourier_features: random Fourier features of the input (0: feed the raw input).
        fourier_scale: standard deviation of the Fourier frequencies (in cycles per unit box).
        learning_rate: Adam step size.
        weight_decay: decoupled weight decay (AdamW).
        steps_per_fit: optimiser steps each ``fit`` takes (warm-started from the last fit).
        bootstrap: weight each member's data by Poisson(1) counts (bagging).
        clip_norm: largest norm of one member's gradient per step (0: no clipping);
            deep members at a large step can otherwise blow up on a cliff in the data.
    """

    members: int = 8
    hidden: int = 64
    depth: int = 2
    fourier_features: int = 32
    fourier_scale: float = 2.0
    learning_rate: float = 5e-3
    weight_decay: float = 1e-4
    steps_per_fit: int = 300
    bootstrap: bool = True
    clip_norm: float = 0.0

    def __post_init__(self) -> None:
        if self.members < 2:
            raise ValueError(f"an ensemble needs members >= 2 for an uncertainty, got {self.members}")
        if self.hidden < 1 or self.depth < 1 or self.steps_per_fit < 1 or self.fourier_features < 0:
            raise ValueError(
                "hidden, depth and steps_per_fit must be >= 1 and fourier_features >= 0, got "
                f"hidden={self.hidden}, depth={self.depth}, steps_per_fit={self.steps_per_fit}, "
                f"fourier_features={self.fourier_features}"
            )
        if not self.clip_norm >= 0:
            raise ValueError(f"clip_norm must be >= 0 (0: no clipping), got {self.clip_norm}")


class FourierBasis(nnx.Variable):
    """Fixed random frequencies of the input features (not trained)."""


class MLP(nnx.Module):
    """One member: random Fourier features, then ``depth`` SiLU layers, then a scalar.

    Args:
        dim: input dimension.
        config: the ensemble's hyperparameters.
        rngs: random streams (keyword-only, as in Flax NNX).
    """

    def __init__(self, dim: int, config: EnsembleConfig, *, rngs: nnx.Rngs) -> None:
        nf = config.fourier_features
        self.basis = FourierBasis(config.fourier_scale * jax.random.normal(rngs.params(), (dim, nf))) if nf else None
        width = dim + 2 * nf
        layers = []
        for _ in range(config.depth):
            layers.append(nnx.Linear(width, config.hidden, rngs=rngs))
            width = config.hidden
        self.layers = nnx.List(layers)
        self.head = nnx.Linear(width, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.basis is not None:
            z = 2.0 * jnp.pi * x @ self.basis[...]
            x = jnp.concatenate([x, jnp.sin(z), jnp.cos(z)], axis=-1)
        for layer in self.layers:
            x = nnx.silu(layer(x))
        return self.head(x)[..., 0]


def _build(dim: int, config: EnsembleConfig, seed: int) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """Split ``members`` independently initialised MLPs and stack their states on a leading axis.

    This split-merge form is what ``nnx.split_rngs`` + ``nnx.vmap`` would build,
    without tracing the constructor under a transform: building members one by one
    costs milliseconds each once JAX's eager operations are compiled (the first
    model in a process pays that, whichever way it is built).
    """
    parts = [nnx.split(MLP(dim, config, rngs=nnx.Rngs(seed * 1_000_003 + i)), nnx.Param, ...) for i in range(config.members)]
    params = jax.tree.map(lambda *a: jnp.stack(a), *[p for _, p, _ in parts])
    rest = jax.tree.map(lambda *a: jnp.stack(a), *[r for _, _, r in parts])
    return parts[0][0], params, rest


def _members_forward(graphdef: nnx.GraphDef, params: nnx.State, rest: nnx.State, x: jax.Array) -> jax.Array:
    """``(M, N)`` predictions of every member (vmapped over the member axis of the state)."""

    def one(p: nnx.State, r: nnx.State) -> jax.Array:
        return nnx.merge(graphdef, p, r)(x)

    return jax.vmap(one)(params, rest)


@functools.partial(jax.jit, static_argnames=("graphdef", "tx", "steps"))
def _fit_steps(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    params: nnx.State,
    rest: nnx.State,
    opt_state: optax.OptState,
    x: jax.Array,
    y: jax.Array,
    w: jax.Array,
    clip_norm: jax.Array,
    steps: int,
) -> tuple[nnx.State, optax.OptState, jax.Array]:
    """``steps`` full-batch AdamW steps on the weighted squared error; returns the last loss.

    Each member's gradient is scaled down to norm ``clip_norm`` when larger (``<= 0``: never).
    """

    def loss_fn(p: nnx.State) -> jax.Array:
        pred = _members_forward(graphdef, p, rest, x)  # (M, N)
        # Sum over members: each member's gradient is its own loss's gradient.
        return jnp.sum(jnp.sum(w * (pred - y[None]) ** 2, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1.0))

    def body(carry: tuple[nnx.State, optax.OptState], _: None) -> tuple[tuple[nnx.State, optax.OptState], jax.Array]:
        p, s = carry
        loss, grads = jax.value_and_grad(loss_fn)(p)
        leaves = jax.tree.leaves(grads)
        norms = jnp.sqrt(sum(jnp.sum(g.reshape(g.shape[0], -1) ** 2, axis=1) for g in leaves))  # (M,)
        scale = jnp.where(clip_norm > 0, jnp.minimum(1.0, clip_norm / jnp.maximum(norms, 1e-12)), 1.0)
        grads = jax.tree.map(lambda g: g * scale.reshape((-1,) + (1,) * (g.ndim - 1)), grads)
        updates, s = tx.update(grads, s, p)
        return (optax.apply_updates(p, updates), s), loss

    (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), None, length=steps)
    return params, opt_state, losses[-1]


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _predict(graphdef: nnx.GraphDef, params: nnx.State, rest: nnx.State, x: jax.Array) -> jax.Array:
    return _members_forward(graphdef, params, rest, x)


@functools.lru_cache(maxsize=None)
def _adamw(learning_rate: float, weight_decay: float) -> optax.GradientTransformation:
    """One transformation object per setting: it is a static argument of the jitted fit,
    so a fresh object per ensemble would compile the fit again for every ensemble."""
    return optax.adamw(learning_rate, weight_decay=weight_decay)


def _padded_size(n: int) -> int:
    """Next power of two >= max(n, 16): padding keeps the jitted fit from recompiling per size."""
    return max(16, 1 << (n - 1).bit_length())


class DeepEnsemble:
    """Deep-ensemble regressor over the unit box (numpy in, numpy out).

    Args:
        config: hyperparameters.
        dim: input dimension.
        seed: seed of initialisation, Fourier features and bootstrap draws.

    Raises:
        ValueError: for ``dim < 1``.
    """

    def __init__(self, config: EnsembleConfig, dim: int, seed: int = 0) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.config = config
        self.dim = dim
        self._graphdef, self._params, self._rest = _build(dim, config, seed)
        self._tx = _adamw(config.learning_rate, config.weight_decay)
        self._opt_state = self._tx.init(self._params)
        self._rng = np.random.default_rng(seed)
        self._y_mean, self._y_scale = 0.0, 1.0
        self.fits = 0
        self.observations = 0

    def fit(self, x: np.ndarray, y: np.ndarray, steps: int | None = None) -> float:
        """Continue training on all data so far (warm start from the last fit).

        Args:
            x: ``(N, dim)`` inputs in the unit box.
            y: ``(N,)`` finite targets.
            steps: optimiser steps (default ``config.steps_per_fit``).

        Returns:
            The last training loss (mean over members, standardised units).

        Raises:
            ValueError: for mismatched shapes, no data or non-finite targets.
        """
        x = np.asarray(x, np.float32)
        y = np.asarray(y, np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim or y.shape != (x.shape[0],) or x.shape[0] == 0:
            raise ValueError(f"expected x (N, {self.dim}) and y (N,) with N >= 1, got x {x.shape} and y {y.shape}")
        if not np.all(np.isfinite(y)):
            raise ValueError(f"targets must be finite; {int(np.sum(~np.isfinite(y)))} of {len(y)} are not")
        n, cap, m = len(y), _padded_size(len(y)), self.config.members
        self._y_mean = float(y.mean())
        self._y_scale = float(y.std()) or 1.0
        xp = np.zeros((cap, self.dim), np.float32)
        yp = np.zeros(cap, np.float32)
        xp[:n], yp[:n] = x, (y - self._y_mean) / self._y_scale
        w = np.zeros((m, cap), np.float32)
        w[:, :n] = self._rng.poisson(1.0, (m, n)) if self.config.bootstrap else 1.0
        self._params, self._opt_state, loss = _fit_steps(
            self._graphdef, self._tx, self._params, self._rest, self._opt_state,
            jnp.asarray(xp), jnp.asarray(yp), jnp.asarray(w), jnp.float32(self.config.clip_norm),
            steps or self.config.steps_per_fit,
        )  # fmt: skip
        self.fits += 1
        self.observations = n
        return float(loss) / m

    def state_dict(self) -> dict[str, Any]:
        """Everything a fit continues from, as plain data (numpy arrays, numbers, a string).

        Parameters, fixed Fourier bases and optimiser moments are the leaves of one
        pytree, in a fixed order; an ensemble built with the same config, ``dim`` and
        ``seed`` has the same tree to put them back into.
        """
        leaves = jax.tree.leaves((self._params, self._rest, self._opt_state))
        return {
            "leaves": [np.asarray(a).copy() for a in leaves],
            "rng": json.dumps(self._rng.bit_generator.state),  # 128-bit integers: a string, not msgpack ints
            "y_mean": self._y_mean,
            "y_scale": self._y_scale,
            "fits": self.fits,
            "observations": self.observations,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` of an ensemble built with the same config, ``dim`` and ``seed``.

        Raises:
            ValueError: if the arrays do not fit this ensemble's parameters.
        """
        tree = (self._params, self._rest, self._opt_state)
        leaves, treedef = jax.tree.flatten(tree)
        new = [np.asarray(a) for a in state["leaves"]]
        got = [a.shape for a in new]
        want = [tuple(np.shape(a)) for a in leaves]
        if got != want:
            raise ValueError(f"the state does not fit this ensemble: expected arrays of shapes {want}, got {got}")
        self._params, self._rest, self._opt_state = jax.tree.unflatten(
            treedef, [jnp.asarray(a, dtype=jnp.asarray(b).dtype) for a, b in zip(new, leaves)]
        )
        self._rng.bit_generator.state = json.loads(state["rng"])
        self._y_mean, self._y_scale = float(state["y_mean"]), float(state["y_scale"])
        self.fits, self.observations = int(state["fits"]), int(state["observations"])

    def members(self, x: np.ndarray) -> np.ndarray:
        """Every member's prediction, ``(M, N)``, in the targets' units.

        Raises:
            ValueError: ``x`` is not ``(N, dim)``.
        """
        x = np.asarray(x, np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected x of shape (N, {self.dim}), got {x.shape}")
        n = len(x)
        padded = np.zeros((_padded_size(n), self.dim), np.float32)
        padded[:n] = x  # a few padded shapes, not one compilation per batch size
        out = _predict(self._graphdef, self._params, self._rest, jnp.asarray(padded))
        return np.asarray(out)[:, :n] * self._y_scale + self._y_mean

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ensemble mean and standard deviation (epistemic uncertainty), each ``(N,)``.

        Raises:
            ValueError: for ``x`` not of shape ``(N, dim)``.
        """
        preds = self.members(x)
        return preds.mean(0), preds.std(0)

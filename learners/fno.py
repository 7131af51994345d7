"""A 2D Fourier Neural Operator (Li et al., ICLR 2021) for periodic fields, in Flax NNX.

``FNO2D`` maps a field ``(B, H, W)`` and a vector of run parameters ``(B, P)``
to the field some fixed time later, the same interface as ``ConvSurrogate``, so
``OnlineTrainer`` trains either. The layers:

* **Lifting**: a pointwise linear map from ``1 + P`` input channels (the field,
  and the parameters broadcast over the grid) to ``width`` channels.
* **Fourier layers**: ``x <- gelu(K x + W x)`` where ``K`` multiplies the lowest
  ``modes x modes`` Fourier modes (both signs of ``k_x``, the non-negative
  ``k_y`` of an ``rfft2``) by learned complex ``width x width`` matrices and
  drops the rest, and ``W`` is pointwise linear. The FFT makes the layer
  periodic and independent of the grid size, as the physics is.
* **Projection**: pointwise ``width -> hidden -> 1`` with a GELU.

The output is added to the input (a residual step, so an untrained operator is
near the persistence forecast), and fields are divided by ``field_scale``
before the network and multiplied back after, to keep activations near unit size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import jax
import jax.numpy as jnp
from flax import nnx


class SpectralConv2d(nnx.Module):
    """Multiply the lowest Fourier modes of a ``(B, H, W, C)`` field by learned complex matrices.

    The complex weights are stored as real and imaginary ``nnx.Param`` arrays so
    that optimisers and checkpoints see only real numbers.

    Args:
        channels: input and output channels.
        modes: Fourier modes kept per direction (``k_x`` in ``[-modes, modes)``,
            ``k_y`` in ``[0, modes)``); needs ``2 * modes <= H`` and ``modes <= W // 2 + 1``.
        rngs: random streams for initialisation (keyword-only).
    """

    def __init__(self, channels: int, modes: int, *, rngs: nnx.Rngs):
        self.modes = modes
        scale = 1.0 / channels
        shape = (2 * modes, modes, channels, channels)
        # One flat draw, reshaped: a multi-dimensional draw compiles slowly on XLA:CPU.
        size = math.prod(shape)
        self.w_re = nnx.Param(scale * jax.random.uniform(rngs.params(), (size,)).reshape(shape))
        self.w_im = nnx.Param(scale * jax.random.uniform(rngs.params(), (size,)).reshape(shape))

    def __call__(self, x: jax.Array) -> jax.Array:
        """Return ``K x`` for ``x`` of shape ``(B, H, W, C)`` (same shape).

        Raises:
            ValueError: if the grid is too small for ``modes``.
        """
        b, h, w, c = x.shape
        m = self.modes
        if 2 * m > h or m > w // 2 + 1:
            raise ValueError(f"SpectralConv2d with modes={m} needs H >= {2 * m} and W >= {2 * m - 2}, got {h}x{w}")
        x_hat = jnp.fft.rfft2(x, axes=(1, 2))
        low = jnp.concatenate([x_hat[:, :m, :m], x_hat[:, h - m :, :m]], axis=1)  # (B, 2m, m, C)
        weights = self.w_re.get_value() + 1j * self.w_im.get_value()
        out = jnp.einsum("bxyi,xyio->bxyo", low, weights)
        y_hat = jnp.zeros((b, h, w // 2 + 1, c), dtype=x_hat.dtype)
        y_hat = y_hat.at[:, :m, :m].set(out[:, :m]).at[:, h - m :, :m].set(out[:, m:])
        return jnp.fft.irfft2(y_hat, s=(h, w), axes=(1, 2)).astype(x.dtype)


class FourierLayer(nnx.Module):
    """``gelu(K x + W x)``: a spectral convolution plus a pointwise linear bypass."""

    def __init__(self, channels: int, modes: int, *, activate: bool, rngs: nnx.Rngs):
        self.spectral = SpectralConv2d(channels, modes, rngs=rngs)
        self.pointwise = nnx.Linear(channels, channels, rngs=rngs)
        self.activate = activate

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.spectral(x) + self.pointwise(x)
        return jax.nn.gelu(y) if self.activate else y


class FNO2D(nnx.Module):
    """Fourier Neural Operator: field ``(B, H, W)`` and parameters ``(B, P)`` -> field ``(B, H, W)``.

    Args:
        modes: Fourier modes per direction in every layer.
        width: channels of the Fourier layers.
        depth: number of Fourier layers (the last has no activation, as in Li et al.).
        n_params: length of the parameter vector (0: unconditioned).
        hidden: channels of the projection's hidden layer.
        field_scale: typical size of the field; inputs are divided by it and
            the predicted increment multiplied by it.
        rngs: random streams for initialisation (keyword-only).

    Raises:
        ValueError: for non-positive sizes or ``field_scale``.
    """

    def __init__(
        self,
        modes: int = 8,
        width: int = 24,
        depth: int = 4,
        n_params: int = 2,
        hidden: int = 64,
        field_scale: float = 1.0,
        *,
        rngs: nnx.Rngs,
    ):
        if min(modes, width, depth, hidden) < 1 or n_params < 0 or not field_scale > 0:
            raise ValueError(
                "FNO2D needs modes, width, depth, hidden >= 1, n_params >= 0 and field_scale > 0; got "
                f"modes={modes}, width={width}, depth={depth}, hidden={hidden}, n_params={n_params}, "
                f"field_scale={field_scale}"
            )
        self.n_params = n_params
        self.field_scale = field_scale
        self.lift = nnx.Linear(1 + n_params, width, rngs=rngs)
        self.layers = nnx.List(
            [FourierLayer(width, modes, activate=i < depth - 1, rngs=rngs) for i in range(depth)]
        )
        self.project_hidden = nnx.Linear(width, hidden, rngs=rngs)
        self.project_out = nnx.Linear(hidden, 1, kernel_init=nnx.initializers.zeros_init(), rngs=rngs)

    def __call__(self, u: jax.Array, params: jax.Array) -> jax.Array:
        """Predict the field at the later time.

        Args:
            u: ``(B, H, W)`` fields.
            params: ``(B, P)`` run parameters, ``P = n_params``.

        Returns:
            ``(B, H, W)`` predictions.

        Raises:
            ValueError: if ``params`` has the wrong length or batch size.
        """
        b, h, w = u.shape
        if params.shape != (b, self.n_params):
            raise ValueError(f"FNO2D expects params of shape ({b}, {self.n_params}), got {params.shape}")
        x = (u / self.field_scale)[..., None]
        p = jnp.broadcast_to(params[:, None, None, :], (b, h, w, self.n_params)).astype(x.dtype)
        x = self.lift(jnp.concatenate([x, p], axis=-1))
        for layer in self.layers:
            x = layer(x)
        delta = self.project_out(jax.nn.gelu(self.project_hidden(x)))[..., 0]
        return u + self.field_scale * delta


@dataclass(frozen=True)
class FNOConfig:
    """Hyperparameters of an ``FNO2D``; a ``ModelFactory`` for ``OnlineTrainer`` (picklable).

    Example:
        >>> from coupler.learners.online import OnlineTrainer
        >>> trainer = OnlineTrainer(FNOConfig(modes=4, width=8, depth=2), seed=0)
    """

    modes: int = 8
    width: int = 24
    depth: int = 4
    n_params: int = 2
    hidden: int = 64
    field_scale: float = 1.0

    def build(self, seed: int = 0) -> FNO2D:
        """Initialise an ``FNO2D`` with these hyperparameters from ``seed``."""
        return FNO2D(**asdict(self), rngs=nnx.Rngs(seed))

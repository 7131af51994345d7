"""Convolutional surrogate of a K-step-ahead field map, conditioned on run parameters.

``ConvSurrogate`` learns ``u(s) -> u(s + K)`` for fields on a regular grid with
zero (homogeneous Dirichlet) boundary values, given a small vector of run
parameters (e.g. the diffusivity of ``coupler.physics.Heat2D``). It is built for
the structure of diffusion-like problems:

* **Linear in u, modulated by the parameters (FiLM).** With the default
  ``activation=None`` every layer acting on the field is a bias-free
  convolution, and the only nonlinearity is a small MLP of the parameters that
  scales the channels of each layer. The surrogate is then a linear operator on
  ``u`` whose coefficients depend on ``params`` -- exactly the form of the true
  K-step map of a linear PDE, ``u(s + K) = P(a) u(s)``. Being linear it is
  scale-equivariant (``f(c u) = c f(u)``), so it generalises across field
  amplitudes it never saw without any normalisation.
* **Residual.** It predicts ``u(s + K) - u(s)``; the last convolution starts at
  zero, so an untrained surrogate is the persistence forecast.
* **Zero padding.** ``'SAME'`` convolutions pad with zeros, which is exactly the
  Dirichlet value outside the interior grid of ``Heat2D``.
* **Patches (space-to-depth).** The field is cut into ``patch x patch`` cells
  stacked as channels before the convolutions (and put back after), so the
  network runs on a ``patch``-times coarser grid: on XLA:CPU a convolution
  costs about the same per grid point for 4 or 16 channels, so ``patch=2``
  makes a step ~4x cheaper and doubles the receptive field. Zero padding of
  the coarse grid is still zero padding of the fine one.

With ``activation='gelu'`` (or any ``jax.nn`` name) the layers become nonlinear;
the field is then divided by its per-sample RMS before the network and the
increment multiplied back after, so the surrogate stays scale-equivariant.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

Activation = Callable[[jax.Array], jax.Array]


def _lecun_normal_flat(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """LeCun-normal initialiser (truncated at 2 sigma, fan-in = all axes but the last).

    The same distribution as ``nnx.initializers.lecun_normal()`` for ``Linear``
    (in, out) and ``Conv`` (H, W, in, out) kernels, but drawn as a flat vector
    and reshaped: XLA:CPU compiles a multi-dimensional threefry draw (with
    ``jax_threefry_partitionable``, the default) several times more slowly, and
    an initialiser runs eagerly, once per distinct shape, when a worker builds
    its model (measured: 6.9 s -> 2.6 s for the default surrogate).
    """
    fan_in = math.prod(shape[:-1])
    std = 1.0 / math.sqrt(fan_in) / 0.87962566103423978  # std of N(0, 1) truncated to [-2, 2]
    flat = jax.random.truncated_normal(key, -2.0, 2.0, (math.prod(shape),), dtype)
    return (flat * std).reshape(shape)


def _activation(name: str | None) -> Activation | None:
    if name is None:
        return None
    fn = getattr(jax.nn, name, None)
    if not callable(fn):
        raise ValueError(f"activation must be None or a jax.nn function name, got {name!r}")
    return fn


def _space_to_depth(u: jax.Array, patch: int) -> jax.Array:
    """``(B, H, W)`` -> ``(B, ceil(H/p), ceil(W/p), p*p)``, zero-padding the far edges.

    The extra cells lie outside the domain, where the Dirichlet value is zero,
    so padding with zeros keeps the boundary condition.
    """
    b, h, w = u.shape
    hp, wp = -(-h // patch), -(-w // patch)
    u = jnp.pad(u, ((0, 0), (0, hp * patch - h), (0, wp * patch - w)))
    u = u.reshape(b, hp, patch, wp, patch).transpose(0, 1, 3, 2, 4)
    return u.reshape(b, hp, wp, patch * patch)


def _depth_to_space(x: jax.Array, patch: int, shape: tuple[int, int]) -> jax.Array:
    """Inverse of ``_space_to_depth``: ``(B, h, w, p*p)`` -> ``(B, H, W)`` cropped to ``shape``."""
    b, hp, wp, _ = x.shape
    x = x.reshape(b, hp, wp, patch, patch).transpose(0, 1, 3, 2, 4).reshape(b, hp * patch, wp * patch)
    return x[:, : shape[0], : shape[1]]


class ParameterFiLM(nnx.Module):
    """MLP from run parameters to per-layer, per-channel scales (FiLM gains).

    The gains are ``affine(p) + MLP(p)``, the MLP's output layer starting at
    zero, so that gains (nearly) affine in the parameters -- the common case for
    diffusion, where the operator depends on ``a * t`` -- are easy to fit, and
    the MLP adds the curvature.

    Args:
        n_params: length of the parameter vector.
        n_layers: how many modulated layers.
        width: channels per layer.
        hidden: hidden units of the MLP.
        rngs: random streams for initialisation (keyword-only).
    """

    def __init__(self, n_params: int, n_layers: int, width: int, hidden: int, *, rngs: nnx.Rngs):
        self.n_layers = n_layers
        self.width = width
        out = n_layers * width
        self.affine = nnx.Linear(n_params, out, kernel_init=_lecun_normal_flat, rngs=rngs)
        self.hidden = nnx.Linear(n_params, hidden, kernel_init=_lecun_normal_flat, rngs=rngs)
        self.out = nnx.Linear(hidden, out, kernel_init=nnx.initializers.zeros_init(), rngs=rngs)

    def __call__(self, params: jax.Array) -> jax.Array:
        """Return gains of shape ``(B, n_layers, width)`` for ``params`` ``(B, P)``."""
        g = self.affine(params) + self.out(jnp.tanh(self.hidden(params)))
        return g.reshape(params.shape[0], self.n_layers, self.width)


class ConvSurrogate(nnx.Module):
    """Predict the field ``K`` steps ahead from the field now and the run parameters.

    Architecture: space-to-depth by ``patch``; a bias-free lifting convolution
    ``patch**2 -> width``; ``depth`` residual blocks
    ``h <- h + gain_i(params) * conv_i(h)``; a bias-free projection
    ``width -> patch**2`` initialised at zero; depth-to-space; output
    ``u + increment``. Every convolution uses zero ``'SAME'`` padding
    (Dirichlet boundaries). Fields whose sides are not multiples of ``patch``
    are zero-padded on the far side and cropped back.

    Args:
        width: channels of the hidden field.
        depth: number of modulated residual blocks (the receptive field radius is
            about ``(depth + 2) * (kernel_size // 2) * patch`` grid points).
        kernel_size: odd convolution kernel size.
        patch: side of the cells stacked into channels (1: no patching).
        n_params: length of the parameter vector (1 for ``Heat2D``'s diffusivity).
        hidden: hidden units of the parameter MLP.
        activation: ``None`` for a surrogate linear in ``u`` (default, right for
            linear PDEs), or the name of a ``jax.nn`` activation applied after each
            block, in which case inputs are RMS-normalised per sample.
        params_shift: subtracted from ``params`` before the MLP.
        params_scale: ``params`` are divided by it after the shift (bring them to
            order one, e.g. shift 0.625, scale 0.375 for ``a ~ U(0.25, 1)``).
        rngs: random streams for initialisation (keyword-only).

    Raises:
        ValueError: for a non-positive width, depth, hidden size, parameter count
            or patch, an even kernel size, a zero ``params_scale`` or an unknown
            activation.

    Example:
        >>> model = ConvSurrogate(width=8, depth=2, rngs=nnx.Rngs(0))
        >>> model(jnp.ones((2, 16, 16)), jnp.ones((2, 1))).shape
        (2, 16, 16)
    """

    def __init__(
        self,
        *,
        width: int = 16,
        depth: int = 4,
        kernel_size: int = 3,
        patch: int = 2,
        n_params: int = 1,
        hidden: int = 32,
        activation: str | None = None,
        params_shift: float = 0.0,
        params_scale: float = 1.0,
        rngs: nnx.Rngs,
    ):
        if width < 1 or depth < 1 or n_params < 1 or hidden < 1:
            raise ValueError(
                f"width, depth, n_params and hidden must be >= 1, got width={width}, "
                f"depth={depth}, n_params={n_params}, hidden={hidden}"
            )
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
        if patch < 1:
            raise ValueError(f"patch must be >= 1, got {patch}")
        if params_scale == 0:
            raise ValueError("params_scale must be non-zero")
        self.n_params = n_params
        self.patch = patch
        self.params_shift = params_shift
        self.params_scale = params_scale
        self.activation = _activation(activation)
        k = (kernel_size, kernel_size)
        conv = dict(padding="SAME", use_bias=False, rngs=rngs)
        cells = patch * patch
        self.lift = nnx.Conv(cells, width, k, kernel_init=_lecun_normal_flat, **conv)
        self.blocks = nnx.List(
            [nnx.Conv(width, width, k, kernel_init=_lecun_normal_flat, **conv) for _ in range(depth)]
        )
        self.project = nnx.Conv(width, cells, k, kernel_init=nnx.initializers.zeros_init(), **conv)
        self.film = ParameterFiLM(n_params, depth, width, hidden, rngs=rngs)

    def __call__(self, u: jax.Array, params: jax.Array) -> jax.Array:
        """Map fields ``u`` ``(B, H, W)`` and parameters ``(B, n_params)`` to ``(B, H, W)``.

        Raises:
            ValueError: if the shapes do not match ``(B, H, W)`` and ``(B, n_params)``.
        """
        if u.ndim != 3 or params.shape != (u.shape[0], self.n_params):
            raise ValueError(
                f"expected u (B, H, W) and params (B, {self.n_params}), "
                f"got u {u.shape} and params {params.shape}"
            )
        if self.activation is not None:
            # A nonlinear map is not scale-equivariant by itself: feed it unit-RMS
            # fields and scale the increment back.
            rms = jnp.sqrt(jnp.mean(u**2, axis=(1, 2), keepdims=True) + 1e-12)
        else:
            rms = jnp.ones((u.shape[0], 1, 1), u.dtype)
        gains = self.film((params - self.params_shift) / self.params_scale)
        h = self.lift(_space_to_depth(u / rms, self.patch))
        for i, block in enumerate(self.blocks):
            h = h + gains[:, i, None, None, :] * block(h)
            if self.activation is not None:
                h = self.activation(h)
        increment = _depth_to_space(self.project(h), self.patch, u.shape[1:])
        return u + rms * increment

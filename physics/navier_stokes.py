"""Incompressible 2D Navier-Stokes in vorticity form, pseudo-spectral on a periodic box.

Solves, on ``[0, 2 pi)^2`` with periodic boundaries,

    dw/dt + u . grad(w) = nu lap(w) - alpha w + f,    f = -A k_f cos(k_f y),

for the vorticity ``w = dv/dx - du/dy``; the velocity comes from the stream
function ``psi`` with ``lap(psi) = -w``, ``u = dpsi/dy``, ``v = -dpsi/dx``.
``f`` is the curl of the Kolmogorov body force ``(A sin(k_f y), 0)`` and
``alpha`` a linear (Ekman) drag that keeps forced runs statistically steady.

Space is Fourier pseudo-spectral: derivatives are exact on the ``n x n`` grid's
modes, and the advection product is dealiased by the 2/3 rule (modes with
``|k_x|`` or ``|k_y|`` above ``n/3`` are zeroed), so a resolved smooth flow
converges faster than any power of ``n``. Time uses the classical fourth-order
Runge-Kutta scheme on the integrating-factor form (Canuto et al., *Spectral
Methods: Fundamentals in Single Domains*, 2006, Sec. 4.4): the linear terms
``-nu |k|^2 - alpha`` are integrated exactly, so viscosity sets no step limit
and a flow with no nonlinear term (the Taylor-Green vortex) decays exactly.
Only advection limits the step (CFL, ``max|u| dt / dx`` below about 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp


class NavierStokesParams(NamedTuple):
    """Parameters of one run (scalars; stack them for an ensemble).

    Attributes:
        viscosity: kinematic viscosity ``nu > 0``.
        forcing_amplitude: ``A`` of the Kolmogorov force ``(A sin(k_f y), 0)``.
        drag: linear drag coefficient ``alpha >= 0``.
    """

    viscosity: jax.Array
    forcing_amplitude: jax.Array
    drag: jax.Array


class NavierStokesState(NamedTuple):
    """State of one run: the vorticity on the grid, the simulated time, the step count."""

    w: jax.Array
    t: jax.Array
    step: jax.Array


@dataclass(frozen=True)
class NavierStokes2D:
    """Pseudo-spectral 2D Navier-Stokes (pure, jit-able, vmap-able over params and state).

    Args:
        n: grid points per side (even, the field is ``n x n``).
        dt: time step.
        forcing_wavenumber: ``k_f`` of the Kolmogorov force (an integer: periodic).
        init_peak: wavenumber where the random initial vorticity's spectrum peaks.
        init_rms: root-mean-square of the random initial vorticity.
        dealias: ``"truncate"`` (the 2/3 rule: modes above ``n/3`` get no advection
            term) or ``"pad"`` (the 3/2 rule: the product is formed on a ``3n/2`` grid, so
            every mode below ``n/2`` gets its exact, alias-free advection term; needs
            ``n`` divisible by 4).

    Raises:
        ValueError: for an odd or too small ``n``, an unknown ``dealias`` (or ``"pad"``
            with ``n`` not divisible by 4), a non-positive ``dt``,
            ``forcing_wavenumber`` outside ``[0, n/3]`` or a bad initial spectrum.

    Example:
        >>> sim = NavierStokes2D(n=32)
        >>> p = sim.random_params(jax.random.key(0))
        >>> s = sim.advance(sim.init(jax.random.key(1), p), p, 10)
        >>> s.w.shape
        (32, 32)
    """

    n: int = 32
    dt: float = 0.02
    forcing_wavenumber: int = 4
    init_peak: float = 3.0
    init_rms: float = 2.0
    dealias: str = "truncate"

    def __post_init__(self) -> None:
        if self.n < 8 or self.n % 2:
            raise ValueError(f"NavierStokes2D needs an even n >= 8, got n={self.n}")
        if not self.dt > 0:
            raise ValueError(f"dt must be > 0, got {self.dt}")
        if not 0 <= self.forcing_wavenumber <= self.n // 3:
            raise ValueError(f"forcing_wavenumber must be in [0, n/3={self.n // 3}] (resolved), got {self.forcing_wavenumber}")
        if self.dealias not in ("truncate", "pad") or (self.dealias == "pad" and self.n % 4):
            raise ValueError(f"dealias must be 'truncate' or 'pad' (with n divisible by 4), got {self.dealias!r} for n={self.n}")
        if not (self.init_peak > 0 and self.init_rms >= 0):
            raise ValueError(f"need init_peak > 0 and init_rms >= 0, got {self.init_peak}, {self.init_rms}")

    # -- grid and spectral operators ---------------------------------------------------------
    @property
    def dx(self) -> float:
        """Grid spacing ``2 pi / n``."""
        return 2 * jnp.pi / self.n

    def grid(self) -> tuple[jax.Array, jax.Array]:
        """Coordinates ``(x, y)``, each ``(n, n)``, ``x`` along axis 0."""
        x = jnp.arange(self.n) * self.dx
        return jnp.meshgrid(x, x, indexing="ij")

    def wavenumbers(self) -> tuple[jax.Array, jax.Array]:
        """Integer wavenumbers ``(kx, ky)`` of the ``rfft2`` layout, shape ``(n, n//2 + 1)``."""
        kx = jnp.fft.fftfreq(self.n, 1.0 / self.n)
        ky = jnp.fft.rfftfreq(self.n, 1.0 / self.n)
        return jnp.meshgrid(kx, ky, indexing="ij")

    def dealias_mask(self) -> jax.Array:
        """Modes the advection term may fill (``(n, n//2 + 1)``, 1 or 0).

        ``"truncate"``: ``|kx|, |ky| < n/3`` (the 2/3 rule). ``"pad"``: every mode but
        the Nyquist ones, ``|kx|, |ky| < n/2``.
        """
        kx, ky = self.wavenumbers()
        cut = self.n / 3 if self.dealias == "truncate" else self.n / 2
        return ((jnp.abs(kx) < cut) & (jnp.abs(ky) < cut)).astype(jnp.float32)

    def _to_grid(self, x_hat: jax.Array) -> jax.Array:
        """A spectral field on the product grid (``n``, or ``3n/2`` zero-padded with ``"pad"``)."""
        if self.dealias == "truncate":
            return jnp.fft.irfft2(x_hat, s=(self.n, self.n))
        return spectral_resample_hat(x_hat, self.n, 3 * self.n // 2)

    def _from_grid(self, x: jax.Array) -> jax.Array:
        """The ``rfft2`` on the ``n`` grid's modes of a product formed by ``_to_grid``."""
        if self.dealias == "truncate":
            return jnp.fft.rfft2(x)
        m, keep = x.shape[-1], self.n // 2
        x_hat = jnp.fft.rfft2(x)[..., :keep]
        rows = [x_hat[..., :keep, :], jnp.zeros(x_hat.shape[:-2] + (1, keep), x_hat.dtype), x_hat[..., m - keep + 1 :, :]]
        out = jnp.concatenate(rows, axis=-2)
        # The n grid's modes, its Nyquist column and row zero (the mask drops them anyway).
        return jnp.concatenate([out, jnp.zeros(out.shape[:-1] + (1,), out.dtype)], axis=-1) * (self.n / m) ** 2

    def velocity(self, w_hat: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Velocity ``(u, v)`` on the grid from the vorticity's ``rfft2``."""
        kx, ky = self.wavenumbers()
        k2 = kx**2 + ky**2
        psi_hat = w_hat / jnp.where(k2 == 0, 1.0, k2)  # the mean of psi is free: set it to 0
        u = jnp.fft.irfft2(1j * ky * psi_hat, s=(self.n, self.n))
        v = jnp.fft.irfft2(-1j * kx * psi_hat, s=(self.n, self.n))
        return u, v

    def forcing(self, params: NavierStokesParams) -> jax.Array:
        """Curl of the Kolmogorov force on the grid, ``-A k_f cos(k_f y)``."""
        _, y = self.grid()
        k = self.forcing_wavenumber
        return -params.forcing_amplitude * k * jnp.cos(k * y)

    def nonlinear(self, w_hat: jax.Array, f_hat: jax.Array) -> jax.Array:
        """Spectral right-hand side without the linear terms: ``-(u . grad w)^ + f^``, dealiased."""
        kx, ky = self.wavenumbers()
        psi_hat = w_hat / jnp.where(kx**2 + ky**2 == 0, 1.0, kx**2 + ky**2)
        u, v = self._to_grid(1j * ky * psi_hat), self._to_grid(-1j * kx * psi_hat)
        wx, wy = self._to_grid(1j * kx * w_hat), self._to_grid(1j * ky * w_hat)
        return -self.dealias_mask() * self._from_grid(u * wx + v * wy) + f_hat

    # -- protocol ---------------------------------------------------------------------------
    def random_params(
        self,
        key: jax.Array,
        viscosity_range: tuple[float, float] = (0.01, 0.05),
        amplitude_range: tuple[float, float] = (0.5, 2.0),
        drag: float = 0.1,
    ) -> NavierStokesParams:
        """Draw a viscosity (log-uniform) and a forcing amplitude (uniform).

        Args:
            key: JAX PRNG key.
            viscosity_range: bounds of the log-uniform viscosity.
            amplitude_range: bounds of the uniform forcing amplitude.
            drag: the linear drag (fixed).

        Returns:
            A ``NavierStokesParams`` of float32 scalars.

        Raises:
            ValueError: for an empty or non-positive viscosity range or an empty amplitude range.
        """
        (vlo, vhi), (alo, ahi) = viscosity_range, amplitude_range
        if not (0 < vlo <= vhi and alo <= ahi and drag >= 0):
            raise ValueError(
                f"need 0 < viscosity lo <= hi, amplitude lo <= hi and drag >= 0; got {viscosity_range}, "
                f"{amplitude_range}, {drag}"
            )
        k_v, k_a = jax.random.split(key)
        log_nu = jax.random.uniform(k_v, (), minval=jnp.log(vlo), maxval=jnp.log(vhi))
        amp = jax.random.uniform(k_a, (), minval=alo, maxval=ahi)
        return NavierStokesParams(jnp.exp(log_nu), amp, jnp.asarray(drag, jnp.float32))

    def init(self, key: jax.Array, params: NavierStokesParams) -> NavierStokesState:
        """A random vorticity field: Gaussian phases, spectrum ``~ k^4 exp(-2 (k / k_p)^2)``.

        The amplitude spectrum peaks at ``init_peak`` and the field is scaled to
        ``init_rms``; it has zero mean (periodic vorticity must) and no modes
        outside the dealiased band.

        Args:
            key: PRNG key of the random phases.
            params: unused (the initial field does not depend on them); part of the protocol.

        Returns:
            The state at ``t = 0``.
        """
        del params
        kx, ky = self.wavenumbers()
        k = jnp.sqrt(kx**2 + ky**2)
        amp = k**2 * jnp.exp(-((k / self.init_peak) ** 2)) * self.dealias_mask()
        k_re, k_im = jax.random.split(key)
        shape = kx.shape
        noise = jax.random.normal(k_re, shape) + 1j * jax.random.normal(k_im, shape)
        w = jnp.fft.irfft2(amp * noise, s=(self.n, self.n))
        w = w - jnp.mean(w)
        w = w * (self.init_rms / jnp.maximum(jnp.sqrt(jnp.mean(w**2)), 1e-12))
        return NavierStokesState(w.astype(jnp.float32), jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))

    def step(self, state: NavierStokesState, params: NavierStokesParams) -> NavierStokesState:
        """One integrating-factor RK4 step of ``dt``."""
        return self.step_with_closure(state, params, jnp.zeros((), jnp.float32), jnp.ones((), jnp.float32))

    def step_with_closure(
        self,
        state: NavierStokesState,
        params: NavierStokesParams,
        eddy_viscosity: jax.Array,
        advection_gain: jax.Array,
        tendency: jax.Array | None = None,
    ) -> NavierStokesState:
        """One step of the equation with a diagonal spectral closure (a coarse-grid model of unresolved scales).

        Solves ``dw/dt = -(1 + g(k)) (u . grad w)^ - (nu + nu_t(k)) |k|^2 w^ - alpha w^ + f^``:
        ``nu_t`` is a wavenumber-dependent eddy viscosity (negative values are
        backscatter) integrated exactly with the other linear terms, ``g`` rescales
        the advection term mode by mode. ``nu_t = 0, g = 0`` is ``step``.

        Args:
            state: the state.
            params: the run's parameters.
            eddy_viscosity: ``nu_t``, broadcastable to ``(n, n//2 + 1)`` (the ``rfft2`` layout).
            advection_gain: ``1 + g``, broadcastable to ``(n, n//2 + 1)``.
            tendency: an extra spectral tendency ``(n, n//2 + 1)`` added to the right-hand
                side, held fixed over the step (a subgrid model evaluated at the step's start).

        Returns:
            The state one ``dt`` later.
        """
        kx, ky = self.wavenumbers()
        k2 = kx**2 + ky**2
        linear = -(params.viscosity + eddy_viscosity) * k2 - params.drag
        e_half = jnp.exp(linear * (self.dt / 2))
        e_full = e_half * e_half
        f_hat = jnp.fft.rfft2(self.forcing(params))
        if tendency is not None:
            f_hat = f_hat + tendency

        def rhs(w_hat: jax.Array) -> jax.Array:
            return advection_gain * self.nonlinear(w_hat, jnp.zeros_like(w_hat)) + f_hat

        h = self.dt
        w0 = jnp.fft.rfft2(state.w)
        k1 = rhs(w0)
        k2_ = rhs(e_half * (w0 + h / 2 * k1))
        k3 = rhs(e_half * w0 + h / 2 * k2_)
        k4 = rhs(e_full * w0 + h * e_half * k3)
        w1 = e_full * w0 + h / 6 * (e_full * k1 + 2 * e_half * (k2_ + k3) + k4)
        w = jnp.fft.irfft2(w1, s=(self.n, self.n)).astype(state.w.dtype)
        step = state.step + 1
        # t from the step count: no float32 drift over long runs.
        return NavierStokesState(w=w, t=(step * self.dt).astype(state.t.dtype), step=step)

    def gradient_model_tendency(self, w_hat: jax.Array) -> jax.Array:
        """The gradient (Clark) model of the subgrid vorticity flux, as a spectral tendency.

        The flux the grid misses, ``tau_j = bar(u_j w) - bar(u_j) bar(w)``, expanded in the
        filter width ``Delta`` (Clark, Ferziger and Reynolds, J. Fluid Mech. 91, 1979):
        ``tau_j ~ (Delta^2 / 12) d_k u_j d_k w``, here with ``Delta = dx``. Returns
        ``-(d_j tau_j)^`` on the grid's dealiased modes: what the subgrid flux adds to
        ``dw/dt``. It is state-dependent, its products are dealiased as the advection
        term's are, and it costs about one and a half advection terms; a learned
        coefficient per wavenumber scales it (``learners.gradient_closure``).

        Args:
            w_hat: the vorticity's ``rfft2``, ``(n, n//2 + 1)``.

        Returns:
            The tendency in the ``rfft2`` layout, ``(n, n//2 + 1)``.
        """
        kx, ky = self.wavenumbers()
        k2 = kx**2 + ky**2
        psi_hat = w_hat / jnp.where(k2 == 0, 1.0, k2)
        u_hat, v_hat = 1j * ky * psi_hat, -1j * kx * psi_hat
        # Products by the solver's own rule: on the n grid itself their aliasing swamps the low modes.
        g = self._to_grid
        ux, uy, vx, vy = g(1j * kx * u_hat), g(1j * ky * u_hat), g(1j * kx * v_hat), g(1j * ky * v_hat)
        wx, wy = g(1j * kx * w_hat), g(1j * ky * w_hat)
        c = self.dx**2 / 12
        tau_x, tau_y = self._from_grid(c * (ux * wx + uy * wy)), self._from_grid(c * (vx * wx + vy * wy))
        return -self.dealias_mask() * (1j * kx * tau_x + 1j * ky * tau_y)

    def similarity_tendency(self, w_hat: jax.Array, ratio: float = 0.5) -> jax.Array:
        """A scale-similarity model of the subgrid advection, as a spectral tendency.

        The advection term's share that comes from the top band of resolved modes,
        ``N(w) - N(w_<)`` with ``w_<`` the field's modes below ``ratio`` of the grid's
        cutoff ``n/2`` (``N`` the dealiased ``-(u . grad w)^``): Bardina et al.'s idea
        (AIAA 80-1357, 1980) that the interactions just below the cutoff resemble
        those just above it, in spectral form. A learned coefficient per wavenumber
        scales it (``learners.mixed_closure``).

        Args:
            w_hat: the vorticity's ``rfft2``, ``(n, n//2 + 1)``.
            ratio: the test filter's cutoff relative to the grid's (in ``(0, 1)``).

        Returns:
            The tendency in the ``rfft2`` layout, ``(n, n//2 + 1)``.
        """
        kx, ky = self.wavenumbers()
        low = jnp.sqrt(kx**2 + ky**2) < ratio * self.n / 2
        zero = jnp.zeros_like(w_hat)
        return self.nonlinear(w_hat, zero) - self.nonlinear(w_hat * low, zero)

    def advance(self, state: NavierStokesState, params: NavierStokesParams, steps: int) -> NavierStokesState:
        """Take ``steps`` steps inside one ``lax.fori_loop`` (jit this, not a Python loop)."""
        return jax.lax.fori_loop(0, steps, lambda _, s: self.step(s, params), state)

    def observe(self, state: NavierStokesState) -> dict[str, jax.Array]:
        """The published field: ``{"w": (n, n) float32}`` (the vorticity)."""
        return {"w": state.w}

    def cfl(self, state: NavierStokesState) -> jax.Array:
        """Advective Courant number ``max(|u|, |v|) dt / dx`` of ``state`` (keep it below ~1)."""
        u, v = self.velocity(jnp.fft.rfft2(state.w))
        return jnp.maximum(jnp.max(jnp.abs(u)), jnp.max(jnp.abs(v))) * self.dt / self.dx

    def taylor_green(self, k: int, amplitude: float, viscosity: float, drag: float, t: float) -> jax.Array:
        """Analytic Taylor-Green vorticity ``2 a k cos(kx) cos(ky) exp(-(2 nu k^2 + alpha) t)``.

        It is an exact solution of the unforced equation: its advection term
        vanishes identically, so only the linear terms act on it.
        """
        x, y = self.grid()
        return 2 * amplitude * k * jnp.cos(k * x) * jnp.cos(k * y) * jnp.exp(-(2 * viscosity * k**2 + drag) * t)


def spectral_resample_hat(w_hat: jax.Array, m: int, n: int) -> jax.Array:
    """The field on an ``n x n`` grid whose ``m x m`` grid ``rfft2`` is ``w_hat`` (see ``spectral_resample``).

    Args:
        w_hat: ``rfft2`` of real field(s) on an ``m x m`` grid, shape ``(..., m, m//2 + 1)``.
        m: even size of the grid ``w_hat`` belongs to.
        n: even size of the new grid.

    Returns:
        The real field(s) on the ``n x n`` grid, shape ``(..., n, n)``.
    """
    keep = min(m, n) // 2  # modes 0..keep-1 and -(keep-1)..-1 on each axis
    lead = w_hat.shape[:-2]
    cols = w_hat[..., :keep]
    rows = [cols[..., :keep, :], jnp.zeros(lead + (n - 2 * keep + 1, keep), w_hat.dtype), cols[..., m - keep + 1 :, :]]
    out = jnp.concatenate(rows, axis=-2)
    out = jnp.concatenate([out, jnp.zeros(lead + (n, n // 2 + 1 - keep), w_hat.dtype)], axis=-1)
    # rfft2 is unnormalised: the same mode amplitude on n^2 points is (n/m)^2 times larger.
    return jnp.fft.irfft2(out * (n / m) ** 2, s=(n, n))


def spectral_resample(w: jax.Array, n: int) -> jax.Array:
    """A periodic field on an ``n x n`` grid with the same Fourier modes (restriction or prolongation).

    Going to a coarser grid keeps the modes with ``|k_x|, |k_y| < n/2`` and drops
    the rest (the sharp spectral filter of Kochkov et al. 2021's coarse-graining):
    a field whose modes all fit the coarse grid passes unchanged. Going to a finer
    grid pads with zero modes (exact trigonometric interpolation). The Nyquist
    modes of the smaller grid are dropped in both directions: they are not
    symmetric under the real FFT, and a dealiased solver never fills them.

    Args:
        w: real field(s) of shape ``(..., m, m)`` with ``m`` even.
        n: even size of the new grid.

    Returns:
        The field(s) on the ``n x n`` grid, shape ``(..., n, n)``, dtype of ``w``.

    Raises:
        ValueError: for a non-square or odd-sized field or an odd/non-positive ``n``.

    Example:
        >>> sim = NavierStokes2D(n=32)
        >>> w = sim.taylor_green(2, 1.0, 0.0, 0.0, 0.0)
        >>> bool(jnp.allclose(spectral_resample(w, 16), NavierStokes2D(n=16).taylor_green(2, 1.0, 0.0, 0.0, 0.0), atol=1e-5))
        True
    """
    m = w.shape[-1]
    if w.ndim < 2 or w.shape[-2] != m or m % 2:
        raise ValueError(f"spectral_resample needs square fields (..., m, m) with m even, got shape {w.shape}")
    if n < 2 or n % 2:
        raise ValueError(f"spectral_resample needs an even n >= 2, got n={n}")
    if n == m:
        return w
    return spectral_resample_hat(jnp.fft.rfft2(w), m, n).astype(w.dtype)

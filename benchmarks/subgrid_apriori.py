"""How much of a coarse Navier-Stokes grid's subgrid tendency can simple state-dependent models predict? (a priori)

The learned models of ``augmentation_speedup.py`` live inside a coarse solver and
must supply what its grid misses: the subgrid tendency

    s = P[N(w)] - N_c(P w),

with ``N`` the advection term ``-(u . grad w)^`` of the fine field, ``P`` the sharp
spectral restriction to the coarse grid and ``N_c`` the coarse solver's own
(3/2-rule, exact for the coarse modes) term. This script draws developed
Kolmogorov runs on the fine grid and reports, per wavenumber shell of the coarse
grid, the size of ``s`` and its correlation with the features a closure with a
few coefficients per shell could scale: ``k^2 w`` (an eddy viscosity, the
``SpectralClosureNet``), the scale-similarity term (the advection due to the
top half of the resolved band, ``NavierStokes2D.similarity_tendency``) and the
gradient model (``NavierStokes2D.gradient_model_tendency``). A correlation
``r`` in a shell means that the best coefficient there explains ``r^2`` of the
subgrid tendency's variance in it (a priori: before any error feeds back).

Run: ``python benchmarks/subgrid_apriori.py [--coarse 32 --fine 128 --runs 4 --viscosity 0.008,0.016] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from coupler.physics.navier_stokes import NavierStokes2D, spectral_resample

FEATURES = ("eddy-viscosity", "similarity", "gradient")


def subgrid_and_features(fine: NavierStokes2D, coarse: NavierStokes2D, w: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The subgrid tendency ``(n_c, n_c//2 + 1)`` of a fine field and the features ``(3, n_c, n_c//2 + 1)``."""
    zero_f = jnp.zeros((fine.n, fine.n // 2 + 1), jnp.complex64)
    zero_c = jnp.zeros((coarse.n, coarse.n // 2 + 1), jnp.complex64)
    n_fine = jnp.fft.irfft2(fine.nonlinear(jnp.fft.rfft2(w), zero_f), s=(fine.n, fine.n))
    wc_hat = jnp.fft.rfft2(spectral_resample(w, coarse.n))
    s = jnp.fft.rfft2(spectral_resample(n_fine, coarse.n)) - coarse.nonlinear(wc_hat, zero_c)
    kx, ky = coarse.wavenumbers()
    feats = jnp.stack([
        (kx**2 + ky**2) * wc_hat,
        coarse.similarity_tendency(wc_hat),
        coarse.gradient_model_tendency(wc_hat),
    ])
    return s, feats


def shell_table(coarse: NavierStokes2D, s: np.ndarray, feats: np.ndarray, width: float = 2.0) -> list[dict[str, Any]]:
    """Per shell ``[k, k + width)``: the rms of ``s`` and its correlation with every feature (over runs and modes)."""
    kx, ky = coarse.wavenumbers()
    k = np.sqrt(np.asarray(kx) ** 2 + np.asarray(ky) ** 2)
    rows = []
    for lo in np.arange(0.0, coarse.n / 2, width):
        m = (k >= lo) & (k < lo + width)
        a = s[:, m]
        row: dict[str, Any] = {"shell": [float(lo), float(lo + width)], "subgrid_rms": float(np.sqrt(np.mean(np.abs(a) ** 2)))}
        for i, name in enumerate(FEATURES):
            b = feats[:, i][:, m]
            den = np.sqrt(np.sum(np.abs(a) ** 2) * np.sum(np.abs(b) ** 2))
            row[name] = float(np.real(np.sum(a * np.conj(b))) / den) if den > 0 else 0.0
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--coarse", type=int, default=32)
    p.add_argument("--fine", type=int, default=128)
    p.add_argument("--runs", type=int, default=4)
    p.add_argument("--viscosity", default="0.008,0.016")
    p.add_argument("--spinup", type=float, default=15.0, help="time units of fine simulation before the sample")
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    lo, hi = (float(v) for v in args.viscosity.split(","))
    fine = NavierStokes2D(n=args.fine, dt=0.04 * 32 / args.fine)
    coarse = NavierStokes2D(n=args.coarse, dealias="pad")
    keys = jax.random.split(jax.random.key(args.seed), args.runs)
    params = jax.vmap(lambda k: fine.random_params(k, viscosity_range=(lo, hi), amplitude_range=(0.8, 1.2)))(keys)
    steps = round(args.spinup / fine.dt)
    w = jax.jit(jax.vmap(lambda k, q: fine.advance(fine.init(k, q), q, steps).w))(keys, params)
    s, feats = jax.vmap(lambda x: subgrid_and_features(fine, coarse, x))(w)
    zero_c = jnp.zeros((args.coarse, args.coarse // 2 + 1), jnp.complex64)
    resolved = jax.vmap(lambda x: coarse.nonlinear(jnp.fft.rfft2(spectral_resample(x, args.coarse)), zero_c))(w)
    rows = shell_table(coarse, np.asarray(s), np.asarray(feats))
    share = float(jnp.linalg.norm(s) / jnp.linalg.norm(resolved))
    print(f"{args.fine}^2 -> {args.coarse}^2, {args.runs} runs, viscosity {lo}-{hi}: |subgrid| / |resolved advection| = {share:.3f}")
    print(f"{'shell':>8}{'subgrid rms':>13}" + "".join(f"{f:>16}" for f in FEATURES))
    for r in rows:
        lo_k, hi_k = r["shell"]
        print(f"{lo_k:>3.0f}-{hi_k:<4.0f}{r['subgrid_rms']:>13.3g}" + "".join(f"{r[f]:>16.2f}" for f in FEATURES))
    result = {"coarse": args.coarse, "fine": args.fine, "runs": args.runs, "viscosity": [lo, hi],
              "subgrid_share": share, "shells": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])

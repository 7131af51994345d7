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

``--cnn`` adds the question those features leave open: can a rich,
state-dependent model predict ``s`` from the coarse state at all? It draws
``--cnn-runs`` more fine runs, samples ``--samples`` developed snapshots of each
(``--every`` time units apart), trains the periodic CNN of the corrected solver
(``learners.solver_correction.CoarseCorrectionNet``: coarse vorticity, ``log nu``
and the forcing amplitude in, here the subgrid tendency out) on all but
``--holdout`` runs and reports, on the held-out runs, the fraction of the
tendency's variance it explains, ``R^2 = 1 - |s - s_pred|^2 / |s|^2``, overall
and per shell, after each of ``--steps`` optimiser steps and for each of
``--widths`` (a learning curve: R^2 that stops growing with steps and width
means the coarse state lacks the information; R^2 still climbing means compute).

Run: ``python benchmarks/subgrid_apriori.py [--coarse 32 --fine 128 --runs 4 --viscosity 0.008,0.016] [--cnn] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import optax
from flax import nnx

from coupler.learners.solver_correction import CoarseCorrectionNet
from coupler.physics.coarse_graining import subgrid_tendency
from coupler.physics.navier_stokes import NavierStokes2D, spectral_resample

FEATURES = ("eddy-viscosity", "similarity", "gradient")


def subgrid_and_features(fine: NavierStokes2D, coarse: NavierStokes2D, w: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The subgrid tendency ``(n_c, n_c//2 + 1)`` of a fine field and the features ``(3, n_c, n_c//2 + 1)``."""
    s, wc_hat = subgrid_tendency(fine, coarse, w)
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


def sample_pairs(
    fine: NavierStokes2D, coarse: NavierStokes2D, keys: jax.Array, params: Any, spinup: int, samples: int, every: int
) -> tuple[np.ndarray, np.ndarray]:
    """Coarse vorticity and subgrid tendency of developed fine runs, on the coarse grid.

    Args:
        fine: the fine solver.
        coarse: the coarse solver.
        keys: one PRNG key per run (its initial field).
        params: the runs' ``NavierStokesParams``, batched like ``keys``.
        spinup: fine steps before the first sample.
        samples: snapshots per run.
        every: fine steps between snapshots.

    Returns:
        ``(w, s)``, each ``(runs, samples, n_c, n_c)`` real: ``P w`` and the subgrid tendency on the grid.
    """

    def one(key: jax.Array, q: Any) -> tuple[jax.Array, jax.Array]:
        def body(state: Any, _: Any) -> tuple[Any, tuple[jax.Array, jax.Array]]:
            s_hat, wc_hat = subgrid_tendency(fine, coarse, state.w)
            grid = (coarse.n, coarse.n)
            return fine.advance(state, q, every), (jnp.fft.irfft2(wc_hat, s=grid), jnp.fft.irfft2(s_hat, s=grid))

        state = fine.advance(fine.init(key, q), q, spinup)
        return jax.lax.scan(body, state, None, length=samples)[1]

    w, s = jax.jit(jax.vmap(one))(keys, params)
    return np.asarray(w), np.asarray(s)


def explained_variance(coarse: NavierStokes2D, s: np.ndarray, pred: np.ndarray, width: float = 2.0) -> dict[str, Any]:
    """The fraction of the subgrid tendency's variance a prediction explains, overall and per shell.

    ``R^2 = 1 - |s - pred|^2 / |s|^2``, summed over samples and the modes of a shell
    (the tendency of a periodic flow has zero mean, so its variance is ``|s|^2``):
    1 for an exact prediction, 0 for predicting zero, negative for worse than zero.

    Args:
        coarse: the coarse solver (its wavenumbers define the shells).
        s: the subgrid tendency on the grid, ``(..., n_c, n_c)``.
        pred: its prediction, same shape.
        width: shell width ``[k, k + width)``.

    Returns:
        ``{"overall": R^2, "shells": [{"shell": [lo, hi], "r2": R^2, "share": its part of |s|^2}, ...]}``, the
        shells ``[k, k + width)`` below ``n/2`` and then the corners, ``[n/2, n)``.

    Raises:
        ValueError: if the shapes differ.
    """
    if s.shape != pred.shape:
        raise ValueError(f"s and pred must have one shape, got {s.shape} and {pred.shape}")
    s_hat, e_hat = np.fft.rfft2(s), np.fft.rfft2(s - pred)
    # An rfft2 column between 0 and Nyquist stands for two modes (itself and its conjugate).
    n = coarse.n
    weight = np.where((np.arange(n // 2 + 1) > 0) & (np.arange(n // 2 + 1) < n // 2), 2.0, 1.0)
    tot = np.sum(np.abs(s_hat.reshape(-1, n, n // 2 + 1)) ** 2, axis=0) * weight
    err = np.sum(np.abs(e_hat.reshape(-1, n, n // 2 + 1)) ** 2, axis=0) * weight
    kx, ky = coarse.wavenumbers()
    k = np.sqrt(np.asarray(kx) ** 2 + np.asarray(ky) ** 2)
    # The last shell is the square's corners beyond the inscribed circle (n/2 <= |k| <= n/sqrt(2), so [n/2, n)
    # holds them all): a fifth of the modes, and much of the subgrid tendency.
    bounds = [(float(lo), float(lo + width)) for lo in np.arange(0.0, n / 2, width)] + [(n / 2, float(n))]
    shells = []
    for lo, hi in bounds:
        m = (k >= lo) & (k < hi)
        r2 = float(1 - err[m].sum() / tot[m].sum()) if tot[m].sum() > 0 else 0.0
        shells.append({"shell": [lo, hi], "r2": r2, "share": float(tot[m].sum() / tot.sum())})
    return {"overall": float(1 - err.sum() / tot.sum()), "shells": shells}


def fit_cnn(
    coarse: NavierStokes2D,
    train: tuple[np.ndarray, np.ndarray, np.ndarray],
    held_out: tuple[np.ndarray, np.ndarray, np.ndarray],
    *,
    width: int,
    depth: int,
    kernel_size: int,
    checkpoints: tuple[int, ...],
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Train a periodic CNN from coarse vorticity to subgrid tendency; held-out R^2 along the way.

    The network is ``CoarseCorrectionNet`` (the corrected solver's CNN: vorticity,
    ``log nu`` and amplitude in), its output read as the tendency divided by the
    training tendency's rms. Adam at a constant rate (so an intermediate checkpoint
    is the same training stopped early), mean squared error, minibatches drawn with
    the flow's two reflections (``x -> -x`` or ``y -> -y`` with ``w, s -> -w, -s``:
    the advection term commutes with them, so they are exact data).

    Args:
        coarse: the coarse solver (for the shells).
        train: ``(w, params, s)``: ``(N, n_c, n_c)``, ``(N, 3)`` (viscosity, amplitude, drag), ``(N, n_c, n_c)``.
        held_out: the same for the runs it never sees.
        width: hidden channels.
        depth: convolutions.
        kernel_size: odd kernel size.
        checkpoints: increasing optimiser step counts at which it is evaluated.
        batch_size: samples per step.
        learning_rate: Adam's rate.
        seed: weights and minibatches.

    Returns:
        One row per checkpoint: ``steps``, ``weights``, ``train_r2`` (overall) and ``held_out`` (``explained_variance``).

    Raises:
        ValueError: for checkpoints that are not increasing positive step counts.
    """
    if not checkpoints or any(b <= a for a, b in zip((0,) + tuple(checkpoints), checkpoints)):
        raise ValueError(f"checkpoints must be increasing positive step counts, got {checkpoints}")
    w_tr, p_tr, s_tr = (jnp.asarray(a, jnp.float32) for a in train)
    w_scale, s_scale = float(jnp.sqrt(jnp.mean(w_tr**2))), float(jnp.sqrt(jnp.mean(s_tr**2)))
    center = float(jnp.mean(jnp.log(p_tr[:, 0])))
    model = CoarseCorrectionNet(width=width, depth=depth, kernel_size=kernel_size, field_scale=w_scale,
                                log_nu_center=center, rngs=nnx.Rngs(seed))
    graphdef, weights = nnx.split(model)
    n_weights = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(weights))
    opt = optax.adam(learning_rate)

    def predict(weights: Any, w: jax.Array, p: jax.Array) -> jax.Array:
        # The net's output is in units of w_scale; read it as the tendency in units of s_scale.
        return nnx.merge(graphdef, weights)(w, p) * (s_scale / w_scale)

    def loss(weights: Any, w: jax.Array, p: jax.Array, s: jax.Array) -> jax.Array:
        return jnp.mean((predict(weights, w, p) - s) ** 2) / s_scale**2

    # One jitted step driven from Python: the same steps inside a lax.scan were far slower on XLA's CPU
    # convolutions (width 32 on 16^2, 100 steps: about 100 s against 5 s, on the loaded 2-core VM).
    @jax.jit
    def train_step(weights: Any, opt_state: Any, key: jax.Array) -> tuple[Any, Any]:
        k_i, k_x, k_y = jax.random.split(key, 3)
        idx = jax.random.randint(k_i, (batch_size,), 0, w_tr.shape[0])
        w, s = w_tr[idx], s_tr[idx]
        flip_x = jax.random.bernoulli(k_x, 0.5, (batch_size, 1, 1))
        flip_y = jax.random.bernoulli(k_y, 0.5, (batch_size, 1, 1))
        w, s = jnp.where(flip_x, -jnp.flip(w, 1), w), jnp.where(flip_x, -jnp.flip(s, 1), s)
        w, s = jnp.where(flip_y, -jnp.flip(w, 2), w), jnp.where(flip_y, -jnp.flip(s, 2), s)
        grads = jax.grad(loss)(weights, w, p_tr[idx], s)
        updates, opt_state = opt.update(grads, opt_state, weights)
        return optax.apply_updates(weights, updates), opt_state

    batched = jax.jit(predict)

    def predict_all(weights: Any, w: jax.Array, p: jax.Array) -> np.ndarray:
        return np.concatenate([np.asarray(batched(weights, w[i : i + 256], p[i : i + 256])) for i in range(0, w.shape[0], 256)])

    opt_state, key, done, rows = opt.init(weights), jax.random.key(seed + 1), 0, []
    w_ho, p_ho = jnp.asarray(held_out[0], jnp.float32), jnp.asarray(held_out[1], jnp.float32)
    for steps in checkpoints:
        for step_key in jax.random.split(key, steps - done + 1)[1:]:
            weights, opt_state = train_step(weights, opt_state, step_key)
        key, done = jax.random.fold_in(key, steps), steps
        rows.append({
            "steps": steps, "weights": n_weights,
            "train_r2": explained_variance(coarse, np.asarray(s_tr), predict_all(weights, w_tr, p_tr))["overall"],
            "held_out": explained_variance(coarse, np.asarray(held_out[2]), predict_all(weights, w_ho, p_ho)),
        })
    return rows


def cnn_learnability(
    fine: NavierStokes2D, coarse: NavierStokes2D, args: argparse.Namespace, viscosity: tuple[float, float]
) -> dict[str, Any]:
    """The ``--cnn`` measurement: draw runs, split them, fit one CNN per width, print and return the tables.

    Args:
        fine: the fine solver.
        coarse: the coarse solver.
        args: the parsed command line (``cnn_runs``, ``holdout``, ``train_runs``, ``samples``, ``every``, ``widths``, ...).
        viscosity: the viscosity range of the runs.

    Returns:
        ``{"held_out_runs", "samples", "every", "fits": [{"train_runs", "width", "depth", "kernel_size", "curve"}]}``.

    Raises:
        ValueError: if no training run would be left, or ``--train-runs`` asks for more than there are.
    """
    if not 0 < args.holdout < args.cnn_runs:
        raise ValueError(f"need 0 < --holdout < --cnn-runs, got {args.holdout} and {args.cnn_runs}")
    cut = args.cnn_runs - args.holdout
    counts = [int(x) for x in args.train_runs.split(",")] if args.train_runs else [cut]
    if not all(0 < m <= cut for m in counts):
        raise ValueError(f"--train-runs must be in [1, {cut}] (the runs not held out), got {args.train_runs}")
    # Run i has key fold_in(base, i) whatever the count, and the first --holdout runs are the held-out ones: a
    # larger --cnn-runs adds training runs and keeps the held-out set. The base key is one the first table's
    # runs never use.
    base = jax.random.key(args.seed + 1000)
    keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(args.cnn_runs))
    params = jax.vmap(lambda k: fine.random_params(k, viscosity_range=viscosity, amplitude_range=(0.8, 1.2)))(keys)
    w, s = sample_pairs(fine, coarse, keys, params, round(args.spinup / fine.dt), args.samples, max(1, round(args.every / fine.dt)))
    p = np.stack([np.asarray(params.viscosity), np.asarray(params.forcing_amplitude), np.asarray(params.drag)], axis=-1)
    p = np.repeat(p[:, None], args.samples, axis=1)
    h = args.holdout

    def flat(a: np.ndarray, rows: slice) -> np.ndarray:
        return a[rows].reshape((-1,) + a.shape[2:])

    held_out = tuple(flat(a, slice(0, h)) for a in (w, p, s))
    checkpoints = tuple(int(x) for x in args.steps.split(","))
    fits = []
    print(f"CNN, {args.holdout} held-out runs, {args.samples} samples a run ({args.every} apart), "
          f"depth {args.depth}, kernel {args.kernel}, batch {args.batch}, Adam {args.lr}, R^2 per shell held out:")
    share = explained_variance(coarse, held_out[2], np.zeros_like(held_out[2]))["shells"]
    labels = [f"{lo:.0f}-{hi:.0f}" if hi < coarse.n else f"{lo:.0f}+" for lo, hi in (sh["shell"] for sh in share)]
    print(f"{'share of |s|^2 held out':>50}" + "".join(f" {sh['share']:>7.3f}" for sh in share))
    print(f"{'runs':>5}{'width':>6}{'weights':>9}{'steps':>7}{'train R2':>10}{'held-out R2':>13}" + "".join(f"{x:>8}" for x in labels))
    for m in counts:
        train = tuple(flat(a, slice(h, h + m)) for a in (w, p, s))
        for width in (int(x) for x in args.widths.split(",")):
            curve = fit_cnn(coarse, train, held_out, width=width, depth=args.depth, kernel_size=args.kernel,
                            checkpoints=checkpoints, batch_size=args.batch, learning_rate=args.lr, seed=args.seed)
            for r in curve:
                print(f"{m:>5}{width:>6}{r['weights']:>9}{r['steps']:>7}{r['train_r2']:>10.3f}{r['held_out']['overall']:>13.3f}"
                      + "".join(f" {sh['r2']:>7.2f}" for sh in r["held_out"]["shells"]))
            fits.append({"train_runs": m, "width": width, "depth": args.depth, "kernel_size": args.kernel, "curve": curve})
    return {"held_out_runs": args.holdout, "samples": args.samples, "every": args.every, "fits": fits}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--coarse", type=int, default=32)
    p.add_argument("--fine", type=int, default=128)
    p.add_argument("--runs", type=int, default=4)
    p.add_argument("--viscosity", default="0.008,0.016")
    p.add_argument("--spinup", type=float, default=15.0, help="time units of fine simulation before the sample")
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--forcing-wavenumber", type=int, default=4, help="k_f of the Kolmogorov forcing")
    p.add_argument("--json", default="")
    cnn = p.add_argument_group("the CNN's learnability (--cnn)")
    cnn.add_argument("--cnn", action="store_true", help="also train a CNN to predict the subgrid tendency")
    cnn.add_argument("--cnn-runs", type=int, default=24, help="fine runs drawn for it (training + held out)")
    cnn.add_argument("--holdout", type=int, default=8, help="of those, runs it never trains on")
    cnn.add_argument("--samples", type=int, default=12, help="snapshots per run")
    cnn.add_argument("--every", type=float, default=1.0, help="time units between snapshots")
    cnn.add_argument("--train-runs", default="", help="training runs used, one fit each (a data curve; default: all)")
    cnn.add_argument("--widths", default="16,32", help="hidden channels, one fit each")
    cnn.add_argument("--depth", type=int, default=5)
    cnn.add_argument("--kernel", type=int, default=3)
    cnn.add_argument("--steps", default="250,500,1000,2000", help="optimiser steps at which it is evaluated")
    cnn.add_argument("--batch", type=int, default=32)
    cnn.add_argument("--lr", type=float, default=1e-3)
    args = p.parse_args(argv)
    lo, hi = (float(v) for v in args.viscosity.split(","))
    fine = NavierStokes2D(n=args.fine, dt=0.04 * 32 / args.fine, forcing_wavenumber=args.forcing_wavenumber)
    coarse = NavierStokes2D(n=args.coarse, dealias="pad", forcing_wavenumber=args.forcing_wavenumber)
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
              "forcing_wavenumber": args.forcing_wavenumber, "subgrid_share": share, "shells": rows}
    if args.cnn:
        result["cnn"] = cnn_learnability(fine, coarse, args, (lo, hi))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])

"""Space-filling sweeps: stratification, low discrepancy, reproducibility, checkpoints."""

from __future__ import annotations

import numpy as np
from scipy.stats import qmc

from coupler.learners.acquisition import ParameterSpace, SearchData
from coupler.learners.samplers import LatinHypercubeSweep, SobolSweep
from coupler.runtime.control.checkpoints import decode, encode

SPACE = ParameterSpace((0.0,) * 4, (1.0,) * 4)
EMPTY = SearchData(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 4), np.float32))


def _one_per_stratum(pts: np.ndarray) -> bool:
    n = len(pts)
    return all(sorted(np.floor(pts[:, a] * n).astype(int)) == list(range(n)) for a in range(pts.shape[1]))


def test_sobol_prefixes_of_a_power_of_two_hit_every_stratum_of_every_axis() -> None:
    # A scrambled Sobol sequence is a (t, m, s)-net in base 2 (Owen 1995 scrambling keeps it one): its
    # one-dimensional projections are (0, m, 1)-nets, one point in each interval [j/2^m, (j+1)/2^m).
    sweep = SobolSweep(SPACE, seed=5)
    pts = np.concatenate([sweep.propose(n, EMPTY) for n in (3, 5, 24, 32)])  # batch sizes do not matter
    assert _one_per_stratum(pts[:32]) and _one_per_stratum(pts[:64])
    np.testing.assert_array_equal(pts, SobolSweep(SPACE, seed=5).propose(64, EMPTY))
    assert not np.array_equal(pts, SobolSweep(SPACE, seed=6).propose(64, EMPTY))


def test_sobol_fills_the_box_more_evenly_than_random_draws() -> None:
    sobol = SobolSweep(SPACE, seed=0).propose(256, EMPTY)
    random = np.random.default_rng(0).uniform(size=(256, 4))
    # Centred L2 discrepancy (Hickernell 1998): O(log(n)^d / n) against O(1 / sqrt(n)) for random points.
    assert qmc.discrepancy(sobol) < 0.5 * qmc.discrepancy(random)


def test_sweeps_continue_from_their_state_dict_in_the_checkpoint_format() -> None:
    for make in (lambda: SobolSweep(SPACE, seed=2), lambda: LatinHypercubeSweep(SPACE, block=16, seed=2)):
        a = make()
        a.propose(10, EMPTY)
        b = make()
        b.load_state_dict(decode(encode(a.state_dict())))
        np.testing.assert_array_equal(a.propose(20, EMPTY), b.propose(20, EMPTY))
        assert not a.pointless(np.zeros((3, 4)), EMPTY).any()


def test_latin_hypercube_sweep_stratifies_each_block() -> None:
    pts = LatinHypercubeSweep(SPACE, block=16, seed=0).propose(48, EMPTY)
    assert all(_one_per_stratum(pts[i : i + 16]) for i in range(0, 48, 16))

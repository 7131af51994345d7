"""The demos' arguments: the modulation demo's --strategy names each build their own strategy, the sweeps fill the box, and run_demo takes a list."""

from __future__ import annotations

import numpy as np
import pytest

from coupler.demos.modulation import STRATEGIES, make_strategy
from coupler.learners.acquisition import ParameterSpace, SearchData

SPACE = ParameterSpace((0.01, 0.04), (0.05, 0.07), ("F", "k"))


def test_every_name_builds_a_strategy_of_its_own_class() -> None:
    built = {name: type(make_strategy(name, SPACE, budget=16, seed=0)) for name in STRATEGIES}
    assert len(set(built.values())) == len(STRATEGIES), built


@pytest.mark.parametrize("name", ["random", "sobol", "grid"])
def test_a_sweep_proposes_distinct_points_in_the_unit_box_without_a_model(name: str) -> None:
    strategy = make_strategy(name, SPACE, budget=16, seed=3)
    empty = SearchData(np.zeros((0, 2)), np.zeros(0), np.zeros((0, 2)))
    points = np.asarray(strategy.propose(8, empty))
    assert points.shape == (8, 2)
    assert np.all((points >= 0) & (points <= 1))
    assert len({tuple(p) for p in points.round(6)}) == 8


def test_run_demo_refuses_its_arguments_as_one_string() -> None:
    from coupler.demos.registry import run_demo

    with pytest.raises(TypeError, match=r"takes a list of arguments, e.g. \['--quick'\]; got the string '--quick'"):
        run_demo("modulation", "--quick")

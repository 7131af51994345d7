"""The Steerer in-process, free of the runtime: checkpoints, out-of-order answers, overlap arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from coupler.learners.acquisition import ExpectedImprovement, ParameterSpace, RandomSweep
from coupler.learners.ensemble import EnsembleConfig
from coupler.learners.steerer import Steerer, TaskStatus, overlap_seconds
from coupler.runtime.control.checkpoints import decode, encode

SPACE = ParameterSpace((0.02, 0.05), (0.08, 0.07), ("F", "k"))


def test_overlap_seconds_measures_the_intersection_of_two_unions() -> None:
    assert overlap_seconds([(0, 2), (1, 3)], [(2.5, 5)]) == pytest.approx(0.5)
    assert overlap_seconds([(0, 1)], [(1, 2)]) == 0.0
    assert overlap_seconds([(0, 10)], [(1, 2), (1.5, 3), (5, 6)]) == pytest.approx(3.0)

def _decide(steerer: Steerer, rounds: int, batch: int) -> list[np.ndarray]:
    """Propose, answer with a known function, refit; the points proposed, in order."""
    out = []
    for _ in range(rounds):
        for rec in steerer.propose(batch):
            u = steerer.space.to_unit(rec.x[None])[0]
            steerer.record(rec.task, TaskStatus.OK, float(np.sin(6 * u[0]) * u[1]), finished=float(rec.task + 1))
            out.append(rec.x)
        steerer.refit()
    return out

def test_steerer_state_survives_the_checkpoint_format_and_continues_exactly() -> None:
    def make() -> Steerer:
        strategy = ExpectedImprovement(SPACE, initial=4, candidates=64, local=16, seed=3)
        return Steerer(SPACE, strategy, EnsembleConfig(members=2, hidden=8, depth=1, fourier_features=4, steps_per_fit=10), seed=1)

    first = make()
    _decide(first, 3, 2)  # past the initial design: the model and the generator both matter
    pending = first.propose(2)  # proposed and never answered: pending at the checkpoint
    state = decode(encode(first.state_dict()))  # the durable checkpoints' msgpack format, no pickle
    second = make()
    second.load_state_dict(state)
    assert [t for t in second.pending()] == [r.task for r in pending]
    np.testing.assert_array_equal(first.model.members(first.data().x), second.model.members(second.data().x))
    for rec in pending:
        for s in (first, second):
            s.record(rec.task, TaskStatus.OK, 0.5, finished=100.0 + rec.task)
        for s in (first, second):
            s.refit()
    # Same generator, same surrogate, same data: the very same next decisions.
    np.testing.assert_array_equal(np.stack(_decide(first, 2, 2)), np.stack(_decide(second, 2, 2)))
    with pytest.raises(ValueError, match="surrogate"):
        Steerer(SPACE, RandomSweep(SPACE), None).load_state_dict(state)

def test_steerer_adopts_answers_to_tasks_an_earlier_incarnation_sent() -> None:
    steerer = Steerer(SPACE, RandomSweep(SPACE, seed=0))
    steerer.propose(2)  # tasks 0 and 1
    with pytest.raises(KeyError, match="task 5"):
        steerer.record(5, TaskStatus.OK, 1.0)
    # After a restore, the pool answers task 3 (sent after the checkpoint) and task 1 in the
    # version the channel kept: the parameters the pool ran are the truth.
    steerer.record(3, TaskStatus.OK, 0.7, x=np.array([0.03, 0.06], np.float32), started=1.0)
    steerer.record(1, TaskStatus.OK, 0.2, x=np.array([0.05, 0.055], np.float32))
    np.testing.assert_array_equal(steerer.tasks[3].x, np.float32([0.03, 0.06]))
    np.testing.assert_array_equal(steerer.tasks[1].x, np.float32([0.05, 0.055]))
    assert [r.task for r in steerer.propose(1)] == [4]  # new ids go past every id known


def test_a_gp_steerer_continues_exactly_after_a_checkpoint() -> None:
    from coupler.learners.gp import GPConfig

    def make() -> Steerer:
        return Steerer(SPACE, ExpectedImprovement(SPACE, initial=4, candidates=64, local=16, seed=3), GPConfig(), seed=1)

    first = make()
    _decide(first, 4, 2)
    second = make()
    second.load_state_dict(decode(encode(first.state_dict())))
    np.testing.assert_array_equal(np.stack(_decide(first, 2, 2)), np.stack(_decide(second, 2, 2)))

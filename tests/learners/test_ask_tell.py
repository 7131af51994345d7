"""Ask/tell generators steer through AskTellSteerer: Optuna's ask/tell, out-of-order results, cancellation, checkpoints."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import optuna
import pytest

from coupler.learners.acquisition import ParameterSpace
from coupler.learners.ask_tell import AskTellSteerer, Outcome, Suggestion
from coupler.learners.steerer import TaskStatus
from coupler.runtime.control.checkpoints import decode, encode

SPACE = ParameterSpace((-1.0, -1.0, -1.0, -1.0), (1.0, 1.0, 1.0, 1.0), ("a", "b", "c", "d"))
PEAK = np.array([0.3, -0.2, 0.5, 0.1])


def _quadratic(x: np.ndarray) -> float:
    return float(-np.sum((np.asarray(x, np.float64) - PEAK) ** 2))


class OptunaGenerator:
    """Optuna's ask/tell behind the Generator protocol: the glue a user writes (docs/modulation.md).

    ``resources`` is what each suggestion asks for its task (the same for all, here).
    """

    def __init__(self, study: optuna.Study, space: ParameterSpace, resources: dict[str, float] | None = None) -> None:
        self.study = study
        self.dists = {n: optuna.distributions.FloatDistribution(lo, hi) for n, lo, hi in zip(space.names, space.lower, space.upper)}
        self.resources = resources or {}

    def ask(self, n: int) -> list[Suggestion]:
        trials = [self.study.ask(self.dists) for _ in range(n)]
        return [Suggestion(dict(t.params), dict(self.resources), t.number) for t in trials]

    def tell(self, results: list[Outcome]) -> None:
        for r in results:
            if r.status == TaskStatus.OK:
                self.study.tell(int(r.suggestion.handle), r.value)
            else:  # a failed run is a failed trial; a cancelled one was pruned
                state = optuna.trial.TrialState.FAIL if r.status == TaskStatus.FAILED else optuna.trial.TrialState.PRUNED
                self.study.tell(int(r.suggestion.handle), state=state)


def _study(seed: int) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=10))


def test_optuna_steers_through_ask_tell_with_results_out_of_order() -> None:
    study = _study(0)
    steerer = AskTellSteerer(SPACE, OptunaGenerator(study, SPACE))
    for _ in range(15):
        recs = steerer.propose(4)
        for rec in reversed(recs):  # answers arrive in the reverse order of the asks
            steerer.record(rec.task, TaskStatus.OK, _quadratic(rec.x), finished=float(rec.task))
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 60 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    # Each trial was told the value of its own parameters (float32 round trip of the task vector).
    for rec in steerer.tasks.values():
        t = trials[int(steerer.suggestions[rec.task].handle)]
        assert t.value == pytest.approx(_quadratic([t.params[n] for n in SPACE.names]), abs=1e-6)
        assert t.value == pytest.approx(rec.qoi)
    assert study.best_value == pytest.approx(steerer.best().qoi)
    # TPE after its 10 random start-up trials: the best of 60 beats the best of those 10.
    startup = max(t.value for t in trials[:10])
    assert study.best_value > startup


def test_failures_and_cancellations_reach_the_generator_once() -> None:
    study = _study(1)
    steerer = AskTellSteerer(SPACE, OptunaGenerator(study, SPACE))
    a, b, c = steerer.propose(3)
    steerer.record(a.task, TaskStatus.FAILED, float("nan"), error="blew up")
    steerer.record(b.task, TaskStatus.CANCELLED, float("nan"))
    steerer.record(c.task, TaskStatus.OK, 0.5)
    steerer.record(c.task, TaskStatus.OK, 0.9)  # a duplicate answer: counted, not told again
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.COMPLETE]
    assert study.trials[2].value == 0.5 and steerer.told == 3 and steerer.tasks[c.task].answers == 2


@dataclass
class Stepper:
    """A deterministic generator with plain-data state: walks a fixed grid, stops after ``limit``;
    asks for a GPU for every third point; declares running points with ``a > cancel_above`` pointless."""

    limit: int = 12
    cancel_above: float = 2.0
    given: int = 0
    told: list[tuple[int, int, float]] = field(default_factory=list)

    def ask(self, n: int) -> list[Suggestion]:
        out = []
        for _ in range(min(n, self.limit - self.given)):
            v = -1.0 + 2.0 * self.given / self.limit
            res = {"GPU": 1.0} if self.given % 3 == 0 else {}
            out.append(Suggestion({"a": v, "b": 0.0, "c": 0.0, "d": 0.0}, res, f"p{self.given}"))
            self.given += 1
        return out

    def tell(self, results: list[Outcome]) -> None:
        self.told += [(r.task, int(r.status), r.value) for r in results]

    def pointless(self, running: list[Suggestion]) -> list[bool]:
        return [s.params["a"] > self.cancel_above for s in running]

    def state_dict(self) -> dict[str, object]:
        return {"given": self.given}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.given = int(state["given"])  # type: ignore[arg-type]


def test_resources_cancellation_and_checkpoints_of_a_generator() -> None:
    first = AskTellSteerer(SPACE, Stepper(cancel_above=-0.6))
    recs = first.propose(5)  # a = -1, -5/6, -2/3, -1/2, -1/3
    assert [first.resources(r.task) for r in recs] == [{"GPU": 1.0}, {}, {}, {"GPU": 1.0}, {}]
    assert first.pointless() == [3, 4]
    first.record(0, TaskStatus.OK, 1.5)
    state = decode(encode(first.state_dict()))  # msgpack, as durable checkpoints store it
    second = AskTellSteerer(SPACE, Stepper(cancel_above=-0.6))
    second.load_state_dict(state)
    assert second.generator.given == 5 and second.pending() == [1, 2, 3, 4] and second.told == 1
    assert second.suggestions == first.suggestions  # handles and resources survive
    second.record(3, TaskStatus.CANCELLED, float("nan"))
    (task, status, value), = second.generator.told
    assert (task, status) == (3, TaskStatus.CANCELLED) and np.isnan(value)
    nxt = [r.x.tolist() for r in second.propose(20)]  # the generator continues where it was: 7 more, then none
    assert len(nxt) == 7 and nxt[0][0] == pytest.approx(-1 + 2 * 5 / 12)
    assert second.propose(4) == []


def test_bad_generators_and_suggestions_are_refused() -> None:
    with pytest.raises(TypeError, match="ask"):
        AskTellSteerer(SPACE, object())  # type: ignore[arg-type]

    class Wrong(Stepper):
        def ask(self, n: int) -> list[Suggestion]:
            return [Suggestion({"a": 0.0, "e": 1.0})]

    with pytest.raises(ValueError, match=r"missing \['b', 'c', 'd'\], unknown \['e'\]"):
        AskTellSteerer(SPACE, Wrong()).propose(1)
    with pytest.raises(ValueError, match="AskTellSteerer"):
        AskTellSteerer(SPACE, Stepper()).load_state_dict({"tasks": []})


@pytest.mark.parametrize("value", [1.5, -1.0001, float("nan"), float("inf")])
def test_a_suggestion_outside_the_space_is_refused_naming_the_parameter_and_its_bounds(value: float) -> None:
    class Outside:
        def ask(self, n: int) -> list[Suggestion]:
            return [Suggestion({"a": 0.0, "b": 0.5, "c": value, "d": -1.0})]

        def tell(self, results: list[Outcome]) -> None:
            pass

    with pytest.raises(ValueError, match=r"a suggestion's c must lie in the space's \[-1, 1\]; got "):
        AskTellSteerer(SPACE, Outside()).propose(1)


def test_a_suggestion_on_the_bounds_is_taken() -> None:
    class Corners:
        def ask(self, n: int) -> list[Suggestion]:
            return [Suggestion({"a": -1.0, "b": 1.0, "c": -1.0, "d": 1.0})]

        def tell(self, results: list[Outcome]) -> None:
            pass

    assert len(AskTellSteerer(SPACE, Corners()).propose(1)) == 1


GOOD = {"a": 0.0, "b": 0.5, "c": 0.1, "d": -1.0}


@pytest.mark.parametrize(
    ("asked", "error", "message"),
    [
        (None, TypeError, r"generator.ask\(1\) must return a list of up to 1 Suggestion, got None"),
        ([dict(GOOD)], TypeError, r"generator.ask\(\) must give Suggestion objects, got dict"),
        (Suggestion(dict(GOOD)), TypeError, r"must return a list of up to 1 Suggestion"),
        ([Suggestion({**GOOD, "b": "0.5"})], TypeError, r"parameters must be numbers, got \{'b': '0.5'\}"),
        ([Suggestion({**GOOD, "b": True})], TypeError, r"parameters must be numbers, got \{'b': True\}"),
        ([Suggestion(dict(GOOD), handle=(1, 2))], TypeError, r"handle must be an int or a str"),  # type: ignore[arg-type]
        ([Suggestion(dict(GOOD), handle=2.5)], TypeError, r"handle must be an int or a str"),  # type: ignore[arg-type]
        ([Suggestion(dict(GOOD), {"GPU": "1"})], TypeError, r"resources must map names to amounts"),  # type: ignore[dict-item]
        ([Suggestion(dict(GOOD), {"GPU": -1.0})], ValueError, r"resource amounts must be >= 0"),
    ],
)
def test_what_a_generator_gives_is_checked_where_it_comes_in(asked: object, error: type, message: str) -> None:
    # Each came through before: a bare TypeError from inside, a string read as a number, a handle a
    # checkpoint could not restore (a tuple) or restored as another (2.5 as 2).
    class Giving:
        def ask(self, n: int) -> object:
            return asked

        def tell(self, results: list[Outcome]) -> None:
            pass

    with pytest.raises(error, match=message):
        AskTellSteerer(SPACE, Giving()).propose(1)  # type: ignore[arg-type]


@pytest.mark.parametrize("handle", [7, np.int64(7), "trial-7", ""])
def test_every_handle_a_suggestion_may_have_survives_a_checkpoint(handle: object) -> None:
    class One:
        def ask(self, n: int) -> list[Suggestion]:
            return [Suggestion(dict(GOOD), {"GPU": 1}, handle)]  # type: ignore[arg-type]

        def tell(self, results: list[Outcome]) -> None:
            pass

    first = AskTellSteerer(SPACE, One())
    first.propose(1)
    second = AskTellSteerer(SPACE, One())
    second.load_state_dict(decode(encode(first.state_dict())))
    assert second.suggestions[0].handle == handle and type(second.suggestions[0].handle) in (int, str)

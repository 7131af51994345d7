"""Steering and the simulator pool on a real LocalCluster: exactly once, failures, cancellation, overlap."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import cloudpickle
import numpy as np
import pytest

from coupler.actors.pool import SimulationStudy, SimulatorPoolActor, TaskStatus
from coupler.actors.steering import SteeringActor
from coupler.learners.steerer import overlap_seconds
from coupler.learners.acquisition import ExpectedImprovement, ParameterSpace, RandomSweep, SearchData
from coupler.learners.ask_tell import Outcome, Suggestion
from coupler.learners.ensemble import EnsembleConfig
from coupler.physics.gray_scott import GrayScott, params_from_vector, pattern_amplitude
from coupler.runtime import ActorFailed, Coupling, Queue
from coupler.runtime.control.checkpoints import decode, encode
from polling import until

# FixedPoints below lives in this test module, which the workers cannot import.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

SPACE = ParameterSpace((0.02, 0.05), (0.08, 0.07), ("F", "k"))
BOUNDS = ((0.0, 0.0), (0.1, 0.1))


@dataclass
class FixedPoints:
    """A strategy proposing given parameter points in order; ``cancel_rest`` makes every pending point pointless."""

    space: ParameterSpace
    points: list[tuple[float, float]]
    cancel_rest: bool = False
    uses_model: bool = False
    _next: int = field(default=0)

    def propose(self, n: int, data: SearchData) -> np.ndarray:
        pts = self.points[self._next : self._next + n]
        self._next += len(pts)
        return self.space.to_unit(np.array(pts, np.float32).reshape(-1, self.space.dim))

    def pointless(self, pending: np.ndarray, data: SearchData) -> np.ndarray:
        return np.full(len(pending), self.cancel_rest)


def _pool(cp: Coupling, unique: str, members: int, study: SimulationStudy, cancel: bool = False, chunk: int = 100) -> list:
    inputs = {"tasks": f"tasks-{unique}"} | ({"cancel": f"cancel-{unique}"} if cancel else {})
    w = cp.workers()
    pool = [
        cp.spawn(SimulatorPoolActor, study, name=f"sim{i}-{unique}", chunk_steps=chunk, inputs=inputs,
                 outputs={"results": f"results-{unique}"}, workers=w[i % len(w)])  # fmt: skip
        for i in range(members)
    ]
    for p in pool:
        p.start()
    return pool


def _channels(cp: Coupling, unique: str) -> None:
    cp.channel(f"tasks-{unique}", Queue(1, shared=True))
    cp.channel(f"results-{unique}", Queue(256))
    cp.channel(f"cancel-{unique}", Queue(64))


def _finish(cp: Coupling, unique: str, steer, pool: list, timeout: float = 120) -> list[dict]:
    assert steer.wait(timeout).state == "finished"
    history = steer.call("history")
    cp.close_channel(f"tasks-{unique}")  # the pool's normal end of work
    for p in pool:
        assert p.wait(60).state == "finished"
    return history


def test_pool_runs_every_task_exactly_once_under_concurrency(coupling: Coupling, unique: str) -> None:
    _channels(coupling, unique)
    study = SimulationStudy(GrayScott(n=8), params_from_vector, pattern_amplitude, steps=20, bounds=BOUNDS)
    pool = _pool(coupling, unique, 4, study)
    n = 60
    steer = coupling.spawn(
        SteeringActor, SPACE, RandomSweep(SPACE, seed=0), name=f"steer-{unique}", budget=n, in_flight=8, batch=4,
        inputs={"results": f"results-{unique}"}, outputs={"tasks": f"tasks-{unique}"}, workers=coupling.workers()[0],
    )  # fmt: skip
    steer.start()
    history = _finish(coupling, unique, steer, pool)
    counts = [p.status().info for p in pool]
    assert sorted(h["task"] for h in history) == list(range(n))
    assert [h["answers"] for h in history] == [1] * n, "a task was answered twice or never"
    assert all(h["status"] == TaskStatus.OK for h in history)
    assert sum(c["ok"] for c in counts) == n  # each task ran at exactly one member
    assert sum(1 for c in counts if c["ok"] > 0) >= 2, counts  # and the work was shared
    assert {h["member"] for h in history} == {c.name for c in pool}


def test_a_failing_simulation_is_reported_and_the_sweep_goes_on(coupling: Coupling, unique: str) -> None:
    _channels(coupling, unique)
    # The study's bounds refuse F = -0.01 and F = NaN (ValueError); F = 5 is inside them, but forward
    # Euler on the feed term multiplies u - 1 by (1 - dt F) = -4 per step: the run overflows to inf/NaN.
    study = SimulationStudy(GrayScott(n=8), params_from_vector, pattern_amplitude, steps=200, bounds=((0.0, 0.0), (10.0, 0.1)))
    pts = [(0.04, 0.06), (-0.01, 0.06), (0.03, 0.055), (5.0, 0.06), (0.05, 0.062), (float("nan"), 0.06), (0.06, 0.06)]
    space = ParameterSpace((-0.1, 0.0), (10.0, 0.1))
    pool = _pool(coupling, unique, 2, study)
    steer = coupling.spawn(
        SteeringActor, space, FixedPoints(space, pts), name=f"steer-{unique}", budget=len(pts), in_flight=3, batch=1,
        inputs={"results": f"results-{unique}"}, outputs={"tasks": f"tasks-{unique}"}, workers=coupling.workers()[0],
    )  # fmt: skip
    steer.start()
    history = _finish(coupling, unique, steer, pool)
    status = [h["status"] for h in history]
    assert status == [0, 1, 0, 1, 0, 1, 0], [(h["x"], h["status"], h["error"][:80]) for h in history]
    assert "must lie in" in history[1]["error"] and "not finite" in history[3]["error"]
    assert "must be finite" in history[5]["error"]
    assert all(np.isfinite(h["qoi"]) for h, s in zip(history, status) if s == 0)


def test_cancelled_tasks_stop_running_and_are_reported(coupling: Coupling, unique: str) -> None:
    _channels(coupling, unique)
    # Runs that would take minutes unless cancelled; F = 2 fails at once (out of bounds) and its
    # result makes the steerer ask the strategy, which declares every pending run pointless. The
    # failing task goes first, so it heads the queue of whichever member takes it.
    study = SimulationStudy(GrayScott(n=16), params_from_vector, pattern_amplitude, steps=50_000_000, bounds=BOUNDS)
    space = ParameterSpace((0.0, 0.0), (3.0, 0.1))
    pts = [(2.0, 0.06), (0.04, 0.06), (0.05, 0.062)]
    pool = _pool(coupling, unique, 2, study, cancel=True, chunk=200)
    steer = coupling.spawn(
        SteeringActor, space, FixedPoints(space, pts, cancel_rest=True), name=f"steer-{unique}", budget=3,
        in_flight=3, batch=3, inputs={"results": f"results-{unique}"},
        outputs={"tasks": f"tasks-{unique}", "cancel": f"cancel-{unique}"}, workers=coupling.workers()[0],
    )  # fmt: skip
    steer.start()
    history = _finish(coupling, unique, steer, pool, timeout=90)
    assert [h["status"] for h in history] == [TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.CANCELLED]
    assert history[1]["cancel_sent"] and history[2]["cancel_sent"] and not history[0]["cancel_sent"]
    assert history[1]["started"] > 0  # the second member was running it when the cancellation came
    assert sum(p.status().info["cancelled"] for p in pool) == 2


def test_steering_fits_and_proposes_while_simulations_run(coupling: Coupling, unique: str) -> None:
    _channels(coupling, unique)
    study = SimulationStudy(GrayScott(n=12, seed_fraction=0.5), params_from_vector, pattern_amplitude, steps=600, bounds=BOUNDS)
    pool = _pool(coupling, unique, 3, study)
    n = 14
    steer = coupling.spawn(
        SteeringActor, SPACE, ExpectedImprovement(SPACE, initial=6, candidates=128, local=32, seed=0),
        name=f"steer-{unique}", budget=n, in_flight=6, batch=2,
        ensemble=EnsembleConfig(members=2, hidden=8, depth=1, fourier_features=4, steps_per_fit=20),
        inputs={"results": f"results-{unique}"}, outputs={"tasks": f"tasks-{unique}"}, workers=coupling.workers()[0],
    )  # fmt: skip
    steer.start()
    history = _finish(coupling, unique, steer, pool, timeout=180)
    activity = steer.call("steering_activity")
    info = steer.status().info
    assert [h["answers"] for h in history] == [1] * n and all(h["status"] == TaskStatus.OK for h in history)
    fits = [(s, e) for what, s, e in activity if what == "fit"]
    assert len(fits) >= 2 and info["fits"] == len(fits)
    sims = [(h["started"], h["finished"]) for h in history]
    # Overlap from timestamps: seconds in which the steerer fitted or proposed while a simulation ran.
    steering = [(s, e) for _, s, e in activity]
    assert overlap_seconds(steering, sims) > 0
    # No barrier between rounds: some task was proposed while an earlier one was still running.
    assert any(any(s < h["proposed_at"] < e for s, e in sims[: h["task"]]) for h in history[6:])
    assert info["best_qoi"] == max(h["qoi"] for h in history)




def _assert_same_state(a: Any, b: Any, path: str = "") -> None:
    """Exact equality of two plain-data trees (dicts, lists, tuples, arrays, scalars)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys {sorted(a)} vs {sorted(b)}"
        for k in a:
            _assert_same_state(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{path}: lengths {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_state(x, y, f"{path}[{i}]")
    elif isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=path)
    else:
        assert a == b or (a != a and b != b), f"{path}: {a!r} != {b!r}"  # NaN qoi of pending tasks


def test_steering_actor_restores_from_a_checkpoint_and_finishes_the_sweep(coupling: Coupling, unique: str) -> None:
    def study(steps: int) -> SimulationStudy:
        return SimulationStudy(GrayScott(n=12, seed_fraction=0.5), params_from_vector, pattern_amplitude, steps=steps, bounds=BOUNDS)

    n = 16

    def steering(run: str) -> object:
        return coupling.spawn(
            SteeringActor, SPACE, ExpectedImprovement(SPACE, initial=4, candidates=128, local=32, seed=0),
            name=f"steer-{run}-{unique}", budget=n, in_flight=4, batch=2,
            ensemble=EnsembleConfig(members=2, hidden=8, depth=1, fourier_features=4, steps_per_fit=10),
            inputs={"results": f"results-{run}-{unique}"}, outputs={"tasks": f"tasks-{run}-{unique}"},
            workers=coupling.workers()[0],
        )  # fmt: skip

    # The first run is lost after a checkpoint: its channels and pool go away, with the tasks in flight.
    _channels(coupling, f"a-{unique}")
    pool = _pool(coupling, f"a-{unique}", 1, study(20_000))  # slow: the sweep is still running when paused
    first = steering("a")
    first.start()
    until("half the tasks issued, after a fit", lambda: first.status().info["issued"] >= n // 2, timeout=120)
    first.pause()
    ck = decode(encode(first.checkpoint()))  # as a durable checkpoint stores it
    first.stop()  # its results input detaches: a member's next result would fail with ConsumerGone
    coupling.close_channel(f"tasks-a-{unique}")
    coupling.close_channel(f"results-a-{unique}")  # so the run's end is an end of stream for the pool
    for p in pool:
        p.wait(60)
    before = {t["task"]: t for t in ck["state"]["steerer"]["tasks"]}
    lost = sorted(t for t, r in before.items() if r["status"] == -1)
    assert lost and len(before) < n, f"the checkpoint should fall mid-sweep with tasks in flight: {[(t, r['status']) for t, r in before.items()]}"

    # A new cluster's run: same arguments, restored, resumes the sweep.
    _channels(coupling, f"b-{unique}")
    pool = _pool(coupling, f"b-{unique}", 2, study(400))
    second = steering("b")
    second.call("restore", ck)
    second.pause()
    second.start()  # parks before its first step
    again = second.checkpoint()
    _assert_same_state(again["state"], ck["state"])  # restored exactly, before any step
    second.resume()
    history = _finish(coupling, f"b-{unique}", second, pool, timeout=180)
    info = second.status().info
    assert info["reissued"] == len(lost)
    assert sorted(h["task"] for h in history) == list(range(n))
    assert [h["answers"] for h in history] == [1] * n and all(h["status"] == TaskStatus.OK for h in history)
    for h in history:  # what the first run had decided stays as it was
        if h["task"] in before:
            np.testing.assert_array_equal(np.float32(h["x"]), before[h["task"]]["x"])
            if h["task"] not in lost:
                assert h["qoi"] == before[h["task"]]["qoi"] and h["member"] == before[h["task"]]["member"]
    assert {h["member"] for h in history if h["task"] in lost} <= {p.name for p in pool}
    assert info["fits"] > ck["state"]["steerer"]["fits"]  # it went on learning


class OptunaGenerator:
    """Optuna's ask/tell behind the Generator protocol (the glue of docs/modulation.md); every
    ``gpu_every``-th trial asks for a GPU for its task (0: none does)."""

    def __init__(self, space: ParameterSpace, seed: int, gpu_every: int = 0) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=4))
        self.dists = {n: optuna.distributions.FloatDistribution(lo, hi) for n, lo, hi in zip(space.names, space.lower, space.upper)}
        self.gpu_every = gpu_every

    def ask(self, n: int) -> list[Suggestion]:
        out = []
        for _ in range(n):
            t = self.study.ask(self.dists)
            gpu = self.gpu_every and t.number % self.gpu_every == 0
            out.append(Suggestion(dict(t.params), {"GPU": 1.0} if gpu else {}, t.number))
        return out

    def tell(self, results: list[Outcome]) -> None:
        import optuna

        for r in results:
            if r.status == TaskStatus.OK:
                self.study.tell(int(r.suggestion.handle), r.value)
            else:
                self.study.tell(int(r.suggestion.handle), state=optuna.trial.TrialState.FAIL)


def test_an_optuna_study_steers_the_pool_and_its_gpu_tasks_run_on_gpu_members() -> None:
    import optuna

    # An Optuna study drives the steering actor through ask/tell. A cluster whose worker offers the Dask resource GPU=1: the GPU member is spawned with
    # resources={"GPU": 1} (Dask places it there or refuses); the steerer routes every task that
    # asks for a GPU to that member's channel and the rest to the CPU member's.
    with Coupling(n_workers=1, threads_per_worker=2, resources={"GPU": 1}, dashboard_address=":0") as cp:
        for ch in ("cpu", "gpu"):
            cp.channel(f"tasks-{ch}", Queue(1, shared=True))
        cp.channel("results", Queue(64))
        study = SimulationStudy(GrayScott(n=8), params_from_vector, pattern_amplitude, steps=20, bounds=BOUNDS)
        cpu = cp.spawn(SimulatorPoolActor, study, name="cpu-member", inputs={"tasks": "tasks-cpu"}, outputs={"results": "results"})
        gpu = cp.spawn(SimulatorPoolActor, study, name="gpu-member", inputs={"tasks": "tasks-gpu"},
                       outputs={"results": "results"}, resources={"GPU": 1})  # fmt: skip
        for p in (cpu, gpu):
            p.start()
        n = 9
        steer = cp.spawn(
            SteeringActor, SPACE, OptunaGenerator(SPACE, seed=1, gpu_every=3), name="steer", budget=n, in_flight=4,
            batch=2, routes={"GPU": "gpu_tasks"}, inputs={"results": "results"},
            outputs={"tasks": "tasks-cpu", "gpu_tasks": "tasks-gpu"},
        )  # fmt: skip
        steer.start()
        assert steer.wait(120).state == "finished"
        history = steer.call("history")
        for ch in ("cpu", "gpu"):
            cp.close_channel(f"tasks-{ch}")
        trials = steer.call("generator").study.get_trials(deepcopy=False)
        assert [h["answers"] for h in history] == [1] * n and all(h["status"] == TaskStatus.OK for h in history)
        assert [h["member"] for h in history] == ["gpu-member" if t % 3 == 0 else "cpu-member" for t in range(n)]
        # Task i is trial i (asked in order); the study holds the amplitude the pool computed for it.
        assert len(trials) == n and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
        for h, t in zip(history, trials):
            assert t.value == pytest.approx(h["qoi"]) and t.params["F"] == pytest.approx(h["x"][0], rel=1e-6)
    with pytest.raises(ValueError, match="not in outputs"):
        SteeringActor(SPACE, RandomSweep(SPACE), name="x", budget=1, routes={"GPU": "gpu_tasks"},
                      inputs={"results": "r"}, outputs={"tasks": "t"})  # fmt: skip


@pytest.mark.parametrize(("in_flight", "batch"), [(1, 2), (2, 5)])
def test_a_batch_larger_than_the_slots_still_runs_the_whole_budget(coupling: Coupling, unique: str, in_flight: int, batch: int) -> None:
    # The steerer waits for a whole batch of free slots; with fewer slots than the batch it waited
    # for ever, without a word (in_flight=1 with the default batch of 2: sequential optimisation).
    _channels(coupling, unique)
    study = SimulationStudy(GrayScott(n=8), params_from_vector, pattern_amplitude, steps=20, bounds=BOUNDS)
    pool = _pool(coupling, unique, 1, study)
    n = 5
    steer = coupling.spawn(
        SteeringActor, SPACE, RandomSweep(SPACE, seed=0), name=f"steer-{unique}", budget=n, in_flight=in_flight,
        batch=batch, inputs={"results": f"results-{unique}"}, outputs={"tasks": f"tasks-{unique}"},
    )  # fmt: skip
    steer.start()
    history = _finish(coupling, unique, steer, pool, timeout=60)
    assert sorted(h["task"] for h in history) == list(range(n)) and [h["answers"] for h in history] == [1] * n


def test_a_task_asking_for_a_resource_no_route_names_fails_the_steerer_saying_so(coupling: Coupling, unique: str) -> None:
    # Sent to "tasks", a GPU task would run on a member without a GPU, and nothing would say so.
    _channels(coupling, unique)
    steer = coupling.spawn(
        SteeringActor, SPACE, OptunaGenerator(SPACE, seed=1, gpu_every=1), name=f"steer-{unique}", budget=3,
        inputs={"results": f"results-{unique}"}, outputs={"tasks": f"tasks-{unique}"},
    )  # fmt: skip
    steer.start()
    with pytest.raises(ActorFailed, match=r"task 0 asks for \{'GPU': 1.0\} but routes=\{\} names no output port for \['GPU'\]"):
        steer.wait(60)

"""Live data assimilation through actors on a real LocalCluster, checked against the offline pure-JAX filter."""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any, Iterator

import cloudpickle
import dask
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coupler.actors.assimilation import AssimilationActor
from coupler.actors.base import ActorHost
from coupler.actors.ensemble_members import EnsembleFilterActor, MemberBlockActor, block_input, block_output
from coupler.actors.learner import LearnerActor
from coupler.actors.observation import ObservationSource
from coupler.learners.correction import CorrectionConfig, MakeCorrectionTrainer
from coupler.physics.assimilation import FilterConfig, LinearObservation, initial_ensemble, run_filter
from coupler.physics.assimilation_model import Lorenz63Model, Lorenz96Model, VorticityModel
from coupler.runtime import Coupling, Latest, Queue, Window
from polling import until

cloudpickle.register_pickle_by_value(sys.modules[__name__])

MODEL = Lorenz96Model(forcing=8.0)
WRONG_MODEL = Lorenz96Model(forcing=6.0)
FILTER = FilterConfig("denkf", inflation=1.01)


class ScriptedObservations(ActorHost):
    """Sends observations at the given model times (in that order), to exercise late and odd timestamps."""

    def __init__(self, times: list[float], nan_at: tuple[int, ...] = (), **kw: Any) -> None:
        super().__init__(**kw)
        self.times, self.i, self.nan_at = times, 0, nan_at

    def step(self) -> bool:
        if self.i >= len(self.times):
            return False
        y = np.full(40, 8.0, np.float32)
        if self.i in self.nan_at:
            y[7] = np.nan  # one failed sensor
        self.outputs["obs"].send({"y": y}, timestamp=self.times[self.i], step=self.i)
        self.i += 1
        return True




def _wait(ref: Any, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not ref.status().done:
        assert time.monotonic() < deadline, f"{ref.name} did not finish within {timeout} s: {ref.status()}"
        time.sleep(0.1)
    ref.wait(10)  # raises ActorFailed with the remote traceback if it failed


def test_live_run_matches_offline_filter(coupling: Coupling, unique: str) -> None:
    cycles, missing = 80, (17, 18)
    cp = coupling
    cp.channel(f"obs-{unique}", Queue(maxsize=16))
    cp.channel(f"analysis-{unique}", Latest())
    workers = cp.workers()
    da = cp.spawn(
        AssimilationActor, MODEL, name=f"da-{unique}", cycles=cycles, members=40, filter=FILTER, seed=3,
        inputs={"obs": f"obs-{unique}"}, outputs={"analysis": f"analysis-{unique}"}, workers=workers[0],
    )
    src = cp.spawn(
        ObservationSource, MODEL, name=f"truth-{unique}", cycles=cycles, seed=11, rate=400.0, missing=missing,
        outputs={"obs": f"obs-{unique}"}, workers=workers[-1],
    )
    da.start()
    src.start()
    _wait(src)
    _wait(da)
    live = da.call("history")
    info = da.status().info
    assert info["missing"] == len(missing) and info["late"] == 0 and info["mismatched"] == 0
    assert list(live["cycle"]) == list(range(1, cycles + 1))
    assert not live["observed"][np.asarray(missing) - 1].any() and live["observed"].sum() == cycles - len(missing)

    # The same filter offline, in one lax.scan, fed the observations the actor received.
    ens0 = initial_ensemble(MODEL.initial_state, 40, 3)
    ys = jnp.asarray(np.nan_to_num(live["y"]))
    _, offline = jax.jit(
        lambda e, y, m: run_filter(jax.vmap(MODEL.forecast), e, y, m, 3, LinearObservation(40), FILTER, first_cycle=1)
    )(ens0, ys, jnp.asarray(live["observed"]))
    # Float32 throughout; jit-per-cycle and scan may order a few operations
    # differently, and the filter keeps such round-off differences small.
    np.testing.assert_allclose(live["analysis"], np.asarray(offline.analysis), atol=1e-3)
    np.testing.assert_allclose(live["forecast"], np.asarray(offline.forecast), atol=1e-3)
    # And the live filter works: unit observation error, analysis error far below it after spin-up.
    assert np.nanmean(live["rmse_analysis"][40:]) < 0.4


def test_late_missing_and_off_grid_observations(coupling: Coupling, unique: str) -> None:
    dt = MODEL.interval
    # cycles 1, 2, 4 (3 missing), 3 again (late), 5 + half an interval (off the grid), 5
    times = [dt, 2 * dt, 4 * dt, 3 * dt, 5.5 * dt, 5 * dt]
    cp = coupling
    cp.channel(f"obs-{unique}", Queue(maxsize=16))
    da = cp.spawn(AssimilationActor, MODEL, name=f"da-{unique}", cycles=5, members=8, inputs={"obs": f"obs-{unique}"})
    src = cp.spawn(ScriptedObservations, times, name=f"script-{unique}", outputs={"obs": f"obs-{unique}"})
    da.start()
    src.start()
    _wait(src)
    _wait(da)
    info = da.status().info
    assert (info["cycle"], info["missing"], info["late"], info["mismatched"]) == (5, 1, 1, 1)
    hist = da.call("history")
    assert list(hist["observed"]) == [True, True, False, True, True]


def test_an_observation_holding_nan_is_refused_and_its_cycle_forecast_only(coupling: Coupling, unique: str) -> None:
    # Assimilated, one NaN turned every later analysis into NaN, and the actor still finished.
    dt = MODEL.interval
    cp = coupling
    cp.channel(f"obs-{unique}", Queue(maxsize=16))
    da = cp.spawn(AssimilationActor, MODEL, name=f"da-{unique}", cycles=4, members=8, inputs={"obs": f"obs-{unique}"})
    src = cp.spawn(ScriptedObservations, [dt, 2 * dt, 3 * dt, 4 * dt], nan_at=(1,), name=f"script-{unique}",
                   outputs={"obs": f"obs-{unique}"})  # fmt: skip
    da.start()
    src.start()
    _wait(src)
    _wait(da)
    info = da.status().info
    assert (info["cycle"], info["invalid"], info["missing"]) == (4, 1, 1)
    hist = da.call("history")
    assert list(hist["observed"]) == [True, False, True, True] and np.all(np.isfinite(hist["analysis"]))


def test_the_filter_refuses_at_the_spawn_what_would_fail_or_mislead_later() -> None:
    vorticity = VorticityModel(n=16)
    with pytest.raises(ValueError, match=r"an ensemble needs members >= 2, got 1"):
        AssimilationActor(MODEL, name="x", cycles=1, members=1, inputs={"obs": "o"})
    # A ring of 256 points over a 16x16 model: LETKF would localise by ring distance, without a word.
    with pytest.raises(ValueError, match=r"obs lives on the grid \(256,\), the model's is \(16, 16\)"):
        AssimilationActor(vorticity, name="x", cycles=1, obs=LinearObservation(256, indices=tuple(range(0, 256, 4))),
                          inputs={"obs": "o"})  # fmt: skip
    with pytest.raises(ValueError, match=r"correction.grid is None, the model's grid is \(16, 16\)"):
        AssimilationActor(vorticity, name="x", cycles=1, correction=CorrectionConfig(), inputs={"obs": "o"})
    with pytest.raises(ValueError, match=r"obs lives on the grid"):
        ObservationSource(vorticity, name="x", cycles=1, obs=LinearObservation(256), outputs={"obs": "o"})


def test_learned_correction_weights_reach_the_running_ensemble(coupling: Coupling, unique: str) -> None:
    # Model error: the forecast uses F = 6 against a truth at F = 8; a learner trains
    # the correction from the increments and its weights flow back while cycling.
    cycles = 80
    cp = coupling
    for ch, policy in (("obs", Queue(maxsize=16)), ("inc", Window(capacity=512, seed=0)), ("w", Latest())):
        cp.channel(f"{ch}-{unique}", policy)
    config = CorrectionConfig()
    example = {"forecast": np.zeros((32, 40), np.float32), "increment": np.zeros((32, 40), np.float32)}
    workers = cp.workers()
    learner = cp.spawn(
        LearnerActor, MakeCorrectionTrainer(config), name=f"learn-{unique}", batch_size=32, min_samples=16,
        publish_every=5, warmup=example, inputs={"data": f"inc-{unique}"}, outputs={"weights": f"w-{unique}"},
        workers=workers[-1],
    )
    da = cp.spawn(
        AssimilationActor, WRONG_MODEL, name=f"da-{unique}", cycles=cycles, members=20,
        filter=FilterConfig("denkf", inflation=1.1), correction=config,
        inputs={"obs": f"obs-{unique}", "weights": f"w-{unique}"}, outputs={"increments": f"inc-{unique}"},
        workers=workers[0],
    )
    src = cp.spawn(ObservationSource, MODEL, name=f"truth-{unique}", cycles=cycles, seed=5, rate=200.0,
                   outputs={"obs": f"obs-{unique}"}, workers=workers[-1])
    learner.start()
    da.start()
    src.start()
    # The learner's first weights take a compile and min_samples increments, which on a loaded
    # machine outlast 80 cycles at 200 a second: hold the truth back until it has published,
    # so that the test checks the weights' path, not a race (the filter waits for observations).
    until("the filter has cycled", lambda: da.status().info["cycle"] >= 30)
    src.pause()
    until("the learner has published", lambda: learner.status().info["train_steps"] >= 5, timeout=120)
    src.resume()
    _wait(src)
    _wait(da)
    learner.stop()
    hist = da.call("history")
    versions = hist["weights_version"]
    assert versions[-1] > 0, "no weights reached the assimilation actor"
    assert np.all(np.diff(versions) >= 0)  # Latest: only ever newer weights
    assert np.isfinite(hist["rmse_forecast"]).all()


def _live_run(cp: Coupling, unique: str, model: Any, obs: LinearObservation, filt: FilterConfig, cycles: int,
              members: int, correction: CorrectionConfig | None = None) -> dict[str, Any]:
    cp.channel(f"obs-{unique}", Queue(maxsize=16))
    da = cp.spawn(AssimilationActor, model, name=f"da-{unique}", cycles=cycles, members=members, filter=filt, obs=obs,
                  seed=1, correction=correction, inputs={"obs": f"obs-{unique}"})
    src = cp.spawn(ObservationSource, model, name=f"truth-{unique}", cycles=cycles, obs=obs, obs_std=filt.obs_std,
                   seed=2, outputs={"obs": f"obs-{unique}"})
    da.start()
    src.start()
    _wait(src)
    _wait(da)
    return da.call("history")


def test_lorenz63_observed_every_25_steps_without_an_adapter(coupling: Coupling, unique: str) -> None:
    # Lorenz-63, dt 0.01, observed every 25 steps (interval 0.25), x and z only,
    # obs error 2 (variance 4): the ETKF keeps the analysis error of all three
    # variables below the observation error after a short spin-up (a free run
    # wanders over the attractor, error ~10).
    model, obs = Lorenz63Model(), LinearObservation(3, (0, 2))
    hist = _live_run(coupling, unique, model, obs, FilterConfig("etkf", 1.05, obs_std=2.0), 60, 10)
    assert list(hist["cycle"]) == list(range(1, 61)) and hist["y"].shape == (60, 2)
    assert np.mean(hist["rmse_analysis"][20:]) < 2.0


def test_vorticity_field_partially_observed_on_a_subgrid(coupling: Coupling, unique: str) -> None:
    # NavierStokes2D vorticity on 16 x 16, observed at every 2nd point along each
    # axis (64 of 256 values; every 4th would alias the k_f = 4 forcing mode to a
    # constant), LETKF with 12 members and a 2-point radius, with an (untrained)
    # 2-D correction network in the forecast. Truth and members start from
    # independent random fields; the forced truth's rms grows to about 3.5, so
    # an unconstrained member is about 5 off. Offline the same filter is at
    # about 0.9 after 15 cycles; bound 1.5.
    model = VorticityModel(n=16, dt=0.05, steps=4)
    obs = LinearObservation.subgrid(model.grid, stride=2)
    hist = _live_run(coupling, unique, model, obs,
                     FilterConfig("letkf", 1.1, obs_std=0.3, localization=2.0, rotation=True), 15, 12,
                     correction=CorrectionConfig(grid=model.grid, shift=0.0, scale=2.0))
    assert hist["analysis"].shape == (15, 256) and hist["y"].shape == (15, 64)
    assert np.mean(hist["rmse_analysis"][-5:]) < 1.5


def _spread_ensemble(cp: Coupling, unique: str, blocks: int, block_size: int, cycles: int, filt: FilterConfig,
                     block_workers: list[str], filter_worker: str, gather_timeout: float = 30.0,
                     rate: float = 0.0) -> tuple[Any, list[Any], Any]:
    cp.channel(f"obs-{unique}", Queue(maxsize=8))
    for b in range(blocks):
        cp.channel(f"members{b}-{unique}", Latest())
        cp.channel(f"forecast{b}-{unique}", Latest())
    members = [
        cp.spawn(MemberBlockActor, MODEL, name=f"block{b}-{unique}", block=b, inputs={"members": f"members{b}-{unique}"},
                 outputs={"forecast": f"forecast{b}-{unique}"}, workers=block_workers[b % len(block_workers)])
        for b in range(blocks)
    ]
    filt_actor = cp.spawn(
        EnsembleFilterActor, MODEL, name=f"filter-{unique}", cycles=cycles, blocks=blocks, block_size=block_size,
        filter=filt, seed=3, gather_timeout=gather_timeout,
        inputs={"obs": f"obs-{unique}", **{block_input(b): f"forecast{b}-{unique}" for b in range(blocks)}},
        outputs={block_output(b): f"members{b}-{unique}" for b in range(blocks)}, workers=filter_worker,
    )
    src = cp.spawn(ObservationSource, MODEL, name=f"truth-{unique}", cycles=cycles, seed=11, rate=rate,
                   outputs={"obs": f"obs-{unique}"}, workers=filter_worker)
    for m in members:
        m.start()
    filt_actor.start()
    src.start()
    return filt_actor, members, src


def test_members_spread_over_workers_reproduce_the_single_vmapped_filter(coupling: Coupling, unique: str) -> None:
    # Two blocks of 10 on two workers, every block present every cycle: the same
    # members, keys and analysis as the offline filter on the whole ensemble.
    cycles = 15
    w = coupling.workers()
    filt, members, src = _spread_ensemble(coupling, unique, 2, 10, cycles, FILTER, [w[0], w[1]], w[0])
    _wait(filt)
    _wait(src)
    hist = filt.call("history")
    for m in members:
        m.stop()
    assert list(hist["members_used"]) == [20] * cycles
    ens0 = initial_ensemble(MODEL.initial_state, 20, 3)
    truth, ys = [], []
    x = MODEL.initial_state(jax.random.key(11))
    from coupler.physics.assimilation import observation_noise
    for k in range(1, cycles + 1):
        x = MODEL.forecast(x)
        truth.append(np.asarray(x))
        ys.append(np.asarray(x + observation_noise(11, k, 40, 1.0)))
    _, offline = jax.jit(
        lambda e, y: run_filter(jax.vmap(MODEL.forecast), e, y, jnp.ones(cycles, bool), 3, LinearObservation(40), FILTER,
                                first_cycle=1)
    )(ens0, jnp.asarray(np.stack(ys)))
    offline_rmse = np.sqrt(np.mean((np.asarray(offline.analysis) - np.stack(truth)) ** 2, axis=1))
    np.testing.assert_allclose(hist["rmse"], offline_rmse, atol=1e-3)
    for key in ("forecast", "gather", "analysis", "scatter", "cycle_time"):
        assert np.all(hist[key] >= 0)


@pytest.fixture(scope="module")
def three_workers() -> Iterator[Coupling]:
    """Three worker processes with quick supervision; the nanny replaces a killed one."""
    settings = {
        "coupler.supervision.poll-interval": 0.3,
        "coupler.supervision.checkpoint-interval": 0.5,
        "coupler.supervision.restart-backoff": 0.2,
        "coupler.supervision.max-restarts": 2,
    }
    with dask.config.set(settings), Coupling(n_workers=3, threads_per_worker=1, dashboard_address=":0") as cp:
        yield cp


def test_losing_a_member_worker_does_not_stop_the_assimilation(three_workers: Coupling, unique: str) -> None:
    # Two blocks of 10 members, block 1 on its own worker, which is SIGKILLed
    # after 15 cycles. The filter goes on with block 0 (10 members), redraws
    # block 1's members from the analysis, and the supervisor restarts block 1
    # elsewhere; it rejoins. The filter never stops and stays on the truth.
    # Observations at 20 per second: 10 s of run, the restart takes a few.
    cp, cycles = three_workers, 200
    w = cp.workers()
    # LETKF (radius 4): stable with the 10 members left, as with all 20.
    filt_config = FilterConfig("letkf", 1.04, localization=4.0, local_block=2)
    filt, members, src = _spread_ensemble(cp, unique, 2, 10, cycles, filt_config, [w[1], w[2]], w[0],
                                          gather_timeout=3.0, rate=20.0)
    deadline = time.monotonic() + 120
    while filt.status().info.get("cycle", 0) < 15:
        assert time.monotonic() < deadline, f"the filter did not reach cycle 15: {filt.status()}"
        time.sleep(0.05)
    pid = cp.client.run(os.getpid, workers=[w[2]])[w[2]]
    os.kill(pid, signal.SIGKILL)
    _wait(filt, 240)
    _wait(src, 240)
    hist = filt.call("history")
    for m in members:
        m.stop()
    used = hist["members_used"]
    assert len(used) == cycles and used[0] == 20
    assert (used == 10).any(), "no cycle ran without the lost block"
    assert used[-1] == 20, f"the lost block did not rejoin: members used {used.tolist()}"
    # Unit observation error; the LETKF's long-run error here is about 0.2.
    assert np.all(np.isfinite(hist["rmse"])) and np.mean(hist["rmse"][-20:]) < 0.5, hist["rmse"][::10]


def test_an_letkf_block_that_does_not_divide_the_grid_is_refused_at_the_spawn() -> None:
    model = Lorenz96Model(n=40)
    bad = FilterConfig("letkf", localization=2.0, local_block=3)  # 40 is not a multiple of 3
    with pytest.raises(ValueError, match=r"local block side must be >= 1 and divide every grid side \(40,\), got 3"):
        AssimilationActor(model, cycles=2, name="da", filter=bad, inputs={"obs": "obs"})

"""The payoff benchmark's model trained through the runtime: simulator actors stream, a learner actor trains.

``augmentation_speedup.py --online`` trains each single-stage schedule a second
time this way, so that its ``training s`` column is the time to reach that model
through the runtime, simulations included, as a user would get it:

- fine runs, seen on the coarse grid at the corrected solver's step, run as
  ``SimulatorActor`` ensembles (``members`` runs each) on the CPU workers and
  publish windows of ``unroll + 1`` coarse frames into a ``Reservoir`` that holds
  what the in-process training stores (``train_runs`` runs' windows);
- a ``LearnerActor`` on a worker of its own (the GPU's, where there is one) trains the same model, with the same
  optimiser, schedule, batch size and step count as the in-process training,
  through the coarse solver unrolled over each window; it samples the reservoir
  as the simulations refresh it (not paced);
- the clock runs from the learner's spawn (its compilation included) to its final
  weights in this process.

The in-process training draws random sub-windows of long stored windows; here
each window is one unrolled sample, and the stream brings new runs for as long
as the learner trains, so the two models see different data (the online one
more runs).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Callable

import jax
import numpy as np

from coupler.actors.learner import LearnerActor
from coupler.actors.simulator import SimulatorActor
from coupler.learners.online import OptimizerConfig
from coupler.learners.solver_correction import SolverCorrectionConfig, SolverCorrectionTrainer
from coupler.runtime import Coupling, Reservoir
from coupler.runtime.launch.cluster import workers_with


def stream_while_training(
    learner: Any, launch: Callable[[int], Any], *, actors: int, label: str, progress: bool = True,
    may_launch: Callable[[int, Any], bool] | None = None,
) -> int:
    """Keep up to ``actors`` simulator actors streaming into a started learner's channel until the learner is done.

    This function owns the simulator actors: each is released when it ends, and those still
    running when the learner is done are released too.

    Args:
        learner: the learner's handle (started).
        launch: ``launch(i)`` spawns and starts the ``i``-th simulator actor and returns its handle.
        actors: simulator actors running at once, at most.
        label: prefix of the progress lines.
        progress: print a line every 15 s.
        may_launch: ``may_launch(launched, learner_status)``: whether another may start now (a paced
            stream; ``None``: whenever fewer than ``actors`` run).

    Returns:
        The simulator actors launched.
    """
    active: list[Any] = []
    launched, next_report = 0, time.monotonic() + 15
    try:
        while not (status := learner.status()).done:
            for ref in [r for r in active if r.status().done]:
                active.remove(ref)
                ref.wait(10)  # raises with the remote traceback if it failed
                ref.release()
            while len(active) < actors and (may_launch is None or may_launch(launched, status)):
                active.append(launch(launched))
                launched += 1
            if progress and time.monotonic() >= next_report:
                print(f"  {label}: step {status.info.get('train_steps', 0)}, samples received {status.info.get('received', 0)}, "
                      f"simulator actors launched {launched}", flush=True)
                next_report = time.monotonic() + 15
            time.sleep(0.1)
    finally:
        for ref in active:
            ref.release()
    return launched


@dataclass(frozen=True)
class RuntimeTraining:
    """What one training through the runtime gave.

    Attributes:
        model: the trained correction (an ``nnx`` module, as the in-process training returns).
        seconds: learner spawn to final weights here, compilation and simulations included.
        loss: mean loss of the last 10 steps.
        simulations: fine runs streamed.
        windows: windows the learner received.
    """

    model: Any
    seconds: float
    loss: float
    simulations: int
    windows: int


def train_through_runtime(
    setup: Any, cp: Coupling, unroll: int, seed: int, *, key: jax.Array, members: int = 8, progress: bool = True
) -> RuntimeTraining:
    """Train ``setup.model`` for ``setup.train_steps`` steps from fine runs streamed by simulator actors.

    Args:
        setup: the benchmark's ``Setup`` (model, optimiser budget, batch size, ranges, step).
        cp: the coupling; the learner takes a worker with a GPU where there is one, else the last worker; the
            simulations take the others (or the learner's too, where it is the only one).
        unroll: coarse steps of each training rollout (windows of ``unroll + 1`` frames).
        seed: the model's initialisation seed.
        key: the streamed runs' parameters and initial fields are drawn from it (never the evaluation keys).
        members: runs per simulator actor.
        progress: print a line every 15 s.

    Returns:
        The model, the time to it and what was streamed.

    Raises:
        ValueError: for ``unroll < 1``.
        FloatingPointError: when the learner's loss is not finite (training diverged).
        RuntimeError: when the learner stops before its last step.
    """
    from augmentation_speedup import as_matrix, draw_params  # the sibling script; imported here to avoid a cycle

    if unroll < 1:
        raise ValueError(f"unroll must be >= 1, got {unroll}")
    cg = replace(setup, window=unroll + 1).coarse_grained()
    blocks = max(1, round(setup.train_time / (unroll * cg.dt)))  # windows per run, as the in-process data
    optimizer = OptimizerConfig(learning_rate=setup.learning_rate, warmup_steps=min(50, setup.train_steps), decay_steps=setup.train_steps)
    config = SolverCorrectionConfig(cg.coarse(), setup.model, optimizer, unroll=unroll, seed=seed)
    tag = f"payoff-{unroll}-{seed}-{time.monotonic_ns()}"
    channel = cp.channel(f"windows-{tag}", Reservoir(capacity=setup.train_runs * blocks, seed=seed))
    workers = cp.workers()
    learner_worker = (workers_with(cp.client, {"GPU": 1}) or workers)[-1]
    sim_workers = [w for w in workers if w != learner_worker] or workers
    b, n = setup.batch_size, setup.coarse_n
    example = {"field": np.zeros((b, unroll + 1, n, n), np.float32), "params": np.full((b, 3), 0.02, np.float32)}
    t0 = time.perf_counter()
    learner = cp.spawn(
        LearnerActor, config, name=f"learner-{tag}", batch_size=b, min_samples=b, max_steps=setup.train_steps,
        warmup=example, inputs={"data": channel}, workers=learner_worker,
    )

    def launch(i: int) -> Any:
        k = jax.random.fold_in(key, i)
        params = draw_params(setup, jax.random.fold_in(k, 0), members)
        ref = cp.spawn(
            SimulatorActor, cg, params, name=f"sim-{tag}-{i}", steps=blocks * unroll, publish_every=unroll,
            field="window", features=np.asarray(as_matrix(params)), ensemble=True,
            seed=int(jax.random.randint(jax.random.fold_in(k, 1), (), 0, 2**30)),
            outputs={"fields": channel}, workers=sim_workers[i % len(sim_workers)],
        )
        ref.start()
        return ref

    try:  # the training owns its learner and channel: nothing outlives it
        learner.start()
        launched = stream_while_training(
            learner, launch, actors=len(sim_workers), label=f"through the runtime (unroll {unroll})", progress=progress
        )
        final = learner.wait(60)
        history = learner.call("history")
        trainer = SolverCorrectionTrainer(config)
        trainer.set_weights(learner.call("weights"))
    finally:
        learner.release()
        cp.close_channel(channel)
    seconds = time.perf_counter() - t0
    losses = [float(loss) for _, _, loss, _ in history]
    if losses and not np.all(np.isfinite(losses)):
        raise FloatingPointError(f"training through the runtime diverged (unroll {unroll}): losses {losses[-5:]}; expected finite")
    if final.info.get("train_steps", 0) < setup.train_steps:
        raise RuntimeError(f"learner {tag} stopped after {final.info.get('train_steps')} of {setup.train_steps} steps: {final}")
    return RuntimeTraining(
        model=trainer.model, seconds=seconds, loss=float(np.mean(losses[-10:])), simulations=launched * members,
        windows=int(final.info.get("received", 0)),
    )

"""The bundled demos: one runnable coupling per workflow, shipped inside the wheel.

Each demo module has ``main(argv) -> dict`` (the results it also prints) and a
``--quick`` option that shrinks it to a smoke run of well under a minute. Run one
with ``coupler demo NAME`` (on any cluster ``coupler run`` can start or join) or
``python -m coupler.demos.NAME``; ``examples/NAME.py`` in a checkout is a thin
script that calls the same ``main``.

Demos:
    augmentation: Heat2D ensembles stream into a ``Reservoir``; a learner trains a surrogate online.
    augmentation_turbulence: 2D Navier-Stokes with a Fourier neural operator and a hybrid solver.
    modulation: a steerer proposes Gray-Scott runs to a work-sharing pool.
    transformation: an ensemble Kalman filter assimilates Lorenz-96 observations as they stream.
    transformation_2d: the same filter on a 2D vorticity field.
    live_stream: the coupling script itself steers a simulation and plots its stream live.
"""

from __future__ import annotations

from coupler.demos.registry import DEMOS, demo_module, run_demo

__all__ = [
    "DEMOS",
    "demo_module",
    "run_demo",
]

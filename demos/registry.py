"""Which demos ship with coupler, and how to run one by name.

Demos are found by module name inside the installed package (not by a path in a
source tree), so an installed wheel runs them from any directory.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

# Name -> one-line summary; the modules are coupler.demos.<name>.
DEMOS: dict[str, str] = {
    "augmentation": "Heat2D ensembles stream training pairs into a Reservoir; a learner trains a surrogate online",
    "augmentation_turbulence": "2D Navier-Stokes with a Fourier neural operator learned online, then a hybrid solver",
    "modulation": "a steerer proposes Gray-Scott runs to a work-sharing pool of simulators",
    "transformation": "an ensemble Kalman filter assimilates streamed Lorenz-96 observations; a learner corrects the model",
    "transformation_2d": "the ensemble filter on a 2D vorticity field observed on a coarse grid",
    "live_stream": "the coupling script steers a running Lorenz-96 and plots its stream as it arrives",
}


def demo_module(name: str) -> ModuleType:
    """Import the module of demo ``name``.

    Args:
        name: a key of :data:`DEMOS`.

    Returns:
        The module ``coupler.demos.<name>``; it has ``main(argv) -> dict``.

    Raises:
        KeyError: for a name that is not a bundled demo (the message lists them).
    """
    if name not in DEMOS:
        raise KeyError(f"unknown demo {name!r}; bundled demos: {', '.join(DEMOS)}")
    return importlib.import_module(f"coupler.demos.{name}")


def run_demo(name: str, argv: Sequence[str] = ()) -> dict[str, Any]:
    """Run demo ``name`` in this process with command-line arguments ``argv``.

    Its ``Coupling()`` starts a local cluster, or joins the one that
    ``coupler.scheduler-address`` names (as ``coupler demo`` sets it).

    Args:
        name: a key of :data:`DEMOS`.
        argv: the demo's own options, e.g. ``["--quick"]``.

    Returns:
        The results the demo printed, as a dict.

    Raises:
        KeyError: for a name that is not a bundled demo.
        TypeError: for ``argv`` given as one string (it would be read letter by letter).
    """
    if isinstance(argv, (str, bytes)):
        raise TypeError(f"run_demo(name, argv) takes a list of arguments, e.g. ['--quick']; got the string {argv!r}")
    main: Callable[[list[str]], dict[str, Any]] = demo_module(name).main
    return main(list(argv))

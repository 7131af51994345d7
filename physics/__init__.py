"""Pure JAX simulators and data-assimilation maths (no Dask here)."""

from coupler.physics.base import Simulator as Simulator
from coupler.physics.heat import Heat2D as Heat2D
from coupler.physics.heat import HeatParams as HeatParams
from coupler.physics.heat import HeatState as HeatState

__all__ = ["Heat2D", "HeatParams", "HeatState", "Simulator"]

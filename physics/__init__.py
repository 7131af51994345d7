"""Pure JAX simulators and data-assimilation maths (no Dask here)."""

from coupler.physics.base import Simulator as Simulator
from coupler.physics.heat import Heat2D as Heat2D
from coupler.physics.heat import HeatParams as HeatParams
from coupler.physics.heat import HeatState as HeatState
from coupler.physics.navier_stokes import NavierStokes2D as NavierStokes2D
from coupler.physics.navier_stokes import NavierStokesParams as NavierStokesParams
from coupler.physics.navier_stokes import NavierStokesState as NavierStokesState
from coupler.physics.gray_scott import GrayScott as GrayScott
from coupler.physics.gray_scott import GrayScottParams as GrayScottParams
from coupler.physics.gray_scott import GrayScottState as GrayScottState
from coupler.physics.gray_scott import pattern_amplitude as pattern_amplitude
from coupler.physics.gray_scott import params_from_vector as params_from_vector
from coupler.physics.gray_scott import run_amplitude as run_amplitude
from coupler.physics.lorenz import Lorenz96 as Lorenz96
from coupler.physics.lorenz import Lorenz63 as Lorenz63
from coupler.physics.lorenz import LorenzState as LorenzState
from coupler.physics.lorenz import Lorenz96Params as Lorenz96Params
from coupler.physics.lorenz import Lorenz63Params as Lorenz63Params
from coupler.physics.lorenz import rk4 as rk4
from coupler.physics.assimilation import FilterConfig as FilterConfig
from coupler.physics.assimilation import LinearObservation as LinearObservation
from coupler.physics.assimilation_model import AssimilationModel as AssimilationModel
from coupler.physics.assimilation_model import Lorenz63Model as Lorenz63Model
from coupler.physics.assimilation_model import Lorenz96Model as Lorenz96Model
from coupler.physics.assimilation_model import VorticityModel as VorticityModel
from coupler.physics.assimilation_baselines import Climatology as Climatology
from coupler.physics.assimilation_baselines import climatology as climatology
from coupler.physics.assimilation_baselines import run_var3d as run_var3d
from coupler.physics.assimilation_baselines import static_gain as static_gain
from coupler.physics.ensemble_filters import mean_preserving_rotation as mean_preserving_rotation
from coupler.physics.enkf_n import inflation_estimate as inflation_estimate
from coupler.physics.assimilation import CycleOutput as CycleOutput
from coupler.physics.assimilation import analysis as analysis
from coupler.physics.assimilation import cycle as cycle
from coupler.physics.assimilation import run_filter as run_filter
from coupler.physics.assimilation import inflate as inflate
from coupler.physics.assimilation import gaspari_cohn as gaspari_cohn
from coupler.physics.assimilation import rmse as rmse
from coupler.physics.assimilation import initial_ensemble as initial_ensemble
from coupler.physics.assimilation import observation_noise as observation_noise
from coupler.physics.assimilation import cycle_key as cycle_key

__all__ = [
    "analysis",
    "AssimilationModel",
    "Climatology",
    "climatology",
    "inflation_estimate",
    "mean_preserving_rotation",
    "run_var3d",
    "static_gain",
    "cycle",
    "cycle_key",
    "CycleOutput",
    "FilterConfig",
    "gaspari_cohn",
    "GrayScott",
    "GrayScottParams",
    "GrayScottState",
    "Heat2D",
    "HeatParams",
    "HeatState",
    "inflate",
    "initial_ensemble",
    "LinearObservation",
    "Lorenz63",
    "Lorenz63Model",
    "Lorenz63Params",
    "Lorenz96",
    "Lorenz96Model",
    "Lorenz96Params",
    "LorenzState",
    "NavierStokes2D",
    "NavierStokesParams",
    "NavierStokesState",
    "observation_noise",
    "params_from_vector",
    "pattern_amplitude",
    "rk4",
    "rmse",
    "run_amplitude",
    "run_filter",
    "Simulator",
    "VorticityModel",
]

"""Flax NNX surrogates, their online training, ensembles and acquisition (no Dask here)."""

from coupler.learners.online import ModelFactory as ModelFactory
from coupler.learners.online import OnlineTrainer as OnlineTrainer
from coupler.learners.online import OptimizerConfig as OptimizerConfig
from coupler.learners.online import SurrogateConfig as SurrogateConfig
from coupler.learners.online import Weights as Weights
from coupler.learners.surrogate import ConvSurrogate as ConvSurrogate
from coupler.learners.surrogate import ParameterFiLM as ParameterFiLM
from coupler.learners.training import eval_step as eval_step
from coupler.learners.training import make_optimizer as make_optimizer
from coupler.learners.training import predict as predict
from coupler.learners.training import relative_l2 as relative_l2
from coupler.learners.training import relative_mse_loss as relative_mse_loss
from coupler.learners.training import train_step as train_step
from coupler.learners.fno import FNO2D as FNO2D
from coupler.learners.fno import FNOConfig as FNOConfig
from coupler.learners.fno import SpectralConv2d as SpectralConv2d
from coupler.learners.fno import FourierLayer as FourierLayer
from coupler.learners.checkpoints import save_checkpoint as save_checkpoint
from coupler.learners.checkpoints import load_checkpoint as load_checkpoint
from coupler.learners.ensemble import DeepEnsemble as DeepEnsemble
from coupler.learners.ensemble import EnsembleConfig as EnsembleConfig
from coupler.learners.acquisition import ParameterSpace as ParameterSpace
from coupler.learners.acquisition import SearchData as SearchData
from coupler.learners.acquisition import Strategy as Strategy
from coupler.learners.acquisition import GridSweep as GridSweep
from coupler.learners.acquisition import RandomSweep as RandomSweep
from coupler.learners.acquisition import MaxUncertainty as MaxUncertainty
from coupler.learners.acquisition import ExpectedImprovement as ExpectedImprovement
from coupler.learners.acquisition import UpperConfidenceBound as UpperConfidenceBound
from coupler.learners.trust_region import TrustRegionExpectedImprovement as TrustRegionExpectedImprovement
from coupler.learners.variance_reduction import CalibratedVarianceReduction as CalibratedVarianceReduction
from coupler.learners.variance_reduction import GradientWeightedVarianceReduction as GradientWeightedVarianceReduction
from coupler.learners.variance_reduction import IntegratedVarianceReduction as IntegratedVarianceReduction
from coupler.learners.acquisition import expected_improvement as expected_improvement
from coupler.learners.acquisition import upper_confidence_bound as upper_confidence_bound
from coupler.learners.acquisition import latin_hypercube as latin_hypercube
from coupler.learners.acquisition import rng_state as rng_state
from coupler.learners.acquisition import set_rng_state as set_rng_state
from coupler.learners.correction import CorrectionNet as CorrectionNet
from coupler.learners.correction import CorrectionConfig as CorrectionConfig
from coupler.learners.correction import CorrectionTrainer as CorrectionTrainer
from coupler.learners.correction import MakeCorrectionTrainer as MakeCorrectionTrainer
from coupler.learners.correction import correction_function as correction_function
from coupler.learners.gp import GaussianProcess as GaussianProcess
from coupler.learners.gp import GPConfig as GPConfig
from coupler.learners.output_warping import LogWarp as LogWarp
from coupler.learners.samplers import SobolSweep as SobolSweep
from coupler.learners.samplers import LatinHypercubeSweep as LatinHypercubeSweep
from coupler.learners.steerer import Steerer as Steerer
from coupler.learners.ask_tell import AskTellSteerer as AskTellSteerer
from coupler.learners.ask_tell import Generator as Generator
from coupler.learners.ask_tell import Suggestion as Suggestion
from coupler.learners.ask_tell import Outcome as Outcome
from coupler.learners.solver_correction import CoarseCorrectionNet as CoarseCorrectionNet
from coupler.learners.solver_correction import CoarseCorrectionConfig as CoarseCorrectionConfig
from coupler.learners.solver_correction import SolverCorrectionConfig as SolverCorrectionConfig
from coupler.learners.solver_correction import SolverCorrectionTrainer as SolverCorrectionTrainer
from coupler.learners.spectral_closure import SpectralClosureNet as SpectralClosureNet
from coupler.learners.spectral_closure import SpectralClosureConfig as SpectralClosureConfig
from coupler.learners.spectral_closure import ClosureWithCorrection as ClosureWithCorrection
from coupler.learners.spectral_closure import ClosureWithCorrectionConfig as ClosureWithCorrectionConfig
from coupler.learners.mixed_closure import MixedClosureNet as MixedClosureNet
from coupler.learners.mixed_closure import MixedClosureConfig as MixedClosureConfig
from coupler.learners.learned_interpolation import LearnedInterpolationNet as LearnedInterpolationNet
from coupler.learners.learned_interpolation import LearnedInterpolationConfig as LearnedInterpolationConfig
from coupler.learners.learned_interpolation import ClosedLearnedInterpolation as ClosedLearnedInterpolation
from coupler.learners.learned_interpolation import ClosedLearnedInterpolationConfig as ClosedLearnedInterpolationConfig

__all__ = [
    "GaussianProcess",
    "IntegratedVarianceReduction",
    "CalibratedVarianceReduction",
    "GradientWeightedVarianceReduction",
    "TrustRegionExpectedImprovement",
    "GPConfig",
    "LogWarp",
    "SobolSweep",
    "LatinHypercubeSweep",
    "Steerer",
    "AskTellSteerer",
    "Generator",
    "Suggestion",
    "Outcome",
    "CoarseCorrectionNet",
    "CoarseCorrectionConfig",
    "SolverCorrectionConfig",
    "SolverCorrectionTrainer",
    "SpectralClosureNet",
    "SpectralClosureConfig",
    "MixedClosureNet",
    "MixedClosureConfig",
    "LearnedInterpolationNet",
    "LearnedInterpolationConfig",
    "ClosedLearnedInterpolation",
    "ClosedLearnedInterpolationConfig",
    "ClosureWithCorrection",
    "ClosureWithCorrectionConfig",
    "ConvSurrogate",
    "correction_function",
    "CorrectionConfig",
    "CorrectionNet",
    "CorrectionTrainer",
    "DeepEnsemble",
    "EnsembleConfig",
    "eval_step",
    "expected_improvement",
    "ExpectedImprovement",
    "FNO2D",
    "FNOConfig",
    "FourierLayer",
    "GridSweep",
    "latin_hypercube",
    "load_checkpoint",
    "make_optimizer",
    "MakeCorrectionTrainer",
    "MaxUncertainty",
    "ModelFactory",
    "OnlineTrainer",
    "OptimizerConfig",
    "ParameterFiLM",
    "ParameterSpace",
    "predict",
    "RandomSweep",
    "relative_l2",
    "relative_mse_loss",
    "save_checkpoint",
    "SearchData",
    "SpectralConv2d",
    "Strategy",
    "SurrogateConfig",
    "train_step",
    "upper_confidence_bound",
    "UpperConfidenceBound",
    "Weights",
]
from coupler.learners.placement import to_device as to_device

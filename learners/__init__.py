"""Flax NNX surrogates and their online training (no Dask here)."""

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

__all__ = [
    "ConvSurrogate",
    "ModelFactory",
    "OnlineTrainer",
    "OptimizerConfig",
    "ParameterFiLM",
    "SurrogateConfig",
    "Weights",
    "eval_step",
    "make_optimizer",
    "predict",
    "relative_l2",
    "relative_mse_loss",
    "train_step",
]

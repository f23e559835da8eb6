"""Interchangeable model parts, each chosen by name from the config.

Importing this package registers every built-in component. Each registry entry is a contract
(vaebench.registry): a config model, a build function, and optional kernels
(vaebench.components.kernels).
"""

from .networks import ACTIVATIONS, NETWORKS, MLP, MLPConfig
from .conv import ConvConfig, ConvNet
from .posteriors import POSTERIORS
from .priors import PRIORS
from .flows import FLOWS
from .gradients import GRADIENTS
from .kl import KL_ESTIMATORS
from .likelihoods import LIKELIHOODS
from .objectives import OBJECTIVES, ObjectiveConfig, Terms
from .optimizers import OPTIMIZERS, SCHEDULES, AdamConfig, OptimConfig, SGDConfig
from .vae import VAE, ModelConfig, Parts, build, build_model
from .kernels import KernelMismatch, check_kernels

__all__ = [
    "ACTIVATIONS", "NETWORKS", "MLP", "MLPConfig", "ConvConfig", "ConvNet", "POSTERIORS", "PRIORS", "FLOWS",
    "GRADIENTS", "KL_ESTIMATORS", "LIKELIHOODS",
    "OBJECTIVES", "ObjectiveConfig", "Terms", "OPTIMIZERS", "SCHEDULES", "AdamConfig", "OptimConfig",
    "SGDConfig", "VAE", "ModelConfig", "Parts", "build", "build_model", "KernelMismatch", "check_kernels",
]

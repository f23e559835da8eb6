"""Interchangeable model parts, each chosen by name from the config.

Importing this package registers every built-in component.
"""

from .networks import ACTIVATIONS, NETWORKS, MLP
from .posteriors import POSTERIORS
from .kl import KL_ESTIMATORS
from .likelihoods import LIKELIHOODS
from .objectives import OBJECTIVES, Terms
from .optimizers import OPTIMIZERS, SCHEDULES
from .vae import VAE, build_model
from .kernels import KernelMismatch, check_kernels

__all__ = [
    "ACTIVATIONS", "NETWORKS", "MLP", "POSTERIORS", "KL_ESTIMATORS", "LIKELIHOODS",
    "OBJECTIVES", "Terms", "OPTIMIZERS", "SCHEDULES", "VAE", "build_model",
]

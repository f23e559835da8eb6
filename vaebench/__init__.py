"""vaebench: ablation studies of variational autoencoders on binarized MNIST."""

__version__ = "0.1.0"

from .api import load, run  # noqa: E402

__all__ = ["__version__", "load", "run"]

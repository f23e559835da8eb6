"""vaebench: ablation studies of variational autoencoders on binarized MNIST."""

__version__ = "0.1.0"

from . import errors  # noqa: E402
from .api import compare, evaluate, load, ls, reconstruct, report, run, run_study, sample, study, summary  # noqa: E402

__all__ = ["__version__", "compare", "errors", "evaluate", "load", "ls", "reconstruct", "report", "run", "run_study", "sample", "study", "summary"]

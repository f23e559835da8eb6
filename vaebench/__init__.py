"""vaebench: ablation studies of variational autoencoders on binarized MNIST."""

__version__ = "0.1.0"

from . import errors  # noqa: E402
from .api import (compare, components, describe_config, evaluate, import_plugins, load, ls,  # noqa: E402
                  reconstruct, report, run, run_study, sample, study, summary)

__all__ = ["__version__", "compare", "components", "describe_config", "errors", "evaluate", "import_plugins",
           "load", "ls", "reconstruct", "report", "run", "run_study", "sample", "study", "summary"]

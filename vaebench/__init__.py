"""vaebench: ablation studies of variational autoencoders on binarized MNIST."""

__version__ = "0.1.0"

from . import errors  # noqa: E402
from .api import (components, describe_config, evaluate, import_plugins, load, ls, report, run, run_study,  # noqa: E402
                  study, summary)

__all__ = ["__version__", "components", "describe_config", "errors", "evaluate", "import_plugins", "load", "ls",
           "report", "run", "run_study", "study", "summary"]

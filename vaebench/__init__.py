"""vaebench: ablation studies of variational autoencoders on binarized MNIST."""

__version__ = "0.1.0"

from . import errors  # noqa: E402
from .api import (compare, compare_text, components, config_reference, describe_config, evaluate,  # noqa: E402
                  export_mlflow, export_tensorboard, import_plugins, load,
                  ls, reconstruct, report, run, run_study, sample, study, summary, summary_text)

__all__ = ["__version__", "compare", "compare_text", "components", "config_reference", "describe_config", "errors",
           "evaluate", "export_mlflow", "export_tensorboard", "import_plugins",
           "load", "ls", "reconstruct", "report", "run", "run_study", "sample", "study", "summary", "summary_text"]

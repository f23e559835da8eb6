"""Training one run: the loop, its metric writer and its checkpoints."""

from .trainer import RunResult, train_run, resolve_device

__all__ = ["RunResult", "train_run", "resolve_device"]

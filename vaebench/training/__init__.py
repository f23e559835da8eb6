"""Training one run: the loop, its metric writer and its checkpoints."""

from .trainer import RunResult, resolve_device, train_group, train_run

__all__ = ["RunResult", "resolve_device", "train_group", "train_run"]

"""Training runs: one loop (loop.py) over the engines (fused: fused.py, generic: generic.py,
torch: trainer.py), each run's state and checkpoints in trainer.py."""

from ..devices import resolve_device
from .loop import choose_engine, stack_key, stack_size, train_group, train_run
from .trainer import RunResult

__all__ = ["RunResult", "choose_engine", "resolve_device", "stack_key", "stack_size", "train_group", "train_run"]

"""The fused engine's module under its name before 0.2 (now vaebench.training.fused)."""

from .fused import *  # noqa: F401,F403

"""Held-out evaluation of trained runs: importance-weighted log-likelihood, active units, KL per dim.

Imports components, data, runs and elbo only; never the trainer, the grid or the CLI.
"""

from .estimates import active_units, estimator_path, iw_log_likelihood, mean_and_se, posterior_stats
from .run import (SPLITS, evaluate_model, evaluate_run, evaluate_runs, has_eval, planned_evals, resolve_device,
                  split_images)

__all__ = ["SPLITS", "active_units", "estimator_path", "evaluate_model", "evaluate_run", "evaluate_runs", "has_eval", "iw_log_likelihood",
           "mean_and_se", "planned_evals", "posterior_stats", "resolve_device", "split_images"]

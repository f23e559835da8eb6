"""Studies: a YAML grid expanded into independent, idempotent runs, executed locally or on Ray."""

from .executors import EXECUTORS, ExecOptions, available_cores
from .jobs import Job, execute
from .runner import GRID_FILE, STATES, StudyResult, locate, run_state, run_study
from .study import RunSpec, Study, expand, is_study, load_study

__all__ = ["EXECUTORS", "ExecOptions", "GRID_FILE", "Job", "RunSpec", "STATES", "Study", "StudyResult",
           "available_cores", "execute", "expand", "is_study", "load_study", "locate", "run_state", "run_study"]

"""What every engine shares: the interface the loop (vaebench.training.loop) drives, and the check
that a group of runs may train as one stack.

An engine trains the runs of a group in lock-step: it owns the update (``step``) and how its state
reaches each run's checkpoint (``save``); the run's cadence (evaluate, flush, NaN check,
checkpoint, status, progress, interrupt) is the loop's, written once.
"""

from __future__ import annotations

import torch

from ..config import differing_keys
from ..errors import VaebenchError

class EngineRefused(VaebenchError):
    """An engine was given runs it cannot train correctly."""


class Engine:
    """The update of M runs (``members``: vaebench.training.trainer.TrainingRun, all at one step)."""

    name = ""
    shared: tuple[str, ...] = ()  # sections whose per-run keys must still be equal in this engine's stacks
    # Does a run compute bit for bit what it computes alone, whatever stack it is in? If not, the
    # loop writes a stack's checkpoints in two phases, so that its members resume at one step.
    exact_alone = True

    def __init__(self, members: list, device: torch.device):
        self.members, self.device = list(members), device
        self.check(self.members)

    def check(self, members: list) -> None:
        """Refuse a group this engine cannot train as one stack."""
        if len({t.step for t in members}) > 1:
            raise EngineRefused(f"{self.name} engine: the runs of a stack must be at one step, got "
                                f"{sorted({t.step for t in members})}")
        bad = differing_keys([t.cfg for t in members], self.shared)
        if bad:
            raise EngineRefused(f"{self.name} engine: the runs of a stack differ in {', '.join(bad)}")

    def step(self, idx: torch.Tensor, t: int, out: torch.Tensor) -> None:
        """Update number ``t`` (from 1) of every member on training rows ``idx`` (M, B); write each
        member's mean (rec, kl, elbo) into ``out`` (M, 3). No host sync."""
        raise NotImplementedError

    # A CUDA graph may replay the step (vaebench.training.graphs) of an engine whose
    # graph_unsupported() is None. Such an engine's step is count(t) then counted_step(idx, t, out):
    # count writes t into the device tensors the step reads, and counted_step has fixed shapes,
    # preallocated buffers, no host sync and no host value besides graph_key(t) that changes with t.
    def graph_unsupported(self) -> str | None:
        """Why a CUDA graph cannot replay this engine's step (None: it can)."""
        return f"the {self.name} engine's step is not declared capturable"

    def graph_key(self, t: int):
        """The host values update t bakes into its kernels: a graph replays only updates with its key."""
        raise NotImplementedError

    def count(self, t: int) -> None:
        raise NotImplementedError

    def validate(self) -> None:
        """Each member's validation terms at its step (TrainingRun.eval_val; an engine may batch them)."""
        for t in self.members:
            t.eval_val()

    def generators(self) -> list[torch.Generator]:
        """The torch generators the step draws from: a CUDA graph registers them, so that a replay
        draws and advances them as an eager step would."""
        return [t.noise_gen for t in self.members]

    def info(self) -> dict:
        """What env.json records about the path this engine took (besides its name)."""
        return {}

    def counted_step(self, idx: torch.Tensor, t: int, out: torch.Tensor) -> None:
        raise NotImplementedError

    def save(self, j: int, stack: list[str] | None = None) -> None:
        """Write member j's checkpoint (the engine first brings its state into the member); with
        ``stack`` (the members' folders), as the pending checkpoint of a two-phase write."""
        self.members[j].save_checkpoint(stack)

    def drop(self, keep: list[int]) -> None:
        """Go on with the members at ``keep`` only (a diverged run leaves the stack)."""
        self.members = [self.members[j] for j in keep]

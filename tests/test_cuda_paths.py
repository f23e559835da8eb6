"""What the fused engine does differently on CUDA, checked on the CPU: counter-based noise
(vaebench.training.noise) and batched validation (generic.evaluate_stack)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from vaebench import runs
from vaebench.config import resolve
from vaebench.training import fused, noise, train_group


def _mix_reference(z: int) -> int:
    """SplitMix64's finalizer as published, on Python ints mod 2**64."""
    m = (1 << 64) - 1
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


def test_mix_is_splitmix64_bit_for_bit():
    xs = [0, 1, 2**63 + 5, 12345678901234567, 2**64 - 1, 0x9E3779B97F4A7C15 * 3 % 2**64]
    got = noise.mix(torch.tensor([noise._i64(x) for x in xs], dtype=torch.int64))
    assert [v & ((1 << 64) - 1) for v in got.tolist()] == [_mix_reference(x) for x in xs]


def test_a_runs_draw_depends_on_its_key_and_the_update_only():
    keys = torch.tensor([noise.run_key(s) for s in range(5)])
    t = torch.tensor(41)
    stack = noise.normal(keys, t, 1600)
    alone = noise.normal(keys[3:4], t, 1600)
    assert torch.equal(stack[3:4], alone)
    assert not torch.equal(stack[3], stack[4])
    assert not torch.equal(noise.normal(keys, torch.tensor(42), 1600), stack)


def test_a_draw_of_several_updates_equals_the_updates_one_by_one():
    keys = torch.tensor([noise.run_key(s) for s in range(3)])
    ahead = noise.normal(keys, 40, 1600, steps=5)
    assert ahead.shape == (3, 5, 1600)
    for s in range(5):
        assert torch.equal(ahead[:, s], noise.normal(keys, torch.tensor(40 + s), 1600))


def test_draws_are_standard_normal_and_uncorrelated():
    keys = torch.tensor([noise.run_key(s) for s in range(4)])
    a = noise.normal(keys, torch.tensor(0), 100_000).double()
    b = noise.normal(keys, torch.tensor(1), 100_000).double()
    flat = a.flatten().numpy()
    assert abs(flat.mean()) < 0.01 and abs(flat.var() - 1) < 0.01
    assert stats.kstest(flat, "norm").pvalue > 1e-3
    for x, y in ((a[0], a[1]), (a[0], b[0])):
        assert abs(np.corrcoef(x.numpy(), y.numpy())[0, 1]) < 0.02


@pytest.fixture
def counter_on_cpu(monkeypatch):
    monkeypatch.setattr(fused, "counter_noise", lambda device: True)


def test_with_counter_noise_a_run_in_a_stack_equals_the_run_alone(tmp_path, counter_on_cpu, monkeypatch):
    """What the fused engine does on CUDA, on the CPU (where a stack is exact): no generator state,
    so a run's numbers do not depend on its stack, and env.json says which noise ran."""
    over = {"data.per_class": 20, "data.val_size": 20, "train.steps": 30, "train.eval_every": 10,
            "train.flush_every": 10, "train.checkpoint_every": 20, "train.engine": "fast", "eval.enabled": False}
    cfgs = [resolve({"name": "c"}, over | {"seed": s}) for s in range(3)]
    stack_dirs = [tmp_path / "stack" / str(s) for s in range(3)]
    train_group(cfgs, stack_dirs, "cpu", False)
    alone = tmp_path / "alone"
    train_group([cfgs[1]], [alone], "cpu", False)
    a, b = runs.read_metrics(stack_dirs[1]), runs.read_metrics(alone)
    assert len(a) == 30 + 1 + 3 and a.equals(b)
    assert not a.equals(runs.read_metrics(stack_dirs[0]))
    assert runs.read_json(alone / runs.ENV)["noise"] == noise.NAME
    stack_dirs[0].parent.rename(tmp_path / "ahead")  # drawn ahead (default) vs one update at a time
    monkeypatch.setattr(fused, "NOISE_BYTES", 1)
    train_group(cfgs, stack_dirs, "cpu", False)
    for s in range(3):
        assert runs.read_metrics(stack_dirs[s]).equals(runs.read_metrics(tmp_path / "ahead" / str(s)))


def test_a_stacks_batched_validation_equals_each_runs_own(tmp_path):
    from vaebench.training.generic import evaluate_stack
    from vaebench.training.fused import FusedStack
    from vaebench.training.trainer import Trainer, evaluate

    cpu = torch.device("cpu")
    for over in ({}, {"data.binarize": "dynamic", "objective.kl": "monte_carlo", "objective.k": 3}):
        base = {"data.per_class": 20, "data.val_size": 50, "train.steps": 5} | over
        ts = [Trainer(resolve({"name": "v"}, base | {"seed": s}), tmp_path / f"{len(over)}-{s}", cpu) for s in range(3)]
        st = FusedStack(ts, cpu)
        for s in range(5):  # parameters that differ between the runs
            st.step(torch.stack([t.perm[s * 10:s * 10 + 100] for t in ts]), s + 1, torch.empty(3, 3))
        first = ts[0]
        names = [n for n, _ in first.model.named_parameters()]
        got = evaluate_stack(first.model, first.objective, dict(zip(names, st._views(st.flat))), first.val_x,
                             first.binarizer)
        want = torch.stack([evaluate(t.model, t.objective, t.val_x, t.binarizer) for t in ts])
        assert got.shape == (3, 3) and torch.allclose(got, want, rtol=0, atol=1e-4), (got - want).abs().max()
        assert not torch.allclose(want[0], want[1])


def test_a_big_stacks_files_written_on_threads_equal_those_written_in_turn(tmp_path, monkeypatch):
    from vaebench.training import loop

    over = {"data.per_class": 20, "data.val_size": 20, "train.steps": 30, "train.eval_every": 10,
            "train.flush_every": 10, "train.checkpoint_every": 20, "train.engine": "fast", "eval.enabled": False}
    cfgs = [resolve({"name": "p"}, over | {"seed": s}) for s in range(3)]
    turn = [tmp_path / "turn" / str(s) for s in range(3)]
    train_group(cfgs, turn, "cpu", False)
    monkeypatch.setattr(loop, "POOL_FROM", 2)
    pooled = [tmp_path / "pool" / str(s) for s in range(3)]
    res = train_group(cfgs, pooled, "cpu", False)
    assert [r.state for r in res] == ["done"] * 3
    for a, b in zip(turn, pooled):
        assert runs.read_metrics(a).equals(runs.read_metrics(b))
        assert runs.read_json(a / runs.FINAL) == runs.read_json(b / runs.FINAL)
        assert runs.read_status(b)["state"] == "done" and (b / runs.CHECKPOINT).is_file()

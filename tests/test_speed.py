"""The fused engine against the torch Trainer: same numbers, same run folders, resume, NaN isolation.

The fused engine computes the same float32 math in another order (batched matmuls, a hand-written
backward, Adam over one tensor), so its metrics equal the torch Trainer's up to reassociation:
per-step metrics within RTOL relative plus ATOL nats (measured: ~3e-7 relative over 200 steps).
Against itself it is exact: a run's numbers do not depend on the stack it trains in, so a stack
of any size, a stack of one, a run alone and a stack resumed with its members at different steps
give bit for bit the same metrics.
"""

import numpy as np
import pytest
import torch

from vaebench import runs
from vaebench.config import resolve
from vaebench.grid.runner import stack_groups
from vaebench.training import choose_engine, stack_key, train_group, train_run
from vaebench.training.trainer import Trainer

RTOL, ATOL = 1e-4, 1e-4
TINY = {"data.per_class": 50, "data.val_size": 50, "train.steps": 200, "train.batch_size": 50,
        "train.eval_every": 50, "train.flush_every": 50, "train.checkpoint_every": 100, "train.threads": 1}
# Four runs of one shape that differ in everything a stack lets differ.
GROUP = [
    {"seed": 0},
    {"seed": 1, "optim.lr": 3e-3, "objective.kl": "monte_carlo"},
    {"seed": 2, "model.posterior": "log_sigma", "objective.beta": 0.5, "optim.weight_decay": 1e-3},
    {"seed": 3, "optim.lr": 2e-3, "objective.kl": "monte_carlo", "model.posterior": "log_sigma",
     "optim.betas": [0.8, 0.99]},
]


def cfg(i, extra=None, engine="fast", **over):
    return resolve({"name": f"r{i}"}, {**TINY, "objective.k": 2, **(extra or {}), "train.engine": engine, **over})


def assert_same_metrics(a, b):
    ma, mb = runs.read_metrics(a), runs.read_metrics(b)
    assert list(ma.step) == list(mb.step) and list(ma.split) == list(mb.split)
    for term in runs.TERMS:
        np.testing.assert_allclose(ma[term], mb[term], rtol=RTOL, atol=ATOL, err_msg=term)


def assert_same_final(a, b):
    fa, fb = runs.read_final(a), runs.read_final(b)
    for split in ("train", "val"):
        for term in runs.TERMS:
            np.testing.assert_allclose(fa[split][term], fb[split][term], rtol=RTOL, atol=ATOL)


@pytest.fixture(scope="module")
def alone(tmp_path_factory):
    """The GROUP trained one by one on the torch Trainer: the reference."""
    root = tmp_path_factory.mktemp("alone")
    for i, extra in enumerate(GROUP):
        assert train_run(cfg(i, extra, "torch"), root / f"r{i}", "cpu", progress=False).state == "done"
    return root


@pytest.mark.parametrize("extra", [
    {"data.binarize": "dynamic", "objective.k": 3},
    {"model.encoder.hidden": [32, 24], "model.encoder.activation": "relu", "model.decoder.activation": "sigmoid"},
    {"objective.k": 1, "objective.kl": "monte_carlo", "objective.beta": 0.7},  # K = 1, one beta for the stack
    {"objective.k": 7},  # 7 x 50 x 196 logits: the big-tensor Bernoulli path
    {"model.encoder.hidden": [], "model.decoder.hidden": []},  # linear encoder and decoder
])
def test_fast_single_run_equals_torch(tmp_path, extra):
    for engine in ("torch", "fast"):
        assert train_run(cfg(0, extra, engine), tmp_path / engine, "cpu", progress=False).state == "done"
    assert_same_metrics(tmp_path / "torch", tmp_path / "fast")
    assert_same_final(tmp_path / "torch", tmp_path / "fast")


def test_stack_of_four_equals_each_run_alone(tmp_path, alone):
    cfgs = [cfg(i, extra) for i, extra in enumerate(GROUP)]
    assert len({stack_key(c) for c in cfgs}) == 1 and stack_groups(cfgs, "cpu") == [[0, 1, 2, 3]]
    res = train_group(cfgs, [tmp_path / f"r{i}" for i in range(4)], "cpu", progress=False)
    assert [r.state for r in res] == ["done"] * 4
    for i in range(4):
        d, ref = tmp_path / f"r{i}", alone / f"r{i}"
        assert {p.name for p in d.iterdir()} == {p.name for p in ref.iterdir()}
        assert runs.read_config(d) == runs.read_config(ref) | {"train": runs.read_config(d)["train"]}
        assert runs.read_status(d)["state"] == "done" and runs.read_status(d)["step"] == 200
        assert_same_metrics(d, ref)
        assert_same_final(d, ref)
        # The checkpoint has the torch Trainer's format, to the optimizer's state_dict.
        a = torch.load(d / runs.CHECKPOINT, weights_only=True)
        b = torch.load(ref / runs.CHECKPOINT, weights_only=True)
        assert a.keys() == b.keys() and a["model"].keys() == b["model"].keys()
        assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
        for k, sa in a["optimizer"]["state"].items():
            sb = b["optimizer"]["state"][k]
            assert sa.keys() == sb.keys() and sa["step"].dtype == sb["step"].dtype and float(sa["step"]) == 200
            torch.testing.assert_close(sa["exp_avg"], sb["exp_avg"], rtol=1e-3, atol=1e-5)
        assert torch.equal(a["perm"], b["perm"]) and a["pos"] == b["pos"]
        assert torch.equal(a["noise_gen"], b["noise_gen"]) and torch.equal(a["order_gen"], b["order_gen"])
        assert sum(v.numel() for v in a["model"].values()) == sum(v.numel() for v in b["model"].values())


def test_a_killed_stack_resumes_each_run(tmp_path, alone, monkeypatch):
    cfgs = [cfg(i, extra) for i, extra in enumerate(GROUP)]
    dirs = [tmp_path / f"r{i}" for i in range(4)]
    save = Trainer.save_checkpoint

    def save_then_die(self, stack=None):  # killed at step 100 just after the first run's checkpoint
        save(self, stack)
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_group(cfgs, dirs, "cpu", progress=False)
    monkeypatch.setattr(Trainer, "save_checkpoint", save)
    assert [runs.read_status(d)["state"] for d in dirs] == ["running"] * 4
    assert (dirs[0] / runs.CHECKPOINT).is_file() and not (dirs[1] / runs.CHECKPOINT).exists()
    # Run 0 goes on from step 100 on the torch engine (same checkpoint format); the others restart as a stack.
    assert train_run(cfg(0, GROUP[0], "torch"), dirs[0], "cpu", progress=False).state == "done"
    res = train_group(cfgs, dirs, "cpu", progress=False)
    assert [r.state for r in res] == ["skipped", "done", "done", "done"]
    for i in range(4):
        assert_same_metrics(dirs[i], alone / f"r{i}")
        assert_same_final(dirs[i], alone / f"r{i}")


@pytest.fixture(scope="module")
def stacked(tmp_path_factory):
    """The GROUP trained uninterrupted as one stack on the fused engine."""
    root = tmp_path_factory.mktemp("stacked")
    cfgs = [cfg(i, extra) for i, extra in enumerate(GROUP)]
    assert [r.state for r in train_group(cfgs, [root / f"r{i}" for i in range(4)], "cpu", progress=False)] == ["done"] * 4
    return root


def assert_identical(a, b):
    ma, mb = runs.read_metrics(a), runs.read_metrics(b)
    assert list(ma.step) == list(mb.step) and list(ma.split) == list(mb.split)
    for term in runs.TERMS:
        np.testing.assert_array_equal(ma[term], mb[term], err_msg=term)
    assert runs.read_final(a) == runs.read_final(b)


def test_a_run_computes_the_same_alone_and_in_any_stack(tmp_path, stacked):
    for i, extra in enumerate(GROUP):  # alone: a stack of one
        assert train_run(cfg(i, extra), tmp_path / f"r{i}", "cpu", progress=False).state == "done"
        assert runs.read_json(tmp_path / f"r{i}" / runs.ENV)["engine"] == "fused"
        assert_identical(tmp_path / f"r{i}", stacked / f"r{i}")
    pair = [cfg(i, GROUP[i]) for i in (3, 1)]  # another stack, other order
    train_group(pair, [tmp_path / "p3", tmp_path / "p1"], "cpu", progress=False)
    assert_identical(tmp_path / "p3", stacked / "r3")
    assert_identical(tmp_path / "p1", stacked / "r1")


def test_a_stack_killed_between_two_members_checkpoints_resumes_exactly(tmp_path, stacked, monkeypatch):
    cfgs = [cfg(i, extra) for i, extra in enumerate(GROUP)]
    dirs = [tmp_path / f"r{i}" for i in range(4)]
    save = Trainer.save_checkpoint
    calls = []

    def save_then_die(self, stack=None):  # killed at step 100 after the first two runs' checkpoints
        save(self, stack)
        calls.append(self.dir)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_group(cfgs, dirs, "cpu", progress=False)
    monkeypatch.setattr(Trainer, "save_checkpoint", save)
    assert [(d / runs.CHECKPOINT).is_file() for d in dirs] == [True, True, False, False]
    res = train_group(cfgs, dirs, "cpu", progress=False)  # two stacks: at step 100 and at step 0
    assert [r.state for r in res] == ["done"] * 4
    for i in range(4):
        assert_identical(dirs[i], stacked / f"r{i}")


def test_a_diverging_run_leaves_the_stack_and_the_others_finish(tmp_path, alone, stacked):
    cfgs = [cfg(0, GROUP[0]), cfg(9, {"optim.lr": 1e30}), cfg(2, GROUP[2])]  # 1e30 overflows at step 2
    dirs = [tmp_path / n for n in ("r0", "bad", "r2")]
    res = train_group(cfgs, dirs, "cpu", progress=False)
    assert [r.state for r in res] == ["done", "failed", "done"]
    bad = runs.read_status(dirs[1])
    assert bad["state"] == "failed" and bad["reason"] == f"loss became NaN/inf at step {res[1].step + 1}"
    m = runs.read_metrics(dirs[1])
    assert m[["rec", "kl", "elbo"]].notna().all().all() and m.step.max() <= res[1].step
    for d, ref in ((dirs[0], alone / "r0"), (dirs[2], alone / "r2")):
        assert_same_metrics(d, ref)
        assert_same_final(d, ref)
    assert_identical(dirs[0], stacked / "r0")  # the stack that lost a member computes what it did before
    assert_identical(dirs[2], stacked / "r2")


def test_what_the_fused_engine_does_not_handle_trains_on_another():
    assert choose_engine(cfg(0, engine="auto")) == ("fused", None)
    assert choose_engine(cfg(0, engine="torch")) == ("torch", None)
    engine, why = choose_engine(cfg(0, {"optim.name": "sgd"}, engine="auto"))
    assert engine == "generic" and "sgd declares no fused kernel" in why
    engine, why = choose_engine(cfg(0, {"model.encoder.activation": "gelu"}, engine="auto"))
    assert engine == "generic" and "GELU declares no fused kernel" in why
    assert choose_engine(cfg(0, {"objective.name": "iwae"}))[0] == "generic"
    sgd = [cfg(i, {"optim.name": "sgd", "seed": i}, engine="auto") for i in range(2)]
    mixed = [cfg(0), cfg(1, {"seed": 5}), cfg(2, {"objective.k": 1}), cfg(3, {"seed": 6}, **{"train.stack": "off"})]
    assert stack_groups(sgd, "cpu") == [[0, 1]]  # the generic engine stacks them
    assert stack_groups(mixed, "cpu") == [[0, 1], [2], [3]]
    assert stack_groups([cfg(i, {"seed": i}, **{"train.stack": 2}) for i in range(5)], "cpu") == [[0, 1], [2], [3, 4]]  # even stacks


def test_stack_option_reads_yaml_off_and_rejects_nonsense():
    import yaml as _yaml

    from vaebench.config import resolve
    from vaebench.errors import ConfigError

    assert resolve(_yaml.safe_load("train: {stack: off}")).train.stack == "off"  # YAML's off is false
    assert resolve({}, ["train.stack=8"]).train.stack == 8
    for bad in ("0", "many", "2.5"):
        with pytest.raises(ConfigError, match="train.stack must be auto, off or a positive number"):
            resolve({}, [f"train.stack={bad}"])


def test_the_cuda_block_path_gives_the_same_numbers_on_cpu(tmp_path, alone, monkeypatch):
    """On CUDA the elementwise kernels run over blocks of runs (stacked.block_size); forced on CPU,
    that path computes each run's numbers as the per-run path does, up to float rounding."""
    from vaebench.training import fused as stacked_mod

    monkeypatch.setattr(stacked_mod, "block_size", lambda device, runs, sizes=(): runs)
    extras = [GROUP[0], {"seed": 10}, {"seed": 11}, *GROUP[1:]]  # runs 0-2: one block for every kernel
    cfgs = [cfg(i, extra) for i, extra in enumerate(extras)]
    dirs = [tmp_path / f"b{i}" for i in range(len(extras))]
    assert [r.state for r in train_group(cfgs, dirs, "cpu", progress=False)] == ["done"] * len(extras)
    for i, d in zip((0, 1, 2, 3), (dirs[0], dirs[3], dirs[4], dirs[5])):
        assert_same_metrics(d, alone / f"r{i}")
        assert_same_final(d, alone / f"r{i}")


def test_aligned_shapes_train_a_cpu_stack_with_whole_stack_kernels_bit_for_bit(tmp_path):
    """Where each run's block of every buffer is a whole number of vectorized loop steps (batch 64,
    K = 2: 64 x 8, 2 x 64 x 196, ...), the CPU kernels run over the whole stack (one launch, not M)
    and each run still computes what it computes alone, bit for bit."""
    from vaebench.training.fused import FusedStack
    from vaebench.training.trainer import Trainer

    shape = {"train.batch_size": 64, "train.steps": 120}
    extras = [{"seed": 20}, {"seed": 21}, {"seed": 22}, GROUP[1], GROUP[2]]
    cfgs = [cfg(i, extra, **shape) for i, extra in enumerate(extras)]
    probe = FusedStack([Trainer(c, tmp_path / "probe" / str(i), torch.device("cpu")) for i, c in enumerate(cfgs)],
                       torch.device("cpu"))
    assert probe.block == len(cfgs) and probe.blocks[0] == (0, 3)  # the three seeds: one launch
    dirs = [tmp_path / "stack" / str(i) for i in range(len(cfgs))]
    assert [r.state for r in train_group(cfgs, dirs, "cpu", progress=False)] == ["done"] * len(cfgs)
    for i, c in enumerate(cfgs):
        train_group([c], [tmp_path / "alone" / str(i)], "cpu", progress=False)
        assert_identical(dirs[i], tmp_path / "alone" / str(i))

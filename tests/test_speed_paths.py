"""Which path ran is recorded (issue 15): CUDA graph capture, threads; evaluation reports progress."""

from __future__ import annotations

from pathlib import Path

import torch

import vaebench
from vaebench import runs
from vaebench.devices import DEFAULT_THREADS, set_threads
from vaebench.evaluation.estimates import iw_log_likelihood
from vaebench.training.graphs import why_not


def test_a_cpu_run_records_no_cuda_graph_and_its_threads(tmp_path):
    res = vaebench.run({"name": "paths", "train": {"steps": 30, "eval_every": 10}}, out=tmp_path, progress=False)
    env = runs.read_json(Path(res.path) / runs.ENV)
    assert env["cuda_graph"] is False and env["cuda_graph_reason"] == "device is cpu"
    assert env["threads"] == DEFAULT_THREADS == 1


def _engines(tmp_path, **over):
    from vaebench.config import resolve
    from vaebench.training.generic import GenericStack
    from vaebench.training.fused import FusedStack
    from vaebench.training.trainer import TorchEngine, Trainer

    cfg = resolve({"name": "g"}, {"data.per_class": 10, "data.val_size": 10, "train.steps": 100, **over})
    cpu = torch.device("cpu")
    return [E([Trainer(cfg, tmp_path / E.name, cpu)], cpu) for E in (FusedStack, GenericStack, TorchEngine)]


def test_an_engine_declares_whether_a_cuda_graph_may_replay_its_step(tmp_path):
    fused, generic, torch_engine = _engines(tmp_path)
    cuda = torch.device("cuda")
    assert why_not(cuda, fused) is None
    assert why_not(cuda, generic) == "the generic engine's step is not declared capturable"
    assert why_not(cuda, torch_engine) == "the torch engine's step is not declared capturable"
    assert why_not(torch.device("cpu"), fused) == "device is cpu"


def test_the_graph_key_holds_the_host_values_that_change_with_the_step(tmp_path):
    fused = _engines(tmp_path, **{"objective.warmup": 10, "optim.schedule": "iwae"})[0]
    keys = [fused.graph_key(t) for t in range(1, 101)]
    assert len(set(keys[:11])) == 11  # the KL warmup: a new key every update
    assert keys[50] == keys[99]  # after it: one key per schedule stage (the last from update 34)
    assert len(set(keys[10:])) == len({fused.host(t)[1][0][1] for t in range(11, 101)})
    constant = _engines(tmp_path / "c")[0]
    assert len({constant.graph_key(t) for t in range(1, 101)}) == 1


def test_capture_is_for_cuda_only_and_can_be_turned_off(monkeypatch):
    assert why_not(torch.device("cpu")) == "device is cpu"
    monkeypatch.setenv("VAEBENCH_CUDA_GRAPH", "0")
    assert why_not(torch.device("cuda")) == "VAEBENCH_CUDA_GRAPH=0"
    monkeypatch.setenv("VAEBENCH_CUDA_GRAPH", "1")
    assert why_not(torch.device("cuda")) is None


def test_threads_default_to_one_and_follow_a_request():
    before = torch.get_num_threads()
    try:
        assert set_threads(None) == 1 and torch.get_num_threads() == 1
        assert set_threads(2) == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_the_iw_estimate_reports_images_done_and_is_unchanged_by_it(tmp_path):
    res = vaebench.run({"name": "prog", "train": {"steps": 20}}, out=tmp_path, progress=False)
    model = runs.load_model(res.path)
    x = (torch.rand((23, 196), generator=torch.Generator().manual_seed(1)) > 0.5).float()
    done = []
    a = iw_log_likelihood(model, x, 50, torch.Generator().manual_seed(0), batch=5, progress=done.append)
    b = iw_log_likelihood(model, x, 50, torch.Generator().manual_seed(0), batch=5)
    assert done == [5, 5, 5, 5, 3]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])

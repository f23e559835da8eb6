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

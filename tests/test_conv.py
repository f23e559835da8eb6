"""The conv network: its shapes against the stride-2 arithmetic, its parameter count against the built
module, its size errors as one line, and whole tiny runs: a generic stack against the torch engine,
held-out evaluation, mnist28."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import vaebench
from vaebench import runs
from vaebench.components import NETWORKS, ConvNet, build_model
from vaebench.config import resolve
from vaebench.errors import ConfigError
from vaebench.evaluation.estimates import estimator_path, iw_log_likelihood
from vaebench.training import choose_engine, train_group, train_run

from conftest import SHARED_MNIST, invoke, one_line_error

RTOL, ATOL = 1e-4, 1e-4  # per-step metrics of whole runs on two engines, as tests/test_engines.py
CONV = {"name": "conv", "channels": [4, 8], "hidden": 16}
TINY = {"data.per_class": 10, "data.val_size": 20, "train.batch_size": 20, "train.steps": 20,
        "train.eval_every": 10, "train.flush_every": 10, "train.checkpoint_every": 20, "train.threads": 1,
        "model.latent": 4, "model.encoder": CONV, "model.decoder": CONV, "eval.k": 3, "eval.splits": ["val"]}


def _sides(net: nn.Module, x: torch.Tensor) -> list[int]:
    """The image side after each conv or transposed conv, read by hooks on the running module."""
    out: list[int] = []
    hooks = [m.register_forward_hook(lambda m, i, o: out.append(o.shape[-1])) for m in net.modules()
             if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    net(x)
    for h in hooks:
        h.remove()
    return out


@pytest.mark.parametrize("side,channels", [(14, [4, 8]), (28, [4, 8]), (14, [2, 3, 4]), (28, [2] * 5)])
def test_each_conv_halves_the_side_rounding_up_and_the_decoder_retraces_it(side, channels):
    n = side * side
    want = [side]
    for _ in channels:
        want.append(math.ceil(want[-1] / 2))  # 14 -> 7 -> 4 -> 2
    enc = NETWORKS.build({"name": "conv", "channels": channels, "hidden": 16}, n_in=n, n_out=6)
    dec = NETWORKS.build({"name": "conv", "channels": channels, "hidden": 0}, n_in=3, n_out=n)
    assert _sides(enc, torch.rand(2, n)) == want[1:]
    assert _sides(dec, torch.rand(2, 3)) == want[::-1][1:]  # 2 -> 4 -> 7 -> 14: the encoder's, reversed


@pytest.mark.parametrize("side", [14, 28])
def test_leading_dims_are_kept_and_each_row_is_its_own_image(side):
    n = side * side
    torch.manual_seed(0)
    enc = NETWORKS.build(CONV, n_in=n, n_out=6)
    dec = NETWORKS.build(CONV, n_in=3, n_out=n)
    x, z = torch.rand(2, 5, n), torch.randn(7, 2, 3)  # (K, B, D), and the objectives' (K, B, L)
    assert enc(x).shape == (2, 5, 6) and enc(x[0]).shape == (5, 6)
    assert dec(z).shape == (7, 2, n)
    torch.testing.assert_close(dec(z)[3, 1], dec(z[3, 1:2])[0])  # a row alone: the same logits
    torch.testing.assert_close(enc(x)[1], enc(x[1]))


@pytest.mark.parametrize("cfg", [CONV, {"name": "conv"}, {"name": "conv", "channels": [3], "kernel": 5, "hidden": None},
                                 {"name": "conv", "channels": [2, 3, 5], "kernel": 1, "activation": "tanh"}])
@pytest.mark.parametrize("n_in,n_out", [(196, 16), (8, 196), (784, 4), (2, 784)])
def test_the_parameter_count_from_the_config_is_the_built_modules(cfg, n_in, n_out):
    net = NETWORKS.build(cfg, n_in=n_in, n_out=n_out)
    assert NETWORKS.configure(cfg).parameters(n_in, n_out) == sum(p.numel() for p in net.parameters())


def test_hidden_null_is_hidden_0_no_fully_connected_layer_and_the_same_run():
    a, b = (resolve({}, {"model.encoder": {**CONV, "hidden": h}}) for h in (None, 0))
    assert a.model.encoder.hidden == 0 and a.run_hash() == b.run_hash()
    net = NETWORKS.build(a.model.encoder, n_in=196, n_out=8)
    assert [type(m) for m in net.net if isinstance(m, nn.Linear)] == [nn.Linear]  # flatten -> Linear(8) only


def test_sizes_it_cannot_take_are_one_line_config_errors():
    with pytest.raises(ConfigError, match=r"^model\.encoder: a conv network needs a square image") as e:
        NETWORKS.build("conv", n_in=200, n_out=8)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"^model\.decoder\.channels: .*14x14 image halves only 4 times"):
        NETWORKS.build({"name": "conv", "channels": [2] * 5}, n_in=8, n_out=196)
    with pytest.raises(ConfigError, match="kernel must be odd"):
        resolve({}, {"model.encoder": {"name": "conv", "kernel": 4}})
    # the count check refuses an absurd conv before anything is allocated, with its usual message
    with pytest.raises(ConfigError, match=r"model is too large: .*model\.encoder=\{name: conv, channels: \[100000\]"):
        resolve({}, {"model.encoder": {"name": "conv", "channels": [100000]}})


def test_a_stack_of_channels_the_image_cannot_take_is_refused_by_the_cli_in_one_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: c\nmodel:\n  encoder: {name: conv, channels: [2, 2, 2, 2, 2]}\n")
    proc = invoke("run", str(cfg), "--out", str(tmp_path / "r"))
    one_line_error(proc, "model.encoder.channels", "c.yaml", "at most 4 entries")
    assert not (tmp_path / "r").exists()


def test_a_generic_stack_of_two_seeds_matches_the_torch_engine_per_run_and_evaluates(tmp_path):
    cfgs = [resolve({"name": f"s{i}"}, {**TINY, "seed": i}) for i in range(2)]
    engine, why = choose_engine(cfgs[0])
    assert engine == "generic" and "ConvNet declares no fused kernel" in why
    with pytest.raises(ConfigError, match="train.engine=fused cannot train"):
        choose_engine(resolve(cfgs[0], {"train.engine": "fused"}))
    res = train_group(cfgs, [tmp_path / f"g{i}" for i in range(2)], "cpu", progress=False)
    assert [r.state for r in res] == ["done", "done"]
    for i, c in enumerate(cfgs):
        env = runs.read_json(tmp_path / f"g{i}" / runs.ENV)
        assert env["engine"] == "generic" and "ConvNet" in env["engine_why"]
        train_run(resolve(c, {"train.engine": "torch"}), tmp_path / f"t{i}", "cpu", progress=False)
        a, b = runs.read_metrics(tmp_path / f"g{i}"), runs.read_metrics(tmp_path / f"t{i}")
        assert list(a.step) == list(b.step)
        np.testing.assert_allclose(a[list(runs.TERMS)], b[list(runs.TERMS)], rtol=RTOL, atol=ATOL)
    # held out: the evaluator's generic path on the loaded model, against a sum over the K samples by hand
    model = runs.load_model(tmp_path / "g0")
    assert isinstance(model.decoder, ConvNet) and estimator_path(model) == "generic"
    x = torch.bernoulli(torch.full((3, 196), 0.3), generator=torch.Generator().manual_seed(1))
    iw, _ = iw_log_likelihood(model, x, k=4, generator=torch.Generator().manual_seed(2))
    eps = torch.randn((3, 4, 4), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        mu, sigma = model.encode(x)
        z = mu[:, None] + sigma[:, None] * eps
        normal = torch.distributions.Normal
        w = (torch.distributions.Bernoulli(logits=model.decode(z)).log_prob(x[:, None]).sum(-1)
             + normal(0, 1).log_prob(z).sum(-1) - normal(mu[:, None], sigma[:, None]).log_prob(z).sum(-1))
    torch.testing.assert_close(iw, (torch.logsumexp(w.double(), 1) - math.log(4)), rtol=1e-5, atol=1e-4)
    vaebench.evaluate(tmp_path / "g0", k=3, split="val", device="cpu")  # as `vaebench eval` runs it
    entries = runs.read_json(tmp_path / "g0" / "eval.json")["entries"]
    assert [(e["split"], e["k"], e["estimator"]) for e in entries] == [("val", 3, "generic")]


def test_a_tiny_mnist28_run(tmp_path):
    if not SHARED_MNIST.is_dir():
        pytest.skip(f"canonical MNIST IDX files not found at {SHARED_MNIST}")
    c = resolve({"name": "m28"}, {**TINY, "data.dataset": "mnist28", "data.root": str(SHARED_MNIST)})
    assert build_model(c.model, 784).decoder(torch.zeros(2, 4)).shape == (2, 784)
    r = train_run(c, tmp_path / "m28", "cpu", progress=False)
    assert r.state == "done"
    assert runs.load_model(tmp_path / "m28").data_dim == 784

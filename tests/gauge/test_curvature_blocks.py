"""Curvature per parameter block and the generalised Gauss-Newton (gauge.hessian): exact
blocks against torch.autograd.functional.hessian, GGN against an explicit J^T H J."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gauge as fl
from gauge.errors import FlatnessOptionError
from tests.conftest import assert_user_error, run_cli
from tests.tiny_runs import make_checkpoint, tiny_data


class Net(nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.fc1 = nn.Linear(4, 3)
        self.fc2 = nn.Linear(3, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


def _data(n=12, d=4, c=3, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=gen, dtype=torch.float64), torch.randint(0, c, (n,),
                                                                               generator=gen)


def _params(net):
    return {k: v.detach().clone().double() for k, v in net.state_dict().items()}


def _flat_fn(net, params, names, x, fn):
    shapes = [params[n].shape for n in names]

    def f(theta):
        parts = dict(zip(names, (t.view(s) for t, s in zip(
            theta.split([s.numel() for s in shapes]), shapes))))
        return fn(torch.func.functional_call(net, {**params, **parts}, (x,)))

    return f, torch.cat([params[n].flatten() for n in names])


def test_block_eigenvalues_and_traces_are_those_of_the_diagonal_blocks():
    net = Net().double()
    params = _params(net)
    x, y = _data()
    res = fl.hessian_eigenvalues(net, params, (x, y), k=2, which="both", blocks="layer",
                                 tol=1e-10)
    tr = fl.hessian_trace(net, params, (x, y), n_samples=60, method="hutch++", blocks="layer")
    assert isinstance(res, fl.BlockCurvature)
    assert res.members == {"fc1": ("fc1.weight", "fc1.bias"), "fc2": ("fc2.weight", "fc2.bias")}
    for block, names in res.members.items():
        f, theta = _flat_fn(net, params, list(names), x, lambda out: F.cross_entropy(out, y))
        exact = np.linalg.eigvalsh(torch.autograd.functional.hessian(f, theta).numpy())
        np.testing.assert_allclose(res.blocks[block].values,
                                   np.r_[exact[:2], exact[-2:]], rtol=1e-6, atol=1e-9)
        # Hutch++ with more probes than the block's dimension is exact
        assert tr.blocks[block].estimate == pytest.approx(exact.sum(), rel=1e-6, abs=1e-9)
    assert res.n_hvp == sum(r.n_hvp for r in res.blocks.values())
    d = res.to_dict()
    assert set(d["blocks"]) == {"fc1", "fc2"} and "vectors" not in d["blocks"]["fc1"]


def test_separable_loss_blocks_equal_the_full_spectrum():
    # a linear model whose loss separates over two parameter blocks: the Hessian is block
    # diagonal and its spectrum is the union of the blocks' spectra
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 1, bias=False)
            self.b = nn.Linear(2, 1, bias=False)

        def forward(self, x):
            return torch.cat([self.a(x[:, :3]), self.b(x[:, 3:])], dim=1)

    net = Two().double()
    params = _params(net)
    x, _ = _data(n=20, d=5)
    target = torch.randn(20, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)

    def loss_fn(out, t):
        return ((out - t) ** 2).mean() * 2.0

    full = fl.hessian_eigenvalues(net, params, (x, target), loss_fn, k=5, which="LA")
    blocks = fl.hessian_eigenvalues(net, params, (x, target), loss_fn, k=2, which="LA",
                                    blocks={"A": "a.*", "B": ["b.weight"]})
    for name, cols in (("A", slice(0, 3)), ("B", slice(3, 5))):
        xb = x[:, cols]
        exact = np.linalg.eigvalsh((2 * xb.T @ xb / x.shape[0]).numpy())  # 2/n X^T X per block
        np.testing.assert_allclose(blocks.blocks[name].values, exact[-2:], rtol=1e-8)
    np.testing.assert_allclose(np.sort(full.values), np.sort(np.r_[
        np.linalg.eigvalsh((2 * x[:, :3].T @ x[:, :3] / 20).numpy()),
        np.linalg.eigvalsh((2 * x[:, 3:].T @ x[:, 3:] / 20).numpy())]), rtol=1e-8)


def test_ggn_is_jt_h_j_and_psd():
    net = Net(seed=2).double()
    params = _params(net)
    x, y = _data()
    names = [k for k in params]
    f, theta = _flat_fn(net, params, names, x, lambda out: out.reshape(-1))
    jac = torch.autograd.functional.jacobian(f, theta)  # (n*c, p)
    out = f(theta).detach()
    h_out = torch.autograd.functional.hessian(
        lambda z: F.cross_entropy(z.view(len(y), -1), y), out)
    expected = (jac.T @ h_out @ jac).numpy()
    op = fl.hvp(net, params, (x, y), curvature="ggn")
    dense = op.matmat(np.eye(op.shape[0]))
    np.testing.assert_allclose(dense, expected, rtol=1e-8, atol=1e-12)
    assert np.linalg.eigvalsh((dense + dense.T) / 2).min() > -1e-10
    # batched products are the size-weighted mean of the batches'
    op2 = fl.hvp(net, params, (x, y), curvature="ggn", batch_size=5)
    np.testing.assert_allclose(op2.matmat(np.eye(op.shape[0])), expected, rtol=1e-8,
                               atol=1e-12)
    top = fl.hessian_eigenvalues(net, params, (x, y), k=1, curvature="ggn")
    assert top.values[-1] == pytest.approx(np.linalg.eigvalsh(expected)[-1], rel=1e-6)


def test_bad_block_options():
    net = Net().double()
    params = _params(net)
    with pytest.raises(FlatnessOptionError, match="match no measured parameter"):
        fl.hessian_trace(net, params, _data(), blocks={"x": "conv*"})
    with pytest.raises(FlatnessOptionError, match="blocks must be"):
        fl.hessian_trace(net, params, _data(), blocks="rows")
    with pytest.raises(FlatnessOptionError, match="curvature"):
        fl.hessian_eigenvalues(net, params, _data(), curvature="fisher")


def test_cli_flatness_per_layer(tmp_path, mnist1d):
    path = make_checkpoint(tmp_path / "net.safetensors", tiny_data(mnist1d), widths=[8])
    proc = run_cli("flatness", path, "--subset", "100", "--top-k", "0", "--per-layer",
                   "--trace-samples", "6", "--gauge-fixed", "--curvature", "ggn", "--plot",
                   tmp_path / "figs", "--json", tmp_path / "out.json", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "per layer" in proc.stdout and "fc2" in proc.stdout
    res = json.loads((tmp_path / "out.json").read_text())
    per = res["per_layer"]["eigenvalues"]
    assert set(per["raw"]["blocks"]) == {"fc1", "fc2"} == set(per["gauge_fixed"]["blocks"])
    assert min(b["values"][-1] for b in per["raw"]["blocks"].values()) >= 0  # GGN is PSD
    assert (tmp_path / "figs" / "net-per-layer.png").is_file()
    assert_user_error(run_cli("flatness", path, "--per-layer", "--curvature", "fisher"),
                      "--curvature")

"""gauge.flatness: exactness against dense Hessians, Dinh et al.'s counterexample, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import gauge as fl
from gauge.errors import (EmptyParamsError, FlatnessOptionError, GaugeError,
                          NonFiniteLossError)


def mse(out, target):
    return ((out - target) ** 2).mean()


class MLP(nn.Module):
    def __init__(self, d_in=6, hidden=10, d_out=3):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, d_out)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def dense_hessian(model, params, x, y, loss_fn=nn.functional.cross_entropy, names=None):
    """The exact Hessian in float64 by torch.autograd.functional.hessian."""
    names = list(params) if names is None else names
    shapes = [params[k].shape for k in names]
    flat = torch.cat([params[k].reshape(-1) for k in names]).double()
    rest = {k: v.double() for k, v in params.items()}
    model64 = model.double()

    def f(theta):
        d, i = dict(rest), 0
        for k, s in zip(names, shapes):
            n = math.prod(s)
            d[k] = theta[i:i + n].reshape(s)
            i += n
        return loss_fn(torch.func.functional_call(model64, d, (x.double(),)), y if
                       y.dtype == torch.long else y.double())
    h = torch.autograd.functional.hessian(f, flat).numpy()
    model.float()
    return h


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # these models are tiny: intra-op threads only add contention on a shared 2-core machine
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def trained():
    """A small ReLU MLP trained to a (near) minimum on synthetic 3-class data."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(96, 6, generator=gen)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    torch.manual_seed(0)
    model = MLP()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(300):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, _params(model), x, y


def _rel(a, b):
    return np.max(np.abs(np.asarray(a) - np.asarray(b)) / np.maximum(np.abs(b), 1e-12))


# ----------------------------------------------------------------------------- exactness

def test_linear_regression_matches_2_over_n_xtx():
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(80, 12, generator=gen), torch.randn(80, 1, generator=gen)
    model = nn.Linear(12, 1, bias=False)
    params = {"weight": torch.randn(1, 12, generator=gen)}
    exact = np.linalg.eigvalsh(2 / 80 * (x.T @ x).double().numpy())
    top = fl.hessian_eigenvalues(model, params, (x, y), mse, k=3)
    assert _rel(top.values, exact[-3:]) < 1e-4
    assert top.n_hvp > 0 and np.all(top.residuals < 1e-3) and top.n_params == 12
    low = fl.hessian_eigenvalues(model, params, (x, y), mse, k=2, which="SA")
    assert _rel(low.values, exact[:2]) < 1e-4
    tr = fl.hessian_trace(model, params, (x, y), mse, n_samples=30, method="hutch++")
    assert abs(tr.estimate - exact.sum()) <= max(3 * tr.stderr, 1e-4 * exact.sum())
    assert tr.n_hvp == 30


def test_top_eigenvalue_found_when_the_gradient_points_at_the_second():
    """A near-degenerate top pair (10 vs 9.9) with the gradient exactly along the second
    eigenvector: the gradient start must not make Lanczos stop at 9.9."""
    gen = torch.Generator().manual_seed(3)
    n, d = 400, 40
    eig = torch.cat([torch.tensor([10.0, 9.9, 5.0]), torch.linspace(1.0, 0.1, d - 3)])
    u, _ = torch.linalg.qr(torch.randn(n, d, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    x = ((n / 2) ** 0.5 * u * eig.double().sqrt()) @ v.T  # H = 2/n X^T X = V diag(eig) V^T
    model = nn.Linear(d, 1, bias=False)
    params = {"weight": v[:, 1].float().view(1, d)}  # y = 0: gradient = H w = 9.9 v_2
    res = fl.hessian_eigenvalues(model, params, (x.float(), torch.zeros(n, 1)), mse, k=1,
                                 tol=1e-6)
    assert abs(res.values[-1] - 10.0) / 10.0 < 1e-5


def test_mlp_eigenvalues_and_trace_match_dense(trained):
    model, params, x, y = trained
    h = dense_hessian(model, params, x, y)
    exact = np.linalg.eigvalsh(h)
    both = fl.hessian_eigenvalues(model, params, (x, y), k=3, which="both")
    assert _rel(both.values[3:], exact[-3:]) < 1e-4
    assert _rel(both.values[:3], exact[:3]) < 1e-4
    assert both.vectors.shape == (len(exact), 6)
    v = both.vectors[:, -1]
    assert abs(v @ h @ v - exact[-1]) / exact[-1] < 1e-4
    for kw in ({"method": "arpack"}, {"method": "auto", "max_steps": 3}):  # 3: falls back
        res = fl.hessian_eigenvalues(model, params, (x, y), k=2, **kw)
        assert _rel(res.values, exact[-2:]) < 1e-4, kw
    # batched HVPs (weighted by batch size; the last batch is smaller) give the same operator
    batched = fl.hessian_eigenvalues(model, params, (x, y), k=2, batch_size=40)
    assert _rel(batched.values, exact[-2:]) < 1e-4
    for method in ("hutchinson", "hutch++"):
        tr = fl.hessian_trace(model, params, (x, y), n_samples=60, method=method, seed=3)
        assert abs(tr.estimate - np.trace(h)) <= 3 * tr.stderr, (method, tr, np.trace(h))


def test_mask_and_param_filter_restrict_the_hessian(trained):
    model, params, x, y = trained
    names = list(params)
    h = dense_hessian(model, params, x, y)
    gen = torch.Generator().manual_seed(5)
    mask = {"fc2.weight": torch.rand(params["fc2.weight"].shape, generator=gen) > 0.5}
    # reference: zero the pruned entries, then take the sub-Hessian of the kept coordinates
    p_masked = dict(params, **{"fc2.weight": params["fc2.weight"] * mask["fc2.weight"]})
    h = dense_hessian(model, p_masked, x, y)
    keep = np.concatenate([(mask[k].reshape(-1) if k in mask else
                            torch.ones(params[k].numel(), dtype=torch.bool)).numpy()
                           for k in names])
    sub = h[np.ix_(keep, keep)]
    res = fl.hessian_eigenvalues(model, params, (x, y), k=2, mask=mask)
    assert res.n_params == keep.sum()
    assert _rel(res.values, np.linalg.eigvalsh(sub)[-2:]) < 1e-4
    # weights only: drop biases
    wkeep = np.concatenate([np.full(params[k].numel(), params[k].ndim > 1) for k in names])
    res = fl.hessian_eigenvalues(model, params, (x, y), k=1, param_filter=fl.weights_only)
    hw = dense_hessian(model, params, x, y)[np.ix_(wkeep, wkeep)]
    assert _rel(res.values, np.linalg.eigvalsh(hw)[-1:]) < 1e-4


def test_hvp_operator_counts_and_is_symmetric(trained):
    model, params, x, y = trained
    seen = []
    op = fl.hvp(model, params, (x, y), callback=seen.append)
    n = op.shape[0]
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(n), rng.standard_normal(n)
    assert abs(a @ op.matvec(b) - b @ op.matvec(a)) < 1e-4 * np.linalg.norm(a) * np.linalg.norm(b)
    assert op.n_hvp == 2 and seen == [1, 2] and op.dtype == np.float64
    tensors = op.unflatten(a)
    assert set(tensors) == {k for k, v in params.items()} and tensors["fc1.weight"].shape == (10, 6)


def test_spectral_density_integrates_to_one_and_has_the_right_mean(trained):
    model, params, x, y = trained
    h = dense_hessian(model, params, x, y)
    exact = np.linalg.eigvalsh(h)
    dens = fl.spectral_density(model, params, (x, y), n_runs=3, lanczos_steps=40, seed=0)
    assert abs(np.trapezoid(dens.density, dens.grid) - 1) < 1e-3
    assert dens.grid[0] <= exact[0] + 1e-3 and dens.grid[-1] >= exact[-1] - 1e-3
    # the SLQ quadrature is exact for the mean of the spectrum (up to the probe noise)
    mean = np.nansum(dens.nodes * dens.weights) / 3
    assert abs(mean - exact.mean()) < 0.5 * abs(exact).mean()
    assert dens.n_hvp == 120


def test_sharpness_and_landscapes(trained):
    model, params, x, y = trained
    worst = fl.sharpness(model, params, (x, y), rho=0.05).value
    avg = fl.sharpness(model, params, (x, y), rho=0.05, kind="average", n_samples=5).value
    # average-case noise has norm ~rho*sqrt(n) (Andriushchenko et al. use a smaller rho)
    assert worst > 0 and avg > 0
    assert fl.sharpness(model, params, (x, y), rho=0.1).value >= worst - 1e-7
    m_sharp = fl.sharpness(model, params, (x, y), rho=0.02, norm="linf", adaptive=False,
                           batches=4, steps=5).value
    assert m_sharp > 0
    eps = fl.epsilon_sharpness(model, params, (x, y), epsilon=1e-3, steps=5).value
    assert eps > 0
    base = fl.loss_at(model, params, (x, y))
    line = fl.landscape_1d(model, params, (x, y), alphas=[-0.5, 0.0, 0.5])
    assert line.losses[1] == pytest.approx(base, rel=1e-6) and line.losses.min() >= base - 1e-6
    other = {k: v + 0.1 for k, v in params.items()}
    to_b = fl.landscape_1d(model, params, (x, y), direction=other, alphas=[0.0, 1.0])
    assert to_b.losses[1] == pytest.approx(fl.loss_at(model, other, (x, y)), rel=1e-5)
    hess = fl.landscape_1d(model, params, (x, y), direction="hessian", alphas=[-0.1, 0, 0.1])
    assert hess.direction == "hessian" and hess.losses[1] == pytest.approx(base, rel=1e-6)
    plane = fl.landscape_2d(model, params, (x, y), alphas=[-0.5, 0, 0.5])
    assert plane.losses.shape == (3, 3) and plane.losses[1, 1] == pytest.approx(base, rel=1e-6)
    assert set(plane.to_dict()) >= {"alphas", "betas", "losses"}


def test_inputs_not_mutated_and_eval_mode_restored(trained):
    model, params, x, y = trained
    before = {k: v.clone() for k, v in params.items()}
    model.train()
    fl.hessian_eigenvalues(model, params, (x, y), k=1)
    fl.sharpness(model, params, (x, y), rho=0.05, steps=3)
    assert model.training
    assert all(torch.equal(before[k], params[k]) for k in params)


def test_batchnorm_uses_running_statistics():
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 2))
    params = _params(model)
    params["1.running_mean"] = torch.full((5,), 0.3)
    params["1.running_var"] = torch.full((5,), 2.0)
    x, y = torch.randn(30, 4), torch.randint(0, 2, (30,))
    names = [k for k, _ in model.named_parameters()]
    h = dense_hessian(model.eval(), params, x, y, names=names)
    res = fl.hessian_eigenvalues(model.train(), params, (x, y), k=1)
    assert _rel(res.values, np.linalg.eigvalsh(h)[-1:]) < 1e-4


# ----------------------------------------------------------------------------- Dinh et al. 2017

def _rescale(params, alpha):
    """Multiply fc1's outputs by alpha and divide fc2's inputs by alpha: same function."""
    p = dict(params)
    p["fc1.weight"] = params["fc1.weight"] * alpha
    p["fc1.bias"] = params["fc1.bias"] * alpha
    p["fc2.weight"] = params["fc2.weight"] / alpha
    return p


def test_dinh_rescaling_changes_raw_but_not_gauge_fixed_flatness(trained):
    model, params, x, y = trained
    scaled = _rescale(params, 10.0)
    with torch.no_grad():
        out_a = torch.func.functional_call(model, params, (x,))
        out_b = torch.func.functional_call(model, scaled, (x,))
    assert torch.allclose(out_a, out_b, atol=1e-5, rtol=1e-5)
    a = fl.hessian_eigenvalues(model, params, (x, y), k=1, gauge_fixed=True)
    b = fl.hessian_eigenvalues(model, scaled, (x, y), k=1, gauge_fixed=True)
    assert isinstance(a, fl.GaugeFixed) and set(a.to_dict()) == {"raw", "gauge_fixed"}
    raw_ratio = b.raw.values[0] / a.raw.values[0]
    assert raw_ratio > 10 or raw_ratio < 0.1, raw_ratio
    assert abs(b.gauge_fixed.values[0] / a.gauge_fixed.values[0] - 1) < 0.01
    sa = fl.sharpness(model, params, (x, y), rho=0.05, adaptive=True).value
    sb = fl.sharpness(model, scaled, (x, y), rho=0.05, adaptive=True).value
    assert abs(sb / sa - 1) < 0.01
    # non-adaptive sharpness is not invariant (the reason adaptive sharpness exists)
    na = fl.sharpness(model, params, (x, y), rho=0.05, adaptive=False, steps=5).value
    nb = fl.sharpness(model, scaled, (x, y), rho=0.05, adaptive=False, steps=5).value
    assert abs(nb / na - 1) > 0.1


# ----------------------------------------------------------------------------- bad input

def test_bad_inputs_raise_clear_errors(trained):
    model, params, x, y = trained
    nan_params = dict(params, **{"fc3.bias": torch.full((3,), float("nan"))})
    calls = []
    with pytest.raises(NonFiniteLossError, match="not iterating"):
        fl.hessian_eigenvalues(model, nan_params, (x, y), callback=calls.append)
    assert calls == []  # not a single HVP
    with pytest.raises(NonFiniteLossError):
        fl.sharpness(model, nan_params, (x, y), rho=0.1)
    n = sum(v.numel() for v in params.values())
    with pytest.raises(FlatnessOptionError, match="larger than the number of parameters"):
        fl.hessian_eigenvalues(model, params, (x, y), k=n + 1)
    with pytest.raises(FlatnessOptionError, match="larger"):
        fl.hessian_eigenvalues(model, params, (x, y), k=4, mask={k: torch.full_like(
            v, k == "fc3.bias", dtype=torch.bool) for k, v in params.items()})
    everything = {k: torch.zeros_like(v, dtype=torch.bool) for k, v in params.items()}
    with pytest.raises(EmptyParamsError, match="prunes every"):
        fl.hessian_trace(model, params, (x, y), mask=everything)
    with pytest.raises(EmptyParamsError):
        fl.hessian_eigenvalues(model, params, (x, y), param_filter=lambda k, t: False)
    for rho in (0, -0.1, float("nan")):
        with pytest.raises(FlatnessOptionError, match="rho"):
            fl.sharpness(model, params, (x, y), rho=rho)
    for kw in ({"which": "LM"}, {"k": 0}):
        with pytest.raises(FlatnessOptionError):
            fl.hessian_eigenvalues(model, params, (x, y), **kw)
    with pytest.raises(FlatnessOptionError):
        fl.hessian_trace(model, params, (x, y), method="exact")
    with pytest.raises(FlatnessOptionError, match="shape"):
        fl.hessian_trace(model, params, (x, y), mask={"fc1.weight": torch.ones(2, 2).bool()})
    assert issubclass(FlatnessOptionError, GaugeError)


def test_small_k_equal_to_n_uses_dense_path():
    model = nn.Linear(3, 1, bias=False)
    x, y = torch.randn(20, 3), torch.randn(20, 1)
    res = fl.hessian_eigenvalues(model, {"weight": torch.zeros(1, 3)}, (x, y), mse, k=3)
    assert _rel(res.values, np.linalg.eigvalsh(2 / 20 * (x.T @ x).double().numpy())) < 1e-4

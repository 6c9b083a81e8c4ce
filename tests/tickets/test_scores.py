"""Pruning at initialization (tickets.scores): each score against a hand computation on a
2-layer net, SynFlow's conservation law, exact counts, inversion and bad input."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tickets import prune as P
from tickets import scores as S
from tickets.errors import ConfigError


class TwoLayer(nn.Module):
    def __init__(self, d=5, h=4, c=3, bias=True, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.fc1 = nn.Linear(d, h, bias=bias)
        self.fc2 = nn.Linear(h, c, bias=bias)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def _setup(bias=True, n=7, dtype=torch.float64):
    net = TwoLayer(bias=bias).to(dtype)
    params = {k: v.detach().clone() for k, v in net.state_dict().items()}
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(n, 5, generator=gen, dtype=dtype)
    y = torch.randint(0, 3, (n,), generator=gen)
    mask = P.full_mask(params, ["fc1.weight", "fc2.weight"])
    return net, params, mask, (x, y)


def _hand_gradients(params, x, y):
    """dL/dW1, dL/dW2 of the mean cross-entropy, by the chain rule."""
    w1, b1, w2, b2 = (params[k] for k in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"))
    z = x @ w1.T + b1
    h = z.clamp(min=0)
    p = torch.softmax(h @ w2.T + b2, dim=1)
    delta = (p - F.one_hot(y, 3).to(p.dtype)) / len(y)  # dL/dlogits
    dw2 = delta.T @ h
    dz = (delta @ w2) * (z > 0).to(p.dtype)
    return dz.T @ x, dw2


def test_snip_is_abs_grad_times_weight_by_hand():
    net, params, mask, data = _setup()
    dw1, dw2 = _hand_gradients(params, *data)
    s = S.snip(net, params, mask, data, input_shape=(5,), seed=0, device="cpu")
    torch.testing.assert_close(s["fc1.weight"], (dw1 * params["fc1.weight"]).abs())
    torch.testing.assert_close(s["fc2.weight"], (dw2 * params["fc2.weight"]).abs())
    assert set(s) == set(mask)


def test_grasp_is_minus_w_times_hessian_gradient_from_explicit_hessian():
    net, params, mask, (x, y) = _setup()
    names = list(mask)
    shapes = [params[n].shape for n in names]
    flat = torch.cat([params[n].flatten() for n in names])

    def loss(theta):
        parts = dict(zip(names, (t.view(s) for t, s in zip(
            theta.split([s.numel() for s in shapes]), shapes))))
        out = torch.func.functional_call(net, {**params, **parts}, (x,))
        return F.cross_entropy(out, y)

    hess = torch.autograd.functional.hessian(loss, flat)
    g = torch.autograd.functional.jacobian(loss, flat)
    expected = -flat * (hess @ g)
    s = S.grasp(net, params, mask, (x, y), input_shape=(5,), seed=0, device="cpu")
    got = torch.cat([s[n].flatten() for n in names])
    torch.testing.assert_close(got, expected)
    # GraSP removes the highest scores: the survivors are the lowest ones
    keep = 10
    m = S.prune_at_init("grasp", net, params, mask, keep, (x, y))
    kept = torch.cat([m[n].flatten() for n in names])
    assert int(kept.sum()) == keep
    assert got[kept].max() <= got[~kept].min()


def test_synflow_conserves_flow_per_layer_and_per_neuron():
    # Tanaka et al. 2020, Theorems 1-2: in a bias-free ReLU net the synaptic-flow scores
    # entering a layer sum to those leaving it (= R), and per hidden neuron in = out.
    net, params, mask, _ = _setup(bias=False)
    s = S.synflow(net, params, mask, None, input_shape=(5,), seed=0, device="cpu")
    a1, a2 = params["fc1.weight"].abs(), params["fc2.weight"].abs()
    r = float(torch.ones(3, dtype=a1.dtype) @ a2 @ a1 @ torch.ones(5, dtype=a1.dtype))
    assert float(s["fc1.weight"].sum()) == pytest.approx(r, rel=1e-12)
    assert float(s["fc2.weight"].sum()) == pytest.approx(r, rel=1e-12)
    torch.testing.assert_close(s["fc1.weight"].sum(1), s["fc2.weight"].sum(0))
    # by hand: S_ij of W1 = (1^T |W2|)_i |W1|_ij * 1
    torch.testing.assert_close(s["fc1.weight"], a2.sum(0)[:, None] * a1)


def test_synflow_is_iterative_and_data_free(monkeypatch):
    net, params, mask, _ = _setup(bias=False)
    calls = []
    spec = S.SCORES["synflow"]

    def counting(*a, **k):
        calls.append(1)
        assert a[3] is None  # no data reaches the score
        return spec.fn(*a, **k)

    monkeypatch.setitem(S.SCORES, "synflow", dataclasses.replace(spec, fn=counting))
    m = S.prune_at_init("synflow", net, params, mask, 6, input_shape=(5,))
    assert P.sparsity(m).remaining == 6
    assert 10 < len(calls) <= 100  # rescored round after round (rounds pruning nothing skip)
    # no layer collapses: every layer keeps a path
    assert all(bool(v.any()) for v in m.values())


@pytest.mark.parametrize("name", list(S.SCORES))
def test_exact_counts_nested_and_inverted(name):
    net, params, mask, data = _setup()
    start = P.prune("global", params, mask, 0.25)  # prune from a sparse starting mask too
    m = S.prune_at_init(name, net, params, start, 9, data, seed=1)
    inv = S.prune_at_init(name, net, params, start, 9, data, seed=1, invert=True,
                          iterations=1)
    for mm in (m, inv):
        assert P.sparsity(mm).remaining == 9
        assert all(not bool((mm[n] & ~start[n]).any()) for n in start)
    if name in ("magnitude_init", "snip"):
        s = S.SCORES[name].fn(net, P.apply_mask(params, start), start, data, input_shape=(5,),
                              seed=1, device="cpu")
        flat = torch.cat([s[n][start[n]] for n in sorted(start)])
        kept = torch.cat([m[n][start[n]] for n in sorted(start)])
        assert flat[kept].min() >= flat[~kept].max()
        kept_inv = torch.cat([inv[n][start[n]] for n in sorted(start)])
        assert flat[kept_inv].max() <= flat[~kept_inv].min()
    again = S.prune_at_init(name, net, params, start, 9, data, seed=1)
    assert all(torch.equal(m[n], again[n]) for n in m)  # deterministic


def test_bad_input():
    net, params, mask, data = _setup()
    with pytest.raises(ConfigError, match="snip, grasp, synflow"):
        S.prune_at_init("sideways", net, params, mask, 3, data)
    with pytest.raises(ConfigError, match="needs data"):
        S.prune_at_init("snip", net, params, mask, 3)
    with pytest.raises(ConfigError, match="cannot keep"):
        S.prune_at_init("snip", net, params, mask, 10_000, data)
    before = {k: v.clone() for k, v in params.items()}
    S.prune_at_init("grasp", net, params, mask, 3, data)
    assert all(torch.equal(before[k], params[k]) for k in params)  # inputs untouched

"""gauge.similarity: linear CKA (biased/debiased, streamed), matched correlation, weight drift."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from gauge import apply_permutation, infer_spec, random_permutation
from gauge.errors import MismatchError, SpecError
from gauge.similarity import (linear_cka, similarity, similarity_across_seeds, weight_drift)
from tickets.models import build_model


def _gram_cka(x, y, debiased):
    """Reference: CKA from n x n Gram matrices, HSIC = tr(K H L H) (Gretton et al. 2005) or
    Song et al. (2012)'s unbiased HSIC, written out literally."""
    x, y = x.double(), y.double()
    n = x.shape[0]
    k, l = x @ x.T, y @ y.T
    if debiased:
        def hsic(a, b):
            a, b = a - torch.diag(torch.diag(a)), b - torch.diag(torch.diag(b))
            one = torch.ones(n, dtype=torch.float64)
            return (torch.trace(a @ b) + (one @ a @ one) * (one @ b @ one) / ((n - 1) * (n - 2))
                    - 2 / (n - 2) * (one @ a @ b @ one)) / (n * (n - 3))
    else:
        h = torch.eye(n, dtype=torch.float64) - 1.0 / n

        def hsic(a, b):
            return torch.trace(a @ h @ b @ h)
    return float(hsic(k, l) / torch.sqrt(hsic(k, k) * hsic(l, l)))


def _xy(seed, n=40, p=6, q=4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, p, generator=g) + 2.0
    y = x @ torch.randn(p, q, generator=g) + 0.5 * torch.randn(n, q, generator=g)
    return x, y


def test_golden_rank_one():
    # centred orthogonal columns with squared norms 4 and 16; Y = the first column:
    # CKA = ||X^T Y||^2 / (||X^T X|| ||Y^T Y||) = 16 / (sqrt(4^2 + 16^2) * 4) = 4 / sqrt(272)
    x = torch.tensor([[1.0, 2.0], [1.0, -2.0], [-1.0, 2.0], [-1.0, -2.0]])
    assert linear_cka(x, x[:, :1]) == pytest.approx(4 / math.sqrt(272), abs=1e-12)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("debiased", [False, True])
def test_matches_gram_matrix_definition(debiased):
    x, y = _xy(0)
    assert linear_cka(x, y, debiased=debiased) == pytest.approx(_gram_cka(x, y, debiased),
                                                                abs=1e-9)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(1e-3, 1e3), shift=st.floats(-10, 10),
       debiased=st.booleans())
def test_invariant_to_orthogonal_maps_scaling_and_shifts(seed, scale, shift, debiased):
    x, y = _xy(seed % 1000)
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(seed),
                                       dtype=torch.float64))
    y2 = (scale * (y.double() @ q) + shift)
    assert linear_cka(x, y2, debiased=debiased) == pytest.approx(
        linear_cka(x, y, debiased=debiased), abs=1e-8)


def test_debiased_close_to_biased_for_large_n():
    x, y = _xy(1, n=20000, p=3, q=3)
    b, d = linear_cka(x, y), linear_cka(x, y, debiased=True)
    assert abs(b - d) < 2e-3
    # and on few inputs of wide features the biased estimator is the one far above zero
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(30, 200, generator=g), torch.randn(30, 200, generator=g)
    assert linear_cka(x, y) > 0.5 > abs(linear_cka(x, y, debiased=True))


def test_bad_shapes():
    with pytest.raises(MismatchError, match="same n"):
        linear_cka(torch.zeros(5, 2), torch.zeros(4, 2))
    with pytest.raises(SpecError, match="4 inputs"):
        linear_cka(torch.randn(3, 2), torch.randn(3, 2), debiased=True)
    assert math.isnan(linear_cka(torch.ones(5, 2), torch.randn(5, 2)))  # a dead layer


def _net(name="mlp", seed=0, **kw):
    model = build_model(name, num_classes=10, input_shape=(40,), seed=seed, **kw)
    spec = infer_spec(model, torch.zeros(2, 40))
    return model, spec, model.state_dict()


@pytest.mark.parametrize("name,kw", [("mlp", {"widths": [12, 8]}), ("cnn1d", {"channels": 4})])
@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_permuted_copy_has_cka_one_every_layer(name, kw, seed):
    model, spec, params = _net(name, **kw)
    permuted = apply_permutation(spec, random_permutation(spec, seed), params)
    x = torch.randn(64, 40, generator=torch.Generator().manual_seed(seed))
    r = similarity(model, spec, params, permuted, x, batch_size=25)
    assert r.layers == tuple(spec.groups)
    assert r.diagonal == pytest.approx([1.0] * len(r.layers), abs=1e-9)
    assert r.matched_corr == pytest.approx([1.0] * len(r.layers), abs=1e-6)


def test_streamed_equals_one_shot():
    model, spec, pa = _net(widths=[12, 8])
    _, _, pb = _net(seed=1, widths=[12, 8])
    x = torch.randn(90, 40, generator=torch.Generator().manual_seed(3))
    for debiased in (False, True):
        small = similarity(model, spec, pa, pb, x, batch_size=7, debiased=debiased)
        whole = similarity(model, spec, pa, pb, x, batch_size=90, debiased=debiased)
        assert sum(small.cka, ()) == pytest.approx(sum(whole.cka, ()), abs=1e-10)
        assert small.matched_corr == pytest.approx(whole.matched_corr, abs=1e-10)
    # and the layer features are the post-ReLU hidden activations
    h1 = torch.relu(x @ pa["fc1.weight"].T + pa["fc1.bias"])
    g1 = torch.relu(x @ pb["fc1.weight"].T + pb["fc1.bias"])
    assert whole.cka[0][0] == pytest.approx(_gram_cka(h1, g1, True), abs=1e-9)


def test_across_seeds_summary():
    model, spec, p0 = _net(widths=[12, 8])
    nets = [p0] + [_net(seed=s, widths=[12, 8])[2] for s in (1, 2)]
    x = torch.randn(50, 40, generator=torch.Generator().manual_seed(0))
    r = similarity_across_seeds(model, spec, nets, x, threshold=0.0)
    assert r.pairs == ((0, 1), (0, 2), (1, 2)) and len(r.results) == 3
    assert r.mean_cka[0] == pytest.approx(sum(p.diagonal[0] for p in r.results) / 3)
    assert r.shared == r.layers and r.seed_specific == ()
    d = r.to_dict()
    assert d["shared"] == list(r.layers) and len(d["results"]) == 3
    with pytest.raises(SpecError, match="at least 2"):
        similarity_across_seeds(model, spec, nets[:1], x)


def test_weight_drift_golden():
    w0 = {"a": torch.ones(2, 2), "b": torch.zeros(3)}
    wt = {"a": 2 * torch.ones(2, 2), "b": torch.ones(3)}
    d = weight_drift(w0, wt, ["a"])
    assert d.per_layer == {"a": 1.0} and d.total == 1.0
    d = weight_drift(w0, wt)
    assert d.per_layer["b"] == math.inf and d.total == pytest.approx(math.sqrt(7 / 4))
    with pytest.raises(MismatchError, match="'c'"):
        weight_drift(w0, wt, ["c"])

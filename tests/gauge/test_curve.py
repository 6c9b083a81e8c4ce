"""curve_path: Garipov curves measured with linear_path's grid, BN handling and barriers."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import TensorDataset

from gauge import (ConnectError, align, apply_permutation, curve_path, curve_point, infer_spec,
                   linear_path, random_permutation)
from tests.gauge_models import inputs, make


def _data(shape, n=96, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *shape), generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    return {"train": TensorDataset(x, y), "test": TensorDataset(x[:48], y[:48])}


@settings(max_examples=4, deadline=None)
@given(name=st.sampled_from(["mlp", "cnn1d_bn"]), seed=st.integers(0, 10_000),
       kind=st.sampled_from(["bezier", "polychain"]))
def test_curve_to_a_permuted_copy_has_no_barrier_after_alignment(name, seed, kind):
    model, shape = make(name)
    spec = infer_spec(model, inputs(shape))
    a = model.state_dict()
    b = apply_permutation(spec, random_permutation(spec, seed), a)
    b_aligned, _ = align(model, spec, a, b)
    data = _data(shape)
    r = curve_path(model, a, b_aligned, data, kind=kind, steps=5, lr=1e-4, n_points=5,
                   batch_size=32)
    assert r.loss_barrier == pytest.approx(0.0, abs=1e-3)
    assert r.error_barrier == pytest.approx(0.0, abs=1e-9)
    assert r.kind == kind and r.bends == 1 and len(r.alphas) == len(r.loss)


@pytest.mark.parametrize("kind", ["bezier", "polychain"])
def test_untrained_midpoint_bend_is_the_straight_line(kind):
    model, shape = make("cnn1d_bn")
    a, b = model.state_dict(), make("cnn1d_bn", seed=1)[0].state_dict()
    data = _data(shape)
    r = curve_path(model, a, b, data, kind=kind, steps=0, n_points=5)
    line = linear_path(model, a, b, data, n_points=5)
    assert r.alphas == line.alphas
    assert r.loss == pytest.approx(line.loss, rel=1e-4)
    assert r.loss_barrier == pytest.approx(line.loss_barrier, rel=1e-3, abs=1e-5)
    assert r.loss[0] == line.loss[0] and r.loss[-1] == line.loss[-1]  # exact endpoints
    d = r.to_dict()
    assert d["kind"] == kind and "bend_params" not in d


def test_training_lowers_the_curve_loss():
    model, shape = make("mlp")
    a, b = model.state_dict(), make("mlp", seed=1)[0].state_dict()
    data = _data(shape, n=64)
    r = curve_path(model, a, b, {"train": data["train"], "test": data["train"]}, steps=80,
                   lr=3e-3, n_points=5, batch_size=64, bends=2)
    line = linear_path(model, a, b, {"train": data["train"], "test": data["train"]}, n_points=5)
    assert max(r.loss[1:-1]) < max(line.loss[1:-1])
    assert len(r.bend_params) == 2 and r.train_objective[-1] < r.train_objective[0]


def test_curve_point_endpoints_are_exact():
    a = {"w": torch.randn(3), "n": torch.tensor(1)}
    b = {"w": torch.randn(3), "n": torch.tensor(2)}
    c = {"w": torch.randn(3), "n": torch.tensor(0)}
    for kind in ("bezier", "polychain"):
        assert torch.equal(curve_point(kind, [a, c, b], 0.0)["w"], a["w"])
        assert torch.equal(curve_point(kind, [a, c, b], 1.0)["w"], b["w"])
        assert int(curve_point(kind, [a, c, b], 0.9)["n"]) == 2
    assert torch.allclose(curve_point("polychain", [a, c, b], 0.5)["w"], c["w"])
    assert torch.allclose(curve_point("bezier", [a, c, b], 0.5)["w"],
                          0.25 * a["w"] + 0.5 * c["w"] + 0.25 * b["w"])


def test_bad_curves():
    model, shape = make("mlp")
    a = model.state_dict()
    data = _data(shape)
    with pytest.raises(ConnectError, match="at least one bend"):
        curve_path(model, a, a, data, bends=0)
    with pytest.raises(ConnectError, match="no training data"):
        curve_path(model, a, a, {"test": data["test"]})
    with pytest.raises(ConnectError, match="kind"):
        curve_path(model, a, a, data, kind="spline")

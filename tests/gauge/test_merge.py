"""evaluate_merge: the average of N networks in one basis, with BN reset and REPAIR."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from gauge import (ConnectError, MismatchError, align_many, apply_permutation, average,
                   evaluate_merge, evaluate_path, infer_spec, linear_path, random_permutation)
from tests.gauge_models import inputs, make


def _data(shape, n=96):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((n, *shape), generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    return {"train": TensorDataset(x, y), "test": TensorDataset(x[:48], y[:48])}


@pytest.mark.parametrize("name", ["mlp", "cnn1d_bn"])
def test_merging_aligned_copies_gives_the_network(name):
    model, shape = make(name)
    spec = infer_spec(model, inputs(shape))
    p = model.state_dict()
    copies = [apply_permutation(spec, random_permutation(spec, s), p) for s in range(3)]
    aligned = align_many(spec, copies).aligned(spec, copies)
    r, merged = evaluate_merge(model, aligned, _data(shape), bn="none")
    assert r.merged_loss == pytest.approx(r.endpoint_mean_loss, rel=1e-5)
    assert r.error_gap == pytest.approx(0.0, abs=1e-12)
    for k, v in aligned[0].items():
        assert torch.allclose(merged[k].to(v.dtype), v, atol=1e-6)


@pytest.mark.parametrize("name", ["mlp", "cnn1d_bn"])
def test_repair_of_two_is_repair_at_the_midpoint(name):
    model, shape = make(name)
    a, b = model.state_dict(), make(name, seed=1)[0].state_dict()
    data = _data(shape)
    r, merged = evaluate_merge(model, [a, b], data, bn="repair")
    line = linear_path(model, a, b, data, alphas=[0, 0.5, 1], bn="repair")
    assert r.merged_loss == pytest.approx(line.loss[1], rel=1e-5)
    # the correction is folded into the returned params
    plain = evaluate_path(model, merged, merged, data, alphas=[0, 1], bn="none")
    assert plain.loss[0] == pytest.approx(r.merged_loss, rel=1e-5)


def test_masked_merge_and_errors():
    model, shape = make("mlp")
    a, b = model.state_dict(), make("mlp", seed=1)[0].state_dict()
    mask = {"fc1.weight": torch.rand(a["fc1.weight"].shape) < 0.3}
    r, merged = evaluate_merge(model, [a, b], _data(shape), mask=mask, bn="none")
    assert r.density == pytest.approx(float(mask["fc1.weight"].float().mean()))
    assert bool((merged["fc1.weight"][~mask["fc1.weight"]] == 0).all())
    assert torch.equal(average([a, b])["fc2.bias"], merged["fc2.bias"])
    with pytest.raises(MismatchError, match="at least two"):
        evaluate_merge(model, [a], _data(shape))
    with pytest.raises(ConnectError, match="no training data"):
        evaluate_merge(model, [a, b], {"test": _data(shape)["test"]}, bn="repair")

"""Unit tests of tickets.prune: exact counts, nesting, ignored layers, random controls."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tickets import prune as P
from tickets.errors import ConfigError, ModelError
from tickets.models import build_model


def _mlp(seed=0, widths=(30, 20)):
    return build_model("mlp", num_classes=10, input_shape=(40,), seed=seed, widths=widths)


def _ceil_fifth(r: int) -> int:
    # ceil(0.2 * r) in integers: no float rounding in the expectation either.
    return -(-r // 5)


def test_prunable_linear_weights_only_and_ignore():
    model = _mlp()
    assert P.prunable(model) == ["fc1.weight", "fc2.weight", "fc3.weight"]
    assert P.prunable(model, ignore=["fc3"]) == ["fc1.weight", "fc2.weight"]
    assert P.prunable(model, ignore=["fc3.weight"]) == ["fc1.weight", "fc2.weight"]
    with pytest.raises(ConfigError, match="fc9"):
        P.prunable(model, ignore=["fc9"])
    conv = build_model("resnet20", num_classes=10, input_shape=(3, 8, 8), width=1)
    names = P.prunable(conv)
    assert "conv1.weight" in names and "fc.weight" in names
    assert not any("bn" in n or "bias" in n or "norm" in n for n in names)


def test_global_removes_exactly_ceil_fraction_of_remaining_each_level():
    model = _mlp()
    params = model.state_dict()
    names = P.prunable(model)
    mask = P.full_mask(params, names)
    gen = torch.Generator().manual_seed(1)
    for _ in range(12):
        remaining = P.sparsity(mask).remaining
        # fresh weights each level, as after retraining
        params = {k: torch.randn(v.shape, generator=gen) for k, v in params.items()}
        new = P.magnitude_global(params, mask, 0.2)
        assert P.sparsity(new).remaining == remaining - _ceil_fifth(remaining)
        for n in names:  # nested: nothing pruned comes back
            assert not bool((new[n] & ~mask[n]).any())
        # removed weights are the smallest surviving magnitudes, across layers
        removed = torch.cat([params[n].abs()[mask[n] & ~new[n]] for n in names])
        kept = torch.cat([params[n].abs()[new[n]] for n in names])
        assert removed.max() <= kept.min()
        mask = new


def test_global_exact_with_ties_and_float_fraction():
    params = {"w": torch.zeros(1000), "v": torch.ones(7)}
    mask = {"w": torch.ones(1000, dtype=torch.bool), "v": torch.ones(7, dtype=torch.bool)}
    new = P.magnitude_global(params, mask, 0.2)
    # 0.2 * 1007 = 201.4 -> 202; all ties at |w| = 0 resolved to exactly that many
    assert P.sparsity(new).remaining == 1007 - 202
    assert P.prune_count(0.2, 1000) == 200  # not 201 from 0.2 * 1000 = 200.00000000000003
    # dict order of the inputs does not change the result
    new2 = P.magnitude_global(dict(reversed(params.items())), dict(reversed(mask.items())), 0.2)
    assert all(torch.equal(new[k], new2[k]) for k in new)


def test_layerwise_with_output_at_half_rate_and_nested():
    model = _mlp()
    params = model.state_dict()
    mask = P.full_mask(params, P.prunable(model))
    gen = torch.Generator().manual_seed(2)
    for _ in range(6):
        params = {k: torch.randn(v.shape, generator=gen) for k, v in params.items()}
        new = P.magnitude_layerwise(params, mask, 0.2, layer_fractions={"fc3": 0.1})
        for n in mask:
            r = int(mask[n].sum())
            f = 0.1 if n == "fc3.weight" else 0.2
            assert int(new[n].sum()) == r - math.ceil(round(f * r, 9))
            assert not bool((new[n] & ~mask[n]).any())
            removed, kept = params[n].abs()[mask[n] & ~new[n]], params[n].abs()[new[n]]
            if removed.numel() and kept.numel():
                assert removed.max() <= kept.min()
        mask = new


def test_ignored_layers_untouched():
    model = _mlp()
    params = model.state_dict()
    names = P.prunable(model, ignore=["fc3"])
    mask = P.full_mask(params, names)
    for _ in range(3):
        mask = P.magnitude_global(params, mask, 0.5)
    assert "fc3.weight" not in mask
    pruned = P.apply_mask(params, mask)
    assert torch.equal(pruned["fc3.weight"], params["fc3.weight"])
    for k in params:  # biases never masked
        if k.endswith("bias"):
            assert torch.equal(pruned[k], params[k])
    assert (pruned["fc1.weight"] == 0).sum() == (~mask["fc1.weight"]).sum()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), frac=st.floats(0.05, 0.95))
def test_random_control_matches_per_layer_counts(seed, frac):
    model = _mlp()
    params = model.state_dict()
    mask = P.magnitude_layerwise(params, P.full_mask(params, P.prunable(model)), frac)
    rnd = P.random(mask, seed=seed)
    assert list(rnd) == list(mask)
    for n in mask:
        assert rnd[n].dtype == torch.bool and rnd[n].shape == mask[n].shape
        assert int(rnd[n].sum()) == int(mask[n].sum())
    assert all(torch.equal(rnd[n], P.random(mask, seed=seed)[n]) for n in mask)  # seeded
    glob = P.random(mask, seed=seed, per_layer=False)
    assert P.sparsity(glob).remaining == P.sparsity(mask).remaining


def test_random_masks_differ_across_seeds():
    params = _mlp().state_dict()
    mask = P.magnitude_global(params, P.full_mask(params, ["fc1.weight"]), 0.5)
    assert not torch.equal(P.random(mask, seed=0)["fc1.weight"],
                           P.random(mask, seed=1)["fc1.weight"])


def test_sparsity_report():
    mask = {"a": torch.tensor([True, False, False, True]), "b": torch.ones(6, dtype=torch.bool)}
    s = P.sparsity(mask)
    assert (s.remaining, s.total) == (8, 10)
    assert s.density == pytest.approx(0.8) and float(s) == pytest.approx(0.2)
    assert s.per_layer["a"] == (2, 4) and s.layer_density("a") == 0.5
    assert s.to_dict()["per_layer"]["b"]["density"] == 1.0


def test_apply_mask_pure_and_checked():
    params = _mlp().state_dict()
    mask = P.magnitude_global(params, P.full_mask(params, ["fc2.weight"]), 0.3)
    before = params["fc2.weight"].clone()
    out = P.apply_mask(params, mask)
    assert torch.equal(params["fc2.weight"], before)  # input not mutated
    assert int((out["fc2.weight"] != 0).sum()) == int(mask["fc2.weight"].sum())
    with pytest.raises(ModelError, match="fc9.weight"):
        P.apply_mask(params, {"fc9.weight": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ModelError, match="shape"):
        P.apply_mask(params, {"fc2.weight": torch.ones(3, dtype=torch.bool)})


def test_check_mask_and_bad_fractions():
    params = _mlp().state_dict()
    names = ["fc1.weight", "fc2.weight", "fc3.weight"]
    m = P.full_mask(params, names)
    checked = P.check_mask(params, {k: v.float() for k, v in m.items()}, names=names)
    assert checked["fc1.weight"].dtype == torch.bool
    with pytest.raises(ModelError, match="fc3.weight"):
        P.check_mask(params, {k: v for k, v in m.items() if k != "fc3.weight"}, names=names)
    with pytest.raises(ModelError, match="fc1.bias"):
        P.check_mask(params, {**m, "fc1.bias": torch.ones(30, dtype=torch.bool)}, names=names)
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ConfigError):
            P.magnitude_global(params, m, bad)
    with pytest.raises(ConfigError, match="strategy"):
        P.prune("sideways", params, m, 0.2)
    with pytest.raises(ConfigError, match="layerwise"):
        P.prune("global", params, m, 0.2, layer_fractions={"fc3": 0.1})

"""Symmetry facts: permutations and rescalings leave the function unchanged."""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import given, settings, strategies as st

from gauge import (PermutationSpec, SpecError, apply_permutation, apply_rescaling,
                   canonicalize_scale, compose, function_distance, identity_permutation,
                   infer_spec, invert, random_permutation, random_rescaling, random_scales)
from tests.gauge_models import ZOO, inputs, make


@functools.lru_cache(maxsize=None)
def _setup(name):
    model, shape = make(name)
    spec = infer_spec(model, torch.zeros(2, *shape))
    x = inputs(shape)
    with torch.no_grad():
        scale = float(model(x).abs().max())
    return model, spec, x, max(1.0, scale)


def _params(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


#: models whose inferred spec has rescalable groups (ReLU, no normalization on the way)
RESCALABLE = ["mlp", "lenet_300_100", "conv2", "vgg11_nobn", "resnet20_none", "cnn1d",
              "qkv_block", "qkv_sdpa_block"]


@pytest.mark.parametrize("name", sorted(ZOO))
@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_permutation_preserves_function(name, seed):
    model, spec, x, scale = _setup(name)
    params = _params(model)
    perm = random_permutation(spec, seed)
    moved = apply_permutation(spec, perm, params)
    assert function_distance(model, params, moved, x) <= 1e-5 * scale
    back = apply_permutation(spec, invert(perm), moved)
    assert all(torch.equal(back[k], params[k]) for k in params)


@pytest.mark.parametrize("name", RESCALABLE)
@settings(max_examples=2, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), log_range=st.floats(0.1, 2.0))
def test_rescaling_preserves_function_and_canonical_form(name, seed, log_range):
    model, spec, x, scale = _setup(name)
    assert spec.rescalable
    params = _params(model)
    moved = random_rescaling(spec, params, seed, log_range=log_range)
    assert function_distance(model, params, moved, x) <= 1e-5 * scale
    canon = canonicalize_scale(spec, moved)
    assert function_distance(model, params, canon, x) <= 1e-5 * scale
    again = canonicalize_scale(spec, canon)
    for k in canon:
        torch.testing.assert_close(again[k], canon[k], rtol=1e-5, atol=1e-6)
    # the canonical point depends only on the orbit, and it is the minimum-L2 point
    direct = canonicalize_scale(spec, params)
    for k in canon:
        torch.testing.assert_close(direct[k], canon[k], rtol=1e-3, atol=1e-4)
    l2 = lambda p: sum(float(v.double().pow(2).sum()) for v in p.values()
                       if v.dtype.is_floating_point)
    assert l2(canon) <= l2(moved) * (1 + 1e-6) and l2(canon) <= l2(params) * (1 + 1e-6)


def test_rescalable_models_are_all_tested():
    # conv4/conv6 are conv2 with more layers: same ops, left out to keep the suite fast
    assert {n for n in ZOO if _setup(n)[1].rescalable} == set(RESCALABLE) | {"conv4", "conv6"}


def test_norm_groups_are_not_rescalable():
    for name in ("mlp_layernorm", "vgg11", "resnet20", "cnn1d_bn", "mha_block"):
        _, spec, _, _ = _setup(name)
        assert not (set(spec.rescalable) & {g for g in spec.groups
                                            if any("bn" in k or "ln" in k or "norm" in k
                                                   for k, _ in spec.perm_to_axes[g])}), name
    _, spec, _, _ = _setup("resnet20")
    with pytest.raises(SpecError, match="not rescalable"):
        apply_rescaling(spec, {spec.groups[0]: torch.ones(spec.sizes[spec.groups[0]])}, {})


def test_compose_and_identity():
    _, spec, _, _ = _setup("cnn1d")
    model, _ = make("cnn1d")
    params = _params(model)
    p, q = random_permutation(spec, 1), random_permutation(spec, 2)
    two = apply_permutation(spec, p, apply_permutation(spec, q, params))
    one = apply_permutation(spec, compose(p, q), params)
    assert all(torch.equal(one[k], two[k]) for k in params)
    same = apply_permutation(spec, identity_permutation(spec), params)
    assert all(torch.equal(same[k], params[k]) for k in params)
    assert random_permutation(spec, 5)["conv1"].tolist() == \
        random_permutation(spec, 5)["conv1"].tolist()


def test_masks_and_subsets_follow_the_weights():
    model, spec, _, _ = _setup("conv2")
    params = _params(model)
    mask = {k: v.abs() > v.abs().median() for k, v in params.items() if k.endswith("weight")}
    perm = random_permutation(spec, 3)
    moved = apply_permutation(spec, perm, params)
    moved_mask = apply_permutation(spec, perm, mask)
    assert set(moved_mask) == set(mask)
    for k, m in moved_mask.items():
        assert m.dtype == torch.bool
        assert torch.equal(m, moved[k].abs() > params[k].abs().median())
    with pytest.raises(SpecError, match="'nope' is not covered"):
        apply_permutation(spec, perm, {"nope": torch.zeros(3)})
    with pytest.raises(SpecError, match="not a permutation"):
        apply_permutation(spec, {"conv1": torch.zeros(64, dtype=torch.long)}, params)
    with pytest.raises(SpecError, match="not in the spec"):
        apply_permutation(spec, {"bogus": torch.arange(3)}, params)
    # rescaling leaves masks alone
    scaled = apply_rescaling(spec, random_scales(spec, 0), mask)
    assert all(torch.equal(scaled[k], mask[k]) for k in mask)


def test_inputs_not_mutated():
    model, spec, _, _ = _setup("mlp")
    params = _params(model)
    copy = {k: v.clone() for k, v in params.items()}
    apply_permutation(spec, random_permutation(spec, 0), params)
    canonicalize_scale(spec, random_rescaling(spec, params, 0))
    assert all(torch.equal(copy[k], params[k]) for k in params)


def test_hand_written_flatten_spec_matches_inferred():
    model, spec, x, scale = _setup("cnn1d")
    hand = PermutationSpec.from_axes(
        {k: tuple(spec.axes[k]) for k in spec.axes}, model.state_dict(),
        rescalable=spec.rescalable)
    assert hand.layouts == spec.layouts
    params = _params(model)
    moved = apply_permutation(hand, random_permutation(hand, 0), params)
    assert function_distance(model, params, moved, x) <= 1e-5 * scale

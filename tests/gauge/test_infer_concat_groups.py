"""Spec inference on concatenations (each piece permuted within its block of the axis) and
grouped convolutions (whole groups permute, channels permute within a group)."""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import given, settings, strategies as st

from gauge import PermutationSpec, apply_permutation, infer_spec, invert, random_permutation, \
    weight_matching
from gauge.spec import permuted_fraction
from tests.infer_models import DenseNetLike, GroupedConvNet

CASES = {"densenet": (DenseNetLike, ("stem.*", "fc.*")),
         "grouped": (GroupedConvNet, ("stem.*", "fc.*"))}


@functools.lru_cache(maxsize=None)
def _setup(name):
    cls, exclude = CASES[name]
    torch.manual_seed(0)
    model = cls().eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial BatchNorm statistics and affine params
        for k, v in model.state_dict().items():
            if k.endswith("running_var"):
                v.copy_(0.5 + torch.rand(v.shape, generator=gen))
            elif k.endswith(("running_mean", "bias")) or (v.dim() == 1 and
                                                          v.dtype.is_floating_point):
                v.add_(0.1 * torch.randn(v.shape, generator=gen))
    spec = infer_spec(model, torch.randn(2, 3, 6, 6), nested=True)
    return model, spec, exclude


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("name", sorted(CASES))
@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_random_permutation_preserves_outputs(name, train, seed):
    """Eval mode, and train mode where BatchNorm normalises by batch statistics and updates
    its running statistics (which must come out permuted the same way)."""
    model, spec, _ = _setup(name)
    p = {k: v.clone() for k, v in model.state_dict().items()}
    perm = random_permutation(spec, seed)
    q = apply_permutation(spec, perm, p)
    x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(seed % 1000))
    model.train(train)
    try:
        with torch.no_grad():
            y = torch.func.functional_call(model, p, (x,))
            y2 = torch.func.functional_call(model, q, (x,))
    finally:
        model.eval()
    assert float((y2 - y).norm() / y.norm()) < 1e-5
    if train:  # running statistics were updated in place, consistently
        moved = apply_permutation(spec, perm, p)
        assert all(torch.allclose(moved[k], q[k], atol=1e-6) for k in p)


@pytest.mark.parametrize("name", sorted(CASES))
def test_planted_recovery_and_coverage(name):
    model, spec, exclude = _setup(name)
    a = model.state_dict()
    planted = random_permutation(spec, 7)
    res = weight_matching(spec, a, apply_permutation(spec, planted, a))
    inv = invert(planted)
    assert all(torch.equal(res.perm[g], inv[g]) for g in spec.groups)
    assert permuted_fraction(spec, a, exclude=exclude) >= 0.98


def test_dense_block_pieces_keep_their_groups():
    _, spec, _ = _setup("densenet")
    stem = spec.axes["stem.weight"][0]
    piece0 = spec.axes["layers.0.5.weight"][0]
    assert spec.axes["layers.1.0.weight"] == ((stem, piece0),)
    assert spec.axes["layers.1.2.weight"][1] == (stem, piece0)
    last = spec.axes["transition.2.weight"][1]
    assert isinstance(last, tuple) and len(last) == 4
    assert spec.axes["fc.weight"][1] == (spec.axes["b1.weight"][0], spec.axes["b2.2.weight"][0])


def test_grouped_conv_blocks():
    _, spec, _ = _setup("grouped")
    out = spec.axes["conv2.weight"][0]
    outer, c = spec.blocks[out]
    assert c == 2 and spec.sizes[outer] == 4
    assert spec.axes["conv1.weight"][0] == outer and spec.layout("conv1.weight", 0) == (1, 2)
    assert spec.blocks[spec.axes["dw.weight"][0]] == (spec.axes["stem.weight"][0], 2)


def test_from_axes_concat_and_blocks_by_hand():
    params = {"a.weight": torch.zeros(4, 3), "b.weight": torch.zeros(2, 3),
              "c.weight": torch.zeros(5, 12), "q.weight": torch.zeros(6, 5)}
    spec = PermutationSpec.from_axes(
        {"a.weight": ("a", None), "b.weight": ("b", None), "c.weight": ("c", ("a", "b")),
         "q.weight": ("q", "c")}, params, blocks={"q": ("heads", 3)})
    assert spec.sizes == {"a": 4, "b": 2, "c": 5, "heads": 2, "q": 6}
    assert spec.layout("c.weight", 1) == (1, 2) and spec.groups[0] == "a"
    assert spec.to_dict()["concatenated"] == {"c.weight": {1: ["a", "b"]}}
    assert spec.to_dict()["groups"]["q"]["blocks"] == {"outer": "heads", "size": 3}
    perm = random_permutation(spec, 0)
    assert torch.equal(perm["q"].view(2, 3)[:, 0] // 3, perm["heads"])

"""infer_spec never returns a spec that changes the function: each known failure mode planted."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn
from torch.nn.utils import prune

import gauge.infer
from gauge import (TraceError, apply_permutation, function_distance, infer_spec,
                   random_permutation)


class LegacyEmptyCat(nn.Module):
    """The legacy empty tensor ``torch.tensor([])`` concatenated onto a hidden layer (as
    transformers' caches start)."""

    def __init__(self, width=8):
        super().__init__()
        self.a, self.b = nn.Linear(4, width), nn.Linear(width, 3)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(torch.cat([torch.tensor([]), h], dim=-1))


def _preserves(model, spec, x, seed=0):
    p = model.state_dict()
    q = apply_permutation(spec, random_permutation(spec, seed), p)
    with torch.no_grad():
        scale = max(1.0, float(model(x).abs().max()))
    return function_distance(model, p, q, x) <= 1e-5 * scale


@pytest.mark.parametrize("batch", [1, 2, 5, 8, 9])
def test_legacy_empty_tensor_in_cat(batch):
    torch.manual_seed(0)
    model = LegacyEmptyCat(width=8).eval()
    x = torch.randn(batch, 4)
    spec = infer_spec(model, x)
    assert spec.axes["a.weight"][0] is not None  # batch == width must not confuse it
    assert spec.axes["b.weight"] == (None, spec.axes["a.weight"][0])
    assert _preserves(model, spec, torch.randn(6, 4))


class LostConsumer(nn.Module):
    """The hidden layer leaves torch (through numpy), so its consumer is invisible."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(torch.from_numpy(h.numpy().copy()))


def test_group_without_consumer_is_not_permuted():
    """Weight and bias of one producer are one member: no consumer, no group."""
    torch.manual_seed(0)
    model = LostConsumer().eval()
    spec = infer_spec(model, torch.randn(3, 4))
    assert spec.groups == []
    assert spec.axes["a.weight"] == (None, None) and spec.axes["a.bias"] == (None,)


class SummedHidden(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 6)

    def forward(self, x):
        return torch.relu(self.a(x)).sum(dim=-1)


def test_group_consumed_by_invariant_reduction_is_free():
    spec = infer_spec(SummedHidden().eval(), torch.randn(3, 4))
    assert spec.axes["a.weight"][0] is not None


class Flipped(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.b(torch.flip(torch.relu(self.a(x)), dims=[-1]))


def test_self_check_names_the_group(monkeypatch):
    """A tracer that mistakes ``flip`` for an elementwise op yields a function-changing spec:
    the self-check refuses it, naming the group; ``check=False`` returns it unchecked."""
    monkeypatch.setattr(gauge.infer, "_ELEMENTWISE_HOMOGENEOUS",
                        gauge.infer._ELEMENTWISE_HOMOGENEOUS | {"flip"})
    torch.manual_seed(0)
    model = Flipped().eval()
    x = torch.randn(5, 4)
    with pytest.raises(TraceError, match=r"changes its function.*group 'a'"):
        infer_spec(model, x)
    spec = infer_spec(model, x, check=False)
    assert spec.axes["a.weight"][0] == "a"


def test_unsupported_flip_is_refused_naming_op_and_module():
    with pytest.raises(TraceError, match=r"op 'flip' .*in module <root> \(Flipped\)"):
        infer_spec(Flipped().eval(), torch.randn(5, 4))


class Resplit(nn.Module):
    """A feature map whose fixed spatial axis 8x7 is re-read as 7x8 (MaxViT's partitions)."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 4, 1)

    def forward(self, x):
        h = torch.relu(self.c1(x))
        b, c = h.shape[:2]
        return self.c2(h.reshape(b, c, 7, 8))


def test_resplit_spatial_axis_fixes_only_those_axes():
    torch.manual_seed(0)
    model = Resplit().eval()
    x = torch.randn(2, 3, 8, 7)
    spec = infer_spec(model, x)
    g = spec.axes["c1.weight"][0]
    assert g is not None and spec.axes["c2.weight"][1] == g
    assert _preserves(model, spec, torch.randn(3, 3, 8, 7))


class Versioned(nn.Module):
    """A module whose ``load_state_dict`` needs the version the state_dict records (as
    torchvision's MNASNet does)."""

    _version = 2

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kw):
        if local_metadata.get("version") not in (1, 2):
            raise ValueError(f"version should be set to 1 or 2 instead of "
                             f"{local_metadata.get('version')}")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kw)


def test_apply_permutation_keeps_state_dict_metadata():
    model = Versioned().eval()
    spec = infer_spec(model, torch.randn(2, 4))
    sd = model.state_dict()
    out = apply_permutation(spec, random_permutation(spec, 0), sd)
    assert out._metadata[""]["version"] == 2
    other = Versioned()
    other.load_state_dict(out)
    assert torch.equal(other.b.weight, out["b.weight"])


def test_mnasnet_load_state_dict_round_trip():
    models = pytest.importorskip("torchvision.models", exc_type=ImportError)
    model = models.mnasnet0_5().eval()
    spec = infer_spec(model, torch.randn(1, 3, 64, 64))
    out = apply_permutation(spec, random_permutation(spec, 0), model.state_dict())
    models.mnasnet0_5().load_state_dict(out)


def test_model_that_cannot_be_deep_copied():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    prune.l1_unstructured(model[0], "weight", 0.5)
    model(torch.randn(2, 3))
    with pytest.raises(TraceError, match=r"deep-copied.*torch\.nn\.utils\.prune\.remove"):
        infer_spec(model, torch.randn(2, 3))


def test_example_input_of_wrong_shape():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(TraceError, match=r"shape \(2, 5\).*module 0 \(Linear\)"):
        infer_spec(model, torch.randn(2, 5))


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_train_mode_with_batchnorm_statistics(seed):
    """In training mode BatchNorm normalises by the batch and updates its running statistics;
    a permutation from the spec (running stats included) commutes with both."""
    from tickets.models import build_model
    model = build_model("resnet20", num_classes=10, input_shape=(3, 8, 8), seed=0, width=1)
    spec = infer_spec(model.eval(), torch.zeros(2, 3, 8, 8))
    perm = random_permutation(spec, seed)
    x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(seed % 1000))
    a, b = copy.deepcopy(model).train(), copy.deepcopy(model).train()
    b.load_state_dict(apply_permutation(spec, perm, model.state_dict()))
    with torch.no_grad():
        ya, yb = a(x), b(x)
    assert float((ya - yb).norm() / ya.norm()) < 1e-5
    after = apply_permutation(spec, perm, a.state_dict())  # running stats moved the same way
    for k, v in b.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(v, after[k], atol=1e-6), k

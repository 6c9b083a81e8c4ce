"""Permutation specs: hand-written and inferred from the model's graph."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gauge import PermutationSpec, SpecError, TraceError, infer_spec
from tests.gauge_models import ZOO, make


def test_from_axes_sizes_layouts_and_describe():
    params = {"fc1.weight": torch.zeros(4, 3), "fc1.bias": torch.zeros(4),
              "fc2.weight": torch.zeros(2, 8)}
    spec = PermutationSpec.from_axes({"fc1.weight": ("h", None), "fc1.bias": ("h",),
                                      "fc2.weight": (None, "h")}, params, rescalable=["h"])
    assert spec.sizes == {"h": 4} and spec.groups == ["h"]
    assert spec.perm_to_axes["h"] == [("fc1.weight", 0), ("fc1.bias", 0), ("fc2.weight", 1)]
    assert spec.layout("fc2.weight", 1) == (1, 2)  # flatten: blocks of 2 per unit
    text = spec.describe()
    assert "h" in text and "fc2.weight[1] (blocks of 2)" in text and "yes" in text
    assert spec.to_dict()["groups"]["h"]["size"] == 4


def test_from_axes_bad_inputs():
    params = {"w": torch.zeros(4, 3), "b": torch.zeros(4)}
    with pytest.raises(SpecError, match="does not cover param 'b'"):
        PermutationSpec.from_axes({"w": ("h", None)}, params)
    with pytest.raises(SpecError, match="not among the params"):
        PermutationSpec.from_axes({"w": ("h", None), "b": ("h",), "x": (None,)}, params)
    with pytest.raises(SpecError, match="gives 1 axes"):
        PermutationSpec.from_axes({"w": ("h",), "b": ("h",)}, params)
    with pytest.raises(SpecError, match="not a multiple"):
        PermutationSpec.from_axes({"w": ("h", "h"), "b": (None,)}, params)
    with pytest.raises(SpecError, match="rescalable"):
        PermutationSpec.from_axes({"w": ("h", None), "b": ("h",)}, params, rescalable=["g"])
    with pytest.raises(SpecError, match="pass params or sizes"):
        PermutationSpec.from_axes({"w": ("h", None)})
    spec = PermutationSpec.from_axes({"w": ("h", None), "b": ("h",)}, params)
    with pytest.raises(SpecError, match="'extra' is not covered"):
        spec.check_params({"extra": torch.zeros(1)})
    with pytest.raises(SpecError, match="shape"):
        spec.check_params({"w": torch.zeros(5, 3)})


def _members(spec, group):
    return set(spec.perm_to_axes[group])


def test_infer_mlp():
    model, shape = make("mlp")
    spec = infer_spec(model, torch.zeros(2, *shape))
    assert spec.sizes == {"fc1": 16, "fc2": 12}
    assert _members(spec, "fc1") == {("fc1.weight", 0), ("fc1.bias", 0), ("fc2.weight", 1)}
    assert spec.axes["fc3.weight"] == (None, "fc2") and spec.axes["fc1.weight"] == ("fc1", None)
    assert spec.rescalable == {"fc1", "fc2"}


def test_infer_layernorm_mlp_is_not_rescalable():
    model, shape = make("mlp_layernorm")
    spec = infer_spec(model, torch.zeros(2, *shape))
    assert ("ln1.weight", 0) in _members(spec, "fc1") and ("ln1.bias", 0) in _members(spec, "fc1")
    assert spec.rescalable == frozenset()


def test_infer_resnet_streams_shortcuts_and_buffers():
    model, shape = make("resnet20")
    spec = infer_spec(model, torch.zeros(2, *shape))
    assert len(spec.groups) == 12  # 3 residual streams + 9 block-internal groups
    stream1 = spec.axes["conv1.weight"][0]
    for key in ("bn1.running_mean", "layer1.0.bn2.weight", "layer1.2.conv2.weight"):
        assert spec.axes[key][0] == stream1
    assert spec.axes["layer2.0.shortcut.conv.weight"] == (spec.axes["layer2.0.conv2.weight"][0],
                                                          stream1, None, None)
    assert spec.axes["layer2.0.bn1.num_batches_tracked"] == ()
    assert spec.axes["fc.weight"] == (None, spec.axes["layer3.0.conv2.weight"][0])
    assert spec.rescalable == frozenset()  # BatchNorm absorbs scale
    none_spec = infer_spec(*(lambda m, s: (m, torch.zeros(2, *s)))(*make("resnet20_none")))
    assert len(none_spec.rescalable) == 12  # no norm: streams rescale consistently


def test_infer_flatten_blocks_and_kernels_fixed():
    model, shape = make("cnn1d")
    spec = infer_spec(model, torch.zeros(2, *shape))
    g = spec.axes["conv4.weight"][0]
    assert spec.axes["fc.weight"] == (None, g) and spec.layout("fc.weight", 1) == (1, 10)
    assert spec.axes["conv1.weight"][1:] == (None, None)
    # residual block ties conv1's output to conv3's output
    assert spec.axes["conv3.weight"][0] == spec.axes["conv1.weight"][0]


def test_infer_attention_heads_as_blocks():
    """The plain spec: heads move as whole blocks of the stacked projections."""
    model, shape = make("mha_block")
    spec = infer_spec(model, torch.zeros(2, *shape), nested=False)
    heads = spec.axes["attn.in_proj_weight"][0]
    assert spec.sizes[heads] == 2 and spec.layout("attn.in_proj_weight", 0) == (3, 4)
    assert spec.axes["attn.out_proj.weight"][1] == heads
    assert spec.axes["attn.out_proj.weight"][0] == spec.axes["embed.weight"][0]
    model, shape = make("qkv_block")
    spec = infer_spec(model, torch.zeros(2, *shape), nested=False)
    heads = spec.axes["q.weight"][0]
    assert spec.sizes[heads] == 2 and spec.axes["k.weight"][0] == heads == spec.axes["v.weight"][0]
    assert spec.layout("proj.weight", 1) == (1, 4)


def test_infer_does_not_change_model():
    model, shape = make("resnet20")
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    infer_spec(model, torch.randn(2, *shape))
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class _Embed(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.fc2 = nn.Linear(6, 2)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        return self.fc2(torch.cumsum(h, dim=1))  # cumsum mixes units: unsupported


class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.fc2 = nn.Linear(6, 2)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        if x.dim() == 2:  # shape-dependent Python branch: fine, we run concretely
            h = h * 2
        return self.fc2(h)


def test_unsupported_op_names_op_and_module():
    with pytest.raises(TraceError, match="cumsum.*<root>.*from_axes"):
        infer_spec(_Embed(), torch.zeros(2, 4))
    spec = infer_spec(_Branchy(), torch.zeros(2, 4))
    assert spec.sizes == {"fc1": 6}


def test_model_that_fails_on_input_is_a_trace_error():
    model, _ = make("mlp")
    with pytest.raises(TraceError, match="example input"):
        infer_spec(model, torch.zeros(2, 7))


def test_mha_unsupported_variant_refused():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(4, 2, kdim=3, vdim=3, batch_first=True)

        def forward(self, x, y):
            return self.attn(x, y, y)[0]

    with pytest.raises(TraceError, match="MultiheadAttention"):
        infer_spec(M(), (torch.zeros(1, 2, 4), torch.zeros(1, 2, 3)))


@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_spec_covers_state_dict(name):
    model, shape = make(name)
    spec = infer_spec(model, torch.zeros(2, *shape))
    sd = model.state_dict()
    assert set(spec.axes) == set(sd)
    for k, v in sd.items():
        assert len(spec.axes[k]) == v.dim()
    assert spec.groups

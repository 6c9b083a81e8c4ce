"""Why an axis is held fixed: the reasons infer_spec records, and how the spec reports them."""

from __future__ import annotations

import networkx as nx
import pytest
import torch
from torch import nn

from gauge import PermutationSpec, SpecError, infer_spec
from gauge.infer import _Labels
from gauge.spec_graph import axis_node, fixed_axes, held_inside
from tests.infer_models import hf_model

ROPE = "dims i and i+4 are combined, as a rotary embedding pairs them"


class Gather(nn.Module):
    """Picks three of the hidden channels by index: their order matters."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(3, 2)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x))))[:, [0, 2, 4]])


class Slice(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(3, 2)

    def forward(self, x):
        return self.b(torch.relu(self.a(x))[:, 1:4])


def test_mlp_input_and_output():
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)).eval()
    spec = infer_spec(model, torch.randn(2, 5))
    assert spec.reasons == {("0.weight", 1): "network input", ("2.weight", 0): "network output",
                            ("2.bias", 0): "network output"}
    assert [(a, why) for a, _, why in fixed_axes(spec)] == list(spec.reasons.items())


def test_cnn_taps_and_flatten_layout():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5),
                          nn.ReLU(), nn.Linear(5, 2)).eval()
    spec = infer_spec(model, torch.randn(2, 3, 8, 8))
    taps = "kernel taps (a conv kernel's spatial order)"
    assert spec.reasons[("0.weight", 1)] == "network input"
    assert spec.reasons[("0.weight", 2)] == spec.reasons[("0.weight", 3)] == taps
    # the linear layer permutes channels as blocks of 36 positions, which stay in place
    assert spec.layout("3.weight", 1) == (1, 36)
    assert held_inside(spec) == [(("3.weight", 1), "spatial positions of the output of op "
                                                   "'conv2d' in module 0 (Conv2d)")]
    text = spec.describe()
    assert f"  {taps}\n    0: weight[2] (3), weight[3] (3)" in text
    assert "3: weight[1] (blocks of 36)" in text


def test_gather_and_slice_of_a_channel_axis():
    spec = infer_spec(Gather().eval(), torch.randn(2, 4))
    why = "gathered by an index tensor (op 'getitem' in module <root> (Gather))"
    assert spec.axes["b.weight"] == (None, "a")
    assert spec.reasons[("b.weight", 0)] == spec.reasons[("b.bias", 0)] == why
    assert f"  {why}\n    b: weight[0] (6), bias[0] (6)" in spec.describe_fixed()
    spec = infer_spec(Slice().eval(), torch.randn(2, 4))
    assert spec.reasons[("a.weight", 0)] == "sliced [1:4] by op 'getitem' in module <root> (Slice)"


def test_llama_embedding_output_and_rope():
    model, x = hf_model("llama")
    spec = infer_spec(model, x, nested=True)
    assert spec.reasons[("model.embed_tokens.weight", 0)] == (
        "rows looked up by token id (op 'embedding' in module model.embed_tokens (Embedding))")
    assert spec.reasons[("lm_head.weight", 0)] == "network output"
    q = "model.layers.0.self_attn.q_proj.weight"
    assert spec.layout(q, 0) == (1, 8)  # heads permute; the dims RoPE rotates stay in place
    assert spec.reasons[(q, 0)] == (
        "split in halves by slicing [:4] (op 'getitem' in module model.layers.0.self_attn "
        f"(LlamaAttention)): {ROPE}")
    assert ROPE in spec.describe()
    flat = infer_spec(model, x, nested=False)  # the query heads of a kv head stay too
    assert flat.reasons[(q, 0)].startswith("units inside a block (e.g. dims inside a head) "
                                           "stay in place; infer_spec(nested=True) permutes")
    assert flat.reasons[(q, 0)].endswith(ROPE)


def test_multihead_attention_dims_inside_heads():
    from tests.gauge_models import MHABlock
    spec = infer_spec(MHABlock().eval(), torch.zeros(2, 5, 6), nested=False)
    inside = dict(held_inside(spec))
    w = [k for k in spec.axes if k.endswith("in_proj_weight")][0]
    assert inside[(w, 0)] == ("the q, k, v thirds of a stacked in_proj_weight; dims inside a "
                              "head stay in place (infer_spec(nested=True) permutes them)")


def test_union_keeps_the_first_reason():
    L = _Labels()
    a, b, c = L.new(3, fixed=True, why="first"), L.new(3), L.new(3)
    L.fix(c, "second")
    L.union(c, b)
    L.union(b, a)
    assert L.reason(c) == "first" and L.reason(b) == "first"
    L.fix(b, "third")
    assert L.reason(a) == "first"
    x, y = L.new(4), L.new(2)
    L.set_factors(x, [y, L.new(2)])
    L.fix(x, "whole")
    assert L.reason(y) == "whole"  # a fixed axis explains its factors


def test_hand_spec_reasons_graph_and_dict(tmp_path):
    axes = {"fc1.weight": ("h", None), "fc1.bias": ("h",), "fc2.weight": (None, "h")}
    shapes = {"fc1.weight": (4, 3), "fc1.bias": (4,), "fc2.weight": (2, 4)}
    spec = PermutationSpec.from_axes(axes, shapes, reasons={("fc2.weight", 0): "logits"})
    assert fixed_axes(spec)[1] == (("fc2.weight", 0), 2, "logits")
    assert spec.to_dict()["reasons"] == [["fc2.weight", 0, "logits"]]
    assert "reasons" not in PermutationSpec.from_axes(axes, shapes).to_dict()
    g = spec.to_networkx()
    nx.write_graphml(g, tmp_path / "s.graphml")
    back = nx.read_graphml(tmp_path / "s.graphml")
    assert back.nodes[axis_node("fc2.weight", 0)]["reason"] == "logits"
    assert back.nodes[axis_node("fc1.weight", 1)]["reason"] == ""
    with pytest.raises(SpecError, match="axis 2 of 'fc2.weight'"):
        PermutationSpec.from_axes(axes, shapes, reasons={("fc2.weight", 2): "x"})


class AuxHead(nn.Module):
    """An auxiliary classifier that runs only in training mode (as GoogLeNet's)."""

    def __init__(self):
        super().__init__()
        self.a, self.out = nn.Linear(4, 6), nn.Linear(6, 2)
        self.aux = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))

    def forward(self, x):
        h = torch.relu(self.a(x))
        return (self.out(h), self.aux(h)) if self.training else self.out(h)


def test_modules_the_forward_pass_skips():
    spec = infer_spec(AuxHead().eval(), torch.randn(2, 4))
    why = ("not used by the forward pass on the example input (e.g. a head run only in "
           "training mode)")
    assert spec.reasons[("aux.0.weight", 0)] == why == spec.reasons[("aux.2.weight", 1)]
    assert spec.axes["a.weight"][0] is not None

"""Spec inference on transformers: the residual stream, MLP units, heads as blocks with their
q/k and v dims inside (RoPE and grouped-query attention respected), checked as symmetry facts."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch import nn

from gauge import (TraceError, activation_matching, apply_permutation, infer_spec, invert,
                   random_permutation, weight_matching)
from gauge.spec import permuted_fraction
from gauge.symmetry import check_permutation
from tests.infer_models import TinyViT, WindowBlock, hf_model

#: name -> (builder, fnmatch patterns of the input stem and classifier output)
CASES = {
    "tiny_vit": (lambda: (TinyViT().eval(), torch.randn(2, 3, 8, 8)), ("conv_proj.*", "head.*")),
    "window": (lambda: (WindowBlock().eval(), torch.randn(2, 3, 12, 12)),
               ("embed.*", "head.*")),
    "gpt2": (lambda: hf_model("gpt2"), ()),
    "bert": (lambda: hf_model("bert"), ("classifier.*",)),
    "hf_vit": (lambda: hf_model("vit"),
               ("vit.embeddings.patch_embeddings.*", "classifier.*")),
    "llama": (lambda: hf_model("llama"), ()),
}


@functools.lru_cache(maxsize=None)
def _setup(name):
    build, exclude = CASES[name]
    model, x = build()
    spec = infer_spec(model, x, nested=True)
    return model, x, spec, exclude


def _outputs(model, params, x):
    seen, once = set(), {}
    for k, v in model.state_dict(keep_vars=True).items():  # tied weights go in once
        if id(v) not in seen:
            seen.add(id(v))
            once[k] = params[k]
    with torch.no_grad():
        out = torch.func.functional_call(model, once, (x,))
    return out if isinstance(out, torch.Tensor) else out[0]


@pytest.mark.parametrize("name", sorted(CASES))
@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_random_permutation_preserves_outputs(name, seed):
    model, x, spec, _ = _setup(name)
    p = model.state_dict()
    q = apply_permutation(spec, random_permutation(spec, seed), p)
    y, y2 = _outputs(model, p, x), _outputs(model, q, x)
    assert float((y2 - y).norm() / y.norm()) < 1e-5


@pytest.mark.parametrize("name", sorted(CASES))
def test_planted_permutation_recovered_and_coverage(name):
    model, _, spec, exclude = _setup(name)
    a = model.state_dict()
    planted = random_permutation(spec, 11)
    res = weight_matching(spec, a, apply_permutation(spec, planted, a))
    check_permutation(spec, res.perm)
    inv = invert(planted)
    assert all(torch.equal(res.perm[g], inv[g]) for g in spec.groups)
    assert permuted_fraction(spec, a, exclude=exclude) >= 0.98


def test_gpt2_heads_nest_qk_and_v_dims():
    model, _, spec, _ = _setup("gpt2")
    entry = spec.axes["transformer.h.0.attn.c_attn.weight"][1]
    qk, _, v = entry  # the stacked q | k | v thirds
    assert entry[0] == entry[1] != v
    assert spec.blocks[qk][0] == spec.blocks[v][0] and spec.blocks[qk][1] == 4
    assert spec.axes["transformer.h.0.attn.c_proj.weight"][0] == v
    resid = spec.axes["transformer.wte.weight"][1]
    assert spec.axes["lm_head.weight"][1] == resid == spec.axes["transformer.wpe.weight"][1]


def test_llama_rope_and_grouped_query_attention():
    """RoPE pairs dims of one frequency across the two halves of a head: the q/k dims stay in
    place (the head dim is the layout block); a kv head moves with its group of query heads."""
    model, _, spec, _ = _setup("llama")
    d = 8
    q = spec.axes["model.layers.0.self_attn.q_proj.weight"][0]
    kv = spec.axes["model.layers.0.self_attn.k_proj.weight"][0]
    assert spec.layout("model.layers.0.self_attn.q_proj.weight", 0) == (1, d)
    assert spec.layout("model.layers.0.self_attn.k_proj.weight", 0) == (1, d)
    assert spec.blocks[q] == (kv, 2) and spec.sizes[kv] == 2
    assert spec.axes["model.layers.0.self_attn.o_proj.weight"][1] == q
    norm = spec.axes["model.norm.weight"][0]
    assert norm == spec.axes["model.embed_tokens.weight"][1]


def test_vision_transformer_class_token_and_positions():
    _, _, spec, _ = _setup("tiny_vit")
    resid = spec.axes["conv_proj.weight"][0]
    assert spec.axes["class_token"] == (None, None, resid)
    assert spec.axes["pos_embedding"] == (None, None, resid)
    qk, _, v = spec.axes["blocks.0.attn.in_proj_weight"][0]
    assert spec.blocks[qk][0] == spec.blocks[v][0]


def test_activation_matching_on_nested_spec():
    model, x, spec, _ = _setup("tiny_vit")
    a = model.state_dict()
    planted = random_permutation(spec, 5)
    res = activation_matching(model, spec, a, apply_permutation(spec, planted, a),
                              torch.randn(16, 3, 8, 8))
    check_permutation(spec, res.perm)
    resid = spec.axes["conv_proj.weight"][0]
    assert torch.equal(res.perm[resid], invert(planted)[resid])


class PadChannels(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(8, 3)

    def forward(self, x):
        return self.b(F.pad(torch.relu(self.a(x)), (0, 2)))


def test_pad_of_a_permuted_axis_is_refused():
    with pytest.raises(TraceError, match=r"'pad'.*module <root> \(PadChannels\)"):
        infer_spec(PadChannels().eval(), torch.randn(2, 4), nested=True)


def test_plain_spec_keeps_dims_inside_heads_fixed():
    model, x = TinyViT().eval(), torch.randn(2, 3, 8, 8)
    assert infer_spec(model, x).blocks  # the default permutes inside heads too
    spec = infer_spec(model, x, nested=False)
    assert not spec.blocks and spec.is_plain
    assert spec.layout("blocks.0.attn.in_proj_weight", 0) == (3, 4)

"""Small models shared by the gauge tests: every zoo model at a tiny size plus attention blocks."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tickets.models import build_model


class MHABlock(nn.Module):
    """Pre-norm transformer block with nn.MultiheadAttention and a GELU MLP."""

    def __init__(self, d_in=6, e=8, heads=2, classes=3):
        super().__init__()
        self.embed = nn.Linear(d_in, e)
        self.ln1 = nn.LayerNorm(e)
        self.attn = nn.MultiheadAttention(e, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(e)
        self.fc1 = nn.Linear(e, 2 * e)
        self.fc2 = nn.Linear(2 * e, e)
        self.head = nn.Linear(e, classes)

    def forward(self, x):
        h = self.embed(x)
        a = self.ln1(h)
        h = h + self.attn(a, a, a, need_weights=False)[0]
        h = h + self.fc2(F.gelu(self.fc1(self.ln2(h))))
        return self.head(h.mean(dim=1))


class QKVBlock(nn.Module):
    """Attention written with separate q/k/v Linear layers, view/transpose and matmul (or SDPA)."""

    def __init__(self, d_in=6, e=8, heads=2, classes=3, sdpa=False):
        super().__init__()
        self.h, self.d, self.sdpa = heads, e // heads, sdpa
        self.embed = nn.Linear(d_in, e)
        self.q, self.k, self.v = nn.Linear(e, e), nn.Linear(e, e), nn.Linear(e, e)
        self.proj = nn.Linear(e, e)
        self.head = nn.Linear(e, classes)

    def forward(self, x):
        b, t, _ = x.shape
        h = torch.relu(self.embed(x))
        q = self.q(h).view(b, t, self.h, self.d).transpose(1, 2)
        k = self.k(h).view(b, t, self.h, self.d).transpose(1, 2)
        v = self.v(h).view(b, t, self.h, self.d).transpose(1, 2)
        if self.sdpa:
            o = F.scaled_dot_product_attention(q, k, v)
        else:
            o = ((q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.d))).softmax(dim=-1) @ v
        h = h + self.proj(o.transpose(1, 2).reshape(b, t, self.h * self.d))
        return self.head(h.mean(1))


#: name -> (zoo name or None, input shape, kwargs)
ZOO = {
    "mlp": ("mlp", (40,), {"widths": (16, 12)}),
    "mlp_layernorm": ("mlp", (40,), {"widths": (8, 6), "norm": "layernorm"}),
    "lenet_300_100": ("lenet_300_100", (1, 4, 4), {}),
    "conv2": ("conv2", (3, 4, 4), {}),
    "conv4": ("conv4", (3, 4, 4), {}),
    "conv6": ("conv6", (3, 8, 8), {}),
    "vgg11": ("vgg11", (3, 32, 32), {"width": 0.125}),
    "vgg11_nobn": ("vgg11", (3, 32, 32), {"width": 0.125, "batchnorm": False}),
    "vgg16": ("vgg16", (3, 32, 32), {"width": 0.0625}),
    "resnet20": ("resnet20", (3, 8, 8), {}),
    "resnet20_none": ("resnet20", (3, 8, 8), {"norm": "none", "width": 0.5}),
    "resnet20_layernorm": ("resnet20", (3, 8, 8), {"norm": "layernorm"}),
    "cnn1d": ("cnn1d", (40,), {"channels": 8}),
    "cnn1d_bn": ("cnn1d", (40,), {"channels": 8, "batchnorm": True}),
    "mha_block": (None, (5, 6), {}),
    "qkv_block": (None, (5, 6), {}),
    "qkv_sdpa_block": (None, (5, 6), {"sdpa": True}),
}


def make(name: str, seed: int = 0):
    """(model, input_shape) with non-trivial norm params and BatchNorm statistics."""
    zoo, shape, kw = ZOO[name]
    if zoo is None:
        torch.manual_seed(seed)  # nn defaults; only used in tests
        model = (MHABlock() if name == "mha_block" else QKVBlock(**kw))
    else:
        model = build_model(zoo, num_classes=10, input_shape=shape, seed=seed, **kw)
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if not v.dtype.is_floating_point:
                continue
            if k.endswith("running_var"):
                v.copy_(0.5 + torch.rand(v.shape, generator=gen))
            elif k.endswith(("running_mean", "bias")) or v.dim() == 1:
                v.add_(0.1 * torch.randn(v.shape, generator=gen))
    return model.eval(), shape


def inputs(shape, n=4, seed=0):
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))

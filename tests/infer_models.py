"""Tiny architectures for the spec-inference acceptance tests: a torchvision-style ViT, a
Swin-like windowed-attention block, DenseNet-style concatenation, grouped convolutions, and
Hugging Face transformers built from small configs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TinyViT(nn.Module):
    """Patch embedding, a class token (``expand`` + ``cat``), position embeddings and pre-norm
    blocks with :class:`nn.MultiheadAttention`, as in torchvision's ``VisionTransformer``."""

    def __init__(self, image=8, patch=4, dim=16, heads=4, depth=2, classes=3):
        super().__init__()
        self.conv_proj = nn.Conv2d(3, dim, patch, patch)
        n = (image // patch) ** 2
        self.class_token = nn.Parameter(torch.randn(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        self.blocks = nn.ModuleList()
        for _ in range(depth):
            self.blocks.append(nn.ModuleDict({
                "ln_1": nn.LayerNorm(dim), "attn": nn.MultiheadAttention(dim, heads,
                                                                          batch_first=True),
                "ln_2": nn.LayerNorm(dim), "fc1": nn.Linear(dim, 2 * dim),
                "fc2": nn.Linear(2 * dim, dim)}))
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embedding
        for b in self.blocks:
            h = b["ln_1"](x)
            x = x + b["attn"](h, h, h, need_weights=False)[0]
            x = x + b["fc2"](F.gelu(b["fc1"](b["ln_2"](x))))
        return self.head(self.ln(x)[:, 0])


class WindowBlock(nn.Module):
    """Swin-like shifted-window attention: ``pad`` to whole windows, ``roll``, window
    partition reshapes, a relative position bias table gathered by an index, heads by
    ``view``/``permute``, then patch merging (strided slices + ``cat``)."""

    def __init__(self, dim=8, heads=2, window=4, classes=3):
        super().__init__()
        self.h, self.w = heads, window
        self.embed = nn.Conv2d(3, dim, 2, 2)
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.table = nn.Parameter(torch.randn((2 * window - 1) ** 2, heads) * 0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window),
                                            indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + window - 1
        self.register_buffer("index", (rel[..., 0] * (2 * window - 1) + rel[..., 1]).flatten(),
                             persistent=False)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.merge_norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.head = nn.Linear(2 * dim, classes)

    def attention(self, x):
        b, hh, ww, c = x.shape
        w = self.w
        x = F.pad(x, (0, 0, 0, (-ww) % w, 0, (-hh) % w))
        ph, pw = x.shape[1], x.shape[2]
        x = torch.roll(x, shifts=(-1, -1), dims=(1, 2))
        x = x.view(b, ph // w, w, pw // w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, c)
        qkv = self.qkv(x).reshape(x.shape[0], w * w, 3, self.h, c // self.h).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * (c // self.h) ** -0.5) @ k.transpose(-2, -1)
        bias = self.table[self.index].view(w * w, w * w, -1).permute(2, 0, 1)
        attn = (attn + bias.unsqueeze(0)).softmax(-1)
        x = (attn @ v).transpose(1, 2).reshape(x.shape[0], w * w, c)
        x = self.proj(x).view(b, ph // w, pw // w, w, w, c).permute(0, 1, 3, 2, 4, 5)
        x = torch.roll(x.reshape(b, ph, pw, c), shifts=(1, 1), dims=(1, 2))
        return x[:, :hh, :ww, :].contiguous()

    def forward(self, x):
        x = self.embed(x).permute(0, 2, 3, 1)
        x = x + self.attention(self.norm1(x))
        x = x + self.fc2(F.gelu(self.fc1(self.norm2(x))))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]],
                      dim=-1)
        x = self.reduction(self.merge_norm(x))
        return self.head(x.mean(dim=(1, 2)))


class DenseNetLike(nn.Module):
    """A dense block (each layer sees the concatenation of all earlier features), a transition
    and an Inception-style module with concatenated branches, with BatchNorm."""

    def __init__(self, c0=6, growth=4, layers=3, classes=3):
        super().__init__()
        self.stem = nn.Conv2d(3, c0, 3, padding=1)
        self.layers = nn.ModuleList()
        c = c0
        for _ in range(layers):
            self.layers.append(nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(),
                                             nn.Conv2d(c, 2 * growth, 1), nn.BatchNorm2d(2 * growth),
                                             nn.ReLU(), nn.Conv2d(2 * growth, growth, 3, padding=1)))
            c += growth
        self.transition = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, 8, 1))
        self.b1 = nn.Conv2d(8, 4, 1)
        self.b2 = nn.Sequential(nn.Conv2d(8, 3, 1), nn.ReLU(), nn.Conv2d(3, 5, 3, padding=1))
        self.fc = nn.Linear(9, classes)

    def forward(self, x):
        feats = [self.stem(x)]
        for layer in self.layers:
            feats.append(layer(torch.cat(feats, 1)))
        x = self.transition(torch.cat(feats, 1))
        x = torch.cat([F.relu(self.b1(x)), F.relu(self.b2(x))], 1)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class GroupedConvNet(nn.Module):
    """ResNeXt-style bottleneck (grouped 3x3) and a MobileNet-style depthwise conv with a
    channel multiplier, with BatchNorm."""

    def __init__(self, width=8, groups=4, classes=3):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(width)
        self.conv1 = nn.Conv2d(width, width, 1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, groups=groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width, 1)
        self.bn3 = nn.BatchNorm2d(width)
        self.dw = nn.Conv2d(width, 2 * width, 3, padding=1, groups=width)
        self.bn4 = nn.BatchNorm2d(2 * width)
        self.pw = nn.Conv2d(2 * width, width, 1)
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        x = F.relu(x + self.bn3(self.conv3(h)))
        x = self.pw(F.relu(self.bn4(self.dw(x))))
        return self.fc(x.mean(dim=(2, 3)))


def hf_model(name: str, seed: int = 0):
    """``(model, example_input)`` of a tiny Hugging Face model (eval mode), or skip."""
    import pytest
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    tokens = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(seed))
    if name == "gpt2":
        cfg = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=4, vocab_size=50,
                                      n_positions=16, bos_token_id=0, eos_token_id=0)
        return transformers.GPT2LMHeadModel(cfg).eval(), tokens
    if name == "bert":
        cfg = transformers.BertConfig(num_hidden_layers=2, hidden_size=16, num_attention_heads=4,
                                      intermediate_size=32, vocab_size=50,
                                      max_position_embeddings=16, num_labels=3)
        return transformers.BertForSequenceClassification(cfg).eval(), tokens
    if name == "vit":
        cfg = transformers.ViTConfig(num_hidden_layers=2, hidden_size=16, num_attention_heads=4,
                                     intermediate_size=32, image_size=8, patch_size=4,
                                     num_labels=3)
        x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
        return transformers.ViTForImageClassification(cfg).eval(), x
    if name == "llama":
        cfg = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                                       num_key_value_heads=2, intermediate_size=24,
                                       vocab_size=50, max_position_embeddings=16,
                                       bos_token_id=0, eos_token_id=0)
        return transformers.LlamaForCausalLM(cfg).eval(), tokens
    raise KeyError(name)

"""Aligning two independently trained tiny transformers by weight matching over the nested
spec (heads, dims inside heads, MLP units, residual stream) lowers their loss barrier."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gauge import align, infer_spec
from gauge.connect import linear_path


class SeqTransformer(nn.Module):
    """A one-block pre-norm transformer over ``(batch, tokens, features)`` sequences."""

    def __init__(self, features=5, tokens=8, dim=32, heads=4, classes=10):
        super().__init__()
        self.embed = nn.Linear(features, dim)
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.1)
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.embed(x) + self.pos
        a = self.ln1(h)
        h = h + self.attn(a, a, a, need_weights=False)[0]
        h = h + self.fc2(F.gelu(self.fc1(self.ln2(h))))
        return self.head(self.ln(h).mean(dim=1))


def _train(model, x, y, seed, steps, lr=3e-3):
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=gen)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _synthetic(n, seed, tokens=8, features=5, classes=10):
    """Sequences labelled by a fixed random teacher: argmax of a token-summed projection."""
    gen = torch.Generator().manual_seed(seed)
    teacher = torch.randn(features, classes, generator=torch.Generator().manual_seed(99))
    x = torch.randn(n, tokens, features, generator=gen)
    y = (torch.tanh(x) @ teacher).sum(1).argmax(1)
    return x, y


def _barriers(x, y, xt, yt, steps, tokens, features, classes):
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(_train(SeqTransformer(features, tokens, classes=classes), x, y, seed,
                             steps))
    a, b = (m.state_dict() for m in models)
    spec = infer_spec(models[0], x[:2], nested=True)
    aligned, _ = align(models[0], spec, a, b)
    data = {"train": (x, y), "test": (xt, yt)}
    before = linear_path(models[0], a, b, data, n_points=5).loss_barrier
    after = linear_path(models[0], a, aligned, data, n_points=5).loss_barrier
    return before, after


def test_alignment_lowers_barrier_synthetic():
    x, y = _synthetic(512, 0)
    xt, yt = _synthetic(512, 1)
    before, after = _barriers(x, y, xt, yt, steps=100, tokens=8, features=5, classes=10)
    assert after < 0.5 * before


@pytest.mark.slow
def test_alignment_lowers_barrier_mnist1d():
    """mnist1d's 40-long signals read as 8 tokens of 5 features."""
    from tickets.data import load_dataset

    data = load_dataset("mnist1d")
    x, y = data.train.tensors
    xt, yt = data.test.tensors
    x, xt = x.reshape(len(x), 8, 5), xt.reshape(len(xt), 8, 5)
    before, after = _barriers(x, y, xt, yt, steps=600, tokens=8, features=5, classes=10)
    assert after < 0.7 * before

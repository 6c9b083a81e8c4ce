"""Muon paired with AdamW (tickets.optim) in the training loop."""

from __future__ import annotations

import pytest
import torch

from tests.tiny_runs import tiny_data
from tickets.errors import ConfigError
from tickets.models import build_model
from tickets.optim import MuonAdamW
from tickets.train import TrainConfig, train


def test_muon_trains_hidden_matrices_and_keeps_the_mask(mnist1d):
    data = tiny_data(mnist1d)
    net = build_model("mlp", num_classes=10, input_shape=(40,), seed=0, widths=[16, 16])
    opt = MuonAdamW(list(net.parameters()), lr=1e-3)
    assert opt.hidden == [net.fc2.weight]  # the first and last layers go to AdamW
    mask = {"fc2.weight": torch.rand(16, 16, generator=torch.Generator().manual_seed(0)) > 0.5}
    cfg = TrainConfig(optimizer="muon", lr=3e-3, batch_size=100, iters=30)
    res = train(net, data, cfg, seed=0, data_seed=0, mask=mask)
    assert not res.nonfinite
    w = res.params["fc2.weight"]
    assert (w[~mask["fc2.weight"]] == 0).all()
    assert not torch.equal(w, net.state_dict()["fc2.weight"] * mask["fc2.weight"])


def test_muon_needs_a_hidden_matrix():
    net = build_model("mlp", num_classes=10, input_shape=(40,), widths=[8])
    with pytest.raises(ConfigError, match="hidden layer"):
        MuonAdamW(list(net.parameters()), lr=1e-3)

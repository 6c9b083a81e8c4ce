"""tickets.instability: the Frankle et al. (2020) protocol on a tiny MLP."""

from __future__ import annotations

import pytest
import torch

from tickets import instability
from tickets.errors import ConfigError
from tickets.train import TrainConfig

CFG = TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, batch_size=100, iters=60)


def test_rows_dense_and_sparse(mnist1d):
    res = instability("mlp", mnist1d, CFG, rewind_iters=[30, 0], seed=0, data_seeds=(1, 2),
                      model_kwargs={"widths": [16]}, n_points=3)
    assert res.rewind_iters == (0, 30)
    assert [r["rewind_iter"] for r in res.rows] == [0, 30]
    for r in res.rows:
        assert r["error_barrier"] >= 0 and r["loss_barrier"] >= 0
        assert 0 <= r["test_acc_a"] <= 1
    d = res.to_dict()
    assert set(d["paths"]) == {"0", "30"} and d["density"] == 1.0
    assert type(res).from_dict(d).rows == res.rows

    mask = {"fc1.weight": torch.rand(16, 40, generator=torch.Generator().manual_seed(0)) < 0.5}
    sparse = instability("mlp", mnist1d, CFG, rewind_iters=[10], seed=0, data_seeds=(1, 2),
                         model_kwargs={"widths": [16]}, mask=mask, n_points=3, bn="none")
    assert sparse.density == pytest.approx(float(mask["fc1.weight"].float().mean()))
    assert len(sparse.rows) == 1


def test_bad_arguments(mnist1d):
    kw = dict(seed=0, model_kwargs={"widths": [8]})
    with pytest.raises(ConfigError, match="two different"):
        instability("mlp", mnist1d, CFG, rewind_iters=[0], data_seeds=(1, 1), **kw)
    with pytest.raises(ConfigError, match="outside the run"):
        instability("mlp", mnist1d, CFG, rewind_iters=[60], **kw)
    with pytest.raises(ConfigError, match="not a parameter"):
        instability("mlp", mnist1d, CFG, rewind_iters=[0], mask={"conv1.weight": torch.ones(2)},
                    **kw)


def test_parent_cut_at_last_rewind_point_follows_full_run(mnist1d):
    """The shortcut in instability(): a parent run cut at max(k) has the full run's theta_k."""
    from tickets.models import build_model
    from tickets.train import train
    cfg = CFG.replace(schedule="milestones", milestones=(0.2,), warmup_iters=5)
    model = build_model("mlp", num_classes=10, input_shape=(40,), seed=0, widths=(8,))
    full = train(model, mnist1d, cfg, seed=0, data_seed=0, checkpoints_at=[25])
    cut = train(model, mnist1d, cfg.replace(iters=25), seed=0, data_seed=0, checkpoints_at=[25])
    for k, v in full.checkpoints[25].items():
        assert torch.equal(v, cut.checkpoints[25][k])

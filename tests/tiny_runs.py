"""Tiny artefacts shared by the connect, overlap, transfer and instability tests."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import TensorDataset

from tickets.data import DataSplits
from tickets.train import TrainConfig

#: 120 Adam steps of a small MLP: seconds on one core.
TINY_CFG = TrainConfig(optimizer="adam", lr=3e-3, batch_size=100, iters=120)


def tiny_data(mnist1d, n_train=400, n_test=200) -> DataSplits:
    x, y = mnist1d.train.tensors
    xt, yt = mnist1d.test.tensors
    return DataSplits("mnist1d", TensorDataset(x[:n_train], y[:n_train]),
                      TensorDataset(xt[:n_test], yt[:n_test]), mnist1d.num_classes,
                      mnist1d.input_shape)


def make_checkpoint(path: Path, data, *, model="mlp", seed=0, train=True, **kwargs) -> Path:
    """A checkpoint with the standard meta (as ``gauge train`` writes it)."""
    from tickets.models import build_model
    from tickets.store import save_checkpoint, versions
    from tickets.train import train as fit
    net = build_model(model, num_classes=10, input_shape=(40,), seed=seed, **kwargs)
    params = fit(net, data, TINY_CFG, seed=seed, data_seed=seed).params if train \
        else net.state_dict()
    meta = {"model": model, "model_kwargs": kwargs, "num_classes": 10, "input_shape": [40],
            "dataset": "mnist1d", "seed": seed, "data_seed": seed,
            "iteration": TINY_CFG.iters if train else 0, "train_config": TINY_CFG.to_dict(),
            "versions": versions()}
    save_checkpoint(path, params, meta)
    return path


def make_run(out: Path, data, *, seed: int, widths=(16,), levels=2) -> Path:
    from tickets.imp import run_imp
    run_imp("mlp", data, TINY_CFG, levels=levels, fraction=0.5, seed=seed, out_dir=out,
            model_kwargs={"widths": list(widths)})
    return out


def files_under(path: Path) -> set:
    return {p for p in Path(path).rglob("*") if p.is_file()}


def make_seed_runs(base: Path, data) -> dict[str, Path]:
    """Two tiny runs of one architecture (seeds 0 and 1) and one of another (``other``)."""
    return {"r0": make_run(base / "r0", data, seed=0), "r1": make_run(base / "r1", data, seed=1),
            "other": make_run(base / "other", data, seed=2, widths=(8,), levels=1)}

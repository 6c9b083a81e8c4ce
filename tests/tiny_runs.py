"""Tiny artefacts shared by the tests: data, checkpoints and IMP run directories, each written
by the real writer of its format (:func:`tickets.imp.run_imp`, :func:`tickets.store.save_checkpoint`)."""

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


def make_run(out: Path, data, *, seed: int, cfg: TrainConfig = TINY_CFG, model: str = "mlp",
             widths=(16,), model_kwargs: dict | None = None, levels: int = 2,
             fraction: float | None = 0.5, rewind: int = 0, controls=()) -> Path:
    """An IMP run directory (``model_kwargs`` default: an MLP of ``widths``; ``fraction``
    None: the paper default)."""
    from tickets.imp import run_imp
    kwargs = {"widths": list(widths)} if model_kwargs is None else model_kwargs
    run_imp(model, data, cfg, levels=levels, fraction=fraction, rewind_iter=rewind, seed=seed,
            out_dir=out, control=list(controls), model_kwargs=kwargs)
    return out


#: The report's runs: an MLP 40-16-8-10 on the full MNIST-1D, 30 iterations a level.
REPORT_KWARGS = {"widths": [16, 8]}
BOTH_CONTROLS = ("random_reinit", "random_prune")


def make_report_run(out: Path, seed: int, *, optimizer="adam", rewind=0, levels=2,
                    controls=BOTH_CONTROLS, model_kwargs=REPORT_KWARGS) -> Path:
    from tickets.data import load_dataset
    from tickets.train import default_config
    cfg = default_config("mlp", "mnist1d").replace(iters=30, epochs=None)
    if optimizer == "sgd":
        cfg = cfg.replace(optimizer="sgd", lr=0.1, momentum=0.9)
    return make_run(out, load_dataset("mnist1d"), seed=seed, cfg=cfg, model_kwargs=model_kwargs,
                    levels=levels, rewind=rewind, controls=controls)


def make_report_runs(root: Path) -> list[Path]:
    """Two Adam seeds with both controls, SGD rewound to init and to iteration 5 (tiny MLP,
    30 iterations a level: seconds)."""
    import torch
    root = Path(root)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: one thread is fastest, and never oversubscribes
    try:
        return [make_report_run(root / "a0", 0), make_report_run(root / "a1", 1),
                make_report_run(root / "sgd0", 0, optimizer="sgd", controls=("random_reinit",)),
                make_report_run(root / "sgd5", 0, optimizer="sgd", rewind=5,
                                controls=("random_reinit",))]
    finally:
        torch.set_num_threads(threads)


def files_under(path: Path) -> set:
    return {p for p in Path(path).rglob("*") if p.is_file()}


def make_seed_runs(base: Path, data) -> dict[str, Path]:
    """Two tiny runs of one architecture (seeds 0 and 1) and one of another (``other``)."""
    return {"r0": make_run(base / "r0", data, seed=0), "r1": make_run(base / "r1", data, seed=1),
            "other": make_run(base / "other", data, seed=2, widths=(8,), levels=1)}

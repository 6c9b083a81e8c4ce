"""Training loop: deterministic, resumable at any iteration, mask-aware.

``train(model, data, cfg, seed=..., data_seed=...)`` trains a copy of ``model`` (the input is
never mutated) and returns a :class:`TrainResult` with the final params, the params at the
iterations asked for in ``checkpoints_at`` and the evaluation curve.

Data: ``data`` holds ``train``/``test`` splits (a :class:`~tickets.data.DataSplits`, a
``{"train": ..., "test": ...}`` mapping) or is one data object serving as both; each is data
in any form :mod:`gauge.batches` accepts, with ``loss_fn``/``error_fn``/``logits_fn`` as there
(default: cross-entropy and top-1 error; the causal language-model loss for next-token
``labels``).

Determinism: for map-style data (tensors, datasets) the order of epoch ``e`` is ``randperm(n)``
from a generator seeded with ``(data_seed, e)``, batched by ``cfg.batch_size``, so starting at
iteration ``k`` (``start_iter=k``) replays exactly the batches an uninterrupted run would have
seen from ``k`` on, and the learning-rate schedule is evaluated at the absolute iteration. A
stream (a ``DataLoader``, a list of batches) keeps its own batches and order: an epoch is one
pass over it, ``cfg.batch_size`` and ``data_seed`` do not apply, and a resumed run replays the
same batches only if the stream's order is fixed. Optimiser state starts fresh at
``start_iter`` as in OpenLTH's rewinding. ``seed`` seeds any randomness inside the model
(dropout) in a forked RNG.

Masks (Frankle & Carbin 2019): pruned weights are zeroed on entry and re-zeroed after every
optimiser step (one fused multiply per step), with no mask multiply in the forward pass. Every
optimiser here (SGD with momentum, Adam, AdamW, with L2 or decoupled weight decay) acts per
coordinate, so what happens to the pruned coordinates' optimiser state never reaches the
surviving weights: the survivors follow exactly the trajectory of a network without the pruned
weights, and the pruned ones are exactly zero at every forward pass and at the end.
Muon (``optimizer="muon"``, :mod:`tickets.optim`) is not per coordinate: its orthogonalised
update mixes the entries of a matrix, so the gradients of pruned weights are zeroed before each
step and the update of a masked matrix is that of its surviving entries' gradient.
(Zeroing the gradients instead would be equivalent but leaves exact zeros in Adam's second
moment, and ``sqrt(0)`` is several times slower than ``sqrt(x)`` on CPU: +25 % epoch time.)
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from gauge.batches import Data, as_data, batch_loss, forward, logits_of, pick_split
from gauge.objective import loss_totals
from tickets.errors import ConfigError, DataError
from tickets.prune import check_mask

__all__ = ["TrainConfig", "TrainResult", "train", "evaluate", "default_config", "batch_order",
           "OPTIMIZERS"]

#: Optimisers of :class:`TrainConfig` (``muon``: Muon + AdamW, see :mod:`tickets.optim`).
OPTIMIZERS = ("sgd", "adam", "adamw", "muon")


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one training run.

    Duration is ``epochs`` (may be fractional) or ``iters`` (not both; default 10 epochs).
    ``schedule``: ``"constant"``, ``"milestones"`` (multiply by ``gamma`` at each epoch in
    ``milestones``) or ``"cosine"`` (to zero at the end). ``warmup_iters``: linear warm-up.
    ``eval_every``: evaluation interval in iterations (0: once per epoch).
    """

    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    batch_size: int = 100
    epochs: float | None = None
    iters: int | None = None
    warmup_iters: int = 0
    schedule: str = "constant"
    milestones: tuple[float, ...] = ()
    gamma: float = 0.1
    eval_every: int = 0
    eval_batch_size: int = 1000

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got "
                              f"{self.optimizer!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.batch_size}")
        if self.epochs is None and self.iters is None:
            object.__setattr__(self, "epochs", 10.0)
        if self.epochs is not None and self.iters is not None:
            raise ConfigError("give either epochs or iters, not both")
        if self.epochs is not None and self.epochs <= 0:
            raise ConfigError(f"epochs must be > 0, got {self.epochs}")
        if self.iters is not None and self.iters <= 0:
            raise ConfigError(f"iters must be > 0, got {self.iters}")
        if self.schedule not in ("constant", "milestones", "cosine"):
            raise ConfigError(f"schedule must be constant, milestones or cosine, got "
                              f"{self.schedule!r}")
        if self.momentum < 0 or self.weight_decay < 0 or self.warmup_iters < 0:
            raise ConfigError("momentum, weight decay and warm-up must be >= 0")
        object.__setattr__(self, "milestones", tuple(float(m) for m in self.milestones))

    def iters_per_epoch(self, n_train: int) -> int:
        return max(1, math.ceil(n_train / self.batch_size))

    def total_iters(self, n_train: int) -> int:
        if self.iters is not None:
            return int(self.iters)
        return max(1, int(round(self.epochs * self.iters_per_epoch(n_train))))

    def lr_at(self, it: int, n_train: int) -> float:
        """Learning rate at absolute iteration ``it`` (0-based)."""
        lr = self.lr
        ipe = self.iters_per_epoch(n_train)
        if self.schedule == "milestones":
            lr *= self.gamma ** sum(it >= round(m * ipe) for m in self.milestones)
        elif self.schedule == "cosine":
            total = self.total_iters(n_train)
            lr *= 0.5 * (1 + math.cos(math.pi * min(it, total) / total))
        if self.warmup_iters and it < self.warmup_iters:
            lr *= (it + 1) / self.warmup_iters
        return lr

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown training option(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    def replace(self, **changes) -> "TrainConfig":
        return replace(self, **changes)


# Defaults follow the source papers of each architecture.
_DEFAULTS: dict[tuple[str, str], TrainConfig] = {
    # Frankle & Carbin (2019), LeNet-300-100: Adam 1.2e-3, batch 60. On MNIST-1D the paper
    # (Greydanus 2020) trains its MLP with Adam 1e-3, batch 100; 60 epochs as in our IMP study.
    ("mlp", "mnist1d"): TrainConfig(optimizer="adam", lr=1e-3, batch_size=100, epochs=60),
    ("lenet_300_100", "mnist1d"): TrainConfig(optimizer="adam", lr=1e-3, batch_size=100,
                                              epochs=60),
    # MNIST-1D's CNN (Greydanus 2020): Adam 1e-2, batch 100; fewer steps suffice here.
    ("cnn1d", "mnist1d"): TrainConfig(optimizer="adam", lr=3e-3, batch_size=100, epochs=40,
                                      schedule="cosine"),
    ("mlp", "mnist"): TrainConfig(optimizer="adam", lr=1.2e-3, batch_size=60, iters=50_000),
    ("lenet_300_100", "mnist"): TrainConfig(optimizer="adam", lr=1.2e-3, batch_size=60,
                                            iters=50_000),
    # Frankle & Carbin (2019) Conv-2/4/6 on CIFAR-10: Adam 2e-4 / 3e-4 / 3e-4, batch 60.
    ("conv2", "cifar10"): TrainConfig(optimizer="adam", lr=2e-4, batch_size=60, iters=20_000),
    ("conv4", "cifar10"): TrainConfig(optimizer="adam", lr=3e-4, batch_size=60, iters=25_000),
    ("conv6", "cifar10"): TrainConfig(optimizer="adam", lr=3e-4, batch_size=60, iters=30_000),
}
# OpenLTH cifar_vgg / cifar_resnet: SGD 0.1, momentum 0.9, wd 1e-4, batch 128, 160 epochs,
# x0.1 at epochs 80 and 120.
_SGD_CIFAR = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4,
                         batch_size=128, epochs=160, schedule="milestones",
                         milestones=(80, 120), gamma=0.1)
_SMALL = TrainConfig(optimizer="adam", lr=1e-3, batch_size=64, epochs=30)


def default_config(model_name: str, dataset_name: str) -> TrainConfig:
    """The default :class:`TrainConfig` for a zoo model on a dataset (see module source)."""
    if (model_name, dataset_name) in _DEFAULTS:
        return _DEFAULTS[(model_name, dataset_name)]
    if model_name in ("vgg11", "vgg16", "resnet20"):
        return _SGD_CIFAR if dataset_name == "cifar10" else _SGD_CIFAR.replace(epochs=30,
                                                                              milestones=(15, 22))
    if dataset_name in ("mnist", "fashion_mnist"):
        return TrainConfig(optimizer="adam", lr=1.2e-3, batch_size=60, epochs=20)
    if dataset_name == "mnist1d":
        return _DEFAULTS[("mlp", "mnist1d")]
    return _SMALL


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`train`: final params (CPU), requested checkpoints, curve, metrics."""

    params: dict[str, torch.Tensor]
    checkpoints: dict[int, dict[str, torch.Tensor]]
    curve: list[dict[str, float]]
    test_loss: float
    test_acc: float
    train_loss: float
    train_acc: float
    iters: int
    start_iter: int
    wall_time: float
    nonfinite: bool = False

    def metrics(self) -> dict[str, Any]:
        """JSON-friendly summary (no tensors)."""
        return {"test_loss": self.test_loss, "test_acc": self.test_acc,
                "train_loss": self.train_loss, "train_acc": self.train_acc,
                "iters": self.iters, "start_iter": self.start_iter,
                "wall_time": self.wall_time, "nonfinite": self.nonfinite, "curve": self.curve}

    to_dict = metrics


def batch_order(n: int, data_seed: int, epoch: int) -> torch.Tensor:
    """The sample order of ``epoch`` for ``data_seed``: a pure function of both."""
    gen = torch.Generator().manual_seed(int(data_seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=gen)


@torch.no_grad()
def evaluate(model: nn.Module, dataset, *, batch_size: int = 1000, device="cpu",
             params: Mapping[str, torch.Tensor] | None = None, loss_fn=None, error_fn=None,
             logits_fn=None) -> tuple[float, float]:
    """Mean loss and accuracy (1 - mean error) of ``model`` (eval mode) on ``dataset``, data
    in any form of :mod:`gauge.batches` (:func:`gauge.objective.mean_loss`).

    With ``params`` the forward pass uses them via ``torch.func.functional_call``.
    """
    data = as_data(dataset)
    was_training = model.training
    model.eval()
    try:
        total, wrong, n = loss_totals(model, params, data.batches(batch_size, device), loss_fn,
                                      error_fn=error_fn, logits_fn=logits_fn, name=data.name)
    finally:
        model.train(was_training)
    n = max(1, n)
    return total / n, (n - wrong) / n


def _make_optimizer(cfg: TrainConfig, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    # foreach kernels are faster for many small tensors on CPU and deterministic.
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay, foreach=True)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    if cfg.optimizer == "muon":
        from tickets.optim import MuonAdamW
        return MuonAdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)


def _checked_iters(start_iter: int, checkpoints_at: Iterable[int], total: int) -> list[int]:
    """The sorted checkpoint iterations; ConfigError if they or ``start_iter`` leave the run."""
    if not 0 <= start_iter <= total:
        raise ConfigError(f"start iteration {start_iter} is outside the run (0..{total})")
    wanted = sorted({int(k) for k in checkpoints_at})
    bad = [k for k in wanted if not start_iter <= k <= total]
    if bad:
        raise ConfigError(f"checkpoint iteration {bad[0]} is outside {start_iter}..{total}")
    return wanted


def _apply_mask(named: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor] | None,
                device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Zero the pruned entries of the model's parameters ``named`` in place and return the
    (parameter, float mask) pairs to re-apply after every step; full masks cost nothing."""
    if mask is None:
        return []
    masked = [(named[k], m.to(device=device, dtype=named[k].dtype))
              for k, m in check_mask(named, mask, error=ConfigError).items() if not bool(m.all())]
    with torch.no_grad():
        for p, mf in masked:
            p.mul_(mf)
    return masked


def _train_test(data, device) -> tuple[Data, Data]:
    """The training data (tensors moved to ``device`` once) and the evaluation data."""
    train_split, train_name = pick_split(data, "train")
    if train_split is None:
        raise ConfigError("data has no 'train' split to train on")
    test_split, test_name = pick_split(data, "test")
    train_data = as_data(train_split, train_name).to(device)
    test_data = as_data(test_split, test_name) if test_split is not None else train_data
    return train_data, test_data


def _epoch_length(train_data: Data, cfg: TrainConfig) -> int:
    """Examples per epoch as the schedule counts them: for a stream of ``m`` batches,
    ``m * cfg.batch_size``, so that ``cfg.iters_per_epoch`` is ``m``."""
    if train_data.map_style:
        return train_data.n
    stream = train_data.stream
    m = len(stream) if hasattr(stream, "__len__") else sum(1 for _ in stream)
    return m * cfg.batch_size


def train(model: nn.Module, data, cfg: TrainConfig, *, seed: int, data_seed: int,
          mask: Mapping[str, torch.Tensor] | None = None, start_iter: int = 0,
          checkpoints_at: Iterable[int] = (), callback: Callable[[dict], None] | None = None,
          device: str | torch.device = "cpu", progress: bool = False,
          desc: str = "train", loss_fn=None, error_fn=None, logits_fn=None) -> TrainResult:
    """Train a copy of ``model`` from iteration ``start_iter`` to ``cfg.total_iters``.

    ``data``: train/test splits or one data object (see the module docstring).
    ``checkpoints_at``: absolute iterations at which to keep a copy of the params (iteration
    ``k`` means "after k steps"; ``start_iter`` itself is allowed). ``callback`` receives each
    evaluation row. ``mask``: bool tensors keyed by param name; masked entries stay exactly 0.
    ``loss_fn(logits, targets)`` is minimised (default: cross-entropy), ``error_fn`` gives the
    reported accuracy ``1 - error``, ``logits_fn`` picks the logits from the model's outputs.
    Training stops early, with ``nonfinite=True``, if the loss becomes NaN/inf.
    """
    device = torch.device(device)
    train_data, test_data = _train_test(data, device)
    n_train = _epoch_length(train_data, cfg)
    total = cfg.total_iters(n_train)
    wanted = _checked_iters(start_iter, checkpoints_at, total)
    ipe = cfg.iters_per_epoch(n_train)
    eval_every = cfg.eval_every or ipe

    model = copy.deepcopy(model).to(device)
    model.train()
    named = dict(model.named_parameters())
    masked = _apply_mask(named, mask, device)
    mask_params = [p for p, _ in masked]
    mask_values = [mf for _, mf in masked]

    opt = _make_optimizer(cfg, list(named.values()))
    order_device = train_data.device or torch.device("cpu")  # where the examples are indexed

    def snapshot() -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    checkpoints: dict[int, dict[str, torch.Tensor]] = {}
    curve: list[dict[str, float]] = []
    nonfinite = False
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total - start_iter, desc=desc, leave=False, dynamic_ncols=True)

    def record(it: int) -> None:
        kw = {"batch_size": cfg.eval_batch_size, "device": device, "loss_fn": loss_fn,
              "error_fn": error_fn, "logits_fn": logits_fn}
        test_loss, test_acc = evaluate(model, test_data, **kw)
        train_loss, train_acc = evaluate(model, train_data, **kw)
        row = {"iter": it, "epoch": it / ipe, "train_loss": train_loss, "train_acc": train_acc,
               "test_loss": test_loss, "test_acc": test_acc}
        curve.append(row)
        if bar is not None:
            bar.set_postfix(test_acc=f"{test_acc:.3f}")
        if callback is not None:
            callback(row)

    it = start_iter
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(int(seed))
        if start_iter in wanted:
            checkpoints[start_iter] = snapshot()
        order, order_epoch = None, -1
        while it < total:
            epoch, offset = divmod(it, ipe)
            if epoch != order_epoch:
                order_epoch = epoch
                if train_data.map_style:
                    order = batch_order(n_train, data_seed, epoch).to(order_device)
                else:
                    order = itertools.islice(train_data.batches(device=device), offset, None)
            if train_data.map_style:
                idx = order[offset * cfg.batch_size:(offset + 1) * cfg.batch_size]
                batch = train_data.take(idx).to(device)
            else:
                batch = next(order, None)
                if batch is None:
                    raise DataError(f"{train_data.name} yielded fewer batches than its "
                                    f"{ipe} on an earlier pass")
            lr = cfg.lr_at(it, n_train)
            for group in opt.param_groups:
                group["lr"] = lr
            out = logits_of(forward(model, batch, name=train_data.name), logits_fn)
            loss = batch_loss(out, batch, loss_fn, name=train_data.name)
            if not torch.isfinite(loss):
                nonfinite = True
                break
            opt.zero_grad(set_to_none=False)
            loss.backward()
            if masked and cfg.optimizer == "muon":
                with torch.no_grad():
                    torch._foreach_mul_([p.grad for p in mask_params], mask_values)
            opt.step()
            if masked:
                with torch.no_grad():
                    torch._foreach_mul_(mask_params, mask_values)
            it += 1
            if bar is not None:
                bar.update(1)
            if it in wanted:
                checkpoints[it] = snapshot()
            if it % eval_every == 0 and it < total:
                record(it)
    if bar is not None:
        bar.close()
    if not nonfinite:
        record(it)
    last = curve[-1] if curve else {"test_loss": float("nan"), "test_acc": float("nan"),
                                    "train_loss": float("nan"), "train_acc": float("nan")}
    return TrainResult(params=snapshot(), checkpoints=checkpoints, curve=curve,
                       test_loss=last["test_loss"], test_acc=last["test_acc"],
                       train_loss=last["train_loss"], train_acc=last["train_acc"], iters=it,
                       start_iter=start_iter, wall_time=time.perf_counter() - t0,
                       nonfinite=nonfinite)

"""Instability analysis (Frankle, Dziugaite, Roy & Carbin 2020, "Linear Mode Connectivity and
the Lottery Ticket Hypothesis").

A network is *stable to SGD noise* at iteration ``k`` when two copies trained from its weights
``theta_k`` with different data orders end up linearly connected: the error barrier between
their final weights (``max_alpha E(alpha) - (E(0) + E(1)) / 2``, :func:`gauge.connect.linear_path`)
is ~0. Frankle et al. find that dense networks become stable early in training and that IMP
finds matching sparse subnetworks exactly from the iterations at which they are stable.

Protocol (as in the paper): train the parent network once from its init (seed ``seed``, data
order ``parent_data_seed``) and keep ``theta_k`` for every ``k`` in ``rewind_iters``; for each
``k`` train two children from ``theta_k`` (under ``mask`` for a sparse subnetwork: ``m * theta_k``)
from iteration ``k`` to the end of the schedule with data orders ``data_seeds[0]`` and
``data_seeds[1]``, then measure the barrier between them. Training follows
:func:`tickets.train.train` (absolute-iteration schedule and batch order, fresh optimiser state
at ``k`` as in OpenLTH). Unlike the paper, which runs IMP separately per rewind point, one fixed
``mask`` is applied at every ``k``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import torch

from tickets.data import DataSplits
from tickets.errors import ConfigError
from tickets.prune import check_mask, sparsity
from tickets.train import TrainConfig, train

__all__ = ["instability", "InstabilityResult"]


@dataclass(frozen=True)
class InstabilityResult:
    """One row per rewind iteration ``k``: barriers between the two children trained from
    ``theta_k`` (``error_barrier``, ``loss_barrier``, ``midpoint_error``, ``midpoint_loss``) and
    the children's test accuracies; ``paths[k]`` the full path (``PathResult.to_dict()``)."""

    model: str
    model_kwargs: dict
    dataset: str
    seed: int
    parent_data_seed: int
    data_seeds: tuple[int, int]
    rewind_iters: tuple[int, ...]
    density: float
    bn: str
    rows: tuple[dict, ...]
    paths: dict[int, dict] = field(default_factory=dict)
    train_config: dict = field(default_factory=dict)
    wall_time: float = 0.0

    def table(self) -> list[dict]:
        return [dict(r) for r in self.rows]

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "model_kwargs": self.model_kwargs, "dataset": self.dataset,
                "seed": self.seed, "parent_data_seed": self.parent_data_seed,
                "data_seeds": list(self.data_seeds), "rewind_iters": list(self.rewind_iters),
                "density": self.density, "bn": self.bn, "rows": [dict(r) for r in self.rows],
                "paths": {str(k): v for k, v in self.paths.items()},
                "train_config": self.train_config, "wall_time": self.wall_time}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "InstabilityResult":
        return cls(model=d["model"], model_kwargs=dict(d["model_kwargs"]), dataset=d["dataset"],
                   seed=int(d["seed"]), parent_data_seed=int(d["parent_data_seed"]),
                   data_seeds=tuple(d["data_seeds"]), rewind_iters=tuple(d["rewind_iters"]),
                   density=float(d["density"]), bn=d["bn"], rows=tuple(d["rows"]),
                   paths={int(k): v for k, v in d.get("paths", {}).items()},
                   train_config=dict(d.get("train_config", {})),
                   wall_time=float(d.get("wall_time", 0.0)))


def _check(rewind_iters: Iterable[int], data_seeds, total: int) -> tuple[list[int], tuple]:
    ks = []
    for k in rewind_iters:
        if isinstance(k, bool) or int(k) != k:
            raise ConfigError(f"rewind iterations must be integers, got {k!r}")
        ks.append(int(k))
    if not ks:
        raise ConfigError("give at least one rewind iteration")
    bad = [k for k in ks if not 0 <= k < total]
    if bad:
        raise ConfigError(f"rewind iteration {bad[0]} is outside the run (0..{total - 1}; "
                          f"training is {total} iterations)")
    seeds = tuple(int(s) for s in data_seeds)
    if len(seeds) != 2 or seeds[0] == seeds[1]:
        raise ConfigError(f"data_seeds must be two different seeds, got {tuple(data_seeds)}")
    return sorted(set(ks)), seeds


def _parent(model, data: DataSplits, cfg: TrainConfig, ks: list[int], *, seed: int,
            data_seed: int, device):
    """The dense parent run holding ``theta_k`` for every ``k`` in ``ks`` (None if all are 0).

    The parent only has to reach the last rewind point. Batch order and learning rate are
    functions of the absolute iteration, so a run cut at max(ks) follows the full run's
    trajectory exactly -- unless the schedule depends on the run length (cosine)."""
    if max(ks) == 0:
        return None
    parent_cfg = cfg if cfg.schedule == "cosine" else cfg.replace(iters=max(ks), epochs=None)
    return train(model, data, parent_cfg, seed=seed, data_seed=data_seed, checkpoints_at=ks,
                 device=device)


def instability(model_name: str | Callable[..., torch.nn.Module], data: DataSplits,
                cfg: TrainConfig, *,
                rewind_iters: Iterable[int] = (0,), seed: int, data_seeds=(1, 2),
                mask: Mapping[str, torch.Tensor] | None = None,
                model_kwargs: Mapping[str, Any] | None = None,
                parent_data_seed: int | None = None, bn: str = "reset", n_points: int = 11,
                device: str | torch.device = "cpu",
                callback: Callable[[dict], None] | None = None) -> InstabilityResult:
    """Error barrier between two copies trained from ``theta_k`` with different data orders,
    for every ``k`` in ``rewind_iters`` (see the module docstring).

    ``mask`` (bool tensors keyed by parameter name, e.g. an IMP level's mask) makes the children
    sparse subnetworks ``m * theta_k``; the parent is always the dense network. ``bn`` and
    ``n_points`` go to :func:`gauge.connect.linear_path` (test split). ``callback`` receives
    each row as it is done. Costs one full parent run and two child runs per ``k``.
    """
    import time

    from gauge.connect import linear_path

    t0 = time.perf_counter()
    device = torch.device(device)
    kwargs = dict(model_kwargs or {})
    total = cfg.total_iters(len(data.train))
    ks, seeds = _check(rewind_iters, data_seeds, total)
    parent_ds = int(seed if parent_data_seed is None else parent_data_seed)
    from tickets.sources import resolve_model, source_spec
    model_name = source_spec(model_name)

    def build():
        return resolve_model(model_name, kwargs=kwargs, num_classes=data.num_classes,
                             input_shape=data.input_shape, seed=seed)
    model = build()
    density = 1.0
    if mask is not None:
        checked = check_mask(dict(model.named_parameters()), mask, f"mask for {model_name}",
                             error=ConfigError)
        density = sparsity(checked).density

    parent = _parent(model, data, cfg, ks, seed=seed, data_seed=parent_ds, device=device)
    rows, paths = [], {}
    for k in ks:
        start = model.state_dict() if k == 0 else parent.checkpoints[k]
        child_model = build()
        child_model.load_state_dict(start)
        finals, accs = [], []
        for ds in seeds:
            res = train(child_model, data, cfg, seed=seed, data_seed=ds, mask=mask,
                        start_iter=k, device=device)
            if res.nonfinite:
                raise ConfigError(f"training from iteration {k} with data seed {ds} diverged "
                                  "(non-finite loss); try a smaller lr")
            finals.append(res.params)
            accs.append(res.test_acc)
        path = linear_path(child_model, finals[0], finals[1], data, n_points=n_points, bn=bn,
                           device=device, batch_size=cfg.eval_batch_size)
        row = {"rewind_iter": k, "error_barrier": path.error_barrier,
               "loss_barrier": path.loss_barrier, "midpoint_error": path.midpoint_error,
               "midpoint_loss": path.midpoint_loss, "test_acc_a": accs[0], "test_acc_b": accs[1]}
        rows.append(row)
        paths[k] = path.to_dict()
        if callback is not None:
            callback(dict(row))
    return InstabilityResult(model=model_name, model_kwargs=kwargs, dataset=data.name, seed=seed,
                             parent_data_seed=parent_ds, data_seeds=seeds, rewind_iters=tuple(ks),
                             density=density, bn=bn, rows=tuple(rows), paths=paths,
                             train_config=cfg.to_dict(), wall_time=time.perf_counter() - t0)

"""Merging N networks: the average of their weights in one basis.

``merged = (1/N) sum_i P_i theta_i`` with the ``P_i`` of a synchronised alignment
(:func:`gauge.many.align_many`; MergeMany, Ainsworth et al. 2023). Without alignment the average
of independently trained networks is usually near chance; with it, it may approach the
endpoints. As on a linear path (:mod:`gauge.connect`), averaged normalisation statistics are
not the statistics of the averaged network, and averaging shrinks the activations' variance
("variance collapse", Jordan et al. 2022). ``bn`` says what to do about it, with the same
meanings as in :func:`gauge.connect.linear_path`:

* ``"none"``: the averaged running statistics as they are;
* ``"reset"``: recompute every BatchNorm's statistics on training batches (no-op without BN);
* ``"repair"``: REPAIR (Jordan et al. 2022) for N endpoints: at each repair point rescale each
  channel of the merged network so that its mean and std equal the *mean over the endpoints*
  of their means and stds (for N = 2 this is REPAIR at ``alpha = 1/2``).

For tickets, :func:`evaluate_merge` takes a ``mask`` (e.g. a consensus mask ``kept by >= k of
N``, :func:`gauge.consensus.consensus`) applied to the merged weights before the statistics.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from gauge.connect import _check_path_options, _Path, _path_splits
from gauge.errors import ConnectError, MismatchError
from gauge.many import check_many

__all__ = ["MergeResult", "average", "evaluate_merge"]


def average(params_list: Sequence[Mapping[str, torch.Tensor]],
            weights: Sequence[float] | None = None) -> dict[str, torch.Tensor]:
    """``sum_i w_i theta_i`` (``w_i = 1/N`` by default) of every floating tensor, in float64
    and cast back; integer tensors (``num_batches_tracked``) come from the first network."""
    check_many(params_list)
    n = len(params_list)
    w = [1.0 / n] * n if weights is None else [float(x) for x in weights]
    if len(w) != n:
        raise MismatchError(f"{len(w)} weights for {n} networks")
    out = {}
    for k, v in params_list[0].items():
        if v.is_floating_point():
            acc = sum(wi * p[k].to(v.device, torch.float64) for wi, p in zip(w, params_list))
            out[k] = acc.to(v.dtype)
        else:
            out[k] = v
    return out


@dataclass(frozen=True)
class MergeResult:
    """Loss/error (on ``split``) of each endpoint and of the merged network; ``density`` of the
    mask applied to the merged network (``None`` without one)."""

    n: int
    bn: str
    split: str
    endpoint_loss: tuple[float, ...]
    endpoint_error: tuple[float, ...]
    merged_loss: float
    merged_error: float
    density: float | None = None
    time: float = 0.0

    @property
    def endpoint_mean_loss(self) -> float:
        return sum(self.endpoint_loss) / len(self.endpoint_loss)

    @property
    def endpoint_mean_error(self) -> float:
        return sum(self.endpoint_error) / len(self.endpoint_error)

    @property
    def error_gap(self) -> float:
        """Merged error minus the endpoints' mean error (a barrier at the barycentre)."""
        return self.merged_error - self.endpoint_mean_error

    @property
    def loss_gap(self) -> float:
        return self.merged_loss - self.endpoint_mean_loss

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["endpoint_loss"], d["endpoint_error"] = list(self.endpoint_loss), \
            list(self.endpoint_error)
        d.update(endpoint_mean_loss=self.endpoint_mean_loss,
                 endpoint_mean_error=self.endpoint_mean_error, error_gap=self.error_gap,
                 loss_gap=self.loss_gap)
        return d


def _fold(params: dict, repair) -> bool:
    """Fold REPAIR's per-channel ``y -> scale * y + shift`` into the weight (rows) and bias of
    each repair point (a BatchNorm's affine params or a Linear/Conv layer), in place."""
    for name, (scale, shift) in repair.affine.items():
        prefix = f"{name}." if name else ""
        w, b = params.get(prefix + "weight"), params.get(prefix + "bias")
        if w is None or b is None:
            return False
        params[prefix + "weight"] = w * scale.view(-1, *[1] * (w.dim() - 1)).to(w.dtype)
        params[prefix + "bias"] = b * scale.to(b.dtype) + shift.to(b.dtype)
    return True


@torch.no_grad()
def evaluate_merge(model: nn.Module, params_list: Sequence[Mapping[str, torch.Tensor]], data, *,
                   mask: Mapping[str, torch.Tensor] | None = None, bn: str = "reset",
                   split: str = "test", batch_size: int = 1000,
                   stats_samples: int | None = None, device: str | torch.device = "cpu"
                   ) -> tuple[MergeResult, dict[str, torch.Tensor]]:
    """Average ``params_list`` (already in one basis), optionally mask it, fix its statistics
    as ``bn`` says and measure it and every endpoint (each with its own statistics) on
    ``data.<split>``. Returns ``(result, merged_params)``: the merged params carry the reset
    BatchNorm statistics for ``bn="reset"``/``"repair"`` and, for ``"repair"``, the correction
    folded into the repair points' weights and biases, so they compute the measured network.

    Raises :class:`ConnectError` for a bad mode or split or missing training data and
    :class:`MismatchError` for mixed architectures or a mask of other tensors.
    """
    t0 = time.perf_counter()
    _check_path_options(bn, split, batch_size)
    check_many(params_list)
    device = torch.device(device)
    merged = {k: v.to(device) for k, v in average(params_list).items()}
    density = None
    if mask is not None:
        for k, m in mask.items():
            if k not in merged or tuple(m.shape) != tuple(merged[k].shape):
                raise MismatchError(f"mask tensor {k!r} does not fit the networks' weights")
            merged[k] = merged[k] * m.to(device, merged[k].dtype)
        density = sum(int((m != 0).sum()) for m in mask.values()) / \
            max(1, sum(m.numel() for m in mask.values()))
    path = _Path(model, bn, batch_size, stats_samples, device, None, None, None)
    path.check_fits(merged)
    eval_data, path.train, split = _path_splits(data, split, bn, path.needs_stats, False)
    for m in path.bns.values():
        m.momentum = None  # cumulative average over the statistics pass
    endpoints = [{k: v.to(device) for k, v in p.items()} for p in params_list]
    try:
        ends = [path.evaluate(p, eval_data) for p in endpoints]
        if path.repair is not None:
            path.collect_endpoints(*endpoints)
        path.prepare(merged, [1 / len(endpoints)] * len(endpoints))
        loss, error = path.evaluate(merged, eval_data)
        if path.repair is not None and not _fold(merged, path.repair):
            raise ConnectError("REPAIR's correction cannot be folded into the weights (a "
                               "repair point has no affine parameters or bias)")
    finally:
        path.close()
    result = MergeResult(n=len(params_list), bn=bn, split=split,
                         endpoint_loss=tuple(l for l, _ in ends),
                         endpoint_error=tuple(e for _, e in ends), merged_loss=loss,
                         merged_error=error, density=density, time=time.perf_counter() - t0)
    return result, {k: v.cpu() for k, v in merged.items()}

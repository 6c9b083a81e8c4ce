"""Linear mode connectivity: loss and error along the straight path between two networks.

For params ``theta_A``, ``theta_B`` and ``alpha`` in [0, 1] the path is
``theta(alpha) = (1 - alpha) theta_A + alpha theta_B``. Along it we measure the loss ``L(alpha)``
and the error ``E(alpha)`` (1 - accuracy) and summarise them by barriers, each named after the
paper that defined it so numbers compare across papers:

* ``loss_barrier = max_alpha L(alpha) - [(1 - alpha) L(0) + alpha L(1)]``
  (Entezari, Sedghi, Saukh & Neyshabur 2022);
* ``error_barrier = max_alpha E(alpha) - (E(0) + E(1)) / 2`` -- the "instability" of Frankle,
  Dziugaite, Roy & Carbin (2020);
* ``midpoint_loss`` / ``midpoint_error`` = value at ``alpha = 0.5`` minus the endpoint mean
  (Jordan, Sedghi, Saukh, Entezari & Neyshabur 2022, "REPAIR").

Two networks are *linearly mode connected* when the barrier is ~0. Averaging the weights of two
networks also averages their normalisation statistics, which are not the statistics of the
averaged network: the ``bn`` option says what to do about it.

* ``bn="none"``: use the interpolated running statistics as they are.
* ``bn="reset"``: recompute every BatchNorm's running mean/variance at each alpha with one pass
  over training batches (cumulative average, ``momentum=None``), as Jordan et al. (2022) and
  Ainsworth, Hayase & Srinivasa (2023) do. Endpoints are reset too, so the whole path is
  measured the same way.
* ``bn="repair"``: REPAIR (Jordan et al. 2022): at each *repair point* (every BatchNorm
  output in a BN network; otherwise every hidden Linear/Conv output) rescale each channel of the
  interpolated network so that its pre-activation mean and std equal the interpolation
  ``(1 - alpha) mu_A + alpha mu_B`` and ``(1 - alpha) sigma_A + alpha sigma_B`` of the
  endpoints' statistics. In a BN network it includes the reset. The endpoints' statistics cost
  one pass each, once; each alpha then costs one statistics pass (channels normalised with
  batch statistics, running statistics accumulated, as a BatchNorm in training mode) and one
  evaluation pass with the fixed per-channel affine correction.

Cost: one module (a private copy of ``model``, made once) serves every alpha through
:func:`torch.func.functional_call`; each alpha costs one evaluation pass, plus one statistics
pass over the training batches with ``bn="reset"``/``"repair"`` in a network that needs it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from gauge.batches import Data, as_data, forward, pick_split
from gauge.errors import ConnectError, MismatchError, check_same_keys
from gauge.objective import mean_loss
from gauge.results import Result

__all__ = ["interpolate", "linear_path", "evaluate_path", "PathResult", "barriers", "BN_MODES"]

#: What ``linear_path`` does with normalisation statistics along the path.
BN_MODES = ("none", "reset", "repair")

_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)
_REPAIR_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


# --------------------------------------------------------------------------------------------
# interpolation


def interpolate(params_a: Mapping[str, torch.Tensor], params_b: Mapping[str, torch.Tensor],
                alpha: float) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * params_a + alpha * params_b`` for every floating-point tensor.

    Computed with :func:`torch.lerp`, which is exact at the endpoints (``alpha = 0`` gives A,
    ``alpha = 1`` gives B, bit for bit). Integer and bool tensors (BatchNorm's
    ``num_batches_tracked``, masks) are not interpolated: they are taken from the nearer
    endpoint (A for ``alpha <= 0.5``). ``alpha`` may lie outside [0, 1] (extrapolation).
    Inputs are never modified. Raises :class:`MismatchError` if the keys or shapes differ.
    """
    alpha = float(alpha)
    if not math.isfinite(alpha):
        raise ConnectError(f"alpha must be a finite number, got {alpha}")
    check_same_keys(params_a, params_b)
    out = {}
    for k, a in params_a.items():
        b = params_b[k]
        if a.is_floating_point() or a.is_complex():
            out[k] = torch.lerp(a, b.to(device=a.device, dtype=a.dtype), alpha)
        else:
            out[k] = (a if alpha <= 0.5 else b).clone()
    return out


# --------------------------------------------------------------------------------------------
# barriers


def _max_excess(alphas: Sequence[float], values: Sequence[float], baseline) -> float:
    return max(float(v) - baseline(a) for a, v in zip(alphas, values))


def barriers(alphas: Sequence[float], loss: Sequence[float], error: Sequence[float]
             ) -> dict[str, float | None]:
    """The barriers of a path (see the module docstring): ``loss_barrier``, ``error_barrier``,
    ``midpoint_loss``, ``midpoint_error`` (``None`` when 0.5 is not on the grid).

    ``alphas`` must contain 0 and 1 (the endpoints define the baseline).
    """
    alphas = [float(a) for a in alphas]
    if 0.0 not in alphas or 1.0 not in alphas:
        raise ConnectError("the alpha grid must contain both endpoints 0 and 1")
    i0, i1 = alphas.index(0.0), alphas.index(1.0)
    l0, l1 = float(loss[i0]), float(loss[i1])
    e_mean = (float(error[i0]) + float(error[i1])) / 2
    out: dict[str, float | None] = {
        "loss_barrier": _max_excess(alphas, loss, lambda a: (1 - a) * l0 + a * l1),
        "error_barrier": _max_excess(alphas, error, lambda a: e_mean),
        "midpoint_loss": None, "midpoint_error": None}
    if 0.5 in alphas:
        im = alphas.index(0.5)
        out["midpoint_loss"] = float(loss[im]) - (l0 + l1) / 2
        out["midpoint_error"] = float(error[im]) - e_mean
    return out


@dataclass(frozen=True)
class PathResult(Result):
    """Loss and error along ``theta(alpha)`` on ``split`` (and on the training set when asked),
    with the barriers of :func:`barriers`.

    ``train_*`` fields are ``None`` unless ``linear_path(..., train_metrics=True)``.
    """

    alphas: tuple[float, ...]
    loss: tuple[float, ...]
    error: tuple[float, ...]
    loss_barrier: float
    error_barrier: float
    midpoint_loss: float | None
    midpoint_error: float | None
    split: str
    bn: str
    train_loss: tuple[float, ...] | None = None
    train_error: tuple[float, ...] | None = None
    train_loss_barrier: float | None = None
    train_error_barrier: float | None = None
    train_midpoint_loss: float | None = None
    train_midpoint_error: float | None = None
    n_eval: int = 0
    n_stats: int = 0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PathResult":
        kw = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        for k, v in kw.items():
            if isinstance(v, list):
                kw[k] = tuple(v)
        return cls(**kw)


# --------------------------------------------------------------------------------------------
# REPAIR hooks


class _Repair:
    """Forward hooks on the repair points: ``collect`` endpoint stats, ``stats`` (normalise by
    batch stats to the target, accumulate running stats), ``apply`` (fixed affine)."""

    def __init__(self, modules: dict[str, nn.Module], eps: float = 1e-5):
        self.modules = modules
        self.eps = eps
        self.mode = "off"
        self.sums: dict[str, list[torch.Tensor | int]] = {}
        self.target: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.affine: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in modules.items()]

    @staticmethod
    def _moments(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        dims = [d for d in range(y.dim()) if d != 1]
        y64 = y.double()
        n = y.numel() // y.shape[1]
        return y64.sum(dims), (y64 * y64).sum(dims), n

    @staticmethod
    def _view(v: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return v.view(1, -1, *([1] * (y.dim() - 2))).to(y.dtype)

    def _accumulate(self, name: str, y: torch.Tensor) -> None:
        s1, s2, n = self._moments(y)
        acc = self.sums.get(name)
        if acc is None:
            self.sums[name] = [s1, s2, n]
        else:
            acc[0] += s1
            acc[1] += s2
            acc[2] += n

    def _hook(self, name: str):
        def hook(module, inputs, y):
            if self.mode == "collect":
                self._accumulate(name, y)
            elif self.mode == "stats":
                self._accumulate(name, y)
                dims = [d for d in range(y.dim()) if d != 1]
                mu = y.mean(dims, keepdim=True)
                var = y.var(dims, unbiased=False, keepdim=True)
                t_mu, t_sd = self.target[name]
                return (y - mu) / torch.sqrt(var + self.eps) * self._view(t_sd, y) \
                    + self._view(t_mu, y)
            elif self.mode == "apply":
                scale, shift = self.affine[name]
                return y * self._view(scale, y) + self._view(shift, y)
            return None
        return hook

    def take_stats(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per-channel (mean, std) of everything accumulated since the last call."""
        out = {}
        for name, (s1, s2, n) in self.sums.items():
            mu = s1 / n
            var = (s2 / n - mu * mu).clamp_min(0)
            out[name] = (mu, var.sqrt())
        self.sums = {}
        return out

    def fit_affine(self) -> None:
        """From the statistics accumulated in ``stats`` mode, the fixed per-channel affine map
        taking them to the target; switches to ``apply``."""
        self.affine = {}
        for n, (mu, sd) in self.take_stats().items():
            t_mu, t_sd = self.target[n]
            scale = t_sd / torch.sqrt(sd * sd + self.eps)
            self.affine[n] = (scale, t_mu - mu * scale)
        self.mode = "apply"

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


# --------------------------------------------------------------------------------------------
# the path


def _alpha_grid(n_points: int | None, alphas: Sequence[float] | None) -> list[float]:
    if alphas is not None:
        grid = sorted({float(a) for a in alphas})
        if len(grid) < 2:
            raise ConnectError(f"the alpha grid needs at least 2 distinct points, got {len(grid)}")
        if any(not math.isfinite(a) for a in grid):
            raise ConnectError("alphas must be finite numbers")
        if 0.0 not in grid or 1.0 not in grid:
            raise ConnectError("the alpha grid must contain both endpoints 0 and 1")
        return grid
    if n_points is None or int(n_points) != n_points or n_points < 2:
        raise ConnectError(f"n_points must be an integer >= 2 (the two endpoints at least), "
                           f"got {n_points}")
    n = int(n_points)
    # exact endpoints and, for an odd grid, an exact midpoint; 0.5 is added to an even grid so
    # the midpoint barrier (Jordan et al. 2022) is always measured.
    grid = {i / (n - 1) for i in range(n)} | {0.5}
    return sorted(grid)


def _bn_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, _BN_TYPES)}


def _repair_points(model: nn.Module) -> dict[str, nn.Module]:
    bns = _bn_modules(model)
    if bns:
        return bns
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, _REPAIR_TYPES)]
    return dict(layers[:-1])  # the last layer writes the logits: REPAIR leaves it alone


def _fresh_bn_buffers(bns: dict[str, nn.Module], params: dict[str, torch.Tensor]) -> None:
    """Replace the BN running statistics in ``params`` by new tensors that a training-mode
    forward with ``momentum=None`` fills with the cumulative average."""
    for name, m in bns.items():
        if not m.track_running_stats:
            continue
        prefix = f"{name}." if name else ""
        for key, init in (("running_mean", torch.zeros_like), ("running_var", torch.ones_like),
                          ("num_batches_tracked", torch.zeros_like)):
            if prefix + key in params:
                params[prefix + key] = init(params[prefix + key])


def _path_splits(data, split: str, bn: str, needs_stats: bool, train_metrics: bool
                 ) -> tuple[Data, Data | None, str]:
    """``(eval data, training data, split name)``: ``data``'s ``split`` and ``train`` splits
    (:func:`~gauge.batches.pick_split`; data without splits serves as both, named ``"data"``).
    The training data is ``None`` when absent and not needed, a :class:`ConnectError` when
    needed."""
    eval_split, eval_name = pick_split(data, split)
    if eval_split is None:
        raise ConnectError(f"data has no {split!r} split to evaluate the path on")
    train_split, train_name = pick_split(data, "train")
    if (needs_stats or train_metrics) and train_split is None:
        why = ("bn='reset' recomputes BatchNorm statistics" if bn == "reset" else
               "bn='repair' measures channel statistics")
        if not needs_stats:
            why = "train_metrics=True evaluates on it"
        raise ConnectError(f"no training data: {why} on training batches; pass data with a "
                           f"'train' split (or use bn='none')")
    train = as_data(train_split, train_name) if train_split is not None else None
    return as_data(eval_split, eval_name), train, split if eval_name is not None else "data"


class _Path:
    """One private copy of the model walking the path: statistics passes over the training
    inputs (BatchNorm in training mode, REPAIR hooks), evaluation passes in eval mode."""

    def __init__(self, model: nn.Module, bn: str, batch_size: int, stats_samples: int | None,
                 device: torch.device, loss_fn, error_fn, logits_fn):
        self.work = copy.deepcopy(model).to(device)
        self.bns = _bn_modules(self.work)
        self.needs_stats = (bn == "reset" and bool(self.bns)) or bn == "repair"
        self.train: Data | None = None  # set once the data is checked
        self.batch_size = batch_size
        self.loss_fn, self.error_fn, self.logits_fn = loss_fn, error_fn, logits_fn
        self.stats_samples, self.device = stats_samples, device
        self.repair = _Repair(_repair_points(self.work)) if bn == "repair" else None
        self.ends: list[dict] = []
        self.n_eval = self.n_stats = 0

    def check_fits(self, params: Mapping[str, torch.Tensor]) -> None:
        expected = set(self.work.state_dict())
        if set(params) != expected:
            missing = sorted(expected - set(params))
            extra = sorted(set(params) - expected)
            what = f"missing {missing[0]!r}" if missing else f"unexpected {extra[0]!r}"
            raise MismatchError(f"params do not fit the model: {what}")

    def _set_mode(self, stats: bool) -> None:
        self.work.eval()
        if stats:
            for m in self.bns.values():
                m.train()

    def _train_pass(self, params, stats: bool) -> None:
        self._set_mode(stats)
        for batch in self.train.batches(self.batch_size, self.device, self.stats_samples):
            forward(self.work, batch, params, name=self.train.name)
        self._set_mode(False)
        self.n_stats += 1

    def collect_endpoints(self, *endpoints) -> None:
        """Each endpoint's channel statistics at the repair points, with its own BN stats."""
        for p in endpoints:
            self.repair.mode = "collect"
            self._train_pass(p, stats=False)
            self.ends.append(self.repair.take_stats())

    def prepare(self, params: dict[str, torch.Tensor], weights: Sequence[float]) -> None:
        """Recompute ``params``' BN statistics and, for REPAIR, the correction towards the
        endpoints' channel statistics mixed with ``weights`` (``(1 - alpha, alpha)`` on a path,
        ``1/N`` each for a merge of N networks)."""
        if not self.needs_stats:
            return
        _fresh_bn_buffers(self.bns, params)
        rep = self.repair
        if rep is not None:
            rep.target = {n: tuple(sum(w * end[n][i] for w, end in zip(weights, self.ends))
                                   for i in (0, 1))
                          for n in rep.modules}
            rep.mode = "stats"
        self._train_pass(params, stats=True)
        if rep is not None:
            rep.fit_affine()

    def evaluate(self, params, data: Data) -> tuple[float, float]:
        """Mean loss and error of ``params`` on ``data``."""
        self._set_mode(False)
        self.n_eval += 1
        return mean_loss(self.work, params, data.batches(self.batch_size, self.device),
                         self.loss_fn, error=True, error_fn=self.error_fn,
                         logits_fn=self.logits_fn, name=data.name)

    def close(self) -> None:
        if self.repair is not None:
            self.repair.remove()


def _check_path_options(bn: str, split: str, batch_size: int) -> None:
    if bn not in BN_MODES:
        raise ConnectError(f"bn must be one of {', '.join(BN_MODES)}, got {bn!r}")
    if split not in ("train", "test"):
        raise ConnectError(f"split must be 'train' or 'test', got {split!r}")
    if int(batch_size) < 1:
        raise ConnectError(f"batch_size must be >= 1, got {batch_size}")


def linear_path(model: nn.Module, params_a: Mapping[str, torch.Tensor],
                params_b: Mapping[str, torch.Tensor], data, *, n_points: int = 25,
                alphas: Sequence[float] | None = None, split: str = "test", bn: str = "reset",
                batch_size: int = 1000, train_metrics: bool = False,
                stats_samples: int | None = None, device: str | torch.device = "cpu",
                loss_fn=None, error_fn=None, logits_fn=None) -> PathResult:
    """Loss, error and barriers along the straight line ``theta(alpha) = (1 - alpha) theta_A +
    alpha theta_B`` (Frankle et al. 2020): :func:`evaluate_path` with ``point=interpolate``,
    whose docstring gives the arguments."""
    return evaluate_path(model, params_a, params_b, data, point=interpolate, n_points=n_points,
                         alphas=alphas, split=split, bn=bn, batch_size=batch_size,
                         train_metrics=train_metrics, stats_samples=stats_samples,
                         device=device, loss_fn=loss_fn, error_fn=error_fn, logits_fn=logits_fn)


@torch.no_grad()
def evaluate_path(model: nn.Module, params_a: Mapping[str, torch.Tensor],
                  params_b: Mapping[str, torch.Tensor], data, *,
                  point: Callable[[dict, dict, float], dict] = interpolate, n_points: int = 25,
                  alphas: Sequence[float] | None = None, split: str = "test", bn: str = "reset",
                  batch_size: int = 1000, train_metrics: bool = False,
                  stats_samples: int | None = None, device: str | torch.device = "cpu",
                  loss_fn=None, error_fn=None, logits_fn=None) -> PathResult:
    """Loss and error of ``theta(alpha) = point(params_a, params_b, alpha)`` on ``data.<split>``
    for ``alpha`` on a grid; ``point`` must give A at 0 and B at 1 (the barriers are measured
    against the endpoints), e.g. :func:`interpolate` or a trained curve (:mod:`gauge.curve`).

    ``model`` only provides the forward pass (it is copied once, never modified). ``data`` has
    ``train``/``test`` attributes or keys, each data in any form of :mod:`gauge.batches`, or is
    one such data object serving as both (``PathResult.split == "data"``); training batches are
    needed for ``bn="reset"``/``"repair"`` when the model has BatchNorm (and for REPAIR in any
    model). The grid is ``n_points`` evenly spaced values in [0, 1] plus 0.5, or the given
    ``alphas`` (must contain 0 and 1). ``stats_samples`` caps the training samples of each
    statistics pass (default: the whole training set). ``train_metrics`` also measures
    loss/error on the training set (one more evaluation pass per alpha). Loss is
    ``loss_fn(logits, targets)`` (default: the mean cross-entropy, or the causal language-model
    loss for next-token ``labels``), error is ``error_fn(logits, targets)`` (default: 1 - top-1
    accuracy), logits are picked by ``logits_fn`` (see :func:`gauge.batches.logits_of`).

    Raises :class:`ConnectError` for a bad grid, split, mode or missing training data,
    :class:`MismatchError` when A and B are not the same architecture and
    :class:`~gauge.errors.DataError` when the data is in no accepted form or does not fit the
    model.
    """
    _check_path_options(bn, split, batch_size)
    grid = _alpha_grid(n_points, alphas)
    check_same_keys(params_a, params_b)
    device = torch.device(device)
    path = _Path(model, bn, batch_size, stats_samples, device, loss_fn, error_fn, logits_fn)
    path.check_fits(params_a)
    eval_data, path.train, split = _path_splits(data, split, bn, path.needs_stats,
                                                train_metrics)
    pa = {k: v.to(device) for k, v in params_a.items()}
    pb = {k: v.to(device) for k, v in params_b.items()}
    for m in path.bns.values():
        m.momentum = None  # cumulative average over the statistics pass
    loss, error, tr_loss, tr_error = [], [], [], []
    try:
        if path.repair is not None:
            path.collect_endpoints(pa, pb)
        for alpha in grid:
            params = point(pa, pb, alpha)
            path.prepare(params, (1 - alpha, alpha))
            l, e = path.evaluate(params, eval_data)
            loss.append(l)
            error.append(e)
            if train_metrics:
                l, e = path.evaluate(params, path.train)
                tr_loss.append(l)
                tr_error.append(e)
    finally:
        path.close()
    extra: dict[str, Any] = {}
    if train_metrics:
        tb = barriers(grid, tr_loss, tr_error)
        extra = {"train_loss": tuple(tr_loss), "train_error": tuple(tr_error),
                 **{f"train_{k}": v for k, v in tb.items()}}
    return PathResult(alphas=tuple(grid), loss=tuple(loss), error=tuple(error), split=split,
                      bn=bn, n_eval=path.n_eval, n_stats=path.n_stats,
                      **barriers(grid, loss, error), **extra)

"""Curved paths between two networks (nonlinear mode connectivity, Garipov et al. 2018).

Two minima that a straight line separates by a barrier are often joined by a simple curve of
low loss (Garipov, Izmailov, Podoprikhin, Vetrov & Wilson 2018, "Loss surfaces, mode
connectivity, and fast ensembling of DNNs"; Draxler et al. 2018). With the endpoints
``theta_0 = A``, ``theta_{m} = B`` fixed and bends ``theta_1..theta_{m-1}`` (``m = bends + 1``)
trained, the curve is

* ``kind="bezier"``: ``phi(t) = sum_j C(m, j) t^j (1 - t)^(m - j) theta_j`` (one bend: the
  quadratic Bezier curve ``(1 - t)^2 A + 2 t (1 - t) theta_1 + t^2 B`` of Garipov et al.);
* ``kind="polychain"``: the polygonal chain through ``theta_0..theta_m`` at ``t = j / m``.

The bends start on the straight line (``theta_j = lerp(A, B, j / m)``) and minimise the loss
averaged over the curve, ``E_{t ~ U(0, 1)} L(phi(t))``, by stochastic gradient steps that draw
one ``t`` and one training batch each (Garipov et al. 2018). BatchNorm layers use batch
statistics while the bends train; the evaluation recomputes them per ``t`` as ``bn`` says.

The curve is then measured exactly as a straight path: :func:`gauge.connect.evaluate_path`
with the same alpha grid, BatchNorm handling and barrier definitions as
:func:`~gauge.connect.linear_path`, so linear and curved barriers compare directly.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from gauge.connect import PathResult, evaluate_path, interpolate
from gauge.errors import ConnectError, check_same_keys

__all__ = ["CurveResult", "curve_path", "curve_point", "CURVE_KINDS"]

#: Curve families of :func:`curve_path`.
CURVE_KINDS = ("bezier", "polychain")


def curve_point(kind: str, nodes: Sequence[Mapping[str, torch.Tensor]], t: float
                ) -> dict[str, torch.Tensor]:
    """``phi(t)`` of the curve through ``nodes = [A, bend_1, ..., B]`` (see the module
    docstring); differentiable in the bends. Integer tensors come from the nearer endpoint.
    ``phi(0)`` is A and ``phi(1)`` is B exactly."""
    t = float(t)
    m = len(nodes) - 1
    if kind == "bezier":
        coef = [math.comb(m, j) * t ** j * (1 - t) ** (m - j) for j in range(m + 1)]
        pairs = [(c, nd) for c, nd in zip(coef, nodes) if c != 0.0]
    elif kind == "polychain":
        seg = min(int(t * m), m - 1)
        local = t * m - seg
        pairs = [(1.0 - local, nodes[seg]), (local, nodes[seg + 1])]
        pairs = [(c, nd) for c, nd in pairs if c != 0.0]
    else:
        raise ConnectError(f"unknown curve kind {kind!r}; use one of {', '.join(CURVE_KINDS)}")
    out = {}
    for k, a in nodes[0].items():
        if not a.is_floating_point():
            out[k] = (nodes[0] if t <= 0.5 else nodes[-1])[k]
            continue
        if len(pairs) == 1 and pairs[0][0] == 1.0:
            out[k] = pairs[0][1][k]
            continue
        v = None
        for c, nd in pairs:
            term = c * nd[k].to(a.device)
            v = term if v is None else v + term
        out[k] = v
    return out


@dataclass(frozen=True)
class CurveResult(PathResult):
    """A :class:`~gauge.connect.PathResult` of a trained curve, plus how it was trained:
    ``train_objective`` is the mean training loss over the curve per tenth of the steps;
    ``bend_params`` the trained bends (not in ``to_dict``)."""

    kind: str = "bezier"
    bends: int = 1
    steps: int = 0
    lr: float = 0.0
    train_objective: tuple[float, ...] = ()
    time: float = 0.0
    bend_params: tuple = field(default=(), repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d.pop("bend_params", None)
        return d


def _train_split(data):
    split = data.get("train") if isinstance(data, Mapping) else getattr(data, "train", None)
    if split is None:
        raise ConnectError("no training data: the bends of a curve are trained on the 'train' "
                           "split; pass data with one")
    x, y = split.tensors[:2] if hasattr(split, "tensors") else split
    if len(x) == 0 or len(x) != len(y):
        raise ConnectError("the training split is empty or its inputs and labels differ in "
                           "length: nothing to train the bends on")
    return x, y


def curve_path(model: nn.Module, params_a: Mapping[str, torch.Tensor],
               params_b: Mapping[str, torch.Tensor], data, *, kind: str = "bezier",
               bends: int = 1, steps: int = 500, lr: float = 1e-3, batch_size: int = 128,
               weight_decay: float = 0.0, seed: int = 0, n_points: int = 25,
               alphas: Sequence[float] | None = None, split: str = "test", bn: str = "reset",
               eval_batch_size: int = 1000, stats_samples: int | None = None,
               device: str | torch.device = "cpu") -> CurveResult:
    """Train the bends of a curve between fixed endpoints, then measure loss, error and
    barriers along it (see the module docstring).

    ``steps`` Adam steps (``lr``, ``weight_decay`` on the bends), each on one batch of
    ``batch_size`` training examples at one ``t ~ U(0, 1)``, all drawn from ``seed``. The
    evaluation arguments are those of :func:`~gauge.connect.linear_path`.

    Raises :class:`ConnectError` for zero bends, an unknown kind, no training data or a bad
    evaluation option, :class:`~gauge.errors.MismatchError` for different architectures.
    """
    t0 = time.perf_counter()
    if kind not in CURVE_KINDS:
        raise ConnectError(f"unknown curve kind {kind!r}; use one of {', '.join(CURVE_KINDS)}")
    if int(bends) != bends or bends < 1:
        raise ConnectError(f"a curve needs at least one bend, got bends={bends}")
    if steps < 0 or batch_size < 1 or not lr > 0:
        raise ConnectError(f"steps must be >= 0, batch_size >= 1 and lr > 0 (got {steps}, "
                           f"{batch_size}, {lr})")
    check_same_keys(params_a, params_b)
    x_train, y_train = _train_split(data)
    device = torch.device(device)
    m = int(bends) + 1
    work = copy.deepcopy(model).to(device).train()
    trainable = set(dict(work.named_parameters()))
    pa = {k: v.to(device) for k, v in params_a.items()}
    pb = {k: v.to(device) for k, v in params_b.items()}
    nodes = []
    for j in range(1, m):
        node = interpolate(pa, pb, j / m)
        nodes.append({k: v.clone().requires_grad_(k in trainable and v.is_floating_point())
                      for k, v in node.items()})
    leaves = [v for nd in nodes for v in nd.values() if v.requires_grad]
    opt = torch.optim.Adam(leaves, lr=lr, weight_decay=weight_decay) if leaves else None
    gen = torch.Generator().manual_seed(int(seed))
    objective, window = [], []
    log_every = max(1, steps // 10)
    for step in range(steps if opt is not None else 0):
        t = float(torch.rand(1, generator=gen))
        idx = torch.randint(len(x_train), (min(batch_size, len(x_train)),), generator=gen)
        x, y = x_train[idx].to(device), y_train[idx].to(device)
        params = curve_point(kind, [pa, *nodes, pb], t)
        # BatchNorm running buffers are written in place by a training-mode forward: give it
        # detached copies, the path evaluation recomputes them anyway
        params = {k: (v if k in trainable else v.detach().clone()) for k, v in params.items()}
        loss = nn.functional.cross_entropy(torch.func.functional_call(work, params, (x,)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        window.append(float(loss.detach()))
        if (step + 1) % log_every == 0:
            objective.append(sum(window) / len(window))
            window = []
    trained = [{k: v.detach() for k, v in nd.items()} for nd in nodes]

    def point(a, b, alpha):
        return curve_point(kind, [a, *trained, b], alpha)

    path = evaluate_path(model, pa, pb, data, point=point, n_points=n_points, alphas=alphas,
                         split=split, bn=bn, batch_size=eval_batch_size,
                         stats_samples=stats_samples, device=device)
    fields = {k: getattr(path, k) for k in PathResult.__dataclass_fields__}
    return CurveResult(**fields, kind=kind, bends=int(bends), steps=int(steps), lr=float(lr),
                       train_objective=tuple(objective), time=time.perf_counter() - t0,
                       bend_params=tuple({k: v.cpu() for k, v in nd.items()} for nd in trained))

"""Pruning at initialization: saliency scores of the weights before training, and pruning by
them to an exact survivor count (Frankle et al. 2021, "Pruning neural networks at
initialization: why are we missing the mark?").

A score is a function ``(model, params, mask, data, *, input_shape, seed, device) -> {name:
tensor}`` over the tensors of ``mask`` at the point ``params`` (a state_dict whose pruned
entries are already 0); ``data`` is one ``(x, y)`` batch or ``None`` for a data-free score.
The registry :data:`SCORES` holds, by name:

* ``magnitude_init`` -- ``|w|`` at initialization (the magnitude baseline of Frankle et al.
  2021).
* ``snip`` -- connection sensitivity (Lee et al. 2019): ``|g * w|`` with ``g = dL/dw`` the
  gradient of the mean cross-entropy on the batch.
* ``grasp`` -- gradient signal preservation (Wang et al. 2020): ``S = -w * (H g)`` with ``H``
  the Hessian and ``g`` the gradient of the loss with respect to the scored tensors. The
  weights of *highest* ``S`` are removed: Algorithm 1 of the paper keeps ``S < tau`` with
  ``tau`` the ``(1 - p)`` quantile, the authors' code keeps ``S <= `` the ``k``-th largest
  score (their code divides the logits by a temperature of 200; here the loss is the plain
  cross-entropy of the paper's formula).
* ``synflow`` -- iterative synaptic flow (Tanaka et al. 2020), data-free: every parameter is
  replaced by its absolute value, the all-ones input is passed in float64, ``R = 1^T f(1)``
  (``= 1^T prod_l |W_l| 1`` for a bias-free ReLU net) and the score is ``|w * dR/dw|``;
  pruning is repeated 100 times with the exponential schedule below, rescoring each time.
* ``random`` -- independent uniform scores from ``seed`` (random pruning at init; ranked
  globally, every layer keeps about the same density).

:func:`prune_at_init` ranks all scored tensors together (global, as all four papers do) and
prunes from ``mask`` to exactly ``keep`` survivors in ``n`` rounds (``n`` = the score's
``iterations`` unless given): round ``i`` keeps ``round(A * (keep / A) ** (i / n))`` of the
``A`` alive at the start (Tanaka et al.'s exponential schedule; the last round keeps exactly
``keep``), rescoring the pruned network each round. ``invert=True`` removes the weights the
score would keep (Frankle et al. 2021's inversion ablation).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tickets import prune as P
from tickets.errors import ConfigError

__all__ = ["Score", "SCORES", "prune_at_init", "score", "magnitude_init", "snip", "grasp",
           "synflow", "random_scores"]

Scores = dict[str, torch.Tensor]


@contextlib.contextmanager
def _mode(model: nn.Module, training: bool):
    """Run ``model`` in train or eval mode, restoring every submodule's flag afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.train(training)
    try:
        yield model
    finally:
        for m, flag in modes:
            m.train(flag)


def _leaves(params: Mapping[str, torch.Tensor], names, device, dtype=None):
    """Copies of ``params`` on ``device`` (buffers too, so a train-mode forward pass cannot
    update the caller's running statistics) and the ``names`` tensors as gradient leaves."""
    full = {k: v.detach().to(device=device, dtype=dtype if v.is_floating_point() and dtype
                             else v.dtype).clone() for k, v in params.items()}
    leaves = {n: full[n].requires_grad_(True) for n in names}
    return full, leaves


def _loss(model, full, data, device):
    x, y = data
    out = torch.func.functional_call(model, full, (x.to(device),))
    return F.cross_entropy(out.float(), y.to(device))


def magnitude_init(model, params, mask, data, *, input_shape, seed, device) -> Scores:
    """``|w|`` (Frankle et al. 2021's magnitude pruning at initialization)."""
    return {n: params[n].detach().abs() for n in mask}


def snip(model, params, mask, data, *, input_shape, seed, device) -> Scores:
    """SNIP connection sensitivity (Lee et al. 2019): ``|dL/dw * w|`` on the batch ``data``
    (the derivative of the loss along the multiplicative mask ``c`` at ``c = 1``)."""
    full, leaves = _leaves(params, list(mask), device)
    with _mode(model, True):
        grads = torch.autograd.grad(_loss(model, full, data, device), list(leaves.values()))
    return {n: (g * leaves[n]).detach().abs() for n, g in zip(leaves, grads)}


def grasp(model, params, mask, data, *, input_shape, seed, device) -> Scores:
    """GraSP (Wang et al. 2020): ``S = -w * H g`` with ``g = dL/dw`` and ``H g`` obtained as
    the gradient of ``g . stop_gradient(g)``. Weights of highest ``S`` are pruned first."""
    full, leaves = _leaves(params, list(mask), device)
    ws = list(leaves.values())
    with _mode(model, True):
        g = torch.autograd.grad(_loss(model, full, data, device), ws, create_graph=True)
        z = sum((gi * gi.detach()).sum() for gi in g)
        hg = torch.autograd.grad(z, ws, allow_unused=True)
    return {n: (-(w * h) if h is not None else torch.zeros_like(w)).detach()
            for n, w, h in zip(leaves, ws, hg)}


def synflow(model, params, mask, data, *, input_shape, seed, device) -> Scores:
    """Synaptic flow (Tanaka et al. 2020): ``|w * dR/dw|`` with ``R = 1^T f(1; |theta|)`` --
    every parameter and buffer by its absolute value, the all-ones input, float64, eval mode.
    Data-free: ``data`` is not read."""
    full, leaves = _leaves(params, list(mask), device, torch.float64)
    with torch.no_grad():
        for k, v in full.items():
            if v.is_floating_point():
                v.abs_()
    x = torch.ones((1, *input_shape), dtype=torch.float64, device=device)
    with _mode(model, False):
        r = torch.func.functional_call(model, full, (x,)).sum()
    grads = torch.autograd.grad(r, list(leaves.values()), allow_unused=True)
    return {n: (torch.zeros_like(leaves[n]) if g is None else g * leaves[n]).detach().abs()
            for n, g in zip(leaves, grads)}


def random_scores(model, params, mask, data, *, input_shape, seed, device) -> Scores:
    """Independent uniform scores from a generator seeded with ``seed`` (name order)."""
    gen = torch.Generator().manual_seed(int(seed))
    return {n: torch.rand(mask[n].shape, generator=gen, dtype=torch.float64)
            for n in sorted(mask)}


@dataclass(frozen=True)
class Score:
    """A registered score: its function, whether the *highest* scores are pruned (GraSP), how
    many pruning rounds it takes by default and whether it reads data."""

    name: str
    fn: Callable[..., Scores]
    prune_highest: bool = False
    iterations: int = 1
    needs_data: bool = True
    source: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "prune_highest": self.prune_highest,
                "iterations": self.iterations, "needs_data": self.needs_data,
                "source": self.source}


#: Pruning-at-initialization scores by name (see the module docstring).
SCORES: dict[str, Score] = {s.name: s for s in (
    Score("snip", snip, source="Lee et al. 2019"),
    Score("grasp", grasp, prune_highest=True, source="Wang et al. 2020"),
    Score("synflow", synflow, iterations=100, needs_data=False, source="Tanaka et al. 2020"),
    Score("magnitude_init", magnitude_init, needs_data=False, source="Frankle et al. 2021"),
    Score("random", random_scores, needs_data=False, source="Frankle et al. 2021"),
)}


def score(name: str) -> Score:
    """The registered score ``name``; :class:`ConfigError` listing the valid ones otherwise."""
    if name not in SCORES:
        raise ConfigError(f"unknown pruning-at-init score {name!r}; choose from "
                          f"{', '.join(SCORES)}")
    return SCORES[name]


def prune_at_init(name: str, model: nn.Module, params: Mapping[str, torch.Tensor],
                  mask: Mapping[str, torch.Tensor], keep: int,
                  data: tuple[torch.Tensor, torch.Tensor] | None = None, *,
                  input_shape: Sequence[int] | None = None, iterations: int | None = None,
                  invert: bool = False, seed: int = 0, device="cpu") -> P.Mask:
    """Prune ``mask`` to exactly ``keep`` survivors by the score ``name`` at ``params``
    (rounds, ranking and inversion as in the module docstring). ``data``: one ``(x, y)``
    batch for the scores that need it; ``input_shape`` (one example's shape, default that of
    ``data``) for SynFlow's all-ones input. Returns a new mask nested in ``mask``; raises
    :class:`ConfigError` for an unknown score, missing data or a ``keep`` outside
    ``0..alive``."""
    spec = score(name)
    if spec.needs_data and data is None:
        raise ConfigError(f"score {name!r} needs data (one batch of (x, y))")
    if input_shape is None:
        if data is None:
            raise ConfigError(f"score {name!r}: give input_shape or data")
        input_shape = tuple(data[0].shape[1:])
    rounds = spec.iterations if iterations is None else int(iterations)
    if rounds < 1:
        raise ConfigError(f"iterations must be >= 1, got {iterations}")
    current = P.check_mask(params, mask)
    start = sum(int(m.sum()) for m in current.values())
    if not 0 <= int(keep) <= start:
        raise ConfigError(f"cannot keep {keep} weights: the mask has {start} alive")
    if start == 0:
        return current
    flip = -1.0 if spec.prune_highest != invert else 1.0
    device = torch.device(device)
    for i in range(1, rounds + 1):
        alive = sum(int(m.sum()) for m in current.values())
        target = int(keep) if i == rounds else round(start * (int(keep) / start) ** (i / rounds))
        target = min(max(target, int(keep)), alive)
        if target == alive:
            continue
        s = spec.fn(model, P.apply_mask(params, current), current, data,
                    input_shape=tuple(input_shape), seed=seed, device=device)
        current = P.drop_lowest({n: flip * v for n, v in s.items()}, current, alive - target)
    return current

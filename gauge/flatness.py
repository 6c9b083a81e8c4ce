"""Flatness of a minimum beyond the Hessian: sharpness and loss landscapes -- raw and
gauge-fixed.

All measures take ``(model, params, data, loss_fn)`` as described in :mod:`gauge.objective`
(eval-mode forward pass, a fixed dataset, ``mask``/``param_filter`` selecting the free entries,
``gauge_fixed=True`` measuring at ``params`` and at the balanced point of its rescaling orbit).

Measures: sharpness :func:`sharpness` (Andriushchenko et al. 2023) and
:func:`epsilon_sharpness` (Keskar et al. 2017), returning :class:`SharpnessResult`; the loss
:func:`loss_at` and landscapes :func:`landscape_1d` / :func:`landscape_2d` (filter
normalisation, Li et al. 2018). The Hessian measures live in :mod:`gauge.hessian`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from gauge.errors import FlatnessOptionError
from gauge.hessian import hessian_eigenvalues
from gauge.batches import Batch
from gauge.objective import Objective, ParamFilter, raw_and_gauge_fixed
from gauge.results import Result

__all__ = ["SharpnessResult", "Landscape1D", "Landscape2D", "sharpness", "epsilon_sharpness",
           "loss_at", "landscape_1d", "landscape_2d"]


# ----------------------------------------------------------------------------- results

@dataclass(frozen=True)
class SharpnessResult(Result):
    """A sharpness ``value`` with the definition it was measured by: ``kind`` (``"worst"``,
    ``"average"`` or ``"epsilon"``), radius ``rho`` (``epsilon`` for epsilon-sharpness),
    ``norm``, ``adaptive`` (perturbations scaled by ``|w|``), ``batches`` (m-sharpness chunks,
    ``None``: all data at once) and the mean ``loss`` at the point itself."""

    value: float
    kind: str
    rho: float
    norm: str
    adaptive: bool
    batches: int | None
    loss: float


@dataclass(frozen=True)
class Landscape1D(Result):
    """Loss along ``params + alpha * d``; ``losses[i]`` at ``alphas[i]``."""

    alphas: np.ndarray
    losses: np.ndarray
    direction: str
    normalization: str | None


@dataclass(frozen=True)
class Landscape2D(Result):
    """Loss on ``params + alpha * d1 + beta * d2``; ``losses[j, i]`` at ``(alphas[i], betas[j])``."""

    alphas: np.ndarray
    betas: np.ndarray
    losses: np.ndarray
    normalization: str | None


def _checked_objective(model, params, data, loss_fn, mask, param_filter, device, batch_size,
                       logits_fn) -> tuple[Objective, float]:
    """The :class:`Objective` and its (finite) loss at ``params``."""
    problem = Objective(model, params, data, loss_fn, mask=mask, param_filter=param_filter,
                        device=device, batch_size=batch_size, logits_fn=logits_fn)
    return problem, problem.check_finite()


# ----------------------------------------------------------------------------- sharpness

def _check_rho(rho):
    if not isinstance(rho, (int, float, np.floating)) or not math.isfinite(rho) or rho <= 0:
        raise FlatnessOptionError(f"rho must be a finite number > 0, got {rho!r}")


def _split_batches(problem: Objective, batches):
    """``batches=None``: all data as one sharpness problem; ``m``: m-sharpness over m chunks."""
    if batches is None:
        return [problem.batches]
    if not isinstance(batches, (int, np.integer)) or batches < 1:
        raise FlatnessOptionError(f"batches must be a positive integer or None, got {batches!r}")
    if batches > problem.n_data:
        raise FlatnessOptionError(f"batches={batches} is more than the {problem.n_data} data "
                                  f"points")
    try:
        whole = Batch.cat(problem.batches)
    except RuntimeError as e:
        raise FlatnessOptionError(f"m-sharpness regroups the examples into {batches} chunks, "
                                  f"but the batches do not concatenate: {e}") from e
    return [[chunk] for chunk in whole.split(int(batches))]


def _project(u, rho, norm):
    if norm == "linf":
        return u.clamp(-rho, rho)
    nrm = float(u.norm())
    return u if nrm <= rho else u * (rho / nrm)


def _worst_case(problem, w, c, rho, norm, steps, batches):
    """max over ``||u||_p <= rho`` of ``L(w + c*u) - L(w)``: projected (normalised) gradient
    ascent, step ``rho`` halved whenever a step does not increase the loss."""
    base = problem.loss(problem.unflatten(w), batches)
    u = torch.zeros_like(w)
    best, step = 0.0, float(rho)
    cur = base
    for _ in range(steps):
        _, grads = problem.loss_and_grad(problem.unflatten(w + c * u), batches)
        g = problem.flatten(grads) * c
        if not bool(torch.isfinite(g).all()) or float(g.abs().max()) == 0.0:
            break
        d = g.sign() if norm == "linf" else g / g.norm()
        while step > rho * 1e-4:
            cand = _project(u + step * d, rho, norm)
            val = problem.loss(problem.unflatten(w + c * cand), batches)
            if math.isfinite(val) and val > cur:
                u, cur = cand, val
                break
            step /= 2
        else:
            break
        best = max(best, cur - base)
    return best


def _average_case(problem, w, c, rho, norm, n_samples, batches, gen):
    base = problem.loss(problem.unflatten(w), batches)
    vals = []
    for _ in range(n_samples):
        if norm == "l2":
            u = torch.randn(w.shape, generator=gen, dtype=torch.float64) * rho
        else:
            u = (torch.rand(w.shape, generator=gen, dtype=torch.float64) * 2 - 1) * rho
        u = u.to(w.device, w.dtype)
        vals.append(problem.loss(problem.unflatten(w + c * u), batches) - base)
    return float(np.mean(vals))


def sharpness(model: nn.Module, params: Mapping[str, torch.Tensor], data, loss_fn=None, *,
              rho: float, kind: str = "worst", adaptive: bool = True, norm: str = "l2",
              batches: int | None = None, steps: int = 20, n_samples: int = 10, mask=None,
              param_filter: ParamFilter | None = None, device="cpu", seed: int = 0,
              batch_size=None, gauge_fixed: bool = False, spec=None, canon_kwargs=None,
              logits_fn=None):
    """Sharpness as in Andriushchenko et al. (2023):

    * worst case: ``S = max_{||delta / c||_p <= rho} L(w + delta) - L(w)``, approximated by
      ``steps`` steps of projected normalised-gradient ascent (sign steps for ``linf``) with a
      step size starting at ``rho`` and halved whenever the loss does not increase;
    * average case: ``S = E_delta L(w + delta) - L(w)`` with ``delta = c * u``, ``u ~ N(0,
      rho^2 I)`` (``l2``) or ``U[-rho, rho]`` (``linf``), over ``n_samples`` draws.

    ``adaptive=True`` uses ``c = |w|`` (elementwise), which makes ``S`` invariant to ReLU
    rescalings (the perturbed nets are rescalings of each other); ``adaptive=False`` uses
    ``c = 1``. ``batches=m`` computes it on ``m`` disjoint chunks and averages (m-sharpness);
    ``None`` uses all data at once. Returns :class:`SharpnessResult` (or
    :class:`~gauge.objective.GaugeFixed` of two).
    """
    _check_rho(rho)
    if kind not in ("worst", "average"):
        raise FlatnessOptionError(f"kind must be 'worst' or 'average', got {kind!r}")
    if norm not in ("l2", "linf"):
        raise FlatnessOptionError(f"norm must be 'l2' or 'linf', got {norm!r}")
    if steps < 1 or n_samples < 1:
        raise FlatnessOptionError("steps and n_samples must be >= 1")

    def run(p):
        problem, loss = _checked_objective(model, p, data, loss_fn, mask, param_filter, device,
                                           batch_size, logits_fn)
        w = problem.free_values()
        c = w.abs() if adaptive else torch.ones_like(w)
        gen = torch.Generator().manual_seed(int(seed))
        vals = []
        for chunk in _split_batches(problem, batches):
            if kind == "worst":
                vals.append(_worst_case(problem, w, c, rho, norm, steps, chunk))
            else:
                vals.append(_average_case(problem, w, c, rho, norm, n_samples, chunk, gen))
        return SharpnessResult(value=float(np.mean(vals)), kind=kind, rho=float(rho), norm=norm,
                               adaptive=adaptive, batches=batches, loss=loss)

    return raw_and_gauge_fixed(run, model, params, data, gauge_fixed, spec, mask, canon_kwargs)


def epsilon_sharpness(model: nn.Module, params: Mapping[str, torch.Tensor], data, loss_fn=None,
                      *, epsilon: float = 1e-3, steps: int = 20, mask=None,
                      param_filter: ParamFilter | None = None, device="cpu", batch_size=None,
                      gauge_fixed: bool = False, spec=None, canon_kwargs=None,
                      logits_fn=None):
    """Keskar et al. (2017) epsilon-sharpness, in percent:
    ``100 * (max_{y in C} L(w + y) - L(w)) / (1 + L(w))`` over the box
    ``C = {|y_i| <= epsilon (|w_i| + 1)}`` (full space, ``A = I``), by the same projected
    ascent as :func:`sharpness` (Keskar et al. used L-BFGS-B). Returns
    :class:`SharpnessResult` (``kind="epsilon"``, ``rho=epsilon``) or
    :class:`~gauge.objective.GaugeFixed` of two."""
    _check_rho(epsilon)

    def run(p):
        problem, loss = _checked_objective(model, p, data, loss_fn, mask, param_filter, device,
                                           batch_size, logits_fn)
        w = problem.free_values()
        rise = _worst_case(problem, w, w.abs() + 1, epsilon, "linf", steps, problem.batches)
        return SharpnessResult(value=100.0 * rise / (1.0 + loss), kind="epsilon",
                               rho=float(epsilon), norm="linf", adaptive=True, batches=None,
                               loss=loss)

    return raw_and_gauge_fixed(run, model, params, data, gauge_fixed, spec, mask, canon_kwargs)


# ----------------------------------------------------------------------------- landscapes

def loss_at(model: nn.Module, params: Mapping[str, torch.Tensor], data, loss_fn=None, *,
            device="cpu", batch_size=None, logits_fn=None) -> float:
    """:func:`~gauge.objective.mean_loss` over ``data`` at ``params`` (eval mode)."""
    problem = Objective(model, params, data, loss_fn, device=device, batch_size=batch_size,
                        logits_fn=logits_fn)
    return problem.loss()


def _normalize(direction: list[torch.Tensor], weights: list[torch.Tensor], how):
    """Filter normalisation (Li et al. 2018): each filter (output row/channel, dim 0) of the
    direction gets the norm of the same filter of the weights; ``"layer"`` does it per tensor.
    1-D tensors (biases, norm scales) are zeroed, as Li et al. do."""
    out = []
    for d, w in zip(direction, weights):
        if how is None:
            out.append(d)
        elif d.ndim <= 1:
            out.append(torch.zeros_like(d))
        elif how == "filter":
            dn = d.reshape(len(d), -1).norm(dim=1).clamp_min(1e-12)
            wn = w.reshape(len(w), -1).norm(dim=1)
            out.append(d * (wn / dn).reshape(-1, *([1] * (d.ndim - 1))))
        else:  # layer
            out.append(d * (w.norm() / d.norm().clamp_min(1e-12)))
    return out


def _direction(problem, direction, normalization, gen, params, mask, param_filter, seed):
    weights = problem.free_tensors()
    if isinstance(direction, Mapping):
        missing = [k for k in problem.names if k not in direction]
        if missing:
            raise FlatnessOptionError(f"direction params lack tensors: {missing[:3]}")
        d = [direction[k].to(problem.device, problem.dtype) - problem.base[k]
             for k in problem.names]
        return [x * problem.masks[k] if k in problem.masks else x
                for k, x in zip(problem.names, d)], "params_b", None
    if direction == "random":
        d = [torch.randn(w.shape, generator=gen, dtype=torch.float32).to(w.device, w.dtype)
             for w in weights]
    elif direction == "hessian":
        # the objective's own batches: the direction is that of the same loss
        eig = hessian_eigenvalues(problem.model, params, problem.batches, problem.loss_fn, k=1,
                                  mask=mask, param_filter=param_filter, device=problem.device,
                                  seed=seed, residuals=False, logits_fn=problem.logits_fn)
        d = problem.unflatten(torch.as_tensor(eig.vectors[:, 0], device=problem.device))
    else:
        raise FlatnessOptionError(f"direction must be 'random', 'hessian' or a params dict, "
                                  f"got {direction!r}")
    if normalization not in ("filter", "layer", None):
        raise FlatnessOptionError(f"normalization must be 'filter', 'layer' or None, got "
                                  f"{normalization!r}")
    d = _normalize(d, weights, normalization)
    d = [x * problem.masks[k] if k in problem.masks else x for k, x in zip(problem.names, d)]
    return d, direction, normalization


def landscape_1d(model: nn.Module, params: Mapping[str, torch.Tensor], data, loss_fn=None, *,
                 direction="random", normalization: str | None = "filter",
                 alphas: Sequence[float] | None = None, mask=None,
                 param_filter: ParamFilter | None = None, device="cpu", seed: int = 0,
                 batch_size=None, gauge_fixed: bool = False, spec=None, canon_kwargs=None,
                 logits_fn=None):
    """Loss along ``params + alpha * d`` (Goodfellow et al. 2015; Li et al. 2018).

    ``direction``: ``"random"`` (Gaussian, filter-normalised), ``"hessian"`` (top eigenvector,
    normalised likewise) or a params dict ``params_b`` (``d = params_b - params``, never
    normalised, so ``alpha = 1`` is ``params_b``). Biases/norm parameters get no component
    under filter/layer normalisation. ``alphas`` default: 41 points in ``[-1, 1]``.
    """
    alphas = np.linspace(-1, 1, 41) if alphas is None else np.asarray(alphas, dtype=float)

    def run(p):
        problem, _ = _checked_objective(model, p, data, loss_fn, mask, param_filter, device,
                                        batch_size, logits_fn)
        gen = torch.Generator().manual_seed(int(seed))
        d, name, how = _direction(problem, direction, normalization, gen, p, mask, param_filter,
                                  seed)
        w = problem.free_tensors()
        losses = [problem.loss([wi + float(a) * di for wi, di in zip(w, d)]) for a in alphas]
        return Landscape1D(alphas=alphas, losses=np.asarray(losses), direction=name,
                           normalization=how)

    return raw_and_gauge_fixed(run, model, params, data, gauge_fixed, spec, mask, canon_kwargs)


def landscape_2d(model: nn.Module, params: Mapping[str, torch.Tensor], data, loss_fn=None, *,
                 normalization: str | None = "filter", alphas: Sequence[float] | None = None,
                 betas: Sequence[float] | None = None, mask=None,
                 param_filter: ParamFilter | None = None, device="cpu", seed: int = 0,
                 batch_size=None, gauge_fixed: bool = False, spec=None, canon_kwargs=None,
                 logits_fn=None):
    """Loss on the plane ``params + alpha * d1 + beta * d2`` spanned by two independent
    Gaussian directions, each filter-normalised (Li et al. 2018). Default grid 21 x 21 on
    ``[-1, 1]^2``."""
    alphas = np.linspace(-1, 1, 21) if alphas is None else np.asarray(alphas, dtype=float)
    betas = alphas if betas is None else np.asarray(betas, dtype=float)

    def run(p):
        problem, _ = _checked_objective(model, p, data, loss_fn, mask, param_filter, device,
                                        batch_size, logits_fn)
        gen = torch.Generator().manual_seed(int(seed))
        args = (p, mask, param_filter, seed)
        d1, _, how = _direction(problem, "random", normalization, gen, *args)
        d2, _, _ = _direction(problem, "random", normalization, gen, *args)
        w = problem.free_tensors()
        losses = np.array([[problem.loss([wi + float(a) * x + float(b) * y
                                          for wi, x, y in zip(w, d1, d2)]) for a in alphas]
                           for b in betas])
        return Landscape2D(alphas=alphas, betas=betas, losses=losses, normalization=how)

    return raw_and_gauge_fixed(run, model, params, data, gauge_fixed, spec, mask, canon_kwargs)

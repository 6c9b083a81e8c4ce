"""Flatness of a minimum: Hessian spectra, trace, sharpness and loss landscapes -- raw and
gauge-fixed.

All measures take ``(model, params, data, loss_fn)``:

* ``model`` is used only for its forward pass (``torch.func.functional_call``); it runs in
  **eval mode**, so BatchNorm uses its running statistics (the ``running_mean``/``running_var``
  buffers in ``params``) and dropout is off. Its training flag is restored afterwards.
* ``params`` is a state_dict; buffers are used as given, only ``nn.Parameter`` entries are
  differentiated/perturbed.
* ``data`` is a *fixed* dataset: ``(x, y)`` tensors, a ``TensorDataset`` or a list of
  ``(x, y)`` batches. Every Hessian-vector product (HVP) uses all of it -- never a fresh batch
  per matvec, which would break Lanczos. With ``batch_size=None`` (default) it is one batch and
  the double-backprop graph is built once and reused for every HVP; otherwise the HVP is the
  size-weighted mean over batches (the Hessian of the mean loss).
* ``loss_fn(outputs, targets)`` returns the *mean* loss (default: cross-entropy).
* ``mask`` (bool tensors by name, e.g. a ticket's) restricts the parameter space to the
  unpruned entries: the measured Hessian is ``P H P^T`` with ``P`` selecting those entries, and
  pruned entries are set to 0 in the evaluation point. ``param_filter(name, tensor) -> bool``
  drops whole tensors (e.g. :func:`weights_only` excludes biases and norm scales).
* ``gauge_fixed=True`` evaluates the measure both at ``params`` and at
  ``canonicalize_scale(spec, params)`` -- the balanced (minimum-norm) representative of the
  ReLU-rescaling orbit -- and returns :class:`GaugeFixed` ``(raw, gauge_fixed)``. Dinh et al.
  (2017) showed that raw curvature can be made arbitrarily large by rescaling without changing
  the function; the gauge-fixed value is a function of the function's orbit only.

Measures: the HVP operator :func:`hvp` (a ``scipy.sparse.linalg.LinearOperator`` computing
float32 HVPs by double backprop while ARPACK keeps a float64 Lanczos basis), extreme
eigenvalues :func:`hessian_eigenvalues` (Lanczos with early stopping, then implicitly
restarted Lanczos, ``eigsh``), trace
:func:`hessian_trace` (Hutchinson 1989; Hutch++, Meyer et al. 2021), spectral density
:func:`spectral_density` (stochastic Lanczos quadrature, Ghorbani et al. 2019), sharpness
:func:`sharpness` (Andriushchenko et al. 2023) and :func:`epsilon_sharpness` (Keskar et al.
2017), landscapes :func:`landscape_1d` / :func:`landscape_2d` (filter normalisation, Li et al.
2018).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import scipy.linalg
import scipy.sparse.linalg
import torch
import torch.nn.functional as F
from torch import nn

from gauge.errors import (EmptyParamsError, FlatnessError, FlatnessOptionError,
                          NonFiniteLossError)

__all__ = ["HessianOperator", "EigResult", "TraceResult", "Density", "Landscape1D",
           "Landscape2D", "GaugeFixed", "hvp", "hessian_eigenvalues", "hessian_trace",
           "spectral_density", "sharpness", "epsilon_sharpness", "landscape_1d", "landscape_2d",
           "loss_at", "weights_only", "gauge_fix"]

ParamFilter = Callable[[str, torch.Tensor], bool]


def weights_only(name: str, tensor: torch.Tensor) -> bool:
    """``param_filter`` keeping weight matrices/kernels only (no biases, no norm scales)."""
    return tensor.ndim > 1


# ----------------------------------------------------------------------------- results

def _np(a):
    return np.asarray(a).tolist()


@dataclass(frozen=True)
class EigResult:
    """Extreme Hessian eigenvalues (ascending) with unit eigenvectors (columns, in the
    flattened free-parameter coordinates of :class:`HessianOperator`), the number of HVPs used
    and the relative residuals ``||H v - lambda v|| / max(|lambda|, eps)``."""

    values: np.ndarray
    vectors: np.ndarray = field(repr=False)
    n_hvp: int
    residuals: np.ndarray
    n_params: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"values": _np(self.values), "n_hvp": self.n_hvp,
                "residuals": _np(self.residuals), "n_params": self.n_params}


@dataclass(frozen=True)
class TraceResult:
    """Stochastic estimate of ``tr(H)`` with its standard error and HVP count."""

    estimate: float
    stderr: float
    n_hvp: int
    method: str = "hutchinson"

    def to_dict(self) -> dict[str, Any]:
        return {"estimate": self.estimate, "stderr": self.stderr, "n_hvp": self.n_hvp,
                "method": self.method}


@dataclass(frozen=True)
class Density:
    """Spectral density on ``grid`` (integrates to ~1), from the Ritz ``nodes``/``weights``
    of each SLQ run (arrays of shape ``(n_runs, lanczos_steps)``)."""

    grid: np.ndarray
    density: np.ndarray
    nodes: np.ndarray = field(repr=False)
    weights: np.ndarray = field(repr=False)
    sigma: float = 0.0
    n_hvp: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"grid": _np(self.grid), "density": _np(self.density), "nodes": _np(self.nodes),
                "weights": _np(self.weights), "sigma": self.sigma, "n_hvp": self.n_hvp}


@dataclass(frozen=True)
class Landscape1D:
    """Loss along ``params + alpha * d``; ``losses[i]`` at ``alphas[i]``."""

    alphas: np.ndarray
    losses: np.ndarray
    direction: str
    normalization: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"alphas": _np(self.alphas), "losses": _np(self.losses),
                "direction": self.direction, "normalization": self.normalization}


@dataclass(frozen=True)
class Landscape2D:
    """Loss on ``params + alpha * d1 + beta * d2``; ``losses[j, i]`` at ``(alphas[i], betas[j])``."""

    alphas: np.ndarray
    betas: np.ndarray
    losses: np.ndarray
    normalization: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"alphas": _np(self.alphas), "betas": _np(self.betas),
                "losses": _np(self.losses), "normalization": self.normalization}


@dataclass(frozen=True)
class GaugeFixed:
    """A measure at ``params`` (``raw``) and at ``canonicalize_scale(params)`` (``gauge_fixed``)."""

    raw: Any
    gauge_fixed: Any

    def to_dict(self) -> dict[str, Any]:
        def conv(x):
            return x.to_dict() if hasattr(x, "to_dict") else x
        return {"raw": conv(self.raw), "gauge_fixed": conv(self.gauge_fixed)}


# ----------------------------------------------------------------------------- problem setup

def _batches(data, batch_size, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if hasattr(data, "tensors"):
        data = tuple(data.tensors)
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(
            isinstance(t, torch.Tensor) for t in data):
        x, y = data
        if len(x) != len(y):
            raise FlatnessOptionError(f"data: inputs have {len(x)} rows but targets {len(y)}")
        if len(x) == 0:
            raise FlatnessOptionError("data is empty")
        if batch_size is None or batch_size >= len(x):
            out = [(x, y)]
        else:
            if batch_size < 1:
                raise FlatnessOptionError(f"batch_size must be >= 1, got {batch_size}")
            out = [(x[i:i + batch_size], y[i:i + batch_size])
                   for i in range(0, len(x), batch_size)]
    elif isinstance(data, (list, tuple)):
        out = [tuple(b) for b in data]
        if not out or any(len(b) != 2 for b in out):
            raise FlatnessOptionError("data must be (x, y) tensors, a TensorDataset or a "
                                      "non-empty list of (x, y) batches")
    else:
        raise FlatnessOptionError(f"data must be (x, y) tensors, a TensorDataset or a list of "
                                  f"(x, y) batches, got {type(data).__name__}")
    return [(x.to(device), y.to(device)) for x, y in out]


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in modes:
            m.train(flag)


class _Problem:
    """The loss as a function of the free (selected, unpruned) parameter entries."""

    def __init__(self, model, params, data, loss_fn, *, mask=None, param_filter=None,
                 device="cpu", batch_size=None):
        self.device = torch.device(device)
        self.model = model
        self.loss_fn = loss_fn if loss_fn is not None else F.cross_entropy
        self.batches = _batches(data, batch_size, self.device)
        self.n_data = sum(len(y) for _, y in self.batches)
        trainable = {n for n, _ in model.named_parameters()}
        mask = dict(mask or {})
        unknown = sorted(set(mask) - set(params))
        if unknown:
            raise FlatnessOptionError(f"mask has tensors not in params: {unknown[:3]}")
        if mask and not any(bool(m.any()) for m in mask.values()):
            raise EmptyParamsError(f"the mask prunes everything: all {len(mask)} mask tensors "
                                   f"are all-False, no weight left to measure")
        base = {}
        for k, v in params.items():
            v = v.detach().to(self.device)
            if k in mask:
                m = mask[k].to(self.device)
                if m.shape != v.shape:
                    raise FlatnessOptionError(f"mask[{k!r}] has shape {tuple(m.shape)}, "
                                              f"params[{k!r}] {tuple(v.shape)}")
                v = v * m.to(v.dtype)  # the ticket: pruned entries are exactly 0
            base[k] = v
        self.base = base
        self.names = [k for k in params if k in trainable and params[k].is_floating_point()
                      and (param_filter is None or param_filter(k, params[k]))]
        self.masks = {k: mask[k].to(self.device).bool() for k in self.names if k in mask}
        self.sizes = [int(self.masks[k].sum()) if k in self.masks else base[k].numel()
                      for k in self.names]
        self.n = sum(self.sizes)
        if self.n == 0:
            what = "the mask prunes every selected parameter" if mask else \
                "param_filter excludes every parameter"
            raise EmptyParamsError(f"no parameter left to measure: {what}")
        self.dtype = base[self.names[0]].dtype
        self.n_hvp = 0
        self._graph = None  # (leaves, grads) reused across HVPs when there is one batch

    # -- vectors <-> tensors
    def unflatten(self, vec: torch.Tensor) -> list[torch.Tensor]:
        """Free-coordinate vector -> full-shape tensors (zero at pruned entries)."""
        out = []
        for k, seg in zip(self.names, vec.to(self.dtype).split(self.sizes)):
            if k in self.masks:
                full = torch.zeros(self.base[k].shape, dtype=self.dtype, device=self.device)
                full[self.masks[k]] = seg
                out.append(full)
            else:
                out.append(seg.view(self.base[k].shape))
        return out

    def flatten(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([t[self.masks[k]] if k in self.masks else t.reshape(-1)
                          for k, t in zip(self.names, tensors)])

    def free_values(self) -> torch.Tensor:
        return self.flatten([self.base[k] for k in self.names])

    # -- loss
    def _batch_loss(self, tensors, x, y):
        p = dict(self.base)
        p.update(zip(self.names, tensors))
        out = torch.func.functional_call(self.model, p, (x,))
        return self.loss_fn(out, y)

    def loss(self, tensors=None) -> float:
        """Mean loss over all data at ``base`` with ``tensors`` replacing the selected ones."""
        tensors = [self.base[k] for k in self.names] if tensors is None else tensors
        total = 0.0
        with torch.no_grad(), _eval_mode(self.model):
            for x, y in self.batches:
                total += float(self._batch_loss(tensors, x, y)) * len(y)
        return total / self.n_data

    def loss_and_grad(self, tensors, batches=None):
        """Mean loss and its gradient w.r.t. ``tensors`` (list) over ``batches``."""
        batches = self.batches if batches is None else batches
        n = sum(len(y) for _, y in batches)
        leaves = [t.detach().requires_grad_(True) for t in tensors]
        total, grads = 0.0, [torch.zeros_like(t) for t in leaves]
        with _eval_mode(self.model):
            for x, y in batches:
                loss = self._batch_loss(leaves, x, y) * (len(y) / n)
                g = torch.autograd.grad(loss, leaves)
                total += float(loss.detach())
                grads = [a + b for a, b in zip(grads, g)]
        return total, grads

    def check_finite(self) -> float:
        value = self.loss()
        if not math.isfinite(value):
            raise NonFiniteLossError(f"loss at the checkpoint is {value}: the Hessian is "
                                     f"undefined there (not iterating)")
        return value

    def gradient(self) -> torch.Tensor:
        """The mean loss's gradient in the free coordinates (from the HVP graph when there is
        one batch, else one extra pass over the data)."""
        if len(self.batches) == 1:
            grads = [g.detach() for g in self._graph_for_one_batch()[1]]
        else:
            grads = self.loss_and_grad([self.base[k] for k in self.names])[1]
        return self.flatten(grads)

    # -- Hessian-vector product
    def _graph_for_one_batch(self):
        if self._graph is None:
            leaves = [self.base[k].detach().clone().requires_grad_(True) for k in self.names]
            x, y = self.batches[0]
            with _eval_mode(self.model):
                loss = self._batch_loss(leaves, x, y)
                if not math.isfinite(float(loss.detach())):
                    raise NonFiniteLossError(f"loss at the checkpoint is {float(loss.detach())}: the "
                                             f"Hessian is undefined there (not iterating)")
                grads = torch.autograd.grad(loss, leaves, create_graph=True)
            if not all(bool(torch.isfinite(g).all()) for g in grads):
                raise NonFiniteLossError("gradient at the checkpoint is not finite: the Hessian "
                                         "is undefined there (not iterating)")
            self._graph = (leaves, grads)
        return self._graph

    def hvp(self, vec: torch.Tensor) -> torch.Tensor:
        """``H v`` for a free-coordinate vector ``vec`` (any float dtype; returns self.dtype)."""
        v = self.unflatten(vec)
        if len(self.batches) == 1:
            leaves, grads = self._graph_for_one_batch()
            hv = torch.autograd.grad(grads, leaves, grad_outputs=v, retain_graph=True,
                                     allow_unused=True)
        else:
            hv = [torch.zeros_like(t) for t in v]
            with _eval_mode(self.model):
                for x, y in self.batches:
                    leaves = [self.base[k].detach().clone().requires_grad_(True)
                              for k in self.names]
                    loss = self._batch_loss(leaves, x, y) * (len(y) / self.n_data)
                    grads = torch.autograd.grad(loss, leaves, create_graph=True)
                    part = torch.autograd.grad(grads, leaves, grad_outputs=v, allow_unused=True)
                    hv = [a + (b if b is not None else 0) for a, b in zip(hv, part)]
        hv = [torch.zeros_like(t) if h is None else h for h, t in zip(hv, v)]
        self.n_hvp += 1
        return self.flatten(hv).detach()


class HessianOperator(scipy.sparse.linalg.LinearOperator):
    """The Hessian of the mean loss in the free coordinates, as a float64 ``LinearOperator``.

    Each matvec is one float32 (params' dtype) HVP by double backprop (Pearlmutter 1994);
    ``n_hvp`` counts them. ``callback(n_hvp)`` is called after each. ``unflatten(vec)`` maps a
    vector (e.g. an eigenvector) back to a ``{name: tensor}`` dict of full-shape tensors.
    """

    def __init__(self, problem: _Problem, callback: Callable[[int], None] | None = None):
        self.problem = problem
        self.callback = callback
        super().__init__(dtype=np.float64, shape=(problem.n, problem.n))

    @property
    def n_hvp(self) -> int:
        return self.problem.n_hvp

    @property
    def names(self) -> list[str]:
        return list(self.problem.names)

    def _matvec(self, v):
        v = np.asarray(v, dtype=np.float64).reshape(-1)
        t = torch.from_numpy(v).to(self.problem.device, self.problem.dtype)
        out = self.problem.hvp(t).to("cpu", torch.float64).numpy()
        if self.callback is not None:
            self.callback(self.problem.n_hvp)
        return out

    def _matmat(self, m):
        return np.stack([self._matvec(c) for c in np.asarray(m).T], axis=1)

    def _adjoint(self):
        return self  # the Hessian is symmetric

    def torch_matvec(self, v: torch.Tensor) -> torch.Tensor:
        out = self.problem.hvp(v)
        if self.callback is not None:
            self.callback(self.problem.n_hvp)
        return out

    def unflatten(self, vec) -> dict[str, torch.Tensor]:
        t = torch.as_tensor(np.asarray(vec), device=self.problem.device)
        return dict(zip(self.problem.names, self.problem.unflatten(t)))


def hvp(model: nn.Module, params: Mapping[str, torch.Tensor], data, loss_fn=None, *,
        mask=None, param_filter: ParamFilter | None = None, device="cpu", batch_size=None,
        callback: Callable[[int], None] | None = None) -> HessianOperator:
    """The Hessian ``H = d^2 L / d theta^2`` of the mean loss on ``data`` as a LinearOperator.

    Raises :class:`NonFiniteLossError` if the loss at ``params`` is not finite,
    :class:`EmptyParamsError` if mask/param_filter select nothing.
    """
    problem = _Problem(model, params, data, loss_fn, mask=mask, param_filter=param_filter,
                       device=device, batch_size=batch_size)
    if len(problem.batches) == 1:
        problem._graph_for_one_batch()  # checks the loss and gradient, builds the graph once
    else:
        problem.check_finite()
    return HessianOperator(problem, callback)


# ----------------------------------------------------------------------------- gauge fixing

def gauge_fix(model: nn.Module, params: Mapping[str, torch.Tensor], example_input: torch.Tensor,
              *, spec=None, mask=None, **canon_kwargs) -> dict[str, torch.Tensor]:
    """``canonicalize_scale(spec, params)``: the balanced point of the ReLU-rescaling orbit.

    ``spec`` defaults to ``infer_spec(model, example_input)``. Masked-out entries stay 0
    (rescaling multiplies entries, so zeros stay zeros).
    """
    from gauge.spec import infer_spec
    from gauge.symmetry import canonicalize_scale
    if spec is None:
        spec = infer_spec(model, example_input)
    p = {k: v.detach() for k, v in params.items()}
    if mask:
        p = {k: (v * mask[k].to(v.device, v.dtype) if k in mask else v) for k, v in p.items()}
    return canonicalize_scale(spec, p, **canon_kwargs)


def _example_input(data) -> torch.Tensor:
    if hasattr(data, "tensors"):
        return data.tensors[0][:2]
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor) \
            and isinstance(data[1], torch.Tensor) and len(data[0]) == len(data[1]):
        return data[0][:2]
    return data[0][0][:2]


def _maybe_gauge_fixed(fn, model, params, data, gauge_fixed, spec, mask, canon_kwargs):
    if not gauge_fixed:
        return fn(params)
    raw = fn(params)
    fixed_params = gauge_fix(model, params, _example_input(data), spec=spec, mask=mask,
                             **(canon_kwargs or {}))
    return GaugeFixed(raw=raw, gauge_fixed=fn(fixed_params))


# ----------------------------------------------------------------------------- eigenvalues

def _residuals(op: HessianOperator, values, vectors) -> np.ndarray:
    res = []
    for lam, v in zip(values, vectors.T):
        hv = op.matvec(v)
        res.append(float(np.linalg.norm(hv - lam * v) / max(abs(lam), 1e-30)))
    return np.asarray(res)


def _wanted(theta: np.ndarray, k: int, which: str) -> np.ndarray:
    m = len(theta)
    if which == "LA":
        return np.arange(max(0, m - k), m)
    if which == "SA":
        return np.arange(min(k, m))
    return np.unique(np.r_[np.arange(min(k, m)), np.arange(max(0, m - k), m)])


def _lanczos_extreme(op: "HessianOperator", k: int, which: str, tol: float, v0: np.ndarray,
                     max_steps: int):
    """Lanczos with full reorthogonalisation (float64 basis), stopped as soon as every wanted
    Ritz value is accurate to ``tol`` relative.

    After step ``j`` the Ritz pair ``(theta_i, V s_i)`` has residual norm
    ``r_i = beta_j |s_i[-1]|`` and ``|theta_i - lambda| <= min(r_i, r_i^2 / gap_i)``
    (Kato-Temple; Parlett 1998, ch. 11), with ``gap_i`` the distance to the nearest other
    Ritz value. The Ritz gap overstates the true gap while part of the spectrum is unresolved,
    so a step's bound is only trusted once the previous step's bound held: the wanted Ritz
    values moved by no more than it allowed. Returns ``(values, vectors, converged)``.
    """
    n = op.shape[0]
    max_steps = min(max_steps, n)
    problem = op.problem
    # the basis lives in float64 torch on the HVP's device: no host round trips, no BLAS
    # thread pool contention for the (steps x n) reorthogonalisation
    f64 = dict(dtype=torch.float64, device=problem.device)
    basis = torch.empty((max_steps, n), **f64)  # only rows already written are read
    alpha, beta = [], []
    v = torch.as_tensor(v0, **f64)
    v = v / v.norm()
    prev, b = torch.zeros(n, **f64), 0.0
    theta = s = prev_theta = prev_bound = None

    def ritz_vectors(cols, m):
        return (basis[:m].T @ torch.as_tensor(s[:, cols], **f64)).cpu().numpy()

    for j in range(max_steps):
        basis[j] = v
        w = op.torch_matvec(v).to(torch.float64)
        a = float(w @ v)
        w.sub_(v, alpha=a).sub_(prev, alpha=b)
        before = float(w.norm())
        q = basis[:j + 1]
        w -= q.T @ (q @ w)
        b = float(w.norm())
        if b < 0.7071 * before:  # "twice is enough" (Kahan; Parlett 1998): a second pass
            w -= q.T @ (q @ w)   # only after the first cancelled much of w
            b = float(w.norm())
        alpha.append(a)
        theta, s = scipy.linalg.eigh_tridiagonal(np.asarray(alpha), np.asarray(beta),
                                                 check_finite=False)
        idx = _wanted(theta, k, which)
        n_want = 2 * k if which == "both" else k
        invariant = b <= 1e-12 * max(1.0, float(np.abs(theta).max()))
        if len(idx) >= n_want and len(theta) > n_want:
            r = b * np.abs(s[-1, idx])
            d = np.diff(theta)  # theta is ascending: the nearest other Ritz value is a neighbour
            gap = np.minimum(np.r_[np.inf, d][idx], np.r_[d, np.inf][idx])
            bound = np.minimum(r, r ** 2 / np.maximum(gap, 1e-300))
            scale = tol * np.maximum(np.abs(theta[idx]), 1e-12)
            # the Ritz gap can overstate the true gap while the spectrum is still unresolved:
            # also require the previous bound to have held (the values moved no further)
            held = prev_theta is not None and np.all(
                np.abs(theta[idx] - prev_theta) <= np.maximum(prev_bound, scale))
            if invariant or (held and np.all(bound <= scale)):
                return theta[idx], ritz_vectors(idx, j + 1), True
            prev_theta, prev_bound = theta[idx], bound
        elif invariant:
            return theta[idx], ritz_vectors(idx, j + 1), True
        if invariant:
            break
        beta.append(b)
        prev, v = v, w / b
    idx = _wanted(theta, k, which)
    return theta[idx], ritz_vectors(idx, len(alpha)), False


def _gradient_start(op: HessianOperator, v0: np.ndarray) -> np.ndarray:
    """``g/|g| + v0/|v0|``: the gradient lies mostly in the top eigenspace of the Hessian
    (Gur-Ari et al. 2018), the random part keeps every eigenvector in reach (Lanczos cannot
    find one orthogonal to its start vector). Saves one to three HVPs on trained networks."""
    g = op.problem.gradient().to("cpu", torch.float64).numpy()
    gn = float(np.linalg.norm(g))
    if not np.isfinite(gn) or gn == 0.0:
        return v0
    return g / gn + v0 / np.linalg.norm(v0)


def hessian_eigenvalues(model: nn.Module, params: Mapping[str, torch.Tensor], data,
                        loss_fn=None, *, k: int = 1, which: str = "LA", tol: float = 1e-6,
                        method: str = "auto", max_steps: int = 80, ncv: int | None = None,
                        maxiter: int | None = None, mask=None,
                        param_filter: ParamFilter | None = None, device="cpu", seed: int = 0,
                        batch_size=None, residuals: bool = True,
                        callback: Callable[[int], None] | None = None,
                        gauge_fixed: bool = False, spec=None, canon_kwargs=None):
    """The ``k`` largest (``which="LA"``), smallest (``"SA"``, negative curvature) or both
    (``"both"``: ``k`` from each end) Hessian eigenvalues, to relative accuracy ``tol``.

    ``method="lanczos"``: Lanczos with full reorthogonalisation in float64, stopped after the
    first step at which every wanted Ritz value is within ``tol`` (Kato-Temple bound); cheap
    when the extreme eigenvalues are separated (the usual case for ``lambda_max``).
    ``method="arpack"``: implicitly restarted Lanczos, ``scipy.sparse.linalg.eigsh`` (ARPACK;
    Lehoucq et al. 1998), ``tol`` is ARPACK's, ``ncv``/``maxiter`` are passed through.
    ``"auto"`` (default): for ``which="LA"`` Lanczos for up to ``max_steps`` HVPs, then ARPACK
    restarted from the best Ritz vector; ARPACK for ``"SA"``/``"both"`` (the bottom of a
    network's spectrum is a dense cluster around 0, where restarts pay off). The start vector
    is a seeded Gaussian vector, plus the normalised gradient for ``"LA"`` with Lanczos (the
    gradient lies mostly in the top eigenspace; Gur-Ari et al. 2018). With ``residuals=True``
    one extra HVP per eigenpair measures ``||Hv - lambda v|| / |lambda|`` (counted in
    ``n_hvp``). Problems with ``n <= 8`` or ``n <= #wanted + 1`` are solved densely from ``n``
    HVPs. Returns :class:`EigResult` (or :class:`GaugeFixed` of two).
    """
    if which not in ("LA", "SA", "both"):
        raise FlatnessOptionError(f"which must be 'LA', 'SA' or 'both', got {which!r}")
    if method not in ("auto", "lanczos", "arpack"):
        raise FlatnessOptionError(f"method must be 'auto', 'lanczos' or 'arpack', got {method!r}")
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise FlatnessOptionError(f"k must be a positive integer, got {k!r}")
    if not tol >= 0:
        raise FlatnessOptionError(f"tol must be >= 0, got {tol}")

    def run(p):
        op = hvp(model, p, data, loss_fn, mask=mask, param_filter=param_filter, device=device,
                 batch_size=batch_size, callback=callback)
        n = op.shape[0]
        n_eig = 2 * k if which == "both" else k
        if n_eig > n:
            raise FlatnessOptionError(f"k={k} ({n_eig} eigenvalues) is larger than the number "
                                      f"of parameters measured ({n})")
        if n <= n_eig + 1 or n <= 8:
            h = op.matmat(np.eye(n))
            w, vecs = np.linalg.eigh((h + h.T) / 2)
            idx = _wanted(w, k, which)
            values, vectors = w[idx], vecs[:, idx]
        else:
            v0 = np.random.default_rng(seed).standard_normal(n)
            if which == "LA" and method != "arpack":
                v0 = _gradient_start(op, v0)
            done = False
            # early-stopped Lanczos is reliable for the well separated top of the spectrum;
            # the clustered bottom (near-zero/negative curvature) goes to ARPACK
            if method == "lanczos" or (method == "auto" and which == "LA"):
                values, vectors, done = _lanczos_extreme(op, k, which, max(tol, 1e-14), v0,
                                                         max_steps if method == "auto" else n)
                if not done:
                    v0 = vectors.sum(axis=1) if vectors.size else v0
            if not done:
                arpack_which = {"LA": "LA", "SA": "SA", "both": "BE"}[which]
                n_cv = ncv if ncv is not None else min(n, max(2 * n_eig + 1, n_eig + 10))
                try:
                    values, vectors = scipy.sparse.linalg.eigsh(
                        op, k=n_eig, which=arpack_which, tol=tol, v0=v0, ncv=n_cv,
                        maxiter=maxiter)
                except scipy.sparse.linalg.ArpackNoConvergence as e:
                    raise FlatnessError(f"Lanczos did not converge to tol={tol} after "
                                        f"{op.n_hvp} HVPs ({len(e.eigenvalues)} of {n_eig} "
                                        f"eigenvalues); raise maxiter or tol") from e
            order = np.argsort(values)
            values, vectors = values[order], vectors[:, order]
        vectors = vectors / np.linalg.norm(vectors, axis=0, keepdims=True)
        res = _residuals(op, values, vectors) if residuals else np.full(len(values), np.nan)
        return EigResult(values=np.asarray(values), vectors=np.asarray(vectors),
                         n_hvp=op.n_hvp, residuals=res, n_params=n)

    return _maybe_gauge_fixed(run, model, params, data, gauge_fixed, spec, mask, canon_kwargs)


# ----------------------------------------------------------------------------- trace

def _rademacher(n: int, count: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, (count, n), generator=gen, dtype=torch.float64) * 2 - 1


def hessian_trace(model: nn.Module, params: Mapping[str, torch.Tensor], data, loss_fn=None, *,
                  n_samples: int = 100, method: str = "hutchinson", mask=None,
                  param_filter: ParamFilter | None = None, device="cpu", seed: int = 0,
                  batch_size=None, callback: Callable[[int], None] | None = None,
                  gauge_fixed: bool = False, spec=None, canon_kwargs=None):
    """Stochastic trace ``tr(H)``.

    ``"hutchinson"`` (Hutchinson 1989): ``mean_i z_i^T H z_i`` over ``n_samples`` Rademacher
    probes; stderr = sample std / sqrt(n_samples). ``"hutch++"`` (Meyer et al. 2021): with
    ``m = n_samples // 3``, ``Q = orth(H S)`` for ``m`` Rademacher columns ``S``, then
    ``tr(Q^T H Q) + mean_i g_i^T (I-QQ^T) H (I-QQ^T) g_i`` over ``m`` more probes: the low-rank
    part is exact, only the (smaller) residual is sampled; stderr is that of the residual mean.
    """
    if method not in ("hutchinson", "hutch++"):
        raise FlatnessOptionError(f"method must be 'hutchinson' or 'hutch++', got {method!r}")
    min_samples = 2 if method == "hutchinson" else 6
    if not isinstance(n_samples, (int, np.integer)) or n_samples < min_samples:
        raise FlatnessOptionError(f"n_samples must be an integer >= {min_samples} for "
                                  f"{method}, got {n_samples!r}")

    def run(p):
        op = hvp(model, p, data, loss_fn, mask=mask, param_filter=param_filter, device=device,
                 batch_size=batch_size, callback=callback)
        n = op.shape[0]
        gen = torch.Generator().manual_seed(int(seed))
        dev, dt = op.problem.device, op.problem.dtype
        if method == "hutchinson":
            z = _rademacher(n, n_samples, gen)
            samples = np.array([float(torch.dot(op.torch_matvec(zi.to(dev, dt)).double().cpu(), zi))
                                for zi in z])
            return TraceResult(float(samples.mean()), float(samples.std(ddof=1) /
                               math.sqrt(len(samples))), op.n_hvp, method)
        m = n_samples // 3
        s = _rademacher(n, m, gen).T.numpy()
        q, _ = np.linalg.qr(op.matmat(s))
        hq = op.matmat(q)
        low_rank = float(np.trace(q.T @ hq))
        g = _rademacher(n, n_samples - 2 * m, gen).T.numpy()
        g = g - q @ (q.T @ g)
        samples = np.einsum("ij,ij->j", g, op.matmat(g))
        return TraceResult(low_rank + float(samples.mean()),
                           float(samples.std(ddof=1) / math.sqrt(len(samples))), op.n_hvp,
                           method)

    return _maybe_gauge_fixed(run, model, params, data, gauge_fixed, spec, mask, canon_kwargs)


# ----------------------------------------------------------------------------- SLQ density

def _lanczos(op: HessianOperator, v0: np.ndarray, steps: int):
    """``steps`` Lanczos steps with full reorthogonalisation in float64: (alpha, beta)."""
    n = op.shape[0]
    steps = min(steps, n)
    f64 = dict(dtype=torch.float64, device=op.problem.device)
    basis = torch.zeros((steps, n), **f64)
    alpha, beta = [], []
    v = torch.as_tensor(v0, **f64)
    v = v / v.norm()
    prev, b = torch.zeros(n, **f64), 0.0
    for j in range(steps):
        basis[j] = v
        w = op.torch_matvec(v).to(torch.float64)
        a = float(w @ v)
        w = w - a * v - b * prev
        for _ in range(2):  # twice is enough (Parlett 1998): keeps the basis orthogonal
            w -= basis[:j + 1].T @ (basis[:j + 1] @ w)
        alpha.append(a)
        b = float(w.norm())
        if j == steps - 1 or b < 1e-10 * max(1.0, abs(a)):
            break
        beta.append(b)
        prev, v = v, w / b
    return np.asarray(alpha), np.asarray(beta)


def spectral_density(model: nn.Module, params: Mapping[str, torch.Tensor], data, loss_fn=None,
                     *, n_runs: int = 4, lanczos_steps: int = 60, n_grid: int = 1000,
                     sigma: float | None = None, mask=None,
                     param_filter: ParamFilter | None = None, device="cpu", seed: int = 0,
                     batch_size=None, callback: Callable[[int], None] | None = None,
                     gauge_fixed: bool = False, spec=None, canon_kwargs=None):
    """Hessian spectral density by stochastic Lanczos quadrature (Ghorbani et al. 2019).

    For each of ``n_runs`` Rademacher start vectors, ``lanczos_steps`` Lanczos steps give the
    tridiagonal ``T = S diag(theta) S^T``; the quadrature nodes ``theta_i`` carry weights
    ``tau_i = S[0, i]^2``, and the density is ``mean_runs sum_i tau_i N(t; theta_i, sigma^2)``
    on a uniform grid spanning the nodes (``sigma`` default: 1% of the node range).
    """
    if not isinstance(n_runs, (int, np.integer)) or n_runs < 1:
        raise FlatnessOptionError(f"n_runs must be a positive integer, got {n_runs!r}")
    if not isinstance(lanczos_steps, (int, np.integer)) or lanczos_steps < 2:
        raise FlatnessOptionError(f"lanczos_steps must be an integer >= 2, got {lanczos_steps!r}")
    if sigma is not None and not sigma > 0:
        raise FlatnessOptionError(f"sigma must be > 0, got {sigma}")

    def run(p):
        op = hvp(model, p, data, loss_fn, mask=mask, param_filter=param_filter, device=device,
                 batch_size=batch_size, callback=callback)
        n = op.shape[0]
        rng = np.random.default_rng(seed)
        nodes = np.full((n_runs, min(lanczos_steps, n)), np.nan)
        weights = np.zeros_like(nodes)
        for r in range(n_runs):
            a, b = _lanczos(op, rng.choice([-1.0, 1.0], size=n), lanczos_steps)
            theta, s = scipy.linalg.eigh_tridiagonal(a, b)
            nodes[r, :len(theta)] = theta
            weights[r, :len(theta)] = s[0] ** 2
        lo, hi = np.nanmin(nodes), np.nanmax(nodes)
        width = max(hi - lo, 1e-12 * max(1.0, abs(hi)))
        sig = sigma if sigma is not None else 0.01 * width
        grid = np.linspace(lo - 5 * sig, hi + 5 * sig, n_grid)
        valid = ~np.isnan(nodes)
        th, wt = nodes[valid], weights[valid]
        dens = np.zeros(n_grid)
        for chunk in range(0, len(th), 256):
            t, w = th[chunk:chunk + 256], wt[chunk:chunk + 256]
            dens += (w[None, :] * np.exp(-0.5 * ((grid[:, None] - t[None, :]) / sig) ** 2)
                     ).sum(1)
        dens /= n_runs * sig * math.sqrt(2 * math.pi)
        return Density(grid=grid, density=dens, nodes=nodes, weights=weights, sigma=float(sig),
                       n_hvp=op.n_hvp)

    return _maybe_gauge_fixed(run, model, params, data, gauge_fixed, spec, mask, canon_kwargs)


# ----------------------------------------------------------------------------- sharpness

def _check_rho(rho):
    if not isinstance(rho, (int, float, np.floating)) or not math.isfinite(rho) or rho <= 0:
        raise FlatnessOptionError(f"rho must be a finite number > 0, got {rho!r}")


def _split_batches(problem: _Problem, batches):
    """``batches=None``: all data as one sharpness problem; ``m``: m-sharpness over m chunks."""
    if batches is None:
        return [problem.batches]
    if not isinstance(batches, (int, np.integer)) or batches < 1:
        raise FlatnessOptionError(f"batches must be a positive integer or None, got {batches!r}")
    x = torch.cat([b[0] for b in problem.batches])
    y = torch.cat([b[1] for b in problem.batches])
    if batches > len(y):
        raise FlatnessOptionError(f"batches={batches} is more than the {len(y)} data points")
    return [[(xc, yc)] for xc, yc in zip(torch.tensor_split(x, batches),
                                         torch.tensor_split(y, batches))]


def _loss_on(problem, tensors, batches):
    n = sum(len(y) for _, y in batches)
    total = 0.0
    with torch.no_grad(), _eval_mode(problem.model):
        for x, y in batches:
            total += float(problem._batch_loss(tensors, x, y)) * len(y)
    return total / n


def _project(u, rho, norm):
    if norm == "linf":
        return u.clamp(-rho, rho)
    nrm = float(u.norm())
    return u if nrm <= rho else u * (rho / nrm)


def _worst_case(problem, w, c, rho, norm, steps, batches):
    """max over ``||u||_p <= rho`` of ``L(w + c*u) - L(w)``: projected (normalised) gradient
    ascent, step ``rho`` halved whenever a step does not increase the loss."""
    base = _loss_on(problem, problem.unflatten(w), batches)
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
            val = _loss_on(problem, problem.unflatten(w + c * cand), batches)
            if math.isfinite(val) and val > cur:
                u, cur = cand, val
                break
            step /= 2
        else:
            break
        best = max(best, cur - base)
    return best


def _average_case(problem, w, c, rho, norm, n_samples, batches, gen):
    base = _loss_on(problem, problem.unflatten(w), batches)
    vals = []
    for _ in range(n_samples):
        if norm == "l2":
            u = torch.randn(w.shape, generator=gen, dtype=torch.float64) * rho
        else:
            u = (torch.rand(w.shape, generator=gen, dtype=torch.float64) * 2 - 1) * rho
        u = u.to(w.device, w.dtype)
        vals.append(_loss_on(problem, problem.unflatten(w + c * u), batches) - base)
    return float(np.mean(vals))


def sharpness(model: nn.Module, params: Mapping[str, torch.Tensor], data, loss_fn=None, *,
              rho: float, kind: str = "worst", adaptive: bool = True, norm: str = "l2",
              batches: int | None = None, steps: int = 20, n_samples: int = 10, mask=None,
              param_filter: ParamFilter | None = None, device="cpu", seed: int = 0,
              batch_size=None, gauge_fixed: bool = False, spec=None, canon_kwargs=None):
    """Sharpness as in Andriushchenko et al. (2023):

    * worst case: ``S = max_{||delta / c||_p <= rho} L(w + delta) - L(w)``, approximated by
      ``steps`` steps of projected normalised-gradient ascent (sign steps for ``linf``) with a
      step size starting at ``rho`` and halved whenever the loss does not increase;
    * average case: ``S = E_delta L(w + delta) - L(w)`` with ``delta = c * u``, ``u ~ N(0,
      rho^2 I)`` (``l2``) or ``U[-rho, rho]`` (``linf``), over ``n_samples`` draws.

    ``adaptive=True`` uses ``c = |w|`` (elementwise), which makes ``S`` invariant to ReLU
    rescalings (the perturbed nets are rescalings of each other); ``adaptive=False`` uses
    ``c = 1``. ``batches=m`` computes it on ``m`` disjoint chunks and averages (m-sharpness);
    ``None`` uses all data at once. Returns a float (or :class:`GaugeFixed` of floats).
    """
    _check_rho(rho)
    if kind not in ("worst", "average"):
        raise FlatnessOptionError(f"kind must be 'worst' or 'average', got {kind!r}")
    if norm not in ("l2", "linf"):
        raise FlatnessOptionError(f"norm must be 'l2' or 'linf', got {norm!r}")
    if steps < 1 or n_samples < 1:
        raise FlatnessOptionError("steps and n_samples must be >= 1")

    def run(p):
        problem = _Problem(model, p, data, loss_fn, mask=mask, param_filter=param_filter,
                           device=device, batch_size=batch_size)
        problem.check_finite()
        w = problem.free_values()
        c = w.abs() if adaptive else torch.ones_like(w)
        gen = torch.Generator().manual_seed(int(seed))
        vals = []
        for chunk in _split_batches(problem, batches):
            if kind == "worst":
                vals.append(_worst_case(problem, w, c, rho, norm, steps, chunk))
            else:
                vals.append(_average_case(problem, w, c, rho, norm, n_samples, chunk, gen))
        return float(np.mean(vals))

    return _maybe_gauge_fixed(run, model, params, data, gauge_fixed, spec, mask, canon_kwargs)


def epsilon_sharpness(model: nn.Module, params: Mapping[str, torch.Tensor], data, loss_fn=None,
                      *, epsilon: float = 1e-3, steps: int = 20, mask=None,
                      param_filter: ParamFilter | None = None, device="cpu", batch_size=None,
                      gauge_fixed: bool = False, spec=None, canon_kwargs=None):
    """Keskar et al. (2017) epsilon-sharpness, in percent:
    ``100 * (max_{y in C} L(w + y) - L(w)) / (1 + L(w))`` over the box
    ``C = {|y_i| <= epsilon (|w_i| + 1)}`` (full space, ``A = I``), by the same projected
    ascent as :func:`sharpness` (Keskar et al. used L-BFGS-B)."""
    _check_rho(epsilon)

    def run(p):
        problem = _Problem(model, p, data, loss_fn, mask=mask, param_filter=param_filter,
                           device=device, batch_size=batch_size)
        base = problem.check_finite()
        w = problem.free_values()
        rise = _worst_case(problem, w, w.abs() + 1, epsilon, "linf", steps, problem.batches)
        return 100.0 * rise / (1.0 + base)

    return _maybe_gauge_fixed(run, model, params, data, gauge_fixed, spec, mask, canon_kwargs)


# ----------------------------------------------------------------------------- landscapes

def loss_at(model: nn.Module, params: Mapping[str, torch.Tensor], data, loss_fn=None, *,
            device="cpu", batch_size=None) -> float:
    """Mean loss over ``data`` (eval mode)."""
    problem = _Problem(model, params, data, loss_fn, device=device, batch_size=batch_size)
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


def _direction(problem, direction, normalization, gen, model, params, data, loss_fn, mask,
               param_filter, device, seed, batch_size):
    weights = [problem.base[k] for k in problem.names]
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
        eig = hessian_eigenvalues(model, params, data, loss_fn, k=1, mask=mask,
                                  param_filter=param_filter, device=device, seed=seed,
                                  batch_size=batch_size, residuals=False)
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
                 batch_size=None, gauge_fixed: bool = False, spec=None, canon_kwargs=None):
    """Loss along ``params + alpha * d`` (Goodfellow et al. 2015; Li et al. 2018).

    ``direction``: ``"random"`` (Gaussian, filter-normalised), ``"hessian"`` (top eigenvector,
    normalised likewise) or a params dict ``params_b`` (``d = params_b - params``, never
    normalised, so ``alpha = 1`` is ``params_b``). Biases/norm parameters get no component
    under filter/layer normalisation. ``alphas`` default: 41 points in ``[-1, 1]``.
    """
    alphas = np.linspace(-1, 1, 41) if alphas is None else np.asarray(alphas, dtype=float)

    def run(p):
        problem = _Problem(model, p, data, loss_fn, mask=mask, param_filter=param_filter,
                           device=device, batch_size=batch_size)
        problem.check_finite()
        gen = torch.Generator().manual_seed(int(seed))
        d, name, how = _direction(problem, direction, normalization, gen, model, p, data,
                                  loss_fn, mask, param_filter, device, seed, batch_size)
        w = [problem.base[k] for k in problem.names]
        losses = [problem.loss([wi + float(a) * di for wi, di in zip(w, d)]) for a in alphas]
        return Landscape1D(alphas=alphas, losses=np.asarray(losses), direction=name,
                           normalization=how)

    return _maybe_gauge_fixed(run, model, params, data, gauge_fixed, spec, mask, canon_kwargs)


def landscape_2d(model: nn.Module, params: Mapping[str, torch.Tensor], data, loss_fn=None, *,
                 normalization: str | None = "filter", alphas: Sequence[float] | None = None,
                 betas: Sequence[float] | None = None, mask=None,
                 param_filter: ParamFilter | None = None, device="cpu", seed: int = 0,
                 batch_size=None, gauge_fixed: bool = False, spec=None, canon_kwargs=None):
    """Loss on the plane ``params + alpha * d1 + beta * d2`` spanned by two independent
    Gaussian directions, each filter-normalised (Li et al. 2018). Default grid 21 x 21 on
    ``[-1, 1]^2``."""
    alphas = np.linspace(-1, 1, 21) if alphas is None else np.asarray(alphas, dtype=float)
    betas = alphas if betas is None else np.asarray(betas, dtype=float)

    def run(p):
        problem = _Problem(model, p, data, loss_fn, mask=mask, param_filter=param_filter,
                           device=device, batch_size=batch_size)
        problem.check_finite()
        gen = torch.Generator().manual_seed(int(seed))
        args = (model, p, data, loss_fn, mask, param_filter, device, seed, batch_size)
        d1, _, how = _direction(problem, "random", normalization, gen, *args)
        d2, _, _ = _direction(problem, "random", normalization, gen, *args)
        w = [problem.base[k] for k in problem.names]
        losses = np.array([[problem.loss([wi + float(a) * x + float(b) * y
                                          for wi, x, y in zip(w, d1, d2)]) for a in alphas]
                           for b in betas])
        return Landscape2D(alphas=alphas, betas=betas, losses=losses, normalization=how)

    return _maybe_gauge_fixed(run, model, params, data, gauge_fixed, spec, mask, canon_kwargs)

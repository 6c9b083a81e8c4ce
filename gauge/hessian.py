"""The Hessian of the mean loss at a checkpoint: its extreme eigenvalues, trace and spectral
density -- raw and gauge-fixed.

All measures take ``(model, params, data, loss_fn)`` as described in :mod:`gauge.objective`:
``model`` runs in eval mode for its forward pass only, ``params`` is a state_dict (only
``nn.Parameter`` entries are differentiated), ``data`` is a fixed dataset in any form of
:mod:`gauge.batches` and ``loss_fn(logits, targets)`` returns the batch mean (default:
cross-entropy, or the causal language-model loss for next-token ``labels``); ``logits_fn``
picks the logits out of the model's outputs. With ``batch_size=None`` (default) the data is
one batch and the double-backprop graph is built once and reused for every Hessian-vector
product (HVP); otherwise the HVP is the size-weighted mean over batches (the Hessian of the mean
loss). ``mask`` (bool tensors by name, e.g. a ticket's) restricts the parameter space to the
unpruned entries: the measured Hessian is ``P H P^T`` with ``P`` selecting those entries, and
pruned entries are set to 0 in the evaluation point. ``param_filter(name, tensor) -> bool``
drops whole tensors. ``gauge_fixed=True`` evaluates the measure at ``params`` and at the
balanced point of its ReLU-rescaling orbit and returns :class:`~gauge.objective.GaugeFixed`.

Measures: the HVP operator :func:`hvp` (a ``scipy.sparse.linalg.LinearOperator`` computing
float32 HVPs by double backprop while the Lanczos basis is kept in float64), extreme
eigenvalues :func:`hessian_eigenvalues` (Lanczos with early stopping, then implicitly
restarted Lanczos, ``eigsh``), trace :func:`hessian_trace` (Hutchinson 1989; Hutch++, Meyer et
al. 2021) and spectral density :func:`spectral_density` (stochastic Lanczos quadrature,
Ghorbani et al. 2019). One Lanczos iteration, :func:`lanczos`, serves both.

Each measure also takes ``curvature="ggn"``: the generalised Gauss-Newton matrix
``G = J^T H_out J`` (Schraudolph 2002; Martens 2020) in place of ``H``, with ``J`` the Jacobian
of the network's outputs and ``H_out`` the Hessian of the loss in the outputs
(:class:`GaussNewtonObjective`); ``G`` is positive semi-definite for a loss convex in the
outputs (cross-entropy, squared error). And ``blocks``: the measure of each diagonal block
``H_bb`` (the curvature of the loss in block ``b``'s parameters with the others held fixed),
blocks per layer (``"layer"``), per tensor (``"tensor"``) or named groups of glob patterns
(:func:`parameter_blocks`), returned as :class:`BlockCurvature`.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import scipy.linalg
import scipy.sparse.linalg
import torch
from torch import nn

from gauge.batches import batch_loss, forward, logits_of
from gauge.errors import FlatnessError, FlatnessOptionError
from gauge.objective import Objective, ParamFilter, eval_mode, raw_and_gauge_fixed
from gauge.results import Result

__all__ = ["HessianOperator", "EigResult", "TraceResult", "Density", "hvp", "lanczos",
           "hessian_eigenvalues", "hessian_trace", "spectral_density", "BlockCurvature",
           "GaussNewtonObjective", "parameter_blocks", "CURVATURES"]

#: The curvature matrices a measure can look at.
CURVATURES = ("hessian", "ggn")


# ----------------------------------------------------------------------------- results

@dataclass(frozen=True)
class EigResult(Result):
    """Extreme Hessian eigenvalues (ascending) with unit eigenvectors (columns, in the
    flattened free-parameter coordinates of :class:`HessianOperator`), the number of HVPs used
    and the relative residuals ``||H v - lambda v|| / max(|lambda|, eps)``."""

    _exclude = ("vectors",)

    values: np.ndarray
    vectors: np.ndarray = field(repr=False)
    n_hvp: int
    residuals: np.ndarray
    n_params: int = 0


@dataclass(frozen=True)
class TraceResult(Result):
    """Stochastic estimate of ``tr(H)`` with its standard error and HVP count."""

    estimate: float
    stderr: float
    n_hvp: int
    method: str = "hutchinson"


@dataclass(frozen=True)
class Density(Result):
    """Spectral density on ``grid`` (integrates to ~1), from the Ritz ``nodes``/``weights``
    of each SLQ run (arrays of shape ``(n_runs, lanczos_steps)``)."""

    grid: np.ndarray
    density: np.ndarray
    nodes: np.ndarray = field(repr=False)
    weights: np.ndarray = field(repr=False)
    sigma: float = 0.0
    n_hvp: int = 0


# ----------------------------------------------------------------------------- the operator

class HessianOperator(scipy.sparse.linalg.LinearOperator):
    """The Hessian of the mean loss in the free coordinates, as a float64 ``LinearOperator``.

    Each matvec is one float32 (params' dtype) HVP by double backprop (Pearlmutter 1994);
    ``n_hvp`` counts them. ``callback(n_hvp)`` is called after each. ``unflatten(vec)`` maps a
    vector (e.g. an eigenvector) back to a ``{name: tensor}`` dict of full-shape tensors.
    """

    def __init__(self, problem: Objective, callback: Callable[[int], None] | None = None):
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
        return self.torch_matvec(t).to("cpu", torch.float64).numpy()

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
        callback: Callable[[int], None] | None = None,
        curvature: str = "hessian", logits_fn=None) -> HessianOperator:
    """The Hessian ``H = d^2 L / d theta^2`` of the mean loss on ``data`` as a LinearOperator
    (``curvature="ggn"``: the generalised Gauss-Newton matrix, :class:`GaussNewtonObjective`).

    Raises :class:`NonFiniteLossError` if the loss at ``params`` is not finite,
    :class:`EmptyParamsError` if mask/param_filter select nothing.
    """
    _check_curvature(curvature)
    kind = Objective if curvature == "hessian" else GaussNewtonObjective
    problem = kind(model, params, data, loss_fn, mask=mask, param_filter=param_filter,
                   device=device, batch_size=batch_size, logits_fn=logits_fn)
    if len(problem.batches) == 1:
        problem.graph()  # checks the loss and gradient, builds the graph once
    else:
        problem.check_finite()
    return HessianOperator(problem, callback)


# ----------------------------------------------------------------------------- Lanczos

def lanczos(op: HessianOperator, v0, steps: int, stop=None):
    """Lanczos tridiagonalisation (Lanczos 1950) with full reorthogonalisation in float64.

    From ``v0``, step ``j`` extends the orthonormal basis ``V`` of the Krylov space by one
    vector; ``T = V^T H V`` is tridiagonal with diagonal ``alpha`` and off-diagonal ``beta``.
    Each new vector is orthogonalised against the whole basis once more, and a second time only
    when the first pass cancelled much of it ("twice is enough", Kahan; Parlett 1998). After
    each step ``stop(alpha, beta, b)`` (``b`` the norm of the next residual) may end the run;
    so does an invariant subspace (``b ~ 0``) or ``steps`` steps. Returns ``(alpha, beta, V,
    stopped)``: ``m`` diagonal and ``m - 1`` off-diagonal entries, the ``m`` basis vectors as
    rows (float64, on the HVP's device) and whether ``stop`` or invariance ended the run.
    """
    n = op.shape[0]
    steps = min(steps, n)
    # the basis lives in float64 torch on the HVP's device: no host round trips, no BLAS
    # thread pool contention for the (steps x n) reorthogonalisation
    f64 = dict(dtype=torch.float64, device=op.problem.device)
    basis = torch.empty((steps, n), **f64)  # only rows already written are read
    alpha, beta = [], []
    v = torch.as_tensor(v0, **f64)
    v = v / v.norm()
    prev, b = torch.zeros(n, **f64), 0.0
    for j in range(steps):
        basis[j] = v
        w = op.torch_matvec(v).to(torch.float64)
        a = float(w @ v)
        w.sub_(v, alpha=a).sub_(prev, alpha=b)
        before = float(w.norm())
        q = basis[:j + 1]
        w -= q.T @ (q @ w)
        b = float(w.norm())
        if b < 0.7071 * before:
            w -= q.T @ (q @ w)
            b = float(w.norm())
        alpha.append(a)
        invariant = b <= 1e-12 * max(1.0, max(abs(x) for x in alpha))
        stopped = invariant or (stop is not None and stop(alpha, beta, b))
        if stopped or j == steps - 1:
            break
        beta.append(b)
        prev, v = v, w / b
    return np.asarray(alpha), np.asarray(beta), basis[:len(alpha)], stopped


def _wanted(theta: np.ndarray, k: int, which: str) -> np.ndarray:
    m = len(theta)
    if which == "LA":
        return np.arange(max(0, m - k), m)
    if which == "SA":
        return np.arange(min(k, m))
    return np.unique(np.r_[np.arange(min(k, m)), np.arange(max(0, m - k), m)])


class _RitzConverged:
    """``stop`` test for :func:`lanczos`: every wanted Ritz value accurate to ``tol`` relative.

    After step ``j`` the Ritz pair ``(theta_i, V s_i)`` has residual norm
    ``r_i = beta_j |s_i[-1]|`` and ``|theta_i - lambda| <= min(r_i, r_i^2 / gap_i)``
    (Kato-Temple; Parlett 1998, ch. 11), with ``gap_i`` the distance to the nearest other
    Ritz value. The Ritz gap overstates the true gap while part of the spectrum is unresolved,
    so a step's bound is only trusted once the previous step's bound held: the wanted Ritz
    values moved by no more than it allowed.
    """

    def __init__(self, k: int, which: str, tol: float):
        self.k, self.which, self.tol = k, which, tol
        self.n_want = 2 * k if which == "both" else k
        self.prev_theta = self.prev_bound = None

    def __call__(self, alpha, beta, b) -> bool:
        theta, s = scipy.linalg.eigh_tridiagonal(np.asarray(alpha), np.asarray(beta),
                                                 check_finite=False)
        idx = _wanted(theta, self.k, self.which)
        if len(idx) < self.n_want or len(theta) <= self.n_want:
            return False
        r = b * np.abs(s[-1, idx])
        d = np.diff(theta)  # theta is ascending: the nearest other Ritz value is a neighbour
        gap = np.minimum(np.r_[np.inf, d][idx], np.r_[d, np.inf][idx])
        bound = np.minimum(r, r ** 2 / np.maximum(gap, 1e-300))
        scale = self.tol * np.maximum(np.abs(theta[idx]), 1e-12)
        held = self.prev_theta is not None and np.all(
            np.abs(theta[idx] - self.prev_theta) <= np.maximum(self.prev_bound, scale))
        if held and np.all(bound <= scale):
            return True
        self.prev_theta, self.prev_bound = theta[idx], bound
        return False


def _lanczos_extreme(op: HessianOperator, k: int, which: str, tol: float, v0: np.ndarray,
                     max_steps: int):
    """The wanted Ritz pairs of :func:`lanczos` stopped by :class:`_RitzConverged`:
    ``(values, vectors, converged)``."""
    alpha, beta, basis, converged = lanczos(op, v0, max_steps, _RitzConverged(k, which, tol))
    theta, s = scipy.linalg.eigh_tridiagonal(alpha, beta, check_finite=False)
    idx = _wanted(theta, k, which)
    vectors = (basis.T @ torch.as_tensor(s[:, idx], dtype=basis.dtype, device=basis.device))
    return theta[idx], vectors.cpu().numpy(), converged


# ----------------------------------------------------------------------------- eigenvalues

def _residuals(op: HessianOperator, values, vectors) -> np.ndarray:
    res = []
    for lam, v in zip(values, vectors.T):
        hv = op.matvec(v)
        res.append(float(np.linalg.norm(hv - lam * v) / max(abs(lam), 1e-30)))
    return np.asarray(res)


def _gradient_start(op: HessianOperator, v0: np.ndarray) -> np.ndarray:
    """``g/|g| + v0/|v0|``: the gradient lies mostly in the top eigenspace of the Hessian
    (Gur-Ari et al. 2018), the random part keeps every eigenvector in reach (Lanczos cannot
    find one orthogonal to its start vector). Saves one to three HVPs on trained networks."""
    g = op.problem.gradient().to("cpu", torch.float64).numpy()
    gn = float(np.linalg.norm(g))
    if not np.isfinite(gn) or gn == 0.0:
        return v0
    return g / gn + v0 / np.linalg.norm(v0)


def _dense_eig(op: HessianOperator, k: int, which: str):
    """All ``n`` columns of ``H`` (``n`` HVPs), then a dense symmetric eigensolve."""
    h = op.matmat(np.eye(op.shape[0]))
    w, vecs = np.linalg.eigh((h + h.T) / 2)
    idx = _wanted(w, k, which)
    return w[idx], vecs[:, idx]


def _iterative_eig(op: HessianOperator, k: int, which: str, tol: float, method: str,
                   max_steps: int, ncv, maxiter, seed: int):
    """Early-stopped Lanczos and/or ARPACK (see :func:`hessian_eigenvalues`), ascending."""
    n, n_eig = op.shape[0], (2 * k if which == "both" else k)
    v0 = np.random.default_rng(seed).standard_normal(n)
    if which == "LA" and method != "arpack":
        v0 = _gradient_start(op, v0)
    # early-stopped Lanczos is reliable for the well separated top of the spectrum;
    # the clustered bottom (near-zero/negative curvature) goes to ARPACK
    if method == "lanczos" or (method == "auto" and which == "LA"):
        values, vectors, done = _lanczos_extreme(op, k, which, max(tol, 1e-14), v0,
                                                 max_steps if method == "auto" else n)
        if done:
            return values, vectors
        v0 = vectors.sum(axis=1) if vectors.size else v0
    arpack_which = {"LA": "LA", "SA": "SA", "both": "BE"}[which]
    n_cv = ncv if ncv is not None else min(n, max(2 * n_eig + 1, n_eig + 10))
    try:
        values, vectors = scipy.sparse.linalg.eigsh(op, k=n_eig, which=arpack_which, tol=tol,
                                                    v0=v0, ncv=n_cv, maxiter=maxiter)
    except scipy.sparse.linalg.ArpackNoConvergence as e:
        raise FlatnessError(f"Lanczos did not converge to tol={tol} after {op.n_hvp} HVPs "
                            f"({len(e.eigenvalues)} of {n_eig} eigenvalues); raise maxiter or "
                            f"tol") from e
    order = np.argsort(values)
    return values[order], vectors[:, order]


def _check_eig_options(k, which, tol, method) -> None:
    if which not in ("LA", "SA", "both"):
        raise FlatnessOptionError(f"which must be 'LA', 'SA' or 'both', got {which!r}")
    if method not in ("auto", "lanczos", "arpack"):
        raise FlatnessOptionError(f"method must be 'auto', 'lanczos' or 'arpack', got {method!r}")
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise FlatnessOptionError(f"k must be a positive integer, got {k!r}")
    if not tol >= 0:
        raise FlatnessOptionError(f"tol must be >= 0, got {tol}")


def hessian_eigenvalues(model: nn.Module, params: Mapping[str, torch.Tensor], data,
                        loss_fn=None, *, k: int = 1, which: str = "LA", tol: float = 1e-6,
                        method: str = "auto", max_steps: int = 80, ncv: int | None = None,
                        maxiter: int | None = None, mask=None,
                        param_filter: ParamFilter | None = None, device="cpu", seed: int = 0,
                        batch_size=None, residuals: bool = True,
                        callback: Callable[[int], None] | None = None,
                        gauge_fixed: bool = False, spec=None, canon_kwargs=None,
                        blocks=None, curvature: str = "hessian", logits_fn=None):
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
    HVPs. ``blocks``/``curvature``: see the module docstring. Returns :class:`EigResult`
    (per block: :class:`BlockCurvature`; or :class:`~gauge.objective.GaugeFixed` of two).
    """
    _check_eig_options(k, which, tol, method)

    def run(p, pf):
        op = hvp(model, p, data, loss_fn, mask=mask, param_filter=pf, device=device,
                 batch_size=batch_size, callback=callback, curvature=curvature,
                 logits_fn=logits_fn)
        n = op.shape[0]
        n_eig = 2 * k if which == "both" else k
        if n_eig > n:
            raise FlatnessOptionError(f"k={k} ({n_eig} eigenvalues) is larger than the number "
                                      f"of parameters measured ({n})")
        if n <= n_eig + 1 or n <= 8:
            values, vectors = _dense_eig(op, k, which)
        else:
            values, vectors = _iterative_eig(op, k, which, tol, method, max_steps, ncv,
                                             maxiter, seed)
        vectors = vectors / np.linalg.norm(vectors, axis=0, keepdims=True)
        res = _residuals(op, values, vectors) if residuals else np.full(len(values), np.nan)
        return EigResult(values=np.asarray(values), vectors=np.asarray(vectors),
                         n_hvp=op.n_hvp, residuals=res, n_params=n)

    return raw_and_gauge_fixed(_per_block(run, model, blocks, param_filter, curvature), model,
                               params, data, gauge_fixed, spec, mask, canon_kwargs)


# ----------------------------------------------------------------------------- trace

def _rademacher(n: int, count: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, (count, n), generator=gen, dtype=torch.float64) * 2 - 1


def _mean_and_stderr(samples: np.ndarray) -> tuple[float, float]:
    return float(samples.mean()), float(samples.std(ddof=1) / math.sqrt(len(samples)))


def _hutchinson(op: HessianOperator, n_samples: int, gen) -> tuple[float, float]:
    dev, dt = op.problem.device, op.problem.dtype
    z = _rademacher(op.shape[0], n_samples, gen)
    return _mean_and_stderr(np.array([
        float(torch.dot(op.torch_matvec(zi.to(dev, dt)).double().cpu(), zi)) for zi in z]))


def _hutch_plus_plus(op: HessianOperator, n_samples: int, gen) -> tuple[float, float]:
    n, m = op.shape[0], n_samples // 3
    s = _rademacher(n, m, gen).T.numpy()
    q, _ = np.linalg.qr(op.matmat(s))
    low_rank = float(np.trace(q.T @ op.matmat(q)))
    g = _rademacher(n, n_samples - 2 * m, gen).T.numpy()
    g = g - q @ (q.T @ g)
    mean, stderr = _mean_and_stderr(np.einsum("ij,ij->j", g, op.matmat(g)))
    return low_rank + mean, stderr


def hessian_trace(model: nn.Module, params: Mapping[str, torch.Tensor], data, loss_fn=None, *,
                  n_samples: int = 100, method: str = "hutchinson", mask=None,
                  param_filter: ParamFilter | None = None, device="cpu", seed: int = 0,
                  batch_size=None, callback: Callable[[int], None] | None = None,
                  gauge_fixed: bool = False, spec=None, canon_kwargs=None,
                  blocks=None, curvature: str = "hessian", logits_fn=None):
    """Stochastic trace ``tr(H)`` (per block ``tr(H_bb)`` with ``blocks``; ``tr(G)`` with
    ``curvature="ggn"``).

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
    estimate = _hutchinson if method == "hutchinson" else _hutch_plus_plus

    def run(p, pf):
        op = hvp(model, p, data, loss_fn, mask=mask, param_filter=pf, device=device,
                 batch_size=batch_size, callback=callback, curvature=curvature,
                 logits_fn=logits_fn)
        value, stderr = estimate(op, n_samples, torch.Generator().manual_seed(int(seed)))
        return TraceResult(value, stderr, op.n_hvp, method)

    return raw_and_gauge_fixed(_per_block(run, model, blocks, param_filter, curvature), model,
                               params, data, gauge_fixed, spec, mask, canon_kwargs)


# ----------------------------------------------------------------------------- SLQ density

def _slq_nodes(op: HessianOperator, n_runs: int, steps: int, seed: int):
    """Ritz nodes and weights ``(n_runs, steps)`` of Lanczos from Rademacher start vectors
    (NaN nodes / 0 weights where a run ended early)."""
    n = op.shape[0]
    rng = np.random.default_rng(seed)
    nodes = np.full((n_runs, min(steps, n)), np.nan)
    weights = np.zeros_like(nodes)
    for r in range(n_runs):
        a, b, _, _ = lanczos(op, rng.choice([-1.0, 1.0], size=n), steps)
        theta, s = scipy.linalg.eigh_tridiagonal(a, b)
        nodes[r, :len(theta)] = theta
        weights[r, :len(theta)] = s[0] ** 2
    return nodes, weights


def _gaussian_mixture(nodes, weights, n_runs: int, n_grid: int, sigma):
    """``mean_runs sum_i tau_i N(t; theta_i, sigma^2)`` on a grid spanning the nodes."""
    lo, hi = np.nanmin(nodes), np.nanmax(nodes)
    width = max(hi - lo, 1e-12 * max(1.0, abs(hi)))
    sig = sigma if sigma is not None else 0.01 * width
    grid = np.linspace(lo - 5 * sig, hi + 5 * sig, n_grid)
    valid = ~np.isnan(nodes)
    th, wt = nodes[valid], weights[valid]
    dens = np.zeros(n_grid)
    for chunk in range(0, len(th), 256):
        t, w = th[chunk:chunk + 256], wt[chunk:chunk + 256]
        dens += (w[None, :] * np.exp(-0.5 * ((grid[:, None] - t[None, :]) / sig) ** 2)).sum(1)
    dens /= n_runs * sig * math.sqrt(2 * math.pi)
    return grid, dens, float(sig)


def spectral_density(model: nn.Module, params: Mapping[str, torch.Tensor], data, loss_fn=None,
                     *, n_runs: int = 4, lanczos_steps: int = 60, n_grid: int = 1000,
                     sigma: float | None = None, mask=None,
                     param_filter: ParamFilter | None = None, device="cpu", seed: int = 0,
                     batch_size=None, callback: Callable[[int], None] | None = None,
                     gauge_fixed: bool = False, spec=None, canon_kwargs=None,
                     curvature: str = "hessian", logits_fn=None):
    """Hessian (or ``curvature="ggn"``: Gauss-Newton) spectral density by stochastic Lanczos
    quadrature (Ghorbani et al. 2019).

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
                 batch_size=batch_size, callback=callback, curvature=curvature, logits_fn=logits_fn)
        nodes, weights = _slq_nodes(op, n_runs, lanczos_steps, seed)
        grid, dens, sig = _gaussian_mixture(nodes, weights, n_runs, n_grid, sigma)
        return Density(grid=grid, density=dens, nodes=nodes, weights=weights, sigma=sig,
                       n_hvp=op.n_hvp)

    return raw_and_gauge_fixed(run, model, params, data, gauge_fixed, spec, mask, canon_kwargs)


# ----------------------------------------------------------------------------- blocks, GGN

def _check_curvature(curvature: str) -> None:
    if curvature not in CURVATURES:
        raise FlatnessOptionError(f"curvature must be one of {', '.join(CURVATURES)}, got "
                                  f"{curvature!r}")


@dataclass(frozen=True)
class BlockCurvature(Result):
    """A measure (:class:`EigResult` or :class:`TraceResult`) of each diagonal block ``H_bb``
    (or ``G_bb``): ``blocks[b]`` is the result, ``members[b]`` the parameter tensors of block
    ``b``, ``n_hvp`` the products used over all blocks."""

    blocks: dict[str, Any]
    members: dict[str, tuple[str, ...]]
    curvature: str = "hessian"
    n_hvp: int = 0


def parameter_blocks(model: nn.Module, params: Mapping[str, torch.Tensor], blocks="layer",
                     param_filter: ParamFilter | None = None) -> dict[str, tuple[str, ...]]:
    """The parameter tensors of each block, in ``params`` order, among the tensors a measure
    differentiates (``nn.Parameter`` entries of ``params`` kept by ``param_filter``).

    ``blocks``: ``"layer"`` groups tensors by module (``fc1.weight`` and ``fc1.bias`` form
    ``"fc1"``), ``"tensor"`` makes each tensor a block, a dict ``name -> glob pattern(s)``
    (``fnmatch``, e.g. ``{"hidden": ["fc1.*", "fc2.*"], "out": "fc3.*"}``) names the blocks.
    Raises :class:`FlatnessOptionError` for another value or a pattern group matching nothing.
    """
    trainable = {n for n, _ in model.named_parameters()}
    names = [k for k, v in params.items() if k in trainable and v.is_floating_point()
             and (param_filter is None or param_filter(k, v))]
    if blocks == "tensor":
        return {n: (n,) for n in names}
    if blocks == "layer":
        out: dict[str, list[str]] = {}
        for n in names:
            out.setdefault(n.rsplit(".", 1)[0] if "." in n else n, []).append(n)
        return {b: tuple(v) for b, v in out.items()}
    if not isinstance(blocks, Mapping) or not blocks:
        raise FlatnessOptionError(f"blocks must be 'layer', 'tensor' or a non-empty dict of "
                                  f"name -> glob patterns, got {blocks!r}")
    groups = {}
    for b, patterns in blocks.items():
        patterns = [patterns] if isinstance(patterns, str) else list(patterns)
        members = tuple(n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns))
        if not members:
            raise FlatnessOptionError(f"block {b!r}: {patterns} match no measured parameter "
                                      f"(parameters: {', '.join(names[:8])}"
                                      f"{', ...' if len(names) > 8 else ''})")
        groups[str(b)] = members
    return groups


def _per_block(measure, model, blocks, param_filter, curvature):
    """``p -> measure(p, param_filter)``, or with ``blocks`` the :class:`BlockCurvature` of
    ``measure`` restricted to each block's tensors (so the HVP is that of ``H_bb``)."""
    _check_curvature(curvature)
    if blocks is None:
        return lambda p: measure(p, param_filter)

    def run(p):
        members = parameter_blocks(model, p, blocks, param_filter)
        results = {b: measure(p, lambda n, _t, keep=frozenset(names): n in keep)
                   for b, names in members.items()}
        return BlockCurvature(blocks=results, members=members, curvature=curvature,
                              n_hvp=sum(r.n_hvp for r in results.values()))

    return run


class GaussNewtonObjective(Objective):
    """:class:`~gauge.objective.Objective` whose :meth:`hvp` is the generalised Gauss-Newton
    product ``G v = sum_b (|b| / n) J_b^T H_b J_b v`` (Schraudolph 2002): ``J_b`` is the
    Jacobian of the outputs on batch ``b`` in the free parameters, ``H_b`` the Hessian of the
    batch-mean loss in those outputs. ``J v`` is one forward-mode product
    (``torch.func.jvp``), ``J^T u`` one reverse-mode product (``torch.func.vjp``); ``G`` drops
    the term of ``H`` that carries the outputs' own curvature, and is positive semi-definite
    when the loss is convex in the outputs."""

    def hvp(self, vec: torch.Tensor) -> torch.Tensor:
        v = tuple(self.unflatten(vec))
        primals = tuple(self.free_tensors())
        out = [torch.zeros_like(t) for t in primals]
        with eval_mode(self.model):
            for batch in self.batches:
                def f(*tensors, batch=batch):
                    out = forward(self.model, batch, self.params_with(tensors), name=self.name)
                    return logits_of(out, self.logits_fn)
                outputs, jv = torch.func.jvp(f, primals, v)
                z = outputs.detach().requires_grad_(True)
                loss = batch_loss(z, batch, self.loss_fn, name=self.name) * (batch.n / self.n_data)
                (g,) = torch.autograd.grad(loss, z, create_graph=True)
                (hjv,) = torch.autograd.grad(g, z, grad_outputs=jv)
                _, pullback = torch.func.vjp(f, *primals)
                out = [a + b for a, b in zip(out, pullback(hjv))]
        self.n_hvp += 1
        return self.flatten(out).detach()

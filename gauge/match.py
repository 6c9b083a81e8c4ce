"""Alignment: the permutation that brings network B closest to network A.

Weight matching (Ainsworth et al. 2022, "Git Re-Basin") maximises
``J(P) = sum_k <W_k^A, P(W_k^B)>`` over the product of permutation groups of a
:class:`~gauge.spec.PermutationSpec`. With every group but ``g`` held fixed, ``J`` is linear in
``P_g``: ``J = const + sum_i C_g[i, P_g(i)]`` with ``C_g = sum_(k, axis in g) A_k B_k'^T`` (``A_k``,
``B_k'`` the weights with the group's axis first and the other axes flattened, B's other axes
already permuted). Each step therefore is a linear assignment problem (Kuhn 1955; solved with
``scipy.optimize.linear_sum_assignment``); coordinate descent over the groups in random order
stops when no group improves.

Two things make this implementation fast and robust:

* Every ``(param, axis)`` contribution ``A_k B_k'^T`` is recomputed only when a group it
  depends on changes, and a group whose cost did not change since it was last solved on its
  whole cost is not re-solved (its optimum cannot have moved). On a planted permutation every
  contribution is therefore computed exactly once, the minimum for certifying a
  coordinate-wise optimum, and the time is dominated by the matmul floor
  ``sum_k 2 numel(W_k) n_g`` flops. A contribution is kept between solves only where the
  group has terms that change independently (e.g. a residual stream read by many blocks);
  otherwise it is accumulated by ``addmm`` into one buffer per size, so memory stays within a
  few ``n x n`` matrices beyond one copy of B.
  Params with one permuted axis (biases, norm params, the first and last layers) never change:
  they are summed into one constant per group with a single matmul, kept as its two factors
  when thin. B is stored once per term with the other permuted axis first, so re-permuting it
  is a gather of contiguous rows. The matmuls run on ``device`` (a GPU when there is one); the
  assignment problems are solved on the CPU.
* A progressive start: instead of sweeping from the identity, groups are first solved in
  order from the input side, each using only the terms whose other axes are unpermuted or
  already solved. From the identity the plain loop stalls in a poor local optimum on wide
  ResNets (planted permutations are not recovered); the progressive start recovers them.

Activation matching (Li et al. 2015 "Convergent learning"; Jordan et al. 2022 "REPAIR") runs
both networks on the same inputs, correlates (Pearson, streamed over batches) the features each
group indexes at the inputs of the layers consuming it, and solves one assignment per group.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from gauge.batches import as_data, forward
from gauge.errors import MismatchError, SpecError, check_same_keys
from gauge.results import Result, to_dict
from gauge.spec import PermutationSpec
from gauge.symmetry import (Permutation, apply_permutation, check_permutation, expand_index,
                            identity_permutation, random_permutation)

__all__ = ["MatchResult", "weight_matching", "activation_matching", "align",
           "matching_objective"]


@dataclass(frozen=True)
class MatchResult(Result):
    """Outcome of an alignment.

    ``perm`` maps B into A's basis: ``apply_permutation(spec, perm, params_b)`` is B aligned to
    A. For weight matching ``objective_before``/``objective_after`` are ``sum <W_A, P W_B>`` at the
    identity and at ``perm``; for activation matching they are the mean correlation of matched
    units. ``per_group`` holds each group's size, fixed points and solver statistics.
    """

    perm: Permutation
    method: str
    objective_before: float
    objective_after: float
    iterations: int
    per_group: dict = field(default_factory=dict)
    time: float = 0.0
    converged: bool = True
    restarts: int = 1

    def to_dict(self, *, include_perm: bool = False) -> dict:
        return to_dict(self, exclude=() if include_perm else ("perm",))


def matching_objective(params_a: Mapping[str, torch.Tensor],
                       params_b: Mapping[str, torch.Tensor]) -> float:
    """``sum_k <W_k^A, W_k^B>`` over floating tensors (per-tensor dot products, summed in
    float64)."""
    total = 0.0
    for k, a in params_a.items():
        if a.dtype.is_floating_point and a.numel():
            b = params_b[k].to(a.device, a.dtype)
            total += float(torch.dot(a.reshape(-1), b.reshape(-1)))
    return total


class _Term:
    """One ``(param, axis)`` of a group whose other axes are permuted too: its cached
    contribution ``A B'^T`` to ``C_group``, recomputed when those other axes' groups change."""

    __slots__ = ("key", "axis", "group", "n", "a_mat", "b_arr", "others", "deps", "value",
                 "dirty", "numel", "cached")


def _arrange(t: torch.Tensor, axis: int, n: int, layout: tuple[int, int],
             others: list[int]) -> torch.Tensor:
    """View of ``t`` with the other permuted axes first (in ``others`` order), then the
    unpermuted axes, then the group's axis split as ``(repeat, block, n)``.

    Made contiguous, this layout turns re-permuting the first other axis into a gather of
    contiguous rows and the result reshapes to a ``(K, n)`` matrix without another copy.
    """
    r, b = layout
    shape = list(t.shape)
    x = t.reshape(*shape[:axis], r, n, b, *shape[axis + 1:])

    def pos(j):
        return j if j < axis else j + 2

    rest = [pos(j) for j in range(len(shape)) if j != axis and j not in others]
    return x.permute([pos(j) for j in others] + rest + [axis, axis + 2, axis + 1])


def _build_terms(spec, pa, pb, dtype):
    """``(terms, const, const_numel, fixed, before)``: per group its :class:`_Term` list, the
    summed contribution of the params whose only permuted axis is the group's (computed once,
    one matmul per group) and their size, ``sum <A, B>`` over params with no permuted axis, and
    the objective at the identity."""
    terms: dict[str, list[_Term]] = {g: [] for g in spec.groups}
    const_parts: dict[str, tuple[list, list]] = {g: ([], []) for g in spec.groups}
    const_numel = {g: 0 for g in spec.groups}
    fixed = before = 0.0
    for k, groups in spec.axes.items():
        if k not in pa or not pa[k].dtype.is_floating_point or pa[k].numel() == 0:
            continue
        a, b = pa[k].to(dtype), pb[k].to(dtype)
        permuted = [j for j, g in enumerate(groups) if g is not None]
        if not permuted:
            fixed += float(torch.dot(a.reshape(-1), b.reshape(-1)))
            continue
        if len(permuted) > 1:
            before += float(torch.dot(a.reshape(-1), b.reshape(-1)))
        for ax in permuted:
            g = groups[ax]
            n = spec.sizes[g]
            others = [j for j in permuted if j != ax]
            layout = spec.layout(k, ax)
            if not others:
                if a.dim() == 1 and layout == (1, 1):  # the common case, kept cheap
                    const_parts[g][0].append(a.view(n, 1))
                    const_parts[g][1].append(b.view(1, n))
                else:
                    const_parts[g][0].append(_arrange(a, ax, n, layout, []).reshape(-1, n).T)
                    const_parts[g][1].append(_arrange(b, ax, n, layout, []).reshape(-1, n))
                const_numel[g] += a.numel()
                continue
            t = _Term()
            t.key, t.axis, t.group, t.n = k, ax, g, n
            t.a_mat = _arrange(a, ax, n, layout, others).reshape(-1, n).T
            t.b_arr = _arrange(b, ax, n, layout, others).contiguous()
            # (dim of b_arr, group, layout) of each other permuted axis
            t.others = [(d, groups[j], spec.layout(k, j)) for d, j in enumerate(others)]
            t.deps = {groups[j] for j in others}
            t.value, t.dirty, t.numel = None, True, a.numel()
            terms[g].append(t)
    for ts in terms.values():
        # A cached value only pays off when another term of the group can change without it;
        # when all terms move together, caching would only hold n x n memory per term.
        for t in ts:
            t.cached = len({frozenset(u.deps) for u in ts}) > 1
    const = {}
    for g, (a_list, b_list) in const_parts.items():
        if a_list:
            a, b = torch.cat(a_list, dim=1), torch.cat(b_list, dim=0)
            # a thin product (biases, norm params) stays factored: adding it back costs as
            # little as adding a stored n x n matrix and holds no n x n memory
            const[g] = (a, b) if a.shape[1] <= _THIN else a @ b
            before += _const_objective(const[g], None)
    return terms, const, const_numel, fixed, fixed + before


def _device_of(c) -> torch.device:
    return c[0].device if isinstance(c, tuple) else c.device


#: the most columns a group's constant part may have and still be kept as its two factors
_THIN = 32


def _const_objective(c, perm) -> float:
    """``sum_i C[i, P(i)]`` of a constant part (dense, or factors ``(a, b)`` with ``C = a b``);
    ``perm`` None is the identity."""
    if isinstance(c, tuple):
        a, b = c
        b = b if perm is None else b.index_select(1, perm)
        return float((a.to(torch.float64) * b.T.to(torch.float64)).sum())
    d = c.diagonal() if perm is None else c[torch.arange(c.shape[0], device=c.device), perm]
    return float(d.to(torch.float64).sum())


def _gathered(t: _Term, perm, scratch: dict) -> torch.Tensor:
    """B of the term with its other axes permuted, as a ``(K, n)`` matrix. It goes into
    ``scratch["buf"]``, reused across calls: a fresh multi-MB tensor per call costs more in
    page faults than the gather itself."""
    b = t.b_arr
    (_, h, layout), *more = t.others
    # a row gather of the 2-D view is several times faster than index_select on dim 0 of the
    # n-D tensor
    rows = b.reshape(b.shape[0], -1)
    buf = scratch.get("buf")
    if buf is None or buf.numel() < rows.numel() or buf.dtype != rows.dtype or \
            buf.device != rows.device:
        buf = scratch["buf"] = torch.empty(rows.numel(), dtype=rows.dtype, device=rows.device)
    b = torch.index_select(rows, 0, expand_index(perm[h], layout),
                           out=buf[:rows.numel()].view(rows.shape))
    if more:
        b = b.reshape(t.b_arr.shape)
        for dim, h, layout in more:
            b = b.index_select(dim, expand_index(perm[h], layout))
    return b.reshape(-1, t.n)


def _contribution(t: _Term, perm, scratch: dict) -> torch.Tensor:
    """``A B'^T`` at the current permutation of the term's other axes, in the matmul dtype."""
    return t.a_mat @ _gathered(t, perm, scratch)


def _term_objective(t: _Term, perm, scratch: dict) -> float:
    """``<A, P(B)>`` of the term's param: ``sum_i (A B'^T)[i, P_g(i)]`` without forming the
    ``n x n`` matrix (a gather and a dot, O(numel))."""
    b = _gathered(t, perm, scratch).index_select(1, perm[t.group])
    return float((t.a_mat.to(torch.float64) * b.T.to(torch.float64)).sum())


def _lap(c: np.ndarray) -> np.ndarray:
    """The assignment ``i -> out[i]`` maximising ``sum_i c[i, out[i]]`` (int64 array)."""
    if not np.isfinite(c).all():
        raise MismatchError("non-finite weights: the matching cost is not finite")
    # If every row's best column is a different column, that assignment attains the upper
    # bound sum_i max_j c_ij and is optimal: no need for the O(n^3) solver.
    best = c.argmax(axis=1)
    if np.bincount(best, minlength=len(best)).max(initial=0) <= 1:
        return best.astype(np.int64)
    rows, cols = linear_sum_assignment(c, maximize=True)
    out = np.empty(len(rows), dtype=np.int64)
    out[rows] = cols
    return out


class _Descent:
    """Coordinate descent state: the current ``perm``, each term's cached contribution (marked
    dirty when a group it depends on moves) and the groups whose cost may have changed."""

    def __init__(self, spec, terms, const, perm, stats, device, scratch, dtype):
        self.groups, self.terms, self.const = spec.groups, terms, const
        self.sizes, self.dtype = spec.sizes, dtype
        self.stats, self.device, self.scratch = stats, device, scratch
        self.dependents: dict[str, list[_Term]] = {g: [] for g in self.groups}
        for g in self.groups:
            for t in terms[g]:
                for h in t.deps:
                    self.dependents[h].append(t)
        self.perm = {g: p.to(device) for g, p in perm.items()}
        self.stale: set[str] = set(self.groups)

    def cost(self, g, usable=None):
        """``C_g`` in float64 (only the terms whose other axes are in ``usable``, if given),
        written into a reused buffer: read it before the next call. The constant part and
        the terms are summed in the matmul dtype (products by ``addmm`` into the sum itself,
        so no ``n x n`` temporary per term), then cast once."""
        const = self.const.get(g)
        ts = [t for t in self.terms[g] if usable is None or t.deps <= usable]
        if not ts and const is None:
            return None
        n = self.sizes[g]
        acc = self._buffer(("acc", n, self.dtype), n, self.dtype)
        first = True

        def add(x=None, a=None, b=None):
            nonlocal first
            if x is not None:
                acc.copy_(x) if first else acc.add_(x)
            else:
                torch.matmul(a, b, out=acc) if first else acc.addmm_(a, b)
            first = False

        if isinstance(const, tuple):
            add(a=const[0], b=const[1])
        elif const is not None:
            add(const)
        for t in ts:
            if t.cached:
                if t.dirty or t.value is None:
                    t.value, t.dirty = _contribution(t, self.perm, self.scratch), False
                add(t.value)
            else:
                add(a=t.a_mat, b=_gathered(t, self.perm, self.scratch))
        return self._buffer(("cost", n), n, torch.float64).copy_(acc)

    def _buffer(self, key, n, dtype):
        buf = self.scratch.get(key)
        if buf is None:
            buf = self.scratch[key] = torch.empty(n, n, dtype=dtype, device=self.device)
        return buf

    def set_perm(self, g, p) -> None:
        self.perm[g] = p.to(self.device)
        for t in self.dependents[g]:
            t.dirty = True
            self.stale.add(t.group)

    def progressive_start(self, const_numel) -> None:
        """Solve the groups one at a time, most constrained by already solved ones first,
        each from the terms whose other axes are solved."""
        terms = self.terms
        size = {g: sum(t.numel for t in terms[g]) + const_numel[g] for g in self.groups}
        solved: set[str] = set()
        partial: set[str] = set()
        self.stale = set()
        remaining = list(self.groups)
        while remaining:
            best, best_score = None, -1.0
            for g in remaining:
                ready = sum(t.numel for t in terms[g] if t.deps <= solved) + const_numel[g]
                score = ready / (size[g] or 1)
                if score > best_score:
                    best, best_score = g, score
            g = best
            usable = solved if best_score > 0 else None
            c = self.cost(g, usable=usable)
            if c is not None:
                self.set_perm(g, torch.from_numpy(_lap(c.cpu().numpy())))
                self.stats[g]["solves"] += 1
            self.stale.discard(g)
            # solved on its whole cost: only a later move of a group it depends on can change
            # its optimum (set_perm marks it stale then)
            if usable is not None and any(not t.deps <= usable for t in self.terms[g]):
                partial.add(g)
            solved.add(g)
            remaining.remove(g)
        self.stale |= partial

    def sweep(self, order) -> bool:
        """One pass over the stale groups in ``order``; True if some assignment improved."""
        improved = False
        for i in order:
            g = self.groups[i]
            if g not in self.stale:
                continue
            self.stale.discard(g)
            c = self.cost(g)
            if c is None:
                continue
            c = c.cpu().numpy()
            new = _lap(c)
            self.stats[g]["solves"] += 1
            rows = np.arange(len(new))
            cur = self.perm[g].cpu().numpy()
            old_val = float(c[rows, cur].sum())
            new_val = float(c[rows, new].sum())
            if new_val > old_val + 1e-9 * max(1.0, abs(old_val)) and \
                    not np.array_equal(new, cur):
                self.set_perm(g, torch.from_numpy(new))
                self.stale.discard(g)  # its own cost does not depend on itself
                improved = True
        return improved


def _descend(spec, terms, const, const_numel, perm, order_rng, max_iter, progressive, stats,
             device, scratch, dtype):
    """Coordinate descent from ``perm`` (optionally after a progressive start); returns
    (perm, sweeps, converged)."""
    state = _Descent(spec, terms, const, perm, stats, device, scratch, dtype)
    if progressive:
        state.progressive_start(const_numel)
    sweeps, converged = 0, False
    while sweeps < max_iter:
        sweeps += 1
        improved = state.sweep(order_rng.permutation(len(spec.groups)))
        if not improved or not state.stale:
            converged = True
            break
    return {g: p.cpu() for g, p in state.perm.items()}, sweeps, converged


def _objective(terms, const, fixed, perm, scratch) -> float:
    """``sum_k <W_k^A, P(W_k^B)>`` from the cached costs: ``sum_i C[i, P_g(i)]`` of each group's
    constant part, plus one term per param with several permuted axes (read off its cached
    value when there is a current one, else a gather and a dot)."""
    total = fixed
    for g, c in const.items():
        total += _const_objective(c, perm[g].to(_device_of(c)))
    seen = set()
    for g, ts in terms.items():
        for t in ts:
            if t.key in seen:
                continue
            seen.add(t.key)
            on = {h: p.to(t.a_mat.device) for h, p in perm.items()}
            if t.cached and not t.dirty and t.value is not None:
                r = torch.arange(t.n, device=t.value.device)
                total += float(t.value[r, on[g]].to(torch.float64).sum())
            else:
                total += _term_objective(t, on, scratch)
    return total


def weight_matching(spec: PermutationSpec, params_a: Mapping[str, torch.Tensor],
                    params_b: Mapping[str, torch.Tensor], *, max_iter: int = 100, seed: int = 0,
                    init: Mapping[str, torch.Tensor] | None = None, restarts: int = 1,
                    progressive: bool = True, device: str | torch.device | None = None,
                    dtype: torch.dtype = torch.float32) -> MatchResult:
    """Permutation of B maximising ``sum_k <W_k^A, P(W_k^B)>`` (Ainsworth et al. 2022).

    Args:
        spec: the permutation spec of both networks.
        params_a, params_b: state_dicts of the same architecture (buffers included).
        max_iter: most sweeps over the groups per restart.
        seed: seed of the group order of the sweeps (and of the random restarts).
        init: starting permutation (then no progressive start for the first restart).
        restarts: restart 0 starts progressively (or from ``init``), the others from random
            permutations; the best objective wins.
        progressive: solve groups from the input side before sweeping (see module docstring).
        device: where the cost matmuls run (default: params_a's device).
        dtype: dtype of the matmuls and of the sum of a group's terms (the LAP sees float64).

    Raises :class:`MismatchError` for different architectures and :class:`SpecError` when the
    spec does not cover the params.
    """
    t0 = time.perf_counter()
    check_same_keys(params_a, params_b)
    spec.check_params(params_a, "params_a")
    if init is not None:
        check_permutation(spec, init, "init")
    if restarts < 1 or max_iter < 1:
        raise SpecError("restarts and max_iter must be >= 1")
    first = next(iter(params_a.values()), None)
    device = torch.device(device) if device is not None else (
        first.device if first is not None else torch.device("cpu"))
    pa = {k: v.to(device) for k, v in params_a.items()}
    pb = {k: v.to(device) for k, v in params_b.items()}
    rng = np.random.default_rng(seed)
    if not spec.is_plain:
        return _weight_matching_nested(spec, pa, pb, max_iter=max_iter, rng=rng, init=init,
                                       dtype=dtype, t0=t0)
    terms, const, const_numel, fixed, before = _build_terms(spec, pa, pb, dtype)
    scratch: dict = {}
    best = None
    for r in range(restarts):
        for ts in terms.values():
            for t in ts:
                t.value, t.dirty = None, True
        stats = {g: {"size": spec.sizes[g], "solves": 0} for g in spec.groups}
        if r == 0:
            start = dict(identity_permutation(spec))
            if init is not None:
                start.update({g: p.long().cpu() for g, p in init.items()})
            prog = progressive and init is None
        else:
            start, prog = random_permutation(spec, seed + 7919 * r), False
        perm, sweeps, conv = _descend(spec, terms, const, const_numel, start, rng, max_iter,
                                      prog, stats, device, scratch, dtype)
        obj = _objective(terms, const, fixed, perm, scratch)
        if best is None or obj > best[0]:
            best = (obj, perm, sweeps, conv, stats)
    obj, perm, sweeps, conv, stats = best
    for g, p in perm.items():
        stats[g]["fixed_points"] = int((p == torch.arange(len(p))).sum())
    return MatchResult(perm=perm, method="weight", objective_before=before,
                       objective_after=obj, iterations=sweeps, per_group=stats,
                       time=time.perf_counter() - t0, converged=conv, restarts=restarts)


# --------------------------------------------------------------------------------------------


def _consumers(model: nn.Module, spec: PermutationSpec):
    """``group -> [(module_name, channel_dim, layout)]`` where the group's features enter a
    Linear/Conv layer; producers' outputs are the fallback."""
    modules = dict(model.named_modules())
    found: dict[str, list] = {g: [] for g in spec.groups}
    fallback: dict[str, list] = {g: [] for g in spec.groups}
    for g in spec.groups:
        for k, ax in spec.perm_to_axes[g]:
            if isinstance(spec.axes[k][ax], tuple):  # a concatenated axis: not one group's
                continue
            mname, _, pname = k.rpartition(".")
            mod = modules.get(mname)
            if pname != "weight" or not isinstance(mod, (nn.Linear, nn.modules.conv._ConvNd)):
                continue
            channel = -1 if isinstance(mod, nn.Linear) else 1
            if ax == 1:
                found[g].append((mname, "in", channel, spec.layout(k, ax)))
            elif ax == 0:
                fallback[g].append((mname, "out", channel, spec.layout(k, ax)))
    return {g: found[g] or fallback[g] for g in spec.groups}


def _features(x: torch.Tensor, channel: int, n: int, layout) -> torch.Tensor:
    r, b = layout
    x = x.movedim(channel, -1)
    x = x.reshape(-1, r, n, b).transpose(-1, -2).reshape(-1, n)
    return x.to(torch.float64)


@contextmanager
def _capture(model: nn.Module, points):
    """Hooks on ``points`` (``(module_name, "in" | "out")``) for the duration of the block, in
    eval mode and without gradients. Yields ``run(params, batch, name)``: one functional forward
    pass over a :class:`gauge.batches.Batch` returning ``{point: [tensor seen at each call of
    the module]}``."""
    modules = dict(model.named_modules())
    captured: dict[tuple[str, str], list] = {}

    def make_hook(mname, where):
        def hook(module, args, output=None):
            captured.setdefault((mname, where), []).append(args[0] if where == "in" else output)
        return hook

    hooks = [modules[m].register_forward_pre_hook(make_hook(m, "in")) if w == "in"
             else modules[m].register_forward_hook(make_hook(m, "out")) for m, w in points]

    def run(params, batch, name: str = "data"):
        captured.clear()
        forward(model, batch, params, name=name)
        return dict(captured)

    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield run
    finally:
        for h in hooks:
            h.remove()
        model.train(was)


def activation_matching(model: nn.Module, spec: PermutationSpec,
                        params_a: Mapping[str, torch.Tensor],
                        params_b: Mapping[str, torch.Tensor], inputs, *,
                        batch_size: int = 256, device: str | torch.device | None = None,
                        eps: float = 1e-8) -> MatchResult:
    """One assignment per group maximising the Pearson correlation of matched features.

    Features of a group are the inputs of the Linear/Conv layers consuming it (post-activation;
    every spatial position is a sample), or the producing layers' outputs if none consumes it.
    Statistics are streamed over ``inputs`` in batches of ``batch_size`` (eval mode):
    ``inputs`` is a tensor of inputs or data in any form of :mod:`gauge.batches` (targets are
    not used); ``device`` defaults to the inputs' device (CPU for datasets and loaders). Groups
    with no Linear/Conv member (e.g. attention heads) keep the identity
    (``per_group[g]["skipped"]``).
    """
    t0 = time.perf_counter()
    check_same_keys(params_a, params_b)
    spec.check_params(params_a, "params_a")
    data = as_data(inputs, "activation matching's inputs")
    device = torch.device(device) if device is not None else data.device or torch.device("cpu")
    moments = _feature_moments(model, spec, params_a, params_b, data, batch_size, device)
    perm, per_group, before, after = _match_correlations(spec, moments, eps)
    if not spec.is_plain:  # nested groups: one joint solve per family of the correlations
        perm = _solve_families(spec, {g: _correlation(moments[g], eps).numpy()
                                      for g in spec.groups if g in moments})
    return MatchResult(perm=perm, method="activation",
                       objective_before=float(np.mean(before)) if before else 0.0,
                       objective_after=float(np.mean(after)) if after else 0.0,
                       iterations=1, per_group=per_group, time=time.perf_counter() - t0)


def _feature_moments(model, spec, params_a, params_b, data, batch_size, device):
    """Per group, the streamed sums ``n, sum a, sum b, sum a^2, sum b^2, sum a b^T`` of the
    matched features of A and B over ``data`` (eval mode)."""
    cons = _consumers(model, spec)
    stats_acc: dict[str, dict] = {}
    wanted = {(m, w) for g in spec.groups for m, w, _, _ in cons[g]}
    pa = {k: v.to(device) for k, v in params_a.items()}
    pb = {k: v.to(device) for k, v in params_b.items()}
    with _capture(model, wanted) as run:
        for batch in data.batches(batch_size, device):
            side = {"a": run(pa, batch, data.name), "b": run(pb, batch, data.name)}
            for g in spec.groups:
                n = spec.sizes[g]
                for mname, where, channel, layout in cons[g]:
                    for fa, fb in zip(side["a"].get((mname, where), []),
                                      side["b"].get((mname, where), [])):
                        fa, fb = (_features(fa, channel, n, layout),
                                  _features(fb, channel, n, layout))
                        acc = stats_acc.setdefault(g, {"n": 0, "sa": 0, "sb": 0, "saa": 0,
                                                       "sbb": 0, "sab": 0})
                        acc["n"] += fa.shape[0]
                        acc["sa"] = acc["sa"] + fa.sum(0)
                        acc["sb"] = acc["sb"] + fb.sum(0)
                        acc["saa"] = acc["saa"] + fa.pow(2).sum(0)
                        acc["sbb"] = acc["sbb"] + fb.pow(2).sum(0)
                        acc["sab"] = acc["sab"] + fa.T @ fb
    return stats_acc


def _match_correlations(spec, stats_acc, eps):
    """Per group, the assignment maximising the summed Pearson correlation of matched units:
    ``(perm, per_group, mean corr before, mean corr after)``."""
    perm, per_group, before, after = {}, {}, [], []
    for g in spec.groups:
        n = spec.sizes[g]
        acc = stats_acc.get(g)
        if acc is None:
            perm[g] = torch.arange(n)
            per_group[g] = {"size": n, "skipped": True, "fixed_points": n}
            continue
        corr = _correlation(acc, eps)
        p = torch.from_numpy(_lap(corr.numpy()))
        perm[g] = p
        rows = torch.arange(n)
        cb, ca = float(corr.diagonal().mean()), float(corr[rows, p].mean())
        before.append(cb)
        after.append(ca)
        per_group[g] = {"size": n, "skipped": False, "corr_before": cb, "corr_after": ca,
                        "fixed_points": int((p == rows).sum())}
    return perm, per_group, before, after


def _correlation(acc, eps) -> torch.Tensor:
    """Pearson correlation matrix of A's and B's features from their streamed moments."""
    m = acc["n"]
    ma, mb = acc["sa"] / m, acc["sb"] / m
    va = (acc["saa"] / m - ma.pow(2)).clamp_min(0).sqrt()
    vb = (acc["sbb"] / m - mb.pow(2)).clamp_min(0).sqrt()
    return ((acc["sab"] / m - torch.outer(ma, mb)) / (torch.outer(va, vb) + eps)).cpu()


# --------------------------------------------------------------------------------------------
# Nested groups and concatenated axes
#
# A nested group g (blocks of c units moved by the outer group o) and everything nested in o
# form one *family*, solved jointly: with the linear cost C_h of every group h of the family,
# the value of sending A's block a to B's block b is the best within-block assignment,
# V_h[a, b] = max_pi sum_i C_h[a c + i, b c + pi(i)] (one LAP per block pair), so the outer
# permutation is the LAP over C_o + sum_h V_h and each block's units then take the
# within-block LAP of the block pair chosen. This is the exact maximiser of the family's
# linear objective over the wreath product; deeper nesting recurses.


def _family_root(spec, g) -> str:
    while g in spec.blocks and spec.blocks[g][0] is not None:
        g = spec.blocks[g][0]
    return g


def _children(spec) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {g: [] for g in spec.groups}
    for h, (o, _) in spec.blocks.items():
        if o is not None:
            out[o].append(h)
    return out


def _lap_value(c: np.ndarray) -> tuple[float, np.ndarray]:
    p = _lap(c)
    return float(c[np.arange(len(p)), p].sum()), p


def _unit_costs(spec, g, costs, children) -> np.ndarray:
    """``C_g`` plus, per unit pair, the best assignment value of the groups nested in g."""
    n = spec.sizes[g]
    total = np.array(costs[g], dtype=np.float64) if g in costs else np.zeros((n, n))
    for h in children[g]:
        c = spec.blocks[h][1]
        u = _unit_costs(spec, h, costs, children)
        if c == 1:
            total = total + u
            continue
        for a in range(n):
            for b in range(n):
                total[a, b] += _lap_value(u[a * c:(a + 1) * c, b * c:(b + 1) * c])[0]
    return total


def _assign(spec, g, costs, children, perm, outer=None) -> None:
    """Solve group g (its block assignment ``outer`` given, if nested) and its children into
    ``perm``."""
    u = _unit_costs(spec, g, costs, children)
    if g not in spec.blocks:
        p = _lap(u)
    else:
        c = spec.blocks[g][1]
        nb = spec.sizes[g] // c
        outer = np.arange(nb) if outer is None else outer
        p = np.empty(spec.sizes[g], dtype=np.int64)
        for a in range(nb):
            b = int(outer[a])
            p[a * c:(a + 1) * c] = b * c + _lap(u[a * c:(a + 1) * c, b * c:(b + 1) * c])
    perm[g] = torch.from_numpy(p)
    for h in children[g]:
        _assign(spec, h, costs, children, perm, outer=p)


def _solve_families(spec, costs: Mapping[str, np.ndarray]) -> Permutation:
    """The joint maximiser of ``sum_g sum_i costs[g][i, perm_g(i)]`` over every family (groups
    missing from ``costs`` contribute nothing)."""
    children = _children(spec)
    perm: Permutation = {}
    for g in spec.groups:
        if g not in spec.blocks:
            _assign(spec, g, costs, children, perm)
        elif spec.blocks[g][0] is None:
            _assign(spec, g, costs, children, perm)
    return perm


def _member_slices(spec, k, ax, g, t):
    """``(n, rest)`` matrices of ``t`` for each occurrence of group g on ``k``'s axis."""
    r, b = spec.layout(k, ax)
    pieces = spec.entry_pieces(k, ax)
    total = sum(n for _, _, n in pieces)
    x = t.movedim(ax, 0).reshape(r, total, b, -1)
    return [x[:, off:off + n].permute(1, 0, 2, 3).reshape(n, -1)
            for h, off, n in pieces if h == g]


#: Largest cost contribution (bytes) kept between solves of the nested path.
_PART_CACHE_BYTES = 8 * 2**20


def _group_cost(spec, g, members, pa, pb_cur, dtype, cache: dict, stamp) -> np.ndarray:
    """``C_g[i, j] = sum <A unit i, B unit j>`` over the given member axes of g, B's other axes
    as in ``pb_cur``. A's unit matrices never change; a member's contribution changes only when
    a group on its other axes moves, so it is kept in ``cache`` beside ``stamp(k)`` (the
    versions of those groups) and recomputed only when the stamp differs (contributions up to
    ``_PART_CACHE_BYTES``)."""
    n = spec.sizes[g]
    c = None
    keep = n * n * torch.finfo(dtype).bits // 8 <= _PART_CACHE_BYTES
    for k, ax in members:
        if k not in pa or not pa[k].dtype.is_floating_point or pa[k].numel() == 0:
            continue
        now = stamp(k)
        hit = cache.get(("part", k, ax, g))
        if hit is not None and hit[0] == now:
            c = hit[1].clone() if c is None else c.add_(hit[1])
            continue
        if ("a", k, ax, g) not in cache:
            cache["a", k, ax, g] = _member_slices(spec, k, ax, g, pa[k].to(dtype))
        part = None
        for xa, xb in zip(cache["a", k, ax, g],
                          _member_slices(spec, k, ax, g, pb_cur[k].to(dtype))):
            part = xa @ xb.T if part is None else part.addmm_(xa, xb.T)
        cached = keep or not now  # a tensor no other group permutes never changes
        if cached:
            cache["part", k, ax, g] = (now, part)
        c = (part.clone() if cached else part) if c is None else c.add_(part)
    if c is None:
        return np.zeros((n, n))
    return c.to(torch.float64).cpu().numpy()


class _LazyPermuted:
    """``permute_unchecked(spec, perm, params)[k]`` computed on first access (a solve reads
    only the members whose contributions it recomputes)."""

    def __init__(self, spec, perm, params):
        self.spec, self.perm, self.params, self.done = spec, perm, params, {}

    def __getitem__(self, k):
        if k not in self.done:
            from gauge.symmetry import permute_unchecked
            self.done[k] = permute_unchecked(self.spec, self.perm, {k: self.params[k]})[k]
        return self.done[k]


def _weight_matching_nested(spec, pa, pb, *, max_iter, rng, init, dtype, t0) -> MatchResult:
    """Weight matching for specs with nested groups or concatenated axes: coordinate ascent
    over families (see above), starting progressively from the families whose members' other
    axes are unpermuted or solved (as :class:`_Descent` does for plain groups)."""
    from gauge.symmetry import permute_unchecked

    children = _children(spec)
    roots = [g for g in spec.groups if _family_root(spec, g) == g]
    family = {r: [] for r in roots}
    for g in spec.groups:
        family[_family_root(spec, g)].append(g)
    perm = dict(identity_permutation(spec))
    if init is not None:
        perm.update({g: p.long().cpu() for g, p in init.items()})
    stats = {g: {"size": spec.sizes[g], "solves": 0} for g in spec.groups}
    before = matching_objective(pa, pb)

    def others(k, groups):
        return {h for ax in range(len(spec.axes[k])) for h, _, _ in spec.entry_pieces(k, ax)
                if h is not None} - set(groups)

    cache: dict = {}
    # A family's costs depend only on the permutations of the groups on its members' other
    # axes: a full solve whose inputs have not moved since the last one would give the same
    # assignment, so it is skipped (``version`` counts each group's changes).
    version = {g: 0 for g in spec.groups}
    seen: dict[str, dict] = {}

    def solve(root, usable=None) -> bool:
        groups = family[root]
        deps = set().union(*(others(k, groups) for g in groups for k, _ in spec.perm_to_axes[g]))
        key = {h: version[h] for h in deps}
        if usable is None and seen.get(root) == key:
            return False
        held = {h: p for h, p in perm.items() if h not in groups}
        pb_cur = _LazyPermuted(spec, held, pb)

        def stamp(k):
            return tuple(sorted((h, version[h]) for h in others(k, groups)))
        costs = {}
        for g in groups:
            keep = [(k, ax) for k, ax in spec.perm_to_axes[g]
                    if usable is None or others(k, groups) <= usable]
            costs[g] = _group_cost(spec, g, keep, pa, pb_cur, dtype, cache, stamp)
            stats[g]["solves"] += 1
        new = {}
        for g in groups:
            if g not in spec.blocks:
                _assign(spec, g, costs, children, new)

        def value(p):
            return sum(float(costs[g][np.arange(spec.sizes[g]), p[g].numpy()].sum())
                       for g in groups)
        old_val, new_val = value(perm), value(new)
        if usable is None:
            seen[root] = key
        if usable is not None or new_val > old_val + 1e-9 * max(1.0, abs(old_val)):
            changed = [g for g in groups if not torch.equal(new[g], perm[g])]
            for g in changed:
                version[g] += 1
            perm.update(new)
            return bool(changed)
        return False

    if init is None:  # progressive start
        solved: set[str] = set()
        remaining = list(roots)
        while remaining:
            def ready(r):
                members = [(k, ax) for g in family[r] for k, ax in spec.perm_to_axes[g]]
                tot = sum(pa[k].numel() for k, _ in members) or 1
                return sum(pa[k].numel() for k, _ in members
                           if others(k, family[r]) <= solved) / tot
            r = max(remaining, key=ready)
            solve(r, usable=solved if ready(r) > 0 else set(spec.groups))
            solved |= set(family[r])
            remaining.remove(r)
    sweeps, converged = 0, False
    while sweeps < max_iter:
        sweeps += 1
        improved = False
        for i in rng.permutation(len(roots)):
            improved |= solve(roots[i])
        if not improved:
            converged = True
            break
    after = matching_objective(pa, permute_unchecked(spec, perm, pb))
    for g, p in perm.items():
        stats[g]["fixed_points"] = int((p == torch.arange(len(p))).sum())
    return MatchResult(perm=perm, method="weight", objective_before=before,
                       objective_after=after, iterations=sweeps, per_group=stats,
                       time=time.perf_counter() - t0, converged=converged, restarts=1)


def align(model: nn.Module | None, spec: PermutationSpec, params_a: Mapping[str, torch.Tensor],
          params_b: Mapping[str, torch.Tensor], method: str = "weight",
          inputs=None, **kw) -> tuple[dict[str, torch.Tensor], MatchResult]:
    """Align B to A: ``(apply_permutation(spec, result.perm, params_b), result)``.

    ``method="weight"`` calls :func:`weight_matching` (``model`` unused), ``"activation"`` calls
    :func:`activation_matching` on ``inputs``; ``kw`` goes to the matcher.
    """
    if method == "weight":
        result = weight_matching(spec, params_a, params_b, **kw)
    elif method == "activation":
        if model is None or inputs is None:
            raise SpecError("activation matching needs the model and inputs")
        result = activation_matching(model, spec, params_a, params_b, inputs, **kw)
    else:
        raise SpecError(f"unknown alignment method {method!r}; use 'weight' or 'activation'")
    return apply_permutation(spec, result.perm, params_b), result

"""N networks in one basis: synchronised (cycle-consistent) alignment.

Matching every pair of N networks independently gives maps ``Q_ij`` (network j into i's basis)
that need not compose: ``Q_ij Q_jk != Q_ik`` in general, so "the same unit" across seeds is
not well defined. A *synchronised* alignment instead gives one permutation ``P_i`` per network
into a common (universe) basis; the maps it implies, ``Q_ij = P_i^-1 P_j``, are cycle-consistent
by construction. :func:`align_many` finds the ``P_i`` by one of

* ``"reference"``: every network weight-matched to ``params_list[reference]`` (the baseline
  that every pairwise analysis implicitly uses; biased towards the reference);
* ``"mergemany"``: MergeMany (Ainsworth, Hayase & Srinivasa 2023, Algorithm 3): repeatedly
  match each network to the mean of the others in the common basis, until a full pass changes
  nothing;
* ``"c2m3"``: the universe-space objective of Crisostomi et al. (2024, "C2M3"),
  ``max_{P_1..P_N} sum_{i<j} <P_i theta_i, P_j theta_j>``, relaxed to doubly stochastic
  matrices and optimised over all groups and networks jointly by Frank-Wolfe (each step a
  linear assignment per (network, group), exact line search on the polynomial in the step
  size), then projected back to permutations.

:func:`cycle_consistency` measures how far a set of pairwise maps is from being synchronised:
per group, the fraction of units ``u`` with ``(Q_ij Q_jk)(u) != Q_ik(u)`` over all triples
``i < j < k``, and the fraction of units where the pairwise ``Q_ij`` disagrees with a
synchronised ``P_i^-1 P_j``.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from gauge.errors import MismatchError, SpecError, check_same_keys
from gauge.match import weight_matching
from gauge.spec import PermutationSpec
from gauge.symmetry import (Permutation, apply_permutation, compose, identity_permutation,
                            invert)

__all__ = ["ManyAlignment", "CycleConsistency", "align_many", "pairwise_matchings",
           "cycle_consistency", "ALIGN_MANY_METHODS", "unit_rows", "check_many"]

#: Methods of :func:`align_many`.
ALIGN_MANY_METHODS = ("reference", "mergemany", "c2m3")


def unit_rows(t: torch.Tensor, axis: int, n: int, layout: tuple[int, int] = (1, 1)
              ) -> torch.Tensor:
    """``t`` as an ``(n, -1)`` matrix whose row ``u`` holds every entry that unit ``u`` of the
    group on ``axis`` owns (all repeats and blocks of the layout)."""
    r, b = layout
    x = t.movedim(axis, 0).reshape(r, n, b, -1)
    return x.transpose(0, 1).reshape(n, -1)


def _from_unit_rows(rows: torch.Tensor, like: torch.Tensor, axis: int, n: int,
                    layout: tuple[int, int]) -> torch.Tensor:
    r, b = layout
    moved = like.movedim(axis, 0).shape
    x = rows.reshape(n, r, b, -1).transpose(0, 1)
    return x.reshape(moved).movedim(0, axis)


def check_many(params_list: Sequence[Mapping[str, torch.Tensor]],
               names: Sequence[str] | None = None) -> None:
    """Raise :class:`MismatchError` unless there are >= 2 networks of one architecture; the
    message names the first offending network and key."""
    if len(params_list) < 2:
        raise MismatchError(f"need at least two networks, got {len(params_list)}")
    names = list(names) if names is not None else [f"network {i}" for i in
                                                    range(len(params_list))]
    for p, name in zip(params_list[1:], names[1:]):
        check_same_keys(params_list[0], p, names=(names[0], name))


# --------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class ManyAlignment:
    """A synchronised alignment of N networks.

    ``perms[i]`` maps network i into the common basis,
    ``apply_permutation(spec, perms[i], params_list[i])``; the common basis is the reference
    network's (``perms[reference]`` is the identity). ``objective`` is
    ``sum_{i<j} <P_i theta_i, P_j theta_j>`` over floating tensors at the returned perms.
    """

    perms: tuple[Permutation, ...]
    method: str
    reference: int
    objective: float
    iterations: int
    converged: bool
    time: float
    history: tuple[float, ...] = ()

    @property
    def n(self) -> int:
        return len(self.perms)

    def pairwise(self, i: int, j: int) -> Permutation:
        """The implied map of network j into network i's basis: ``P_i^-1 P_j``."""
        return compose(invert(self.perms[i]), self.perms[j])

    def aligned(self, spec: PermutationSpec, params_list: Sequence[Mapping[str, torch.Tensor]]
                ) -> list[dict[str, torch.Tensor]]:
        """Every network (or mask) in the common basis."""
        return [apply_permutation(spec, p, x) for p, x in zip(self.perms, params_list)]

    def to_dict(self, *, include_perms: bool = False) -> dict:
        d = {"method": self.method, "n": self.n, "reference": self.reference,
             "objective": self.objective, "iterations": self.iterations,
             "converged": self.converged, "time": self.time, "history": list(self.history)}
        if include_perms:
            d["perms"] = [{g: p.tolist() for g, p in perm.items()} for perm in self.perms]
        return d


@dataclass(frozen=True)
class CycleConsistency:
    """How far pairwise maps ``Q_ij`` are from synchronised ones.

    ``per_group[g]`` holds ``size``, ``cycle_error`` (fraction of units breaking
    ``Q_ij Q_jk = Q_ik``, over all triples ``i < j < k``) and, when a synchronised alignment
    was given, ``disagreement`` (fraction of units where ``Q_ij != P_i^-1 P_j``, over all pairs
    ``i < j``) and ``synchronised_cycle_error`` (0 up to bugs: it is a composition identity).
    The overall numbers weight every group by its size.
    """

    n: int
    per_group: dict[str, dict]
    cycle_error: float
    disagreement: float | None = None
    synchronised_cycle_error: float | None = None
    triples: int = 0

    def to_dict(self) -> dict:
        return {"n": self.n, "triples": self.triples, "cycle_error": self.cycle_error,
                "disagreement": self.disagreement,
                "synchronised_cycle_error": self.synchronised_cycle_error,
                "per_group": self.per_group}


# --------------------------------------------------------------------------------------------
# pairwise maps and their cycle consistency


def pairwise_matchings(spec: PermutationSpec, params_list: Sequence[Mapping[str, torch.Tensor]],
                       **kw) -> dict[tuple[int, int], Permutation]:
    """``Q_ij`` for every ordered pair, by :func:`~gauge.match.weight_matching` of each pair
    ``i < j`` once (``Q_ji`` is its inverse). ``kw`` goes to the matcher."""
    check_many(params_list)
    out = {}
    for i, j in itertools.combinations(range(len(params_list)), 2):
        q = weight_matching(spec, params_list[i], params_list[j], **kw).perm
        out[(i, j)], out[(j, i)] = q, invert(q)
    return out


def _mismatch(p: Mapping[str, torch.Tensor], q: Mapping[str, torch.Tensor], g: str) -> int:
    return int((p[g].cpu() != q[g].cpu()).sum())


def cycle_consistency(spec: PermutationSpec, pairwise: Mapping[tuple[int, int], Permutation],
                      n: int, synchronised: ManyAlignment | None = None) -> CycleConsistency:
    """Cycle error of the pairwise maps ``pairwise[(i, j)]`` (network j into i's basis; a
    missing ``(j, i)`` is the inverse of ``(i, j)``) and their disagreement with
    ``synchronised`` (see :class:`CycleConsistency`)."""
    if n < 2:
        raise MismatchError(f"cycle consistency needs at least two networks, got {n}")

    def q(i, j):
        if (i, j) in pairwise:
            return pairwise[(i, j)]
        if (j, i) in pairwise:
            return invert(pairwise[(j, i)])
        raise MismatchError(f"no pairwise map for networks ({i}, {j})")

    triples = list(itertools.combinations(range(n), 3))
    pairs = list(itertools.combinations(range(n), 2))
    per_group = {}
    tot = {"size": 0, "cyc": 0.0, "dis": 0.0, "sync": 0.0}
    for g in spec.groups:
        size = spec.sizes[g]
        bad = sum(_mismatch(compose(q(i, j), q(j, k)), q(i, k), g) for i, j, k in triples)
        row = {"size": size, "cycle_error": bad / (size * len(triples)) if triples else 0.0}
        if synchronised is not None:
            dis = sum(_mismatch(q(i, j), synchronised.pairwise(i, j), g) for i, j in pairs)
            sbad = sum(_mismatch(compose(synchronised.pairwise(i, j), synchronised.pairwise(j, k)),
                                 synchronised.pairwise(i, k), g) for i, j, k in triples)
            row["disagreement"] = dis / (size * len(pairs))
            row["synchronised_cycle_error"] = sbad / (size * len(triples)) if triples else 0.0
            tot["dis"] += row["disagreement"] * size
            tot["sync"] += row["synchronised_cycle_error"] * size
        per_group[g] = row
        tot["size"] += size
        tot["cyc"] += row["cycle_error"] * size
    w = max(tot["size"], 1)
    return CycleConsistency(
        n=n, per_group=per_group, cycle_error=tot["cyc"] / w, triples=len(triples),
        disagreement=tot["dis"] / w if synchronised is not None else None,
        synchronised_cycle_error=tot["sync"] / w if synchronised is not None else None)


# --------------------------------------------------------------------------------------------
# objective and the synchronising methods


def _floating(spec, params):
    return {k: v for k, v in params.items() if v.dtype.is_floating_point and v.numel()
            and any(g is not None for g in spec.axes[k])}


def _objective(spec, params_list, perms) -> float:
    """``sum_{i<j} <P_i theta_i, P_j theta_j> = (||sum_i T_i||^2 - sum_i ||T_i||^2) / 2``."""
    total, self_sq = None, 0.0
    for p, x in zip(perms, params_list):
        t = apply_permutation(spec, p, x)
        flat = torch.cat([v.reshape(-1).double() for v in t.values()])
        self_sq += float(flat @ flat)
        total = flat if total is None else total + flat
    return 0.5 * (float(total @ total) - self_sq)


def _normalise(perms: list[Permutation], reference: int) -> list[Permutation]:
    """Re-express the common basis as the reference network's (``P_ref`` = identity)."""
    back = invert(perms[reference])
    return [compose(back, p) for p in perms]


def _mergemany(spec, params_list, perms, max_iter, rng, match_kw):
    """MergeMany (Ainsworth et al. 2023): match each network to the mean of the others."""
    n = len(params_list)
    aligned = [apply_permutation(spec, p, x) for p, x in zip(perms, params_list)]
    total = {k: sum(a[k].double() for a in aligned) for k in aligned[0]}
    it, converged = 0, False
    while it < max_iter:
        it += 1
        changed = False
        for i in rng.permutation(n):
            others = {k: ((total[k] - aligned[i][k].double()) / (n - 1)).to(v.dtype)
                      for k, v in params_list[i].items()}
            new = weight_matching(spec, others, params_list[i], init=perms[i], **match_kw).perm
            if any(not torch.equal(new[g], perms[i][g]) for g in spec.groups):
                changed = True
                perms[i] = new
                fresh = apply_permutation(spec, new, params_list[i])
                for k in total:
                    total[k] = total[k] - aligned[i][k].double() + fresh[k].double()
                aligned[i] = fresh
        if not changed:
            converged = True
            break
    return perms, it, converged


def _mul_axis(t, axis, mat, layout):
    """Apply the (soft) permutation matrix ``mat`` to ``axis`` of ``t``: row ``u`` of the
    result is ``sum_v mat[u, v]`` times unit ``v``; a hard permutation ``perm`` is
    ``eye[perm]`` and then this equals ``index_select(axis, perm)``."""
    n = mat.shape[0]
    return _from_unit_rows(mat @ unit_rows(t, axis, n, layout), t, axis, n, layout)


def _soft_apply(spec, mats, params, skip=None):
    out = {}
    for k, t in params.items():
        for ax, g in enumerate(spec.axes[k]):
            if g is not None and (k, ax) != skip:
                t = _mul_axis(t, ax, mats[g], spec.layout(k, ax))
        out[k] = t
    return out


def _soft_objective(spec, params_list, mats_list) -> float:
    total, self_sq = None, 0.0
    for mats, x in zip(mats_list, params_list):
        t = _soft_apply(spec, mats, x)
        flat = torch.cat([v.reshape(-1) for v in t.values()]).double()
        self_sq += float(flat @ flat)
        total = flat if total is None else total + flat
    return 0.5 * (float(total @ total) - self_sq)


def _lap_max(c: np.ndarray) -> np.ndarray:
    rows, cols = linear_sum_assignment(c, maximize=True)
    out = np.empty(len(rows), dtype=np.int64)
    out[rows] = cols
    return out


def _c2m3(spec, params_list, perms, max_iter, tol, dtype):
    """Frank-Wolfe over doubly stochastic ``M_i^g`` for every network and group at once."""
    xs = [{k: v.to(dtype) for k, v in x.items()} for x in params_list]
    dev = next(iter(xs[0].values())).device
    eye = {g: torch.eye(n, dtype=dtype, device=dev) for g, n in spec.sizes.items()}
    mats = [{g: eye[g][p[g].to(dev)] for g in spec.groups} for p in perms]
    degree = 2 * max(sum(g is not None for g in spec.axes[k]) for k in xs[0])
    gammas = np.linspace(0, 1, degree + 1)
    f = _soft_objective(spec, xs, mats)
    history, it, converged = [f], 0, False
    while it < max_iter:
        it += 1
        ts = [_soft_apply(spec, m, x) for m, x in zip(mats, xs)]
        total = {k: sum(t[k] for t in ts) for k in ts[0]}
        dirs, gap = [], 0.0
        for i, (m, x) in enumerate(zip(mats, xs)):
            grad = {g: torch.zeros_like(eye[g]) for g in spec.groups}
            for k in x:
                for ax, g in enumerate(spec.axes[k]):
                    if g is None:
                        continue
                    n, layout = spec.sizes[g], spec.layout(k, ax)
                    part = _soft_apply(spec, m, {k: x[k]}, skip=(k, ax))[k]
                    grad[g] += unit_rows(total[k] - ts[i][k], ax, n, layout) @ \
                        unit_rows(part, ax, n, layout).T
            d = {}
            for g in spec.groups:
                vertex = eye[g][torch.from_numpy(_lap_max(grad[g].double().cpu().numpy()))
                                .to(dev)]
                d[g] = vertex - m[g]
                gap += float((grad[g] * d[g]).sum())
            dirs.append(d)
        if gap <= tol * max(1.0, abs(f)):
            converged = True
            break
        # f(M + gamma D) is a polynomial of degree <= 2 * (permuted axes per tensor): fit it
        # exactly on a grid and take its maximum on [0, 1]
        vals = [f] + [_soft_objective(spec, xs, [{g: m[g] + float(gm) * d[g] for g in m}
                                                 for m, d in zip(mats, dirs)])
                      for gm in gammas[1:]]
        poly = np.polynomial.Polynomial.fit(gammas, vals, degree)
        fine = np.linspace(0, 1, 1001)
        best = float(fine[np.argmax(poly(fine))])
        if best <= 0:
            converged = True
            break
        mats = [{g: m[g] + best * d[g] for g in m} for m, d in zip(mats, dirs)]
        f_new = _soft_objective(spec, xs, mats)
        history.append(f_new)
        if f_new - f <= tol * max(1.0, abs(f)):
            f = f_new
            converged = True
            break
        f = f_new
    hard = [{g: torch.from_numpy(_lap_max(m[g].double().cpu().numpy())) for g in spec.groups}
            for m in mats]
    return hard, it, converged, tuple(history)


def align_many(spec: PermutationSpec, params_list: Sequence[Mapping[str, torch.Tensor]], *,
               method: str = "mergemany", reference: int = 0, max_iter: int = 100,
               tol: float = 1e-9, seed: int = 0, device: str | torch.device | None = None,
               dtype: torch.dtype = torch.float32) -> ManyAlignment:
    """Bring N networks into one common basis (see the module docstring for the methods).

    Every method starts from the reference alignment (each network weight-matched to
    ``params_list[reference]``); MergeMany then runs at most ``max_iter`` passes, C2M3 at most
    ``max_iter`` Frank-Wolfe steps (stopping when the duality gap or the gain falls below
    ``tol`` relative to the objective). The returned basis is the reference network's.

    Raises :class:`MismatchError` for fewer than two networks or mixed architectures and
    :class:`SpecError` for an unknown method or a spec that does not cover the params.
    """
    t0 = time.perf_counter()
    if method not in ALIGN_MANY_METHODS:
        raise SpecError(f"unknown align_many method {method!r}; use one of "
                        f"{', '.join(ALIGN_MANY_METHODS)}")
    check_many(params_list)
    n = len(params_list)
    if not 0 <= int(reference) < n:
        raise SpecError(f"reference {reference} is not one of the {n} networks")
    if max_iter < 1:
        raise SpecError(f"max_iter must be >= 1, got {max_iter}")
    for i, p in enumerate(params_list):
        spec.check_params(p, f"network {i}")
    first = next(iter(params_list[0].values()))
    device = torch.device(device) if device is not None else first.device
    xs = [{k: v.to(device) for k, v in _floating(spec, p).items()} for p in params_list]
    match_kw = {"seed": seed, "device": device, "dtype": dtype}
    perms = [identity_permutation(spec) if i == reference else
             weight_matching(spec, xs[reference], xs[i], **match_kw).perm for i in range(n)]
    iterations, converged, history = 1, True, ()
    if method == "mergemany":
        perms, iterations, converged = _mergemany(spec, xs, perms, max_iter,
                                                  np.random.default_rng(seed), match_kw)
    elif method == "c2m3":
        perms, iterations, converged, history = _c2m3(spec, xs, perms, max_iter, tol, dtype)
    perms = _normalise([{g: p.cpu() for g, p in perm.items()} for perm in perms], reference)
    return ManyAlignment(perms=tuple(perms), method=method, reference=int(reference),
                         objective=_objective(spec, xs, perms), iterations=iterations,
                         converged=converged, time=time.perf_counter() - t0, history=history)

"""The gauge quotient distance: how far apart two networks are once every symmetry is factored out.

For the group ``G`` of neuron permutations and positive per-unit rescalings of a spec
(Hecht-Nielsen 1990; Neyshabur et al. 2015) we report three distances between ``theta_a`` and
``theta_b`` (L2 over every floating tensor):

* ``raw = ||theta_a - theta_b||``;
* ``permutation = min_P ||theta_a - P theta_b||`` (weight matching, Ainsworth et al. 2022:
  permutations are isometries, so maximising ``<theta_a, P theta_b>`` minimises the distance);
* ``quotient = min_{g in G} ||c(theta_a) - g theta_b||`` with ``c`` the canonical scale
  (Equi-normalization, Stock et al. 2019). Rescalings are not isometries, so the distance from
  ``theta_a`` itself would depend on which point of its orbit ``theta_a`` is; measuring from the
  canonical (minimum-norm) point of A's orbit makes ``quotient`` a function of the two orbits
  only. It is 0 exactly when B is a permuted and rescaled copy of A.

The minimum over ``G`` is found by alternating (block coordinate descent, each step never
increases the distance), starting from ``c(theta_b)``: weight matching for the permutation with
the scales fixed, then the scales with the permutation fixed. For one unit ``u`` with the other
units' scales fixed, scaling its incoming entries by ``s`` and its outgoing ones by ``1/s``
gives

    f(s) = const - 2 s A_in + s^2 B_in - 2 A_out / s + B_out / s^2,

``A = sum a b``, ``B = sum b^2`` over the unit's incoming (``in``) and outgoing (``out``)
entries, whose stationary points are the positive real roots of
``B_in s^4 - A_in s^3 + A_out s - B_out = 0``; the best root is taken (closed form per unit,
all units of a group at once). Sweeps over the rescalable groups repeat until no scale moves by
more than ``tol``. Groups that are not rescalable (normalisation layers, bounded activations)
are only permuted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from gauge.errors import SpecError, check_same_keys
from gauge.many import unit_rows
from gauge.match import weight_matching
from gauge.spec import PermutationSpec
from gauge.symmetry import apply_permutation, apply_rescaling, canonicalize_scale, compose

__all__ = ["QuotientDistance", "quotient_distance", "l2_distance", "best_scales"]


def l2_distance(params_a: Mapping[str, torch.Tensor], params_b: Mapping[str, torch.Tensor]
                ) -> float:
    """``||a - b||`` over the floating tensors of ``params_a`` (float64 sums)."""
    total = 0.0
    for k, a in params_a.items():
        if a.dtype.is_floating_point:
            total += float((a.double() - params_b[k].to(a.device).double()).pow(2).sum())
    return total ** 0.5


@dataclass(frozen=True)
class QuotientDistance:
    """Distances between two networks (see the module docstring).

    ``perm`` and ``scales`` are the group element found: ``g theta_b =
    apply_rescaling(spec, scales, apply_permutation(spec, perm, canonicalize_scale(spec,
    theta_b)))``. ``canonical`` is ``||c(theta_a) - c(theta_b)||`` (scale gauge fixed, no
    permutation) and ``canonical_permutation`` ``min_P ||c(theta_a) - P c(theta_b)||``, so
    ``quotient <= canonical_permutation <= canonical``; ``raw >= permutation`` are measured
    from ``theta_a`` as given and need not bound ``quotient``. ``history`` holds the quotient
    distance after each alternation.
    """

    raw: float
    permutation: float
    canonical: float
    canonical_permutation: float
    quotient: float
    perm: dict
    scales: dict
    iterations: int
    converged: bool
    time: float
    history: tuple[float, ...] = ()
    rescalable: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"raw": self.raw, "permutation": self.permutation, "canonical": self.canonical,
                "canonical_permutation": self.canonical_permutation,
                "quotient": self.quotient, "iterations": self.iterations,
                "converged": self.converged, "time": self.time, "history": list(self.history),
                "rescalable": list(self.rescalable),
                "definition": "quotient = min over permutations P and positive per-unit "
                              "rescalings s of ||c(theta_a) - s P theta_b||, c = canonical "
                              "(minimum-norm) scale"}


def _roles(spec, params, g):
    n = spec.sizes[g]
    prod, cons = [], []
    for k, ax in spec.perm_to_axes[g]:
        if k in params and params[k].dtype.is_floating_point:
            (prod if ax == 0 else cons).append((k, ax, spec.layout(k, ax), n))
    return prod, cons


def _sums(pa, pb, members):
    ab = bb = 0.0
    for k, ax, layout, n in members:
        a, b = unit_rows(pa[k], ax, n, layout), unit_rows(pb[k], ax, n, layout)
        ab = ab + (a * b).sum(1)
        bb = bb + (b * b).sum(1)
    return ab, bb


def best_scales(a_in, b_in, a_out, b_out) -> torch.Tensor:
    """Per unit, the ``s > 0`` minimising ``-2 s A_in + s^2 B_in - 2 A_out / s + B_out / s^2``
    (1 where ``B_in`` or ``B_out`` is 0: the unit's distance does not depend on ``s`` then in a
    bounded way)."""
    a_in, b_in, a_out, b_out = (np.asarray(v, dtype=np.float64).reshape(-1)
                                for v in (a_in, b_in, a_out, b_out))
    out = np.ones(len(a_in))
    for u in range(len(a_in)):
        if b_in[u] <= 0 or b_out[u] <= 0:
            continue
        roots = np.roots([b_in[u], -a_in[u], 0.0, a_out[u], -b_out[u]])
        cand = [r.real for r in roots if abs(r.imag) <= 1e-9 * max(1.0, abs(r)) and r.real > 0]
        if not cand:
            continue
        f = [-2 * s * a_in[u] + s * s * b_in[u] - 2 * a_out[u] / s + b_out[u] / (s * s)
             for s in cand]
        out[u] = cand[int(np.argmin(f))]
    return torch.from_numpy(out)


def _rescale_sweeps(spec, pa, pb, groups, tol, max_sweeps):
    """Block coordinate descent over the rescalable groups; returns (scales, new pb)."""
    scales = {g: torch.ones(spec.sizes[g], dtype=torch.float64) for g in groups}
    for _ in range(max_sweeps):
        worst = 0.0
        for g in groups:
            prod, cons = _roles(spec, pb, g)
            a_in, b_in = _sums(pa, pb, prod)
            a_out, b_out = _sums(pa, pb, cons)
            s = best_scales(a_in, b_in, a_out, b_out)
            worst = max(worst, float(s.log().abs().max()))
            pb = apply_rescaling(spec, {g: s}, pb)
            scales[g] = scales[g] * s
        if worst <= tol:
            break
    return scales, pb


def quotient_distance(spec: PermutationSpec, params_a: Mapping[str, torch.Tensor],
                      params_b: Mapping[str, torch.Tensor], *, max_iter: int = 20,
                      tol: float = 1e-10, rescale_sweeps: int = 50, seed: int = 0,
                      device: str | torch.device | None = None) -> QuotientDistance:
    """Raw, permutation-only and quotient distances (see the module docstring); computed in
    float64. Raises :class:`~gauge.errors.MismatchError` for different architectures."""
    t0 = time.perf_counter()
    check_same_keys(params_a, params_b)
    spec.check_params(params_a, "params_a")
    if max_iter < 1:
        raise SpecError(f"max_iter must be >= 1, got {max_iter}")
    first = next(iter(params_a.values()))
    device = torch.device(device) if device is not None else first.device
    pa = {k: v.to(device, torch.float64) for k, v in params_a.items() if v.is_floating_point()}
    pb = {k: v.to(device, torch.float64) for k, v in params_b.items() if v.is_floating_point()}
    raw = l2_distance(pa, pb)
    kw = {"seed": seed, "device": device, "dtype": torch.float64}
    perm_only = l2_distance(pa, apply_permutation(spec, weight_matching(spec, pa, pb, **kw).perm,
                                                  pb))
    ca, cb = (canonicalize_scale(spec, p, tol=tol) for p in (pa, pb))
    canonical = l2_distance(ca, cb)
    groups = [g for g in spec.groups if g in spec.rescalable]
    perm = weight_matching(spec, ca, cb, **kw).perm
    cur = apply_permutation(spec, perm, cb)
    scales = {g: torch.ones(spec.sizes[g], dtype=torch.float64) for g in groups}
    history = [l2_distance(ca, cur)]
    it, converged = 0, True
    while groups and it < max_iter:
        it += 1
        s, cur = _rescale_sweeps(spec, ca, cur, groups, tol, rescale_sweeps)
        scales = {g: scales[g] * s[g] for g in groups}
        step = weight_matching(spec, ca, cur, **kw).perm
        moved = any(not torch.equal(p, torch.arange(len(p))) for p in step.values())
        if moved:
            cur = apply_permutation(spec, step, cur)
            perm = compose(step, perm)
            scales = {g: scales[g][step[g]] for g in groups}
        history.append(l2_distance(ca, cur))
        converged = not moved and history[-2] - history[-1] <= tol * max(1.0, history[-2])
        if converged:
            break
    return QuotientDistance(raw=raw, permutation=perm_only, canonical=canonical,
                            canonical_permutation=history[0],
                            quotient=history[-1], perm={g: p.cpu() for g, p in perm.items()},
                            scales=scales, iterations=it, converged=converged,
                            time=time.perf_counter() - t0, history=tuple(history),
                            rescalable=tuple(groups))

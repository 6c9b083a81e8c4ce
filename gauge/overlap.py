"""Overlap of pruning masks: are two tickets the same subnetwork, raw or modulo permutation?

For two masks ``A``, ``B`` over the same tensors (``True`` = weight kept) and one tensor of
``n`` entries with ``k_a = |A|`` and ``k_b = |B|`` survivors we report

* ``intersection = |A & B|``, ``union = |A | B|``;
* ``jaccard = |A & B| / |A | B|`` (Jaccard 1912);
* ``overlap = |A & B| / min(|A|, |B|)``, the overlap coefficient (Szymkiewicz-Simpson): the
  fraction of the sparser mask's survivors the other one keeps too;
* the *chance level*: two independent random masks with the same survivor counts (the
  ``random_prune`` control of IMP) have an intersection ``X`` that is hypergeometric,
  ``E[X] = k_a k_b / n``, ``Var[X] = k_a k_b (n - k_a)(n - k_b) / (n^2 (n - 1))``, so the
  chance Jaccard is ``E[X / (k_a + k_b - X)]``, which for large ``n`` is
  ``d_a d_b / (d_a + d_b - d_a d_b)`` with densities ``d = k / n``. We compute the
  expectation exactly from the hypergeometric pmf (``scipy.stats.hypergeom``);
* ``z = (X - E[X]) / sqrt(Var[X])``: how many standard deviations the observed intersection
  lies above chance (``None`` where the variance is 0, e.g. an unpruned layer).

The overall numbers pool every tensor: intersections add, and so do the means and variances of
the independent per-tensor hypergeometric counts.

Masks transform like the weights they cover: a hidden-unit permutation that maps network B
onto network A (Ainsworth et al. 2023) maps B's mask into A's basis too.
:func:`aligned_mask_overlap` compares the masks in that common basis, which is the only
meaningful comparison of tickets found from different seeds (cf. Adnan et al. 2025).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from gauge.errors import MismatchError, check_same_keys
from gauge.results import Result, to_dict

__all__ = ["LayerOverlap", "OverlapResult", "OverlapMatrix", "mask_overlap",
           "aligned_mask_overlap", "overlap_matrix", "chance_jaccard", "hypergeom_moments"]


def hypergeom_moments(n: int, k_a: int, k_b: int) -> tuple[float, float]:
    """Mean and variance of ``|A & B|`` for independent uniformly random masks of ``k_a`` and
    ``k_b`` survivors among ``n`` positions (hypergeometric)."""
    if n <= 0:
        return 0.0, 0.0
    mean = k_a * k_b / n
    var = 0.0 if n < 2 else k_a * k_b * (n - k_a) * (n - k_b) / (n * n * (n - 1))
    return mean, var


def chance_jaccard(n: int, k_a: int, k_b: int, *, exact: bool = True) -> float:
    """Expected Jaccard index of independent random masks of ``k_a`` and ``k_b`` survivors
    among ``n``; ``exact=False`` gives the large-``n`` value ``d_a d_b / (d_a + d_b - d_a d_b)``.
    """
    if k_a == 0 and k_b == 0:
        return 0.0
    if not exact:
        da, db = k_a / n, k_b / n
        return da * db / (da + db - da * db)
    from scipy.stats import hypergeom
    lo, hi = max(0, k_a + k_b - n), min(k_a, k_b)
    # The intersection is hypergeometric; outside mean +- 40 std its mass is below 1e-300, so
    # summing there only costs time (the full support of a 200k-weight layer is ~50k terms).
    mean = k_a * k_b / n
    std = math.sqrt(max(mean * (1 - k_a / n) * (n - k_b) / max(n - 1, 1), 0.0))
    lo, hi = max(lo, int(mean - 40 * std) - 1), min(hi, int(mean + 40 * std) + 1)
    x = np.arange(lo, hi + 1)
    pmf = hypergeom(n, k_a, k_b).pmf(x)
    return float(np.sum(pmf * x / np.maximum(k_a + k_b - x, 1)))


@dataclass(frozen=True)
class LayerOverlap(Result):
    """Overlap numbers of one tensor (or of all pooled, for the overall row)."""

    size: int
    kept_a: int
    kept_b: int
    intersection: int
    union: int
    jaccard: float
    overlap: float
    chance_intersection: float
    chance_jaccard: float
    z: float | None

    @property
    def density_a(self) -> float:
        return self.kept_a / self.size if self.size else 1.0

    @property
    def density_b(self) -> float:
        return self.kept_b / self.size if self.size else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {**to_dict(self, nan_as_none=True), "density_a": self.density_a,
                "density_b": self.density_b}


@dataclass(frozen=True)
class OverlapResult(Result):
    """Per-tensor and overall overlap of two masks (see the module docstring)."""

    per_layer: dict[str, LayerOverlap]
    overall: LayerOverlap
    aligned: bool = False

    @property
    def jaccard(self) -> float:
        return self.overall.jaccard

    @property
    def chance_jaccard(self) -> float:
        return self.overall.chance_jaccard

    @property
    def z(self) -> float | None:
        return self.overall.z



def _as_bool(mask: Mapping[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    out = {}
    for k, m in mask.items():
        if not isinstance(m, torch.Tensor):
            raise MismatchError(f"mask {name}[{k!r}] is not a tensor")
        out[k] = m if m.dtype == torch.bool else (m != 0)
    return out


def _check_masks(mask_a: Mapping[str, torch.Tensor], mask_b: Mapping[str, torch.Tensor]):
    if not mask_a:
        raise MismatchError("mask A is empty: nothing to compare")
    check_same_keys(mask_a, mask_b, what="masks")


def _layer(n: int, ka: int, kb: int, inter: int, mean: float, var: float,
           cj: float) -> LayerOverlap:
    union = ka + kb - inter
    return LayerOverlap(size=n, kept_a=ka, kept_b=kb, intersection=inter, union=union,
                        jaccard=inter / union if union else 1.0,
                        overlap=inter / min(ka, kb) if min(ka, kb) else (1.0 if ka == kb else 0.0),
                        chance_intersection=mean, chance_jaccard=cj,
                        z=(inter - mean) / math.sqrt(var) if var > 0 else None)


def mask_overlap(mask_a: Mapping[str, torch.Tensor], mask_b: Mapping[str, torch.Tensor]
                 ) -> OverlapResult:
    """Intersection, Jaccard, overlap coefficient, chance level and z-score of two masks, per
    tensor and overall. Masks are dicts of bool (or 0/1) tensors with the same keys and shapes;
    :class:`MismatchError` otherwise."""
    _check_masks(mask_a, mask_b)
    a, b = _as_bool(mask_a, "A"), _as_bool(mask_b, "B")
    per = {}
    tot_n = tot_a = tot_b = tot_i = 0
    tot_mean = tot_var = 0.0
    for k in a:
        ma, mb = a[k], b[k].to(a[k].device)
        n, ka, kb = ma.numel(), int(ma.sum()), int(mb.sum())
        inter = int((ma & mb).sum())
        mean, var = hypergeom_moments(n, ka, kb)
        per[k] = _layer(n, ka, kb, inter, mean, var, chance_jaccard(n, ka, kb))
        tot_n, tot_a, tot_b, tot_i = tot_n + n, tot_a + ka, tot_b + kb, tot_i + inter
        tot_mean, tot_var = tot_mean + mean, tot_var + var
    # pooled chance Jaccard: ratio of the expected pooled counts (the sum of many independent
    # hypergeometric counts is sharply concentrated, so the ratio of expectations is accurate)
    union = tot_a + tot_b - tot_mean
    overall = _layer(tot_n, tot_a, tot_b, tot_i, tot_mean, tot_var,
                     tot_mean / union if union > 0 else 0.0)
    return OverlapResult(per_layer=per, overall=overall)


def aligned_mask_overlap(spec, perm: Mapping[str, torch.Tensor],
                         mask_a: Mapping[str, torch.Tensor], mask_b: Mapping[str, torch.Tensor]
                         ) -> OverlapResult:
    """Overlap of ``mask_a`` with ``mask_b`` mapped into A's basis by ``perm``.

    ``perm`` maps network B onto A (``weight_matching(spec, params_a, params_b).perm``): a mask
    permutes like the weights it covers, ``apply_permutation(spec, perm, mask_b)``.
    """
    from gauge.symmetry import apply_permutation
    _check_masks(mask_a, mask_b)
    b = apply_permutation(spec, perm, _as_bool(mask_b, "B"))
    r = mask_overlap(mask_a, b)
    return OverlapResult(per_layer=r.per_layer, overall=r.overall, aligned=True)


@dataclass(frozen=True)
class OverlapMatrix(Result):
    """N x N matrices over N masks (row i, column j): overall Jaccard ``raw``, ``aligned``
    (``None`` without perms), the ``chance`` Jaccard, and the z-scores against chance."""

    _nan_as_none = True

    names: tuple[str, ...]
    raw: tuple[tuple[float, ...], ...]
    chance: tuple[tuple[float, ...], ...]
    z_raw: tuple[tuple[float | None, ...], ...]
    aligned: tuple[tuple[float, ...], ...] | None = None
    z_aligned: tuple[tuple[float | None, ...], ...] | None = None

    def off_diagonal(self, which: str = "raw") -> list[float]:
        m = getattr(self, which)
        return [m[i][j] for i in range(len(m)) for j in range(len(m)) if i != j]



def overlap_matrix(masks: Sequence[Mapping[str, torch.Tensor]] | Mapping[str, Mapping],
                   *, perms=None, spec=None) -> OverlapMatrix:
    """Pairwise overlap of N masks (e.g. the tickets of N seeds at one level).

    ``masks``: a sequence of masks or a dict ``name -> mask``. ``perms`` (needs ``spec``):

    * a sequence of N permutations, ``perms[i]`` mapping network i into one common basis
      (e.g. every seed matched to seed 0, ``perms[0]`` the identity or ``None``); or
    * a dict ``(i, j) -> perm`` mapping network j into network i's basis (pairwise matching);
      missing pairs fall back to the inverse of ``(j, i)``.
    """
    if isinstance(masks, Mapping):
        names, items = tuple(str(k) for k in masks), list(masks.values())
    else:
        items = list(masks)
        names = tuple(str(i) for i in range(len(items)))
    if len(items) < 2:
        raise MismatchError(f"overlap_matrix needs at least 2 masks, got {len(items)}")
    if perms is not None and spec is None:
        raise MismatchError("overlap_matrix: aligned overlap needs the spec the perms act on")
    from gauge.symmetry import apply_permutation, invert
    n = len(items)
    raw = [[0.0] * n for _ in range(n)]
    chance = [[0.0] * n for _ in range(n)]
    z_raw: list[list] = [[None] * n for _ in range(n)]
    aligned = [[0.0] * n for _ in range(n)] if perms is not None else None
    z_al: list[list] | None = [[None] * n for _ in range(n)] if perms is not None else None
    common = None
    if perms is not None and not isinstance(perms, Mapping):
        if len(perms) != n:
            raise MismatchError(f"overlap_matrix: {len(perms)} perms for {n} masks")
        common = [items[i] if perms[i] is None else
                  apply_permutation(spec, perms[i], _as_bool(items[i], str(i)))
                  for i in range(n)]
    for i in range(n):
        for j in range(n):
            r = mask_overlap(items[i], items[j])
            raw[i][j], chance[i][j], z_raw[i][j] = r.jaccard, r.chance_jaccard, r.z
            if perms is None:
                continue
            if common is not None:
                ra = mask_overlap(common[i], common[j])
            elif i == j:
                ra = r
            else:
                p = perms.get((i, j))
                if p is None and (j, i) in perms:
                    p = invert(perms[(j, i)])
                if p is None:
                    raise MismatchError(f"overlap_matrix: no perm for pair ({i}, {j})")
                ra = aligned_mask_overlap(spec, p, items[i], items[j])
            aligned[i][j], z_al[i][j] = ra.jaccard, ra.z
    tup = lambda m: None if m is None else tuple(tuple(r) for r in m)  # noqa: E731
    return OverlapMatrix(names=names, raw=tup(raw), chance=tup(chance), z_raw=tup(z_raw),
                         aligned=tup(aligned), z_aligned=tup(z_al))

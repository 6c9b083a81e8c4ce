"""Consensus tickets: how many of N seeds keep each weight, once all are in one basis.

Given N masks expressed in a common basis (``ManyAlignment.aligned(spec, masks)``: masks
permute like the weights they cover), every weight gets a *keep count* ``c in {0..N}``, the
number of seeds whose ticket keeps it. Per tensor the histogram ``h[c] = #{weights kept by
exactly c seeds}`` is compared with chance: N independent random masks with the same per-tensor
densities ``d_1..d_N`` keep a given weight ``c`` times with the Poisson-binomial probability
``p(c)`` (the binomial ``Binom(N, d)`` when the densities are equal), so
``E[h[c]] = size * p(c)`` exactly, for masks with fixed survivor counts too (linearity of
expectation over positions). The overall histogram adds the tensors' histograms and
expectations.

The summary numbers: ``unanimous_ratio = h[N] / E[h[N]]`` (how much more often than chance
every seed agrees to keep a weight), ``total_variation = 1/2 sum_c |h[c] - E h[c]| / size``,
and for a threshold ``k`` the *consensus mask* ``{c >= k}`` with its density. Comparing the
histogram in the raw basis and in the aligned basis separates agreement that the basis of each
seed hides from agreement that is not there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch

from gauge.errors import MismatchError

__all__ = ["ConsensusLayer", "Consensus", "consensus", "poisson_binomial"]


def poisson_binomial(probs: Sequence[float]) -> np.ndarray:
    """``p[c]``, the probability that exactly ``c`` of independent events with the given
    probabilities happen (dynamic programming; the binomial pmf for equal probabilities)."""
    pmf = np.zeros(len(probs) + 1)
    pmf[0] = 1.0
    for p in probs:
        pmf[1:] = pmf[1:] * (1 - p) + pmf[:-1] * p
        pmf[0] *= 1 - p
    return pmf


@dataclass(frozen=True)
class ConsensusLayer:
    """Keep-count histogram of one tensor (or of all pooled) against chance."""

    size: int
    densities: tuple[float, ...]
    observed: tuple[int, ...]
    expected: tuple[float, ...]

    @property
    def unanimous_ratio(self) -> float | None:
        """``h[N] / E[h[N]]`` (``None`` when chance expects no unanimous weight)."""
        e = self.expected[-1]
        return self.observed[-1] / e if e > 0 else None

    @property
    def total_variation(self) -> float:
        return 0.5 * sum(abs(o - e) for o, e in zip(self.observed, self.expected)) / \
            max(self.size, 1)

    def to_dict(self) -> dict:
        return {"size": self.size, "densities": list(self.densities),
                "observed": list(self.observed), "expected": list(self.expected),
                "unanimous_ratio": self.unanimous_ratio, "total_variation": self.total_variation}


@dataclass(frozen=True)
class Consensus:
    """Keep counts of N masks in one basis (``counts[name]``: int tensor, 0..N), per-tensor and
    overall histograms against chance, and consensus masks."""

    n: int
    per_layer: dict[str, ConsensusLayer]
    overall: ConsensusLayer
    counts: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)

    def mask(self, k: int) -> dict[str, torch.Tensor]:
        """The consensus mask: the weights kept by at least ``k`` of the N masks."""
        if not 1 <= k <= self.n:
            raise MismatchError(f"consensus threshold k must be in 1..{self.n}, got {k}")
        return {name: c >= k for name, c in self.counts.items()}

    def density(self, k: int) -> float:
        """Fraction of weights kept by at least ``k`` masks: ``sum_{c >= k} h[c] / size``."""
        if not 1 <= k <= self.n:
            raise MismatchError(f"consensus threshold k must be in 1..{self.n}, got {k}")
        return sum(self.overall.observed[k:]) / max(self.overall.size, 1)

    def chance_density(self, k: int) -> float:
        """The density of ``{c >= k}`` for independent masks with the same densities."""
        return sum(self.overall.expected[k:]) / max(self.overall.size, 1)

    def to_dict(self) -> dict:
        return {"n": self.n, "overall": self.overall.to_dict(),
                "per_layer": {k: v.to_dict() for k, v in self.per_layer.items()},
                "density_at_least": {str(k): self.density(k) for k in range(1, self.n + 1)},
                "chance_density_at_least": {str(k): self.chance_density(k)
                                            for k in range(1, self.n + 1)}}


def _check(masks):
    if len(masks) < 2:
        raise MismatchError(f"consensus needs at least two masks, got {len(masks)}")
    first = masks[0]
    if not first:
        raise MismatchError("mask 0 is empty: nothing to count")
    for i, m in enumerate(masks[1:], start=1):
        for k in first:
            if k not in m:
                raise MismatchError(f"mask {i} has no {k!r}, which mask 0 has (masks of "
                                    f"different models?)")
            if tuple(m[k].shape) != tuple(first[k].shape):
                raise MismatchError(f"mask {i}[{k!r}] has shape {tuple(m[k].shape)}, mask 0 "
                                    f"{tuple(first[k].shape)} (masks of different models?)")
        extra = [k for k in m if k not in first]
        if extra:
            raise MismatchError(f"mask {i} has {extra[0]!r}, which mask 0 has not (masks of "
                                f"different models?)")


def consensus(masks: Sequence[Mapping[str, torch.Tensor]]) -> Consensus:
    """Keep counts, histograms and chance of N masks given in one basis (bool or 0/1 tensors
    with the same keys and shapes; :class:`MismatchError` otherwise)."""
    masks = list(masks)
    _check(masks)
    n = len(masks)
    per, counts = {}, {}
    obs_tot = np.zeros(n + 1, dtype=np.int64)
    exp_tot = np.zeros(n + 1)
    size_tot = 0
    kept_tot = np.zeros(n)
    for k in masks[0]:
        bools = [(m[k] != 0).to(masks[0][k].device) for m in masks]
        c = torch.stack(bools).sum(0)
        counts[k] = c
        size = c.numel()
        kept = np.array([int(b.sum()) for b in bools])
        dens = kept / max(size, 1)
        obs = np.bincount(c.reshape(-1).cpu().numpy(), minlength=n + 1)
        exp = size * poisson_binomial(dens)
        per[k] = ConsensusLayer(size=size, densities=tuple(float(d) for d in dens),
                                observed=tuple(int(v) for v in obs),
                                expected=tuple(float(v) for v in exp))
        obs_tot += obs
        exp_tot += exp
        size_tot += size
        kept_tot += kept
    overall = ConsensusLayer(size=size_tot,
                             densities=tuple(float(v) for v in kept_tot / max(size_tot, 1)),
                             observed=tuple(int(v) for v in obs_tot),
                             expected=tuple(float(v) for v in exp_tot))
    return Consensus(n=n, per_layer=per, overall=overall, counts=counts)

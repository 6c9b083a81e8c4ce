"""Representation similarity between networks, and how far training moves the weights.

Linear CKA (Kornblith, Norouzi, Lee & Hinton 2019, "Similarity of neural network
representations revisited"). For features ``X`` (n x p) and ``Y`` (n x q) of the same ``n``
inputs, centred per column,

    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F),

the normalised HSIC (Gretton et al. 2005) of the linear kernels ``K = X X^T``, ``L = Y Y^T``.
It is invariant to orthogonal transforms and isotropic scaling of either side (so to neuron
permutations) but not to arbitrary invertible maps. Every quantity above is a function of the
cross-moments ``sum_i z_i z_i^T`` and ``sum_i z_i`` of the concatenated features ``z_i``, so it
is streamed over batches: memory grows with the feature widths, never with ``n``.

The debiased estimator (``debiased=True``) replaces HSIC by its unbiased estimator (Song,
Smola, Gretton, Bedo & Borgwardt 2012; used for CKA by Nguyen, Raghu & Kornblith 2021):
with ``K~``, ``L~`` the Gram matrices with zeroed diagonals,

    HSIC_u = [tr(K~ L~) + 1^T K~ 1 1^T L~ 1 / ((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1] / (n(n-3)).

For linear kernels each term is again a function of streamed sums (the row norms ``a_i =
||x_i||^2`` enter through ``sum_i a_i y_i`` and ``sum_i a_i b_i``). The biased estimator
overestimates the similarity of wide layers on few inputs; the debiased one does not.

Which layers: the permutable activations of the spec. For each group, its features are read
where :func:`~gauge.match.activation_matching` reads them -- at the input of its first
consuming Linear/Conv layer (post-activation), else at its producer's output -- so the layers
of CKA and of the matched-neuron correlation are the same. Each example contributes one vector
of the group's width: spatial positions (and token positions) are averaged (global average
pooling), which keeps the layers of a convolutional net comparable with one another at a cost
of ``width^2`` memory. A layer is named by its group (the producing layer, e.g. ``fc1``).

Matched-neuron correlation (Li, Yosinski, Clune, Lipson & Hopcroft 2015, "Convergent
learning"): after activation matching, the mean Pearson correlation of each unit of A with
its matched unit of B; 1 means B's units are a relabelling of A's.

Weight drift: ``||W_t - W_0||_F / ||W_0||_F`` per tensor, the relative distance training moved
a layer from its starting point.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from gauge.errors import MismatchError, SpecError, check_same_keys
from gauge.batches import as_data
from gauge.match import _capture, _consumers, activation_matching
from gauge.spec import PermutationSpec

__all__ = ["linear_cka", "cka_layers", "similarity", "similarity_across_seeds",
           "weight_drift", "SimilarityResult", "SeedSimilarity", "Drift"]


class _Moments:
    """Streamed cross-moments of ``m`` feature blocks (columns concatenated into ``z``):
    ``G = sum z z^T``, ``s = sum z``, the row norms ``a_ik = ||z_i[block k]||^2`` through
    ``W = sum z a^T``, ``NN = sum a a^T`` and ``sum a``; all in float64.

    Features are shifted by the first batch's mean before accumulating: centred quantities do
    not change, and the sums stay small where the features have a large mean."""

    def __init__(self, dims: Sequence[int], device):
        self.dims = list(dims)
        self.offsets = np.cumsum([0] + self.dims)
        p, m = self.offsets[-1], len(self.dims)
        kw = dict(dtype=torch.float64, device=device)
        self.n = 0
        self.shift = None
        self.G = torch.zeros(p, p, **kw)
        self.s = torch.zeros(p, **kw)
        self.W = torch.zeros(p, m, **kw)
        self.NN = torch.zeros(m, m, **kw)
        self.asum = torch.zeros(m, **kw)

    def update(self, blocks: Sequence[torch.Tensor]) -> None:
        z = torch.cat([b.to(torch.float64) for b in blocks], dim=1)
        if self.shift is None:
            self.shift = z.mean(0)
        z = z - self.shift
        a = torch.stack([z[:, self.offsets[k]:self.offsets[k + 1]].pow(2).sum(1)
                         for k in range(len(self.dims))], dim=1)
        self.n += z.shape[0]
        self.G += z.T @ z
        self.s += z.sum(0)
        self.W += z.T @ a
        self.NN += a.T @ a
        self.asum += a.sum(0)

    def _block(self, k: int) -> slice:
        return slice(int(self.offsets[k]), int(self.offsets[k + 1]))

    def hsic(self, k: int, l: int, debiased: bool) -> float:
        """``HSIC(K_k, L_l)`` up to a factor common to every pair (biased), or ``HSIC_u``."""
        bk, bl = self._block(k), self._block(l)
        n = self.n
        c, sx, sy = self.G[bk, bl], self.s[bk], self.s[bl]
        if not debiased:
            cc = c - torch.outer(sx, sy) / n
            return float(cc.pow(2).sum()) / n ** 2
        if n < 4:
            raise SpecError(f"the debiased CKA estimator needs at least 4 inputs, got {n}")
        tr = float(c.pow(2).sum()) - float(self.NN[k, l])
        one_k = float(sx @ sx) - float(self.asum[k])
        one_l = float(sy @ sy) - float(self.asum[l])
        one_kl = (float(sx @ c @ sy) - float(sx @ self.W[bk, l]) - float(sy @ self.W[bl, k])
                  + float(self.NN[k, l]))
        return (tr + one_k * one_l / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * one_kl) / \
            (n * (n - 3))

    def cka(self, k: int, l: int, debiased: bool) -> float:
        """CKA of blocks ``k`` and ``l``; NaN when either has no variance (a dead layer)."""
        den = self.hsic(k, k, debiased) * self.hsic(l, l, debiased)
        if not den > 0:
            return float("nan")
        return self.hsic(k, l, debiased) / math.sqrt(den)


def linear_cka(x: torch.Tensor, y: torch.Tensor, *, debiased: bool = False) -> float:
    """Linear CKA of feature matrices ``x`` (n x p) and ``y`` (n x q), rows the same inputs
    (Kornblith et al. 2019; ``debiased``: Song et al. 2012's unbiased HSIC). NaN when either
    side has no variance."""
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise MismatchError(f"linear_cka needs two (n, features) matrices with the same n, got "
                            f"{tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] < 2:
        raise SpecError(f"CKA needs at least 2 inputs, got {x.shape[0]}")
    acc = _Moments([x.shape[1], y.shape[1]], x.device)
    acc.update([x, y.to(x.device)])
    return acc.cka(0, 1, debiased)


# --------------------------------------------------------------------------------------------
# layers of a network


def cka_layers(model: nn.Module, spec: PermutationSpec) -> list[tuple[str, str, str, int, tuple]]:
    """The layers CKA compares: ``(group, module, "in" | "out", channel_dim, layout)`` per group
    that has a Linear/Conv member, at the first point activation matching reads it."""
    cons = _consumers(model, spec)
    return [(g, *cons[g][0]) for g in spec.groups if cons[g]]


def _pooled(x: torch.Tensor, channel: int, n: int, layout) -> torch.Tensor:
    """``(batch, n)``: the group's ``n`` channels of ``x``, averaged over every other position."""
    r, b = layout
    x = x.movedim(channel, -1) if x.dim() > 2 else x
    return x.reshape(x.shape[0], -1, r, n, b).mean(dim=(1, 2, 4))


def _stream(model, spec, layers, params_list, inputs, batch_size, device, blocks_of):
    """Run every params of ``params_list`` over ``inputs``; per batch hand the pooled features
    ``feats[network][layer]`` to ``blocks_of`` -> list of (moments, blocks) to update."""
    points = {(m, w) for _, m, w, _, _ in layers}
    params_list = [{k: v.to(device) for k, v in p.items()} for p in params_list]
    data = as_data(inputs, "similarity inputs")
    with _capture(model, points) as run:
        for batch in data.batches(batch_size, device):
            feats = []
            for p in params_list:
                seen = run(p, batch, data.name)
                feats.append([_pooled(seen[(m, w)][0], ch, spec.sizes[g], lay)
                              for g, m, w, ch, lay in layers])
            for acc, blocks in blocks_of(feats):
                acc.update(blocks)


def _check_inputs(inputs, batch_size):
    if not isinstance(inputs, torch.Tensor) or len(inputs) < 2:
        raise SpecError("similarity needs a tensor of at least 2 inputs")
    if batch_size < 1:
        raise SpecError(f"batch_size must be >= 1, got {batch_size}")


# --------------------------------------------------------------------------------------------
# two networks


@dataclass(frozen=True)
class SimilarityResult:
    """Similarity of networks A and B on the same inputs.

    ``cka[i][j]`` is the linear CKA of layer ``i`` of A and layer ``j`` of B (``layers`` named
    by their permutation group, ``sizes`` their widths). ``matched_corr[i]`` is the mean
    Pearson correlation of each unit of layer ``i`` of A with its matched unit of B after
    activation matching; ``identity_corr[i]`` the same without matching (unit ``k`` with unit
    ``k``).
    """

    layers: tuple[str, ...]
    sizes: tuple[int, ...]
    cka: tuple[tuple[float, ...], ...]
    matched_corr: tuple[float, ...]
    identity_corr: tuple[float, ...]
    debiased: bool
    n_examples: int
    time: float

    @property
    def diagonal(self) -> tuple[float, ...]:
        """CKA of each layer of A with the same layer of B."""
        return tuple(self.cka[i][i] for i in range(len(self.layers)))

    def to_dict(self) -> dict:
        return {"layers": list(self.layers), "sizes": list(self.sizes),
                "cka": [list(r) for r in self.cka], "diagonal": list(self.diagonal),
                "matched_corr": list(self.matched_corr),
                "identity_corr": list(self.identity_corr), "debiased": self.debiased,
                "estimator": "debiased (Song et al. 2012)" if self.debiased else "biased",
                "n_examples": self.n_examples, "time": self.time}


def similarity(model: nn.Module, spec: PermutationSpec, params_a: Mapping[str, torch.Tensor],
               params_b: Mapping[str, torch.Tensor], inputs: torch.Tensor, *,
               batch_size: int = 256, debiased: bool = False,
               device: str | torch.device | None = None) -> SimilarityResult:
    """Layer x layer linear CKA of A and B on ``inputs`` (streamed in batches, eval mode) and
    the matched-neuron correlation per layer (:func:`~gauge.match.activation_matching`).

    Raises :class:`MismatchError` for different architectures and :class:`SpecError` when the
    spec does not fit or there are fewer than 2 inputs (4 for ``debiased``).
    """
    t0 = time.perf_counter()
    check_same_keys(params_a, params_b)
    spec.check_params(params_a, "params_a")
    _check_inputs(inputs, batch_size)
    device = torch.device(device) if device is not None else inputs.device
    layers = cka_layers(model, spec)
    if not layers:
        raise SpecError("the model has no permutable Linear/Conv features to compare")
    dims = [spec.sizes[g] for g, *_ in layers]
    acc = _Moments(dims + dims, device)
    _stream(model, spec, layers, [params_a, params_b], inputs, batch_size, device,
            lambda feats: [(acc, feats[0] + feats[1])])
    m = len(layers)
    cka = tuple(tuple(acc.cka(i, m + j, debiased) for j in range(m)) for i in range(m))
    match = activation_matching(model, spec, params_a, params_b, inputs,
                                batch_size=batch_size, device=device)
    names = tuple(g for g, *_ in layers)
    return SimilarityResult(layers=names, sizes=tuple(dims), cka=cka,
                            matched_corr=tuple(match.per_group[g]["corr_after"] for g in names),
                            identity_corr=tuple(match.per_group[g]["corr_before"]
                                                for g in names),
                            debiased=debiased, n_examples=len(inputs),
                            time=time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------
# N networks


@dataclass(frozen=True)
class SeedSimilarity:
    """Similarity across N networks (e.g. seeds), one :class:`SimilarityResult` per pair.

    ``mean_cka[l]``/``std_cka[l]``: CKA of layer ``l`` with the same layer of the other
    network, over pairs; ``mean_corr[l]`` likewise for the matched-neuron correlation. A layer
    is ``shared`` when its mean CKA is at least ``threshold``, else ``seed_specific``.
    """

    layers: tuple[str, ...]
    pairs: tuple[tuple[int, int], ...]
    results: tuple[SimilarityResult, ...]
    mean_cka: tuple[float, ...]
    std_cka: tuple[float, ...]
    mean_corr: tuple[float, ...]
    std_corr: tuple[float, ...]
    threshold: float

    @property
    def shared(self) -> tuple[str, ...]:
        return tuple(g for g, c in zip(self.layers, self.mean_cka) if c >= self.threshold)

    @property
    def seed_specific(self) -> tuple[str, ...]:
        return tuple(g for g, c in zip(self.layers, self.mean_cka) if not c >= self.threshold)

    def to_dict(self) -> dict:
        return {"layers": list(self.layers), "pairs": [list(p) for p in self.pairs],
                "mean_cka": list(self.mean_cka), "std_cka": list(self.std_cka),
                "mean_corr": list(self.mean_corr), "std_corr": list(self.std_corr),
                "threshold": self.threshold, "shared": list(self.shared),
                "seed_specific": list(self.seed_specific),
                "results": [r.to_dict() for r in self.results]}


def similarity_across_seeds(model: nn.Module, spec: PermutationSpec,
                            params_list: Sequence[Mapping[str, torch.Tensor]],
                            inputs: torch.Tensor, *, threshold: float = 0.8,
                            batch_size: int = 256, debiased: bool = False,
                            device: str | torch.device | None = None) -> SeedSimilarity:
    """:func:`similarity` for every pair of ``params_list`` (at least 2), summarised per layer:
    mean and standard deviation over pairs of the same-layer CKA and matched correlation."""
    if len(params_list) < 2:
        raise SpecError(f"similarity across seeds needs at least 2 networks, got "
                        f"{len(params_list)}")
    pairs = tuple(itertools.combinations(range(len(params_list)), 2))
    results = tuple(similarity(model, spec, params_list[i], params_list[j], inputs,
                               batch_size=batch_size, debiased=debiased, device=device)
                    for i, j in pairs)
    diag = np.array([r.diagonal for r in results], dtype=float)
    corr = np.array([r.matched_corr for r in results], dtype=float)
    return SeedSimilarity(layers=results[0].layers, pairs=pairs, results=results,
                          mean_cka=tuple(map(float, diag.mean(0))),
                          std_cka=tuple(map(float, diag.std(0))),
                          mean_corr=tuple(map(float, corr.mean(0))),
                          std_corr=tuple(map(float, corr.std(0))), threshold=float(threshold))


# --------------------------------------------------------------------------------------------
# weight drift


@dataclass(frozen=True)
class Drift:
    """Relative distance ``||W_t - W_0||_F / ||W_0||_F`` per tensor (``per_layer``) and over
    all of them together (``total``); ``inf`` where ``W_0 = 0`` but ``W_t`` is not."""

    per_layer: dict[str, float]
    total: float

    def to_dict(self) -> dict:
        return {"per_layer": dict(self.per_layer), "total": self.total}


def _ratio(num: float, den: float) -> float:
    if den > 0:
        return math.sqrt(num / den)
    return 0.0 if num == 0 else float("inf")


def weight_drift(params_0: Mapping[str, torch.Tensor], params_t: Mapping[str, torch.Tensor],
                 keys: Sequence[str] | None = None) -> Drift:
    """How far ``params_t`` moved from ``params_0``: :class:`Drift` over ``keys`` (default every
    floating tensor of ``params_0``), norms in float64."""
    keys = [k for k in params_0 if params_0[k].dtype.is_floating_point] if keys is None \
        else list(keys)
    per, num_all, den_all = {}, 0.0, 0.0
    for k in keys:
        if k not in params_0 or k not in params_t:
            raise MismatchError(f"weight drift: {k!r} is missing from "
                                f"{'params_0' if k not in params_0 else 'params_t'}")
        w0, wt = params_0[k].double(), params_t[k].double().to(params_0[k].device)
        if w0.shape != wt.shape:
            raise MismatchError(f"weight drift: {k!r} has shape {tuple(w0.shape)} at the start "
                                f"and {tuple(wt.shape)} at the end")
        num, den = float((wt - w0).pow(2).sum()), float(w0.pow(2).sum())
        per[k] = _ratio(num, den)
        num_all, den_all = num_all + num, den_all + den
    return Drift(per_layer=per, total=_ratio(num_all, den_all))

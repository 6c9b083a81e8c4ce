"""Pruning masks: which weights a lottery ticket keeps.

A mask is a ``dict[str, BoolTensor]`` keyed by ``state_dict`` names, one entry per *prunable*
tensor (``True`` = the weight survives). Tensors absent from a mask are never pruned.

* :func:`prunable` -- the weights of every Linear/Conv layer (Frankle & Carbin 2019 prune
  neither biases nor normalisation layers), minus ``ignore``; ``kind="weights+biases"`` adds
  those layers' biases, ``kind="all"`` every parameter (norm scales and shifts too).
* :func:`magnitude_global` -- OpenLTH's ``sparse_global`` (Frankle et al. 2019): remove the
  ``ceil(fraction * R)`` surviving weights of smallest ``|w|`` across all masked tensors
  together, ``R`` = surviving count. Exactly that many, ties broken by position.
* :func:`magnitude_layerwise` -- Frankle & Carbin (2019): each tensor ``l`` loses
  ``ceil(f_l * R_l)`` of its own ``R_l`` survivors; ``f_l`` defaults to ``fraction`` and may be
  overridden per tensor (they prune the output layer of LeNet at half the rate).
* :func:`remaining_after` -- survivor count of a schedule: a fixed fraction per level, or
  target sparsities ``s_1 < s_2 < ...`` of the prunable weights (:func:`check_sparsities`).
* :func:`drop_lowest` -- the one global ranking: remove the ``k`` alive entries of lowest
  score across tensors (magnitude here, :mod:`tickets.scores` for pruning at init).
* :func:`random` -- random masks as controls: the same per-tensor survivor counts as a given
  mask (OpenLTH's ``randomly_prune`` branch), or the same total count spread uniformly.
* :func:`sparsity` overall and per tensor; :func:`apply_mask` zeroes pruned weights.

All functions are pure (inputs never mutated) and deterministic; randomness comes from an
explicit ``seed``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterable, Mapping

import torch
from torch import nn

from tickets.errors import ConfigError, ModelError, TicketsError

__all__ = ["Mask", "Sparsity", "prunable", "full_mask", "magnitude_global",
           "magnitude_layerwise", "random", "random_mask", "prune", "sparsity", "apply_mask",
           "check_mask", "prune_count", "weight_name", "resolve_layer_fractions", "STRATEGIES",
           "KINDS", "drop_lowest", "remaining_after", "check_sparsities"]

Mask = dict[str, torch.Tensor]

#: Names of the magnitude pruning strategies accepted by :func:`prune`.
STRATEGIES = ("global", "layerwise")

#: What :func:`prunable` selects: Linear/Conv weights, plus their biases, or every parameter.
KINDS = ("weights", "weights+biases", "all")

_PRUNABLE_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def weight_name(name: str) -> str:
    """The state-dict name of a layer's weight: ``"fc3"`` and ``"fc3.weight"`` both name
    ``"fc3.weight"``."""
    return name if name.endswith(".weight") else f"{name}.weight"


def prunable(model: nn.Module, *, ignore: Iterable[str] = (), kind: str = "weights"
             ) -> list[str]:
    """State-dict names of the tensors IMP may prune, in module order: every Linear/Conv
    ``weight`` (``kind="weights"``), plus those layers' ``bias`` (``"weights+biases"``), or
    every parameter, normalisation scales and shifts included (``"all"``); minus the tensors of
    the layers in ``ignore`` (layer names like ``"fc3"`` or ``"fc3.weight"``).

    Raises :class:`ConfigError` for an unknown ``kind`` or an ignored name that is not a
    prunable weight of ``model``.
    """
    if kind not in KINDS:
        raise ConfigError(f"what to prune must be one of {', '.join(KINDS)}, got {kind!r}")
    names = [f"{mod_name}.weight" if mod_name else "weight"
             for mod_name, mod in model.named_modules()
             if isinstance(mod, _PRUNABLE_TYPES) and getattr(mod, "weight", None) is not None]
    ignored = {weight_name(n) for n in ignore}
    unknown = sorted(ignored - set(names))
    if unknown:
        raise ConfigError(f"cannot ignore {unknown[0]!r}: not a prunable weight of the model "
                          f"(prunable: {', '.join(names)})")
    if kind == "weights":
        return [n for n in names if n not in ignored]
    layers = {n[:-len("weight")] for n in names}  # "fc1." (or "" for a bare layer)
    skip = {n[:-len("weight")] for n in ignored}
    out = []
    for n, p in model.named_parameters():
        prefix, leaf = n[:len(n) - len(n.rsplit(".", 1)[-1])], n.rsplit(".", 1)[-1]
        if prefix in skip or not p.is_floating_point():
            continue
        if kind == "all" or (prefix in layers and leaf in ("weight", "bias")):
            out.append(n)
    return out


def full_mask(params: Mapping[str, torch.Tensor], names: Iterable[str]) -> Mask:
    """The all-ones mask over ``names`` (level 0 of IMP: the dense network)."""
    return {n: torch.ones_like(params[n], dtype=torch.bool, device="cpu") for n in names}


def check_mask(params: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor],
               source: str = "mask", *, names: Iterable[str] | None = None,
               error: type[TicketsError] = ModelError) -> Mask:
    """Validate ``mask`` against ``params`` (a state_dict) and return it as CPU bool tensors.

    Every key must be a tensor of ``params`` with the same shape (and, when ``names`` is
    given, one of those prunable names); values must be bool or 0/1. Raises ``error``
    (:class:`ModelError`; :class:`ConfigError` where the mask is a training option) naming
    ``source`` and the first key at fault.
    """
    names = list(names) if names is not None else None
    allowed = set(names) if names is not None else None
    out: Mask = {}
    for k, m in mask.items():
        if k not in params:
            raise error(f"{source}: key {k!r} is not a parameter of the model")
        if allowed is not None and k not in allowed:
            raise error(f"{source}: key {k!r} is not a prunable weight (prunable: "
                        f"{', '.join(sorted(allowed))})")
        if tuple(m.shape) != tuple(params[k].shape):
            raise error(f"{source}: key {k!r} has shape {tuple(m.shape)}, the model "
                        f"expects {tuple(params[k].shape)}")
        if m.dtype != torch.bool:
            if not bool(((m == 0) | (m == 1)).all()):
                raise error(f"{source}: key {k!r} has values other than 0 and 1")
            m = m != 0
        out[k] = m.detach().to("cpu")
    if allowed is not None:
        missing = [n for n in names if n not in out]
        if missing:
            raise error(f"{source}: no entry for prunable weight {missing[0]!r}")
    return out


def prune_count(fraction: float, remaining: int) -> int:
    """``ceil(fraction * remaining)`` in exact decimal arithmetic (0.2 * 1000 is 200, not 201)."""
    return min(int(remaining), math.ceil(Fraction(repr(float(fraction))) * int(remaining)))


def check_sparsities(sparsities: Iterable[float], what: str = "sparsity schedule"
                     ) -> tuple[float, ...]:
    """``sparsities`` as a tuple of floats, each in (0, 1) and strictly increasing (the
    fraction of prunable weights removed after level 1, 2, ...). Raises :class:`ConfigError`."""
    out = tuple(float(s) for s in sparsities)
    if not out:
        raise ConfigError(f"{what} is empty")
    for i, s in enumerate(out):
        if not 0.0 < s < 1.0:
            raise ConfigError(f"{what}: sparsity {s} of level {i + 1} must be in (0, 1) "
                              f"(1 leaves nothing)")
        if i and s <= out[i - 1]:
            raise ConfigError(f"{what} must be increasing: level {i + 1} has {s} after "
                              f"{out[i - 1]}")
    return out


def remaining_after(level: int, total: int, *, fraction: float | None = None,
                    sparsities: Iterable[float] = ()) -> int:
    """Survivors of ``total`` weights after ``level`` pruning levels of a schedule.

    With ``sparsities`` (``s_1 < s_2 < ...``, cumulative): ``total - ceil(s_L * total)``, the
    product taken in exact decimal arithmetic (:func:`prune_count`), so level ``L`` keeps
    exactly ``floor((1 - s_L) * total)`` weights. Otherwise each level removes
    ``ceil(fraction * R)`` of the ``R`` survivors, as :func:`magnitude_global` does.
    """
    sparsities = tuple(sparsities)
    if level <= 0:
        return int(total)
    if sparsities:
        if level > len(sparsities):
            raise ConfigError(f"level {level} is beyond the sparsity schedule "
                              f"({len(sparsities)} levels)")
        return int(total) - prune_count(sparsities[level - 1], int(total))
    remaining = int(total)
    for _ in range(level):
        remaining -= prune_count(fraction, remaining)
    return remaining


def _check_fraction(fraction: float, what: str = "fraction") -> None:
    if not 0.0 < float(fraction) < 1.0:
        raise ConfigError(f"{what} must be in (0, 1), got {fraction}")


def _drop_smallest(scores: torch.Tensor, alive: torch.Tensor, k: int) -> torch.Tensor:
    """New flat alive vector with the ``k`` alive entries of smallest score removed; ties go to
    the lower index (stable sort), so the count is exact and the result deterministic."""
    new = alive.clone()
    if k <= 0:
        return new
    idx = alive.nonzero().squeeze(1)
    order = torch.sort(scores[idx], stable=True).indices
    new[idx[order[:k]]] = False
    return new


def drop_lowest(scores: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor],
                k: int) -> Mask:
    """A new mask, nested in ``mask``, without the ``k`` alive entries of lowest score ranked
    across all tensors of ``mask`` together (ties to the lower position in name order, so the
    count is exact and the result independent of dict order)."""
    names = sorted(mask)
    if not names:
        return {}
    flat = torch.cat([scores[n].detach().to("cpu", torch.float64).flatten() for n in names])
    alive = torch.cat([mask[n].to("cpu").flatten() for n in names])
    new = _drop_smallest(flat, alive, int(k))
    out, start = {}, 0
    for n in names:
        size = mask[n].numel()
        out[n] = new[start:start + size].view(mask[n].shape).clone()
        start += size
    return {n: out[n] for n in mask}


def magnitude_global(params: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor],
                     fraction: float = 0.2) -> Mask:
    """Prune ``ceil(fraction * R)`` of the ``R`` surviving weights, smallest ``|w|`` first,
    ranked across all tensors of ``mask`` together (OpenLTH ``sparse_global``; Frankle et al.
    2019). Returns a new mask nested in ``mask``."""
    _check_fraction(fraction)
    mask = check_mask(params, mask)
    remaining = sum(int(m.sum()) for m in mask.values())
    return drop_lowest({n: params[n].abs() for n in mask}, mask,
                       prune_count(fraction, remaining))


def magnitude_layerwise(params: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor],
                        fraction: float = 0.2, *,
                        layer_fractions: Mapping[str, float] | None = None) -> Mask:
    """Prune each tensor ``l`` of ``mask`` by its own rate: ``ceil(f_l * R_l)`` of its ``R_l``
    survivors with smallest ``|w|`` (Frankle & Carbin 2019). ``f_l`` is
    ``layer_fractions[l]`` (layer or weight name) when given, else ``fraction``."""
    _check_fraction(fraction)
    mask = check_mask(params, mask)
    rates = resolve_layer_fractions(mask, fraction, layer_fractions)
    out = {}
    for n, m in mask.items():
        alive = m.to("cpu").flatten()
        scores = params[n].detach().abs().to("cpu", torch.float64).flatten()
        k = prune_count(rates[n], int(alive.sum()))
        out[n] = _drop_smallest(scores, alive, k).view(m.shape)
    return out


def resolve_layer_fractions(names: Iterable[str], fraction: float,
                            layer_fractions: Mapping[str, float] | None) -> dict[str, float]:
    """Pruning rate of every weight in ``names``: ``layer_fractions[l]`` (layer or weight
    name) where given, else ``fraction``. Raises :class:`ConfigError` for a rate outside
    (0, 1) or a name not in ``names``."""
    names = list(names)
    rates = {n: float(fraction) for n in names}
    for key, f in (layer_fractions or {}).items():
        w = weight_name(key)
        if w not in rates:
            raise ConfigError(f"layer fraction for {key!r}: not a pruned weight (pruned: "
                              f"{', '.join(names)})")
        _check_fraction(f, f"layer fraction of {key!r}")
        rates[w] = float(f)
    return rates


def prune(strategy: str, params: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor],
          fraction: float = 0.2, *, layer_fractions: Mapping[str, float] | None = None,
          sparsity: float | None = None, invert: bool = False) -> Mask:
    """One IMP pruning step with ``strategy`` ``"global"`` (all tensors of ``mask`` ranked
    together) or ``"layerwise"`` (each tensor by itself), smallest ``|w|`` first.

    Each group of ``R`` survivors out of ``N`` entries loses ``ceil(f * R)`` (``fraction``, or
    the group's ``layer_fractions`` rate) or, given a target ``sparsity`` of a schedule, is cut
    to :func:`remaining_after` ``= N - ceil(sparsity * N)`` survivors (none removed if it already
    has fewer). ``invert=True`` removes the *largest* magnitudes instead (the score inversion
    ablation of Frankle et al. 2021). Returns a new mask nested in ``mask``.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"pruning strategy must be one of {', '.join(STRATEGIES)}, got "
                          f"{strategy!r}")
    if layer_fractions and (strategy == "global" or sparsity is not None):
        raise ConfigError("per-layer fractions apply only to the layerwise strategy with a "
                          "fixed fraction per level")
    if sparsity is None:
        _check_fraction(fraction)
    else:
        check_sparsities([sparsity])
    mask = check_mask(params, mask)
    rates = resolve_layer_fractions(mask, fraction, layer_fractions)
    sign = -1.0 if invert else 1.0
    scores = {n: sign * params[n].detach().abs() for n in mask}
    groups = [list(mask)] if strategy == "global" else [[n] for n in mask]
    out: Mask = {}
    for group in groups:
        sub = {n: mask[n] for n in group}
        alive = sum(int(m.sum()) for m in sub.values())
        if sparsity is None:
            k = prune_count(rates[group[0]], alive)
        else:
            total = sum(m.numel() for m in sub.values())
            k = alive - remaining_after(1, total, sparsities=(sparsity,))
        out.update(drop_lowest(scores, sub, max(k, 0)))
    return {n: out[n] for n in mask}


def random(mask: Mapping[str, torch.Tensor], *, seed: int, per_layer: bool = True) -> Mask:
    """A random mask with the sparsity of ``mask``: the same survivor count in every tensor
    (``per_layer=True``, OpenLTH's ``randomly_prune`` control) or the same total count placed
    uniformly over all tensors together (``per_layer=False``). Positions are drawn from a
    ``torch.Generator`` seeded with ``seed``."""
    gen = torch.Generator().manual_seed(int(seed))
    names = list(mask)
    if per_layer:
        out = {}
        for n in names:
            m = mask[n]
            keep = int(m.sum())
            flat = torch.zeros(m.numel(), dtype=torch.bool)
            flat[torch.randperm(m.numel(), generator=gen)[:keep]] = True
            out[n] = flat.view(m.shape)
        return out
    sizes = [mask[n].numel() for n in names]
    keep = sum(int(mask[n].sum()) for n in names)
    flat = torch.zeros(sum(sizes), dtype=torch.bool)
    flat[torch.randperm(sum(sizes), generator=gen)[:keep]] = True
    return {n: part.view(mask[n].shape).clone()
            for n, part in zip(names, torch.split(flat, sizes))}


#: Unambiguous alias of :func:`random` for ``from tickets.prune import random_mask``.
random_mask = random


@dataclass(frozen=True)
class Sparsity:
    """Survivor counts of a mask: ``remaining`` of ``total`` weights, and per tensor
    ``per_layer[name] = (remaining, total)``. ``float(s)`` is the overall sparsity."""

    remaining: int
    total: int
    per_layer: dict[str, tuple[int, int]]

    @property
    def density(self) -> float:
        """Fraction of the prunable weights that survive."""
        return self.remaining / self.total if self.total else 1.0

    @property
    def sparsity(self) -> float:
        """Fraction of the prunable weights that are pruned (1 - density)."""
        return 1.0 - self.density

    def layer_density(self, name: str) -> float:
        r, t = self.per_layer[weight_name(name) if name not in self.per_layer else name]
        return r / t if t else 1.0

    def __float__(self) -> float:
        return self.sparsity

    def to_dict(self) -> dict:
        return {"remaining": self.remaining, "total": self.total, "density": self.density,
                "sparsity": self.sparsity,
                "per_layer": {n: {"remaining": r, "total": t, "density": r / t if t else 1.0}
                              for n, (r, t) in self.per_layer.items()}}


def sparsity(mask: Mapping[str, torch.Tensor]) -> Sparsity:
    """Overall and per-tensor survivor counts of ``mask`` (see :class:`Sparsity`)."""
    per = {n: (int(m.sum()), m.numel()) for n, m in mask.items()}
    return Sparsity(remaining=sum(r for r, _ in per.values()),
                    total=sum(t for _, t in per.values()), per_layer=per)


def apply_mask(params: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor]
               ) -> dict[str, torch.Tensor]:
    """A copy of ``params`` with pruned entries set to exactly 0 (unmasked keys unchanged).
    Raises :class:`ModelError` for a mask key missing from ``params`` or of another shape."""
    mask = check_mask(params, mask)
    out = dict(params)
    for k, m in mask.items():
        p = params[k]
        out[k] = torch.where(m.to(p.device), p, torch.zeros((), dtype=p.dtype, device=p.device))
    return out

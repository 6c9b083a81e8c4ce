"""Pruning masks: which weights a lottery ticket keeps.

A mask is a ``dict[str, BoolTensor]`` keyed by ``state_dict`` names, one entry per *prunable*
tensor (``True`` = the weight survives). Tensors absent from a mask are never pruned.

* :func:`prunable` -- the weights of every Linear/Conv layer (Frankle & Carbin 2019 prune
  neither biases nor normalisation layers), minus ``ignore``.
* :func:`magnitude_global` -- OpenLTH's ``sparse_global`` (Frankle et al. 2019): remove the
  ``ceil(fraction * R)`` surviving weights of smallest ``|w|`` across all masked tensors
  together, ``R`` = surviving count. Exactly that many, ties broken by position.
* :func:`magnitude_layerwise` -- Frankle & Carbin (2019): each tensor ``l`` loses
  ``ceil(f_l * R_l)`` of its own ``R_l`` survivors; ``f_l`` defaults to ``fraction`` and may be
  overridden per tensor (they prune the output layer of LeNet at half the rate).
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
           "check_mask", "prune_count", "weight_name", "resolve_layer_fractions", "STRATEGIES"]

Mask = dict[str, torch.Tensor]

#: Names of the magnitude pruning strategies accepted by :func:`prune`.
STRATEGIES = ("global", "layerwise")

_PRUNABLE_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def weight_name(name: str) -> str:
    """The state-dict name of a layer's weight: ``"fc3"`` and ``"fc3.weight"`` both name
    ``"fc3.weight"``."""
    return name if name.endswith(".weight") else f"{name}.weight"


def prunable(model: nn.Module, *, ignore: Iterable[str] = ()) -> list[str]:
    """State-dict names of the weights IMP may prune: every Linear/Conv ``weight``, in module
    order, except those in ``ignore`` (layer names like ``"fc3"`` or ``"fc3.weight"``).

    Raises :class:`ConfigError` if an ignored name is not a prunable weight of ``model``.
    """
    names = [f"{mod_name}.weight" if mod_name else "weight"
             for mod_name, mod in model.named_modules()
             if isinstance(mod, _PRUNABLE_TYPES) and getattr(mod, "weight", None) is not None]
    ignored = {weight_name(n) for n in ignore}
    unknown = sorted(ignored - set(names))
    if unknown:
        raise ConfigError(f"cannot ignore {unknown[0]!r}: not a prunable weight of the model "
                          f"(prunable: {', '.join(names)})")
    return [n for n in names if n not in ignored]


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


def magnitude_global(params: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor],
                     fraction: float = 0.2) -> Mask:
    """Prune ``ceil(fraction * R)`` of the ``R`` surviving weights, smallest ``|w|`` first,
    ranked across all tensors of ``mask`` together (OpenLTH ``sparse_global``; Frankle et al.
    2019). Returns a new mask nested in ``mask``."""
    _check_fraction(fraction)
    mask = check_mask(params, mask)
    # Rank in name order so the result never depends on the dict order of the inputs.
    names = sorted(mask)
    if not names:
        return {}
    scores = torch.cat([params[n].detach().abs().to("cpu", torch.float64).flatten()
                        for n in names])
    alive = torch.cat([mask[n].to("cpu").flatten() for n in names])
    new = _drop_smallest(scores, alive, prune_count(fraction, int(alive.sum())))
    out, start = {}, 0
    for n in names:
        size = mask[n].numel()
        out[n] = new[start:start + size].view(mask[n].shape).clone()
        start += size
    return {n: out[n] for n in mask}


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
          fraction: float = 0.2, *, layer_fractions: Mapping[str, float] | None = None) -> Mask:
    """One IMP pruning step with ``strategy`` ``"global"`` or ``"layerwise"``."""
    if strategy == "global":
        if layer_fractions:
            raise ConfigError("per-layer fractions apply only to the layerwise strategy")
        return magnitude_global(params, mask, fraction)
    if strategy == "layerwise":
        return magnitude_layerwise(params, mask, fraction, layer_fractions=layer_fractions)
    raise ConfigError(f"pruning strategy must be one of {', '.join(STRATEGIES)}, got "
                      f"{strategy!r}")


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
